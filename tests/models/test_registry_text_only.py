"""--text-only: a served model that cannot see images is declared so, and image tasks are refused."""
from unsafe_concepts.cli import main
from unsafe_concepts.models.registry import load_model


def test_openai_text_only_flag_reaches_the_backend():
    assert load_model("openai:m", base_url="http://127.0.0.1:9/v1").supports_images is True
    assert load_model("openai:m", base_url="http://127.0.0.1:9/v1", text_only=True).supports_images is False


def test_image_task_on_a_text_only_server_is_refused_before_any_request(tmp_path, capsys):
    # Port 9 (discard) has no server: the refusal must come before any request is made.
    code = main(["evaluate", "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1", "--text-only",
                 "--task", "alignment", "--data", "sample", "--limit", "1", "--out", str(tmp_path / "r")])
    assert code == 2 and "text only" in capsys.readouterr().err
