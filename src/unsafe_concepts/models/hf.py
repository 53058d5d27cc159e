"""Local models through transformers: any image-text-to-text VLM, or a text-only causal LM.

``load_hf_model`` is the one loader (the trainers use it too); ``HFBackend`` answers batches of
queries with ONE ``generate`` call per batch (left padding), which is what makes it several times
faster than asking one query at a time as the reference code does.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import (
    Generation,
    GenerationConfig,
    ModelBackend,
    OptionProbs,
    Query,
    check_options,
)

#: A model folder may carry this file to label itself (e.g. tiny-vlm: untrained vision tower);
#: its keys are copied into ``describe()`` so every run record shows the label.
LABEL_FILE = "unsafe_concepts_model.json"

DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}

try:  # a corrupt .safetensors file raises this, not an OSError
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors always comes with transformers
    _SafetensorError = OSError

# Prompts are rebuilt at most this often when they must be shortened to fit the context window.
_TRUNCATION_ROUNDS = 4


# --------------------------------------------------------------------------- loading


def resolve_source(spec_or_path: str | Path) -> str:
    """``hf:<id or path>``, an offline alias, a local folder or a hub id -> what ``from_pretrained`` takes."""
    from unsafe_concepts.models import offline

    spec = str(spec_or_path)
    if spec.startswith("hf:"):
        spec = spec[3:]
        if not spec:
            raise UserError("empty model after 'hf:': give a hub id (org/name) or a local folder")
    if spec == offline.SMOLLM2:
        return str(offline.smollm2_dir())
    if spec == offline.TINY_VLM:
        return str(offline.tiny_vlm_dir())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"model folder {path} has no config.json (expected a transformers model folder)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model folder not found: {spec}")
    return spec  # a hub id: from_pretrained downloads it (or finds it in the HF cache)


def pick_device(device: str | None = None) -> "torch.device":
    """The override if given (checked), else cuda > mps > cpu."""
    import torch

    if device:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise UserError(f"invalid --device {device!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"--device {device}: MPS is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | None, device: "torch.device") -> "torch.dtype":
    """The override if given, else bf16 on CUDA that supports it, fp16 on other CUDA, fp32 elsewhere.

    MPS stays fp32 by default: half precision there is uneven across ops; pass --dtype float16 to try."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype and dtype != "auto":
        name = DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
        if name is None:
            raise UserError(f"invalid --dtype {dtype!r}: choose float32, bfloat16 or float16")
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _is_vlm_config(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def load_hf_model(
    spec_or_path: str | Path,
    *,
    dtype: str | None = None,
    device: str | None = None,
    adapter: str | Path | None = None,
    adapter_trainable: bool = False,
    trust_remote_code: bool = False,
    prompt_format: str | None = None,
    device_map: str | None = None,
):
    """Load a model and its processor: ``(model, processor)``, model in eval mode on the chosen device.

    ``device_map`` (e.g. "auto") spreads one model over every visible GPU (and CPU memory if needed)
    through accelerate, for models too large for one device; it replaces ``device``.

    VLMs (a config known to ``AutoModelForImageTextToText`` whose folder has an image processor)
    come with an ``AutoProcessor``; text-only LMs with an ``AutoTokenizer``. The tokenizer pads on
    the left (generation). ``adapter`` loads a PEFT adapter on top (frozen unless
    ``adapter_trainable``). ``trust_remote_code`` runs the Python code a model folder ships
    (``auto_map`` in its config: e.g. CogVLM, InternLM-XComposer2); without it such a model is
    refused with a message that says so. ``prompt_format`` (see ``models.inputs.PROMPT_FORMATS``)
    is recorded on the processor, so every later encoding uses it."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    source = resolve_source(spec_or_path)
    if device_map and device:
        raise UserError("--device-map and --device exclude each other: --device-map places the model itself")
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    placement = {"device_map": device_map} if device_map else {}
    # Passed explicitly even when False: transformers would otherwise ask on the terminal.
    remote = {"trust_remote_code": bool(trust_remote_code)}
    try:
        config = AutoConfig.from_pretrained(source, **remote)
    except (OSError, ValueError) as e:
        raise UserError(_load_error(spec_or_path, e, trust_remote_code)) from None

    processor = None
    if _is_vlm_config(config) or _remote_vlm(config, trust_remote_code):
        try:
            processor = AutoProcessor.from_pretrained(source, **remote)
        except (OSError, ValueError, TypeError, ImportError) as e:
            raise UserError(f"cannot load the processor of {spec_or_path!r}: {e}") from None
        if getattr(processor, "image_processor", None) is None:
            processor = None  # a VLM architecture shipped without an image processor: use it as text-only
    from unsafe_concepts.models import inputs

    inputs.check_prompt_format(prompt_format, vlm=processor is not None)  # before the weights are read
    try:
        if processor is not None:
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype, **remote, **placement)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **remote, **placement)
            processor = AutoTokenizer.from_pretrained(source, **remote)
    except (OSError, ValueError, _SafetensorError) as e:
        raise UserError(_load_error(spec_or_path, e, trust_remote_code)) from None

    prepare_processor(processor, prompt_format=prompt_format, model_type=config.model_type)
    if not device_map:
        model.to(dev)
    model.eval()
    if adapter:
        model = _load_adapter(model, adapter, trainable=adapter_trainable)
    return model, processor


def prepare_processor(processor, *, prompt_format: str | None = None, model_type: str | None = None) -> None:
    """Left padding (generation continues from the right end of every row), a pad token, and the
    prompt format recorded for the shared input builder (``models/inputs.py``)."""
    from unsafe_concepts.models import inputs

    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    inputs.configure(processor, prompt_format=prompt_format, model_type=model_type)


def _remote_vlm(config, trust_remote_code: bool) -> bool:
    """A remote-code model that declares an image-text-to-text class in its ``auto_map``."""
    return trust_remote_code and "AutoModelForImageTextToText" in (getattr(config, "auto_map", None) or {})


def _load_error(spec, error: Exception, trust_remote_code: bool) -> str:
    text = str(error)
    if not trust_remote_code and "trust_remote_code" in text:
        return (f"model {spec!r} ships its own Python code (auto_map in its config), which is not run by default. "
                "If you trust its source, pass --trust-remote-code (recorded in run.json)")
    return f"cannot load model {spec!r}: {text}"


def _load_adapter(model, adapter: str | Path, *, trainable: bool):
    from peft import PeftModel

    path = Path(adapter).expanduser()
    if path.exists() and not (path / "adapter_config.json").exists():
        raise UserError(f"adapter folder {path} has no adapter_config.json (expected a PEFT adapter)")
    config_file = path / "adapter_config.json"
    if config_file.is_file():
        try:
            json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"adapter {adapter!r}: adapter_config.json is not valid JSON ({e})") from None
    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError, _SafetensorError) as e:
        what = "its weights file is corrupt: " if isinstance(e, _SafetensorError) else ""
        raise UserError(f"cannot load adapter {adapter!r} on this model: {what}{e}") from None


# --------------------------------------------------------------------------- backend


class HFBackend(ModelBackend):
    """A transformers model answering queries in batches; errors stay with their own query."""

    def __init__(
        self,
        spec: str,
        *,
        adapter: str | Path | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        merge_adapter: bool = True,
        trust_remote_code: bool = False,
        prompt_format: str | None = None,
        device_map: str | None = None,
    ):
        self.spec = spec
        self.device_map = device_map
        self.adapter = str(adapter) if adapter else None
        self.source = resolve_source(spec)
        self.trust_remote_code = bool(trust_remote_code)
        self.model, self.processor = load_hf_model(spec, dtype=dtype, device=device, adapter=adapter,
                                                   trust_remote_code=trust_remote_code, prompt_format=prompt_format,
                                                   device_map=device_map)
        if adapter and merge_adapter:
            # Inference only: folding the LoRA weights in makes generation as fast as the base model.
            self.model = self.model.merge_and_unload()
        self._attach(batch_size)

    @classmethod
    def from_loaded(cls, model, processor, *, spec: str, batch_size: int | None = None,
                    prompt_format: str | None = None) -> "HFBackend":
        """A backend around a model already in memory (e.g. built from a config by
        ``benchmarks/gpu_check.py``); the processor is prepared as ``load_hf_model`` does."""
        self = cls.__new__(cls)
        self.spec, self.source, self.adapter, self.device_map, self.trust_remote_code = spec, spec, None, None, False
        prepare_processor(processor, prompt_format=prompt_format, model_type=model.config.model_type)
        self.model, self.processor = model.eval(), processor
        self._attach(batch_size)
        return self

    def _attach(self, batch_size: int | None) -> None:
        """What the backend derives from its model and processor."""
        self.batch_size = (max(1, int(batch_size)) if batch_size
                           else default_batch_size(self.model.config, self.model.dtype, self.model.device))
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.supports_images = self.processor is not self.tokenizer
        self.labels = _read_labels(self.source)
        self.max_positions = _max_positions(self.model.config)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self._placeholders = self._multimodal_placeholders()
        import torch

        from unsafe_concepts.models import cpu_decode

        # float32 on a CPU: batched decoding through oneDNN prepacked weights and a KV cache filled in
        # place (models/cpu_decode.py; the same tokens in tests, 1.3-1.7x faster per step at 8-32 rows)
        self.cpu_decoding = (str(self.model.device).startswith("cpu") and self.model.dtype == torch.float32
                             and cpu_decode.onednn_usable() and not self.device_map)

    # ---- public

    def describe(self) -> dict:
        from unsafe_concepts.models import inputs

        cfg = self.model.config
        out = {
            "backend": "hf",
            "spec": self.spec,
            "source": self.source,
            "adapter": self.adapter,
            "architecture": (cfg.architectures or [type(self.model).__name__])[0],
            "model_type": cfg.model_type,
            "supports_images": self.supports_images,
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "device": str(self.model.device),
            "revision": getattr(cfg, "_commit_hash", None),
            "batch_size": self.batch_size,
            "cpu_decoding": self.cpu_decoding,
            "untrained_vision": False,
            "trust_remote_code": self.trust_remote_code,
            "prompt_format": inputs.prompt_format(self.processor),
        }
        if self.device_map:
            out["device_map"] = self.device_map
            out["devices"] = sorted({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()}) or [
                str(self.model.device)]
        out.update(self.labels)
        return out

    def close(self) -> None:
        """Drop the model (frees its memory once no one else holds it)."""
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, queries: list[Query], config: GenerationConfig) -> list[Generation]:
        if config.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {config.max_new_tokens}")
        if self.max_positions is not None and config.max_new_tokens >= self.max_positions:
            raise UserError(
                f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt: model {self.spec} "
                f"takes at most {self.max_positions} positions")
        results: list[Generation | None] = [None] * len(queries)
        for start in range(0, len(queries), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(queries))))
            # Image and text-only queries cannot share one processor call; a mixed chunk becomes two.
            with_image = [i for i in chunk if queries[i].image is not None]
            text_only = [i for i in chunk if queries[i].image is None]
            for group in (with_image, text_only):
                if group:
                    for i, gen in zip(group, self._generate_group([queries[i] for i in group], config)):
                        results[i] = gen
        return results  # type: ignore[return-value]

    # ---- one batch

    def _generate_group(self, queries: list[Query], config: GenerationConfig) -> list[Generation]:
        """One generate call for the whole group; if it fails, each query alone (so only bad ones fail)."""
        out: list[Generation | None] = [None] * len(queries)
        items: list[tuple[int, str, Any]] = []  # (position, prompt, image)
        for pos, q in enumerate(queries):
            try:
                items.append((pos, self._check_prompt(q), self._load_image(q)))
            except UserError as e:
                out[pos] = Generation(text=None, error=str(e))
        if items:
            try:
                for pos, gen in zip([p for p, _, _ in items], self._run_batch(items, queries, config)):
                    out[pos] = gen
            except Exception as batch_error:  # noqa: BLE001 - isolate the failing item below
                if len(items) == 1:
                    out[items[0][0]] = Generation(text=None, error=_describe_error(batch_error))
                else:
                    for item in items:
                        try:
                            out[item[0]] = self._run_batch([item], queries, config)[0]
                        except Exception as e:  # noqa: BLE001 - the error belongs to this item only
                            out[item[0]] = Generation(text=None, error=_describe_error(e))
        return out  # type: ignore[return-value]

    def _run_batch(self, items, queries: list[Query], config: GenerationConfig) -> list[Generation]:
        import torch

        t0 = time.perf_counter()
        results: dict[int, Generation] = {}
        inputs, kept = self._encode_fitting(items, config, results)
        if kept:
            seed = _batch_seed(config.seed, [queries[p].id for p, _, _ in kept])
            torch.manual_seed(seed)
            with torch.inference_mode(), self._decoding(len(kept)) as extra:
                output = self.model.generate(**inputs, generation_config=self._gen_config(config),
                                             **extra, **self._progress_kwargs(len(kept)))
            new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
            per_item = (time.perf_counter() - t0) / len(items)
            for (pos, _, _), ids in zip(kept, new_tokens):
                n = _length_until_eos(ids, self.eos_ids)
                text = self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                results[pos] = Generation(text=text, latency_s=per_item, n_tokens=n)
        per_item = (time.perf_counter() - t0) / len(items)
        for pos in results:
            results[pos].latency_s = per_item
        return [results[pos] for pos, _, _ in items]

    @contextlib.contextmanager
    def _decoding(self, rows: int):
        """generate() keyword arguments for a batch of ``rows``: with ``cpu_decoding``, a KV cache
        filled in place, and (2 rows or more: one row is faster unpacked) prepacked linear layers."""
        if not self.cpu_decoding:
            yield {}
            return
        from unsafe_concepts.models import cpu_decode

        with contextlib.ExitStack() as stack:
            if rows >= 2:  # packing costs ~0.3 s and a copy of the weights: only where it pays
                stack.enter_context(cpu_decode.packed_linears(self.model))
            yield {"cache": cpu_decode.PreallocatedCache(self.model.config)}

    def _progress_kwargs(self, batch: int) -> dict:
        """A stopping criterion that never stops: it only reports each answer as it reaches its end, so a
        progress bar moves per query inside a batch. None when nobody listens."""
        if self.progress is None:
            return {}
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        backend, eos = self, torch.tensor(sorted(self.eos_ids) or [-1])

        class ReportFinished(StoppingCriteria):
            def __init__(self):
                self.finished = torch.zeros(batch, dtype=torch.bool)

            def __call__(self, input_ids, scores, **kwargs):
                now = torch.isin(input_ids[:, -1].cpu(), eos) & ~self.finished
                if now.any():
                    self.finished |= now
                    backend._report_progress(int(now.sum()))
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return {"stopping_criteria": StoppingCriteriaList([ReportFinished()])}

    def _encode_fitting(self, items, config: GenerationConfig, failed: dict[int, Generation]):
        """Encode the batch; shorten prompts (from the start) that leave no room for the answer.

        The chat template and the image tokens stay intact: only the user's text is cut, keeping
        its end (the question). An item that cannot fit even so fails alone."""
        items = list(items)
        cap = None if self.max_positions is None else self.max_positions - config.max_new_tokens
        for _ in range(_TRUNCATION_ROUNDS):
            inputs = self._encode(items)
            if cap is None:
                return inputs, items
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            over = {k: n - cap for k, n in enumerate(lengths) if n > cap}
            if not over:
                return inputs, items
            for k, excess in over.items():
                pos, prompt, image = items[k]
                items[k] = (pos, self._cut_start(prompt, excess), image)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        fitting = []
        for item, n in zip(items, lengths):
            if n > cap:
                failed[item[0]] = Generation(text=None, error=(
                    f"prompt too long: {n} tokens even after truncating its text; the model takes "
                    f"{self.max_positions} positions including {config.max_new_tokens} new tokens"))
            else:
                fitting.append(item)
        return (self._encode(fitting) if fitting else None), fitting

    def _cut_start(self, prompt: str, excess: int) -> str:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        keep = max(0, len(ids) - excess - 2)  # a small margin: re-tokenising the cut can merge tokens
        return self.tokenizer.decode(ids[len(ids) - keep:], skip_special_tokens=False) if keep else ""

    def _encode(self, items):
        """The model inputs of ``(pos, prompt, image)`` items: the shared builder, as the trainers use it."""
        from unsafe_concepts.models import inputs

        images = [image for _, _, image in items] if self.supports_images and items[0][2] is not None else None
        return inputs.encode(self.processor, [prompt for _, prompt, _ in items], images).to(self.model.device)

    def encode_queries(self, queries: list[Query]):
        """The exact model inputs (token ids, pixel values...) this backend builds for ``queries``
        (all with, or all without, an image); used to check that training encodes the same."""
        return self._encode([(k, self._check_prompt(q), self._load_image(q)) for k, q in enumerate(queries)])

    def _gen_config(self, config: GenerationConfig):
        gen = self.model.generation_config.__class__.from_dict(self.model.generation_config.to_dict())
        sample = config.do_sample and config.temperature > 0
        gen.max_new_tokens = config.max_new_tokens
        gen.do_sample = sample
        # Sampling keeps the model's own top_k (as the reference code's HF generate did).
        gen.temperature = config.temperature if sample else None
        gen.top_p = config.top_p if sample else None
        if not sample:
            gen.top_k = None
        gen.pad_token_id = self.tokenizer.pad_token_id
        gen.eos_token_id = sorted(self.eos_ids) or None
        gen.max_length = None
        return gen

    # ---- next-token verdicts: one forward pass per query, no generation (see models/scoring.py)

    supports_logprobs = True

    def option_probs(self, queries: list[Query], options: Sequence[str]) -> list[OptionProbs]:
        """The next-token mass of each option after each query, in batches of ``batch_size``."""
        from unsafe_concepts.models import scoring

        options = check_options(options)
        cache = self.__dict__.setdefault("_option_ids", {})
        if options not in cache:
            try:
                cache[options] = scoring.option_token_ids(self.tokenizer, options)
            except ValueError as e:
                raise UserError(f"model {self.spec}: {e}") from None
        token_ids = cache[options]
        results: list[OptionProbs | None] = [None] * len(queries)
        for start in range(0, len(queries), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(queries))))
            for group in ([i for i in chunk if queries[i].image is not None],
                          [i for i in chunk if queries[i].image is None]):
                if group:
                    for i, scored in zip(group, self._score_group([queries[i] for i in group], token_ids)):
                        results[i] = scored
        return results  # type: ignore[return-value]

    def _score_group(self, queries: list[Query], token_ids) -> list[OptionProbs]:
        """As ``_generate_group``: the whole group at once; if that fails, each query alone."""
        out: list[OptionProbs | None] = [None] * len(queries)
        items: list[tuple[int, str, Any]] = []
        for pos, q in enumerate(queries):
            try:
                items.append((pos, self._check_prompt(q), self._load_image(q)))
            except UserError as e:
                out[pos] = OptionProbs(probs=None, error=str(e))
        batches = [items] if items else []
        while batches:
            batch = batches.pop()
            try:
                for pos, scored in zip([p for p, _, _ in batch], self._score_batch(batch, token_ids)):
                    out[pos] = scored
            except Exception as e:  # noqa: BLE001 - isolate the failing item
                if len(batch) == 1:
                    out[batch[0][0]] = OptionProbs(probs=None, error=_describe_error(e))
                else:
                    batches.extend([item] for item in batch)
        return out  # type: ignore[return-value]

    def _score_batch(self, items, token_ids) -> list[OptionProbs]:
        import torch

        from unsafe_concepts.models import scoring

        t0 = time.perf_counter()
        one_step = GenerationConfig(max_new_tokens=1, do_sample=False)
        failed: dict[int, Generation] = {}
        inputs, kept = self._encode_fitting(items, one_step, failed)
        results = {pos: OptionProbs(probs=None, error=g.error) for pos, g in failed.items()}
        if kept:
            # generate() with one new token is exactly one forward pass, and it prepares the inputs
            # (positions under left padding, image features, M-RoPE) as each architecture needs;
            # output_logits gives the raw logits, before any logits processor.
            gen = self._gen_config(one_step)
            gen.output_logits, gen.return_dict_in_generate = True, True
            with torch.inference_mode():
                out = self.model.generate(**inputs, generation_config=gen)
            log_probs = torch.log_softmax(out.logits[0].float(), dim=-1)
            for (pos, _, _), row in zip(kept, log_probs):
                results[pos] = scoring.from_log_probs(row, token_ids)
        per_item = (time.perf_counter() - t0) / len(items)
        for scored in results.values():
            scored.latency_s = per_item
        return [results[pos] for pos, _, _ in items]

    # ---- per-query checks

    def _check_prompt(self, q: Query) -> str:
        if not isinstance(q.prompt, str) or not q.prompt.strip():
            raise UserError(f"query {q.id}: empty prompt")
        for token in self._placeholders:
            if token in q.prompt:
                raise UserError(f"query {q.id}: the prompt contains the model's placeholder token {token!r}")
        return q.prompt

    def _load_image(self, q: Query):
        if q.image is None:
            return None
        if not self.supports_images:
            raise UserError(
                f"query {q.id}: model {self.spec} is text-only and cannot take an image "
                "(ask text-only tasks, or use a vision-language model)")
        from PIL import Image

        from unsafe_concepts.data.records import load_rgb

        if isinstance(q.image, Image.Image):
            try:
                return q.image.convert("RGB")
            except (OSError, ValueError) as e:
                raise UserError(f"query {q.id}: unreadable image: {e}") from None
        return load_rgb(q.image, f"query {q.id}")

    def _multimodal_placeholders(self) -> list[str]:
        if not self.supports_images:
            return []
        tokens = getattr(self.processor, "all_special_multimodal_tokens", None) or []
        image_token = getattr(self.processor, "image_token", None)
        return sorted({t for t in [*tokens, image_token] if isinstance(t, str) and t})


# --------------------------------------------------------------------------- helpers


def default_batch_size(config, dtype, device, *, kv_budget: int = 2 << 30, positions: int = 1024,
                       cpu_max: int = 32) -> int:
    """Queries per ``generate()`` call when none is given. On a GPU: 16. On a CPU: as many as fit
    their KV cache for ``positions`` tokens each in ``kv_budget`` bytes, between 1 and ``cpu_max``.

    Why more rows on a CPU: a decoding step there is bound by reading the weights once per step,
    whatever the number of rows, so rows come almost free up to a few dozen (SmolLM2-135M, 64 greedy
    tokens, 2 cores, benchmarks/throughput.py: 6.74x one query at a time with 16 rows, 11.83x with
    32, the same answers). The cap by KV cache keeps a 7B model on a CPU (about 1 GiB per row at
    1,024 positions in float32) at 2 rows."""
    if not str(device).startswith("cpu"):
        return 16
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(cfg, "num_attention_heads", None) or 1
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", 0) // heads)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    layers = getattr(cfg, "num_hidden_layers", None)
    if not (layers and head_dim):
        return 8
    per_row = positions * layers * 2 * kv_heads * head_dim * dtype.itemsize
    return max(1, min(cpu_max, kv_budget // per_row))


def _read_labels(source: str) -> dict:
    path = Path(source) / LABEL_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def _max_positions(config) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, config):
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    for value in eos if isinstance(eos, (list, tuple)) else [eos]:
        if value is not None:
            ids.add(int(value))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _length_until_eos(ids: list[int], eos_ids: set[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence (padding after it excluded)."""
    for k, token in enumerate(ids):
        if token in eos_ids:
            return k + 1
    return len(ids)


def _batch_seed(seed: int, ids: list[str]) -> int:
    """A seed per batch from the run seed and the query ids: reruns (and resumes) repeat exactly,
    while different batches do not reuse one random stream."""
    digest = hashlib.sha256(f"{seed}|{'|'.join(ids)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _describe_error(e: Exception) -> str:
    return str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
