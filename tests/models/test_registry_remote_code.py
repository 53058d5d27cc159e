"""Models that ship their own Python code (``auto_map``: CogVLM, InternLM-XComposer2, ...) load only with
an explicit trust_remote_code, which is recorded. Tested with a tiny LOCAL remote-code VLM written here:
a LLaVA subclass in its own modeling file, registered through ``auto_map`` like a hub repo would be."""
import json

import pytest
from PIL import Image

from unsafe_concepts import prompts
from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.registry import load_model

from tiny_vlms import build_llava

CONFIGURATION = '''
from transformers import LlavaConfig


class TinyRemoteVlmConfig(LlavaConfig):
    model_type = "tiny_remote_vlm"
'''

MODELING = '''
from transformers import LlavaForConditionalGeneration

from .configuration_tiny_remote import TinyRemoteVlmConfig


class TinyRemoteVlmForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = TinyRemoteVlmConfig
    remote_code_ran = True  # visible proof that this file, not transformers' class, was used
'''


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    folder = build_llava(tmp_path_factory.mktemp("remote") / "tiny_remote_vlm")
    (folder / "configuration_tiny_remote.py").write_text(CONFIGURATION)
    (folder / "modeling_tiny_remote.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny_remote_vlm", architectures=["TinyRemoteVlmForConditionalGeneration"],
                  auto_map={"AutoConfig": "configuration_tiny_remote.TinyRemoteVlmConfig",
                            "AutoModelForImageTextToText": "modeling_tiny_remote.TinyRemoteVlmForConditionalGeneration"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_remote_code_is_refused_by_default_with_a_clear_message(remote_dir):
    with pytest.raises(UserError, match="--trust-remote-code") as e:
        load_model(f"hf:{remote_dir}")
    assert "Traceback" not in str(e.value)


def test_remote_code_runs_when_trusted_and_is_recorded(remote_dir):
    backend = load_model(f"hf:{remote_dir}", trust_remote_code=True)
    assert getattr(type(backend.model), "remote_code_ran", False)
    info = backend.describe()
    assert info["trust_remote_code"] is True and info["architecture"] == "TinyRemoteVlmForConditionalGeneration"
    assert backend.supports_images
    queries = [Query("a", prompts.alignment_prompt(0), Image.new("RGB", (40, 30), "red")),
               Query("b", prompts.alignment_prompt(2), Image.new("RGB", (30, 60), "blue"))]
    greedy = GenerationConfig(max_new_tokens=5, do_sample=False)
    out = backend.generate(queries, greedy)
    assert [g.error for g in out] == [None, None] and all(g.n_tokens == 5 for g in out)
    assert [g.text for g in out] == [backend.generate([q], greedy)[0].text for q in queries]


def test_ordinary_models_record_that_no_remote_code_ran():
    assert load_model("smollm2-135m").describe()["trust_remote_code"] is False


def test_cli_flags_parse_and_reach_the_loader_options():
    from unsafe_concepts.cli import build_parser
    from unsafe_concepts.models.registry import model_options

    parser = build_parser()
    args = parser.parse_args(["evaluate", "--model", "hf:x", "--task", "alignment", "--out", "o",
                              "--trust-remote-code", "--prompt-format", "llava-v1"])
    assert model_options(args) == {"trust_remote_code": True, "prompt_format": "llava-v1"}
    args = parser.parse_args(["evaluate", "--model", "hf:x", "--task", "alignment", "--out", "o"])
    assert model_options(args) == {"trust_remote_code": False, "prompt_format": None}


def test_openai_models_refuse_hf_only_options():
    with pytest.raises(UserError, match="hf: models only"):
        load_model("openai:m", base_url="http://127.0.0.1:9/v1", trust_remote_code=True)


def test_evaluate_passes_trust_and_prompt_format_and_records_them(remote_dir, tmp_path):
    from unsafe_concepts.cli import main

    out = tmp_path / "run"
    base = ["evaluate", "--model", f"hf:{remote_dir}", "--task", "alignment", "--data", "sample", "--limit", "1",
            "--judge", "none", "--greedy", "--max-new-tokens", "3", "--out", str(out)]
    assert main(base) == 2  # refused without the flag
    assert main([*base, "--trust-remote-code", "--prompt-format", "llava-v1"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["model_info"]["trust_remote_code"] is True
    assert record["model_info"]["prompt_format"] == "llava-v1"
    assert record["config"]["prompt_format"] == "llava-v1"
    # Another prompt format changes what the rows mean: resuming with it is refused.
    assert main([*base, "--trust-remote-code"]) == 2
