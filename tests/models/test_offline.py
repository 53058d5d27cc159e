"""The offline tiny-vlm: real SmolLM2 inside a LLaVA, random vision, and labelled as such."""
import time

import pytest
from PIL import Image

from unsafe_concepts import prompts
from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.offline import image_chat_template, smollm2_dir, tiny_vlm_dir
from unsafe_concepts.models.registry import load_model


@pytest.fixture(scope="module")
def tiny_vlm():
    return load_model("tiny-vlm")


def test_tiny_vlm_is_labelled_untrained(tiny_vlm):
    d = tiny_vlm.describe()
    assert d["untrained_vision"] is True and "random" in d["note"]
    assert d["architecture"] == "LlavaForConditionalGeneration" and tiny_vlm.supports_images


def test_tiny_vlm_answers_image_and_text_queries(tiny_vlm):
    queries = [Query("img", prompts.alignment_prompt(0), Image.new("RGB", (300, 200), "white")),
               Query("txt", prompts.text_only_prompt(0, "Swastika"))]
    out = tiny_vlm.generate(queries, GenerationConfig(max_new_tokens=6, do_sample=False))
    assert [g.error for g in out] == [None, None] and all(g.text and g.n_tokens == 6 for g in out)


def test_tiny_vlm_language_model_is_the_real_smollm2(tiny_vlm):
    """Text-only queries get SmolLM2's own answers: the weights and the template were carried over."""
    smol = load_model("smollm2-135m")
    query = [Query("txt", prompts.text_only_prompt(1, "Torture"))]
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False)
    assert tiny_vlm.generate(query, cfg)[0].text == smol.generate(query, cfg)[0].text


def test_offline_folders_are_built_once():
    t0 = time.perf_counter()
    assert tiny_vlm_dir() == tiny_vlm_dir() and smollm2_dir().is_dir()
    assert time.perf_counter() - t0 < 1.0  # cached: no rebuild


def test_image_chat_template_matches_smollm2_for_text():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    messages = [{"role": "user", "content": "Is it safe?"}]
    own = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = tok.apply_chat_template(messages, chat_template=image_chat_template(), tokenize=False,
                                   add_generation_prompt=True)
    assert own == ours
    listed = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it safe?"}]}]
    text = tok.apply_chat_template(listed, chat_template=image_chat_template(), tokenize=False,
                                   add_generation_prompt=True)
    assert text == own.replace("user\nIs it safe?", "user\n<image>\nIs it safe?")


def test_f32_gguf_holds_the_weights_the_hf_path_runs():
    """The float32 GGUF for llama.cpp (``llamacpp:smollm2-135m-f32``), read back by transformers' own
    GGUF loader, gives exactly the weights of the ``smollm2-135m`` folder (both dequantise the same
    4-bit file; transformers also undoes llama.cpp's Q/K row order, so this checks the layout too)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from unsafe_concepts.models.offline import smollm2_f32_gguf

    path = smollm2_f32_gguf()
    reader = gguf.GGUFReader(path)
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert reader.get_field(gguf.Keys.General.FILE_TYPE).contents() == int(gguf.LlamaFileType.ALL_F32)
    assert "tokenizer.chat_template" in reader.fields
    mtime = path.stat().st_mtime_ns
    assert smollm2_f32_gguf() == path and path.stat().st_mtime_ns == mtime  # built once

    from_f32 = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    plain = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32).state_dict()
    assert from_f32.keys() == plain.keys()
    assert all(torch.equal(from_f32[k], plain[k]) for k in plain)
