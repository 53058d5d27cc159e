"""Corrupt model and adapter files give one clear line (a UserError), and device_map loading works.

Each corrupt file is made from the real SmolLM2 folder (other files linked, not copied)."""
from __future__ import annotations

import os
import shutil

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.offline import smollm2_dir
from unsafe_concepts.models.registry import load_model

GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False)


def model_copy(tmp_path, replace: dict[str, bytes]):
    """The SmolLM2 folder with some files replaced (the rest are symlinks to the real ones)."""
    src, dst = smollm2_dir(), tmp_path / "model"
    dst.mkdir()
    for f in src.iterdir():
        if f.name in replace:
            (dst / f.name).write_bytes(replace[f.name])
        else:
            os.symlink(f, dst / f.name)
    return dst


def one_line_error(fn) -> str:
    with pytest.raises(UserError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_corrupt_config_json_is_one_clear_line(tmp_path):
    folder = model_copy(tmp_path, {"config.json": b'{"model_type": "llama", "hidd'})
    message = one_line_error(lambda: load_model(f"hf:{folder}"))
    assert "config.json" in message and "not a valid JSON" in message


def test_corrupt_weights_are_one_clear_line(tmp_path):
    folder = model_copy(tmp_path, {"model.safetensors": b"\x00\x01 not a safetensors file"})
    message = one_line_error(lambda: load_model(f"hf:{folder}"))
    assert "cannot load model" in message


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from unsafe_concepts.models.hf import load_hf_model

    model, _ = load_hf_model("smollm2-135m")
    out = tmp_path_factory.mktemp("adapter") / "ok"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(out)
    return out


@pytest.mark.parametrize("corrupt, expected", [("adapter_config.json", "not valid JSON"),
                                               ("adapter_model.safetensors", "weights file is corrupt")])
def test_corrupt_adapter_is_one_clear_line(tmp_path, adapter_dir, corrupt, expected):
    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir, bad)
    (bad / corrupt).write_bytes(b"\x00garbage{")
    message = one_line_error(lambda: load_model("smollm2-135m", adapter=bad))
    assert expected in message and "adapter" in message


def test_device_map_auto_loads_and_answers_like_a_single_device():
    spread = load_model("smollm2-135m", device_map="auto")
    info = spread.describe()
    assert info["device_map"] == "auto" and info["devices"]
    query = [Query("a", "Is fire hot?")]
    assert spread.generate(query, GREEDY)[0].text == load_model("smollm2-135m").generate(query, GREEDY)[0].text


def test_device_map_conflicts_are_refused():
    assert "exclude each other" in one_line_error(lambda: load_model("smollm2-135m", device_map="auto", device="cpu"))
    assert "hf: models only" in one_line_error(
        lambda: load_model("openai:m", base_url="http://127.0.0.1:9/v1", device_map="auto"))
