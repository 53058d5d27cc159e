"""Model specs, dtype and device rules (no model is loaded here except where the spec is wrong)."""
import pytest
import torch

from unsafe_concepts.errors import UserError
from unsafe_concepts.models.hf import pick_device, pick_dtype, resolve_source
from unsafe_concepts.models.offline import smollm2_dir
from unsafe_concepts.models.registry import load_model


def test_unknown_spec_lists_the_valid_forms():
    with pytest.raises(UserError) as e:
        load_model("llava-7b")
    message = str(e.value)
    for form in ("hf:", "openai:", "smollm2-135m", "tiny-vlm"):
        assert form in message


@pytest.mark.parametrize("spec", ["", "hf:", "openai:"])
def test_empty_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        load_model(spec)


def test_missing_local_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(f"hf:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_model(f"hf:{tmp_path / 'empty'}")


def test_sources_resolve_aliases_paths_and_hub_ids():
    assert resolve_source("smollm2-135m") == str(smollm2_dir())
    assert resolve_source(f"hf:{smollm2_dir()}") == str(smollm2_dir())
    assert resolve_source("hf:llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"  # left to from_pretrained


def test_openai_specs_go_to_the_openai_backend_lazily():
    from unsafe_concepts.models.openai_compat import OpenAIBackend

    backend = load_model("openai:some-model", base_url="http://127.0.0.1:9/v1", concurrency=3)
    assert isinstance(backend, OpenAIBackend)
    assert backend.describe()["model"] == "some-model" and backend.describe()["concurrency"] == 3
    with pytest.raises(UserError, match="hf: models only"):
        load_model("openai:some-model", base_url="http://127.0.0.1:9/v1", adapter="x")


def test_dtype_rules_and_overrides():
    cpu = torch.device("cpu")
    assert pick_dtype(None, cpu) == torch.float32
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bf16", cpu) == torch.bfloat16
    assert pick_dtype("float16", cpu) == torch.float16
    assert pick_dtype(torch.bfloat16, cpu) == torch.bfloat16 and pick_dtype("torch.float32", cpu) == torch.float32
    with pytest.raises(UserError, match="dtype"):
        pick_dtype("int3", cpu)


def test_device_rules_and_overrides():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device(None).type == expected
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="device"):
        pick_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            pick_device("cuda:1")
