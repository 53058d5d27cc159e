"""Model specs -> backends: ``hf:<hub id or path>``, ``openai:<model>``, ``llamacpp:<gguf>``, and the
offline aliases."""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import ModelBackend
from unsafe_concepts.models.offline import OFFLINE_ALIASES

VALID_FORMS = (
    "hf:<hub id or local folder> (any transformers image-text-to-text model, or a text-only causal LM)",
    "openai:<model> (an OpenAI-compatible server; see --base-url and --api-key-env)",
    "llamacpp:<file.gguf, smollm2-135m or smollm2-135m-f32> (text-only GGUF models through llama-cpp-python, an optional extra)",
    *(f"{alias} (offline)" for alias in OFFLINE_ALIASES),
)


def load_model(
    spec: str,
    *,
    adapter: str | Path | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    dtype: str | None = None,
    device: str | None = None,
    concurrency: int = 64,
    text_only: bool = False,
    trust_remote_code: bool = False,
    prompt_format: str | None = None,
    timeout: float | None = None,
    device_map: str | None = None,
    batch_size: int | None = None,
) -> ModelBackend:
    """The backend a model spec names. Unknown specs raise a UserError listing the valid forms.

    ``trust_remote_code`` (off by default) lets an ``hf:`` model run the Python code its folder
    ships; ``prompt_format`` picks how ``hf:`` prompts are wrapped (``models.inputs.PROMPT_FORMATS``).
    ``timeout`` is the per-request timeout of ``openai:`` models in seconds (None: the backend's
    default); ``device_map`` (e.g. "auto") spreads an ``hf:`` model over several GPUs. ``batch_size``:
    queries per model call of ``hf:`` and ``llamacpp:`` models (None: the backend's own default)."""
    spec = (spec or "").strip()
    if spec.startswith("openai:"):
        if adapter:
            raise UserError("--adapter applies to hf: models only (an openai: model is served elsewhere)")
        if device_map:
            raise UserError("--device-map applies to hf: models only (an openai: server places its own model)")
        if trust_remote_code or prompt_format not in (None, "auto"):
            raise UserError("--trust-remote-code and --prompt-format apply to hf: models only "
                            "(an openai: server applies its own chat template)")
        model = spec[len("openai:"):]
        if not model:
            raise UserError("empty model name after 'openai:'")
        from unsafe_concepts.models.openai_compat import OpenAIBackend  # lazy: httpx only when needed

        # A server cannot tell us whether its model sees images (transformers serve silently drops
        # them for a text-only model), so the user says so with --text-only.
        extra = {"timeout": timeout} if timeout is not None else {}
        return OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                             supports_images=not text_only, **extra)
    if spec.startswith("llamacpp:"):
        if adapter or device_map or trust_remote_code or prompt_format not in (None, "auto") or dtype:
            raise UserError("--adapter, --device-map, --trust-remote-code, --prompt-format and --dtype apply to "
                            "hf: models only (a llamacpp: model is a GGUF file with its own chat template)")
        from unsafe_concepts.models.llamacpp import LlamaCppBackend  # lazy: llama-cpp-python only when needed

        return LlamaCppBackend(spec, **({"batch_size": batch_size} if batch_size else {}))
    if spec.startswith("hf:") or spec in OFFLINE_ALIASES:
        from unsafe_concepts.models.hf import HFBackend  # lazy: torch/transformers only when needed

        backend = HFBackend(spec, adapter=adapter, dtype=dtype, device=device,
                            trust_remote_code=trust_remote_code, prompt_format=prompt_format,
                            device_map=device_map, batch_size=batch_size)
        if text_only:
            backend.supports_images = False
        return backend
    raise UserError(f"unknown model spec {spec!r}; valid forms: " + "; ".join(VALID_FORMS))


def model_options(source) -> dict:
    """The hf: loading options held by parsed CLI flags or a config object (absent -> defaults):
    ``load_model(spec, **model_options(args))``."""
    return {"trust_remote_code": bool(getattr(source, "trust_remote_code", False)),
            "prompt_format": getattr(source, "prompt_format", None)}
