"""Plumbing every trainer shares: the config base, the LoRA policy, prompt encoding, logging, saving.

- :class:`TrainConfig`: one dataclass per trainer derives from it (TRL style); defaults follow the
  protocol (LoRA r=128, alpha=256, dropout=0.05; 5 warm-up steps; cosine schedule).
  :func:`config_from_file` merges a JSON/YAML file over the defaults and names unknown keys.
- :func:`load_policy`: the model with LoRA on the *language model's* linear layers only; the vision
  tower and the multimodal projector stay frozen (the protocol's setup).
- :func:`encode_prompts`: chat-template encoding of (prompt, image) for VLM processors and for plain
  text tokenizers, left-padded for generation. Text-only items given to a VLM get the protocol's
  blank white 1000x1000 image, exactly as the text modality is evaluated.
- :class:`TrainLogger` (JSONL, also as a ``transformers`` callback) and :func:`save_adapter` (a
  standard PEFT adapter folder: ``unsafe-concepts evaluate --model SPEC --adapter DIR`` loads it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from unsafe_concepts.errors import UserError

LOG_FILE = "log.jsonl"
# Module names that belong to the vision side of a VLM (never adapted) or to the output head.
_FROZEN_PARTS = ("vision_tower", "vision_model", "visual", "multi_modal_projector", "mm_projector",
                 "image_newline", "vision_resampler", "lm_head", "embed_tokens")


# ---------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Settings common to every trainer. Subclasses add their own fields (see ``train/ppo.py``)."""

    model: str = "smollm2-135m"  # hf:<id or path> or an offline alias (smollm2-135m, tiny-vlm)
    data: str = "sample"  # dataset spec (folder, sample, hf) or "heldout-text"
    safe_data: str | None = None
    modality: str = "image"  # "image" or "text"
    out_dir: str = "train-output"
    seed: int = 0  # training randomness (sampling, dropout, shuffling)
    data_seed: int = 2024  # the protocol's split / prompt-pairing seed
    # LoRA (protocol: r=128, alpha=256, dropout=0.05; smaller is fine on CPU)
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    # optimisation
    learning_rate: float = 3e-5
    epochs: int = 4
    batch_size: int = 32  # the global batch: examples per optimiser step, over every process
    # What is in memory at once: sequences per forward/backward pass on one process. The global batch
    # is reached by gradient accumulation (batch_size = micro_batch_size x accumulation x processes),
    # so the loss and the step are the same whatever the micro-batch. None: ``CPU_MICRO_BATCH`` of the
    # trainer on a CPU, 4x that on a GPU (capped at the batch).
    micro_batch_size: int | None = None
    grad_accum_steps: int | None = None  # None: derived from batch_size / (micro_batch_size x processes)
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    warmup_steps: int = 5
    lr_schedule: str = "cosine"  # "cosine" or "constant" (after warm-up)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_prompt_len: int = 128  # text-only models: prompts are left-truncated to this many tokens
    # bookkeeping
    logging_steps: int = 1
    save_steps: int = 50  # checkpoint every N steps (resumable)
    dtype: str | None = None  # float32 / bfloat16 / float16; default: float32 on CPU
    device: str | None = None
    trust_remote_code: bool = False  # hf: models that ship their own code (models/hf.py)
    prompt_format: str | None = None  # None/"auto": the chat template; "llava-v1" (models/inputs.py)
    # Where training curves go besides log.jsonl, as transformers' ``report_to``: "none" (default),
    # "tensorboard", "wandb", or both comma-separated. Needs the [tracking] extra.
    report_to: str = "none"
    # CPU memory (glibc): while training passes run (not generation), every buffer of at least this
    # many bytes gets a mapping of its own, handed back to the OS when freed (see
    # :func:`large_buffers_returned`). None or 0: leave the allocator as it is (SFT, DPO: under 3 GB
    # without it); PPO and GRPO: 1 MiB.
    cpu_mmap_threshold: int | None = None

    def validate(self) -> None:
        if self.modality not in ("image", "text"):
            raise UserError(f"modality must be 'image' or 'text', got {self.modality!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise UserError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        for name in ("lora_r", "lora_alpha", "epochs", "batch_size", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpu_mmap_threshold is not None and not 0 <= self.cpu_mmap_threshold <= 32 << 20:
            raise UserError(f"cpu_mmap_threshold must be 0 (off) to {32 << 20} bytes, got {self.cpu_mmap_threshold}")
        for name in ("micro_batch_size", "grad_accum_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.learning_rate <= 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}")
        trackers(self.report_to)  # unknown names and missing packages are refused before anything runs

    def to_dict(self) -> dict:
        return asdict(self)

    # sequences per forward/backward on a CPU when micro_batch_size is None (trainers override)
    CPU_MICRO_BATCH = 4


def batch_plan(config: TrainConfig, *, world_size: int = 1, device: str | None = None,
               batch: int | None = None) -> tuple[int, int]:
    """(micro-batch per process, accumulation steps) that make up the global batch ``batch``
    (default ``config.batch_size``) on ``world_size`` processes; a clear error when they cannot."""
    batch = batch or config.batch_size
    if batch % world_size:
        raise UserError(f"the global batch ({batch}) must be a multiple of the number of processes ({world_size})")
    per_process = batch // world_size
    if config.grad_accum_steps:
        if per_process % config.grad_accum_steps:
            raise UserError(f"batch {batch} over {world_size} process(es) is {per_process} per process, "
                            f"not a multiple of grad_accum_steps={config.grad_accum_steps}")
        return per_process // config.grad_accum_steps, config.grad_accum_steps
    micro = config.micro_batch_size
    if micro is None:
        on_gpu = (device or default_device()).startswith("cuda")
        micro = type(config).CPU_MICRO_BATCH * (4 if on_gpu else 1)
    micro = min(micro, per_process)
    while per_process % micro:  # the largest micro-batch <= the asked one that divides the batch
        micro -= 1
    return micro, per_process // micro


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers (glibc's malloc.h)
_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20  # the largest threshold glibc itself moves to (64-bit)


@functools.lru_cache(maxsize=None)
def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """Hand glibc's free heap pages back to the OS now (``malloc_trim(0)``); elsewhere a no-op."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class OptimizerStateOnDisk:
    """The optimiser's CPU state tensors (AdamW's moments) wait in the safetensors file ``path`` from
    :meth:`park` to :meth:`restore`, their memory freed meanwhile; :meth:`restore` reads them back
    exactly, into one flat buffer (views), and removes the file. Both are no-ops when there is
    nothing to do (disabled, no state yet, already parked or already back).

    Why: only the optimiser step reads them. PPO parks them from the start of a rollout until its
    update's optimiser step: sampling (KV cache) and the value and policy passes (activations) then
    have their room (SmolLM2 at LoRA r=128, two adapters: 596 MiB). Writing and reading them back
    takes about 0.6 s here. The file is read straight into the buffer: ``safe_open`` would map it,
    and its mapped pages count as the process's memory until it is closed (measured: +450 MiB at
    the restore)."""

    def __init__(self, optimizer, path: Path, *, enabled: bool = True):
        self.optimizer, self.path, self.enabled = optimizer, Path(path), enabled
        self._parked: dict | None = None  # key -> (tensor, shape, dtype) while on disk

    @property
    def parked(self) -> bool:
        return self._parked is not None

    def park(self) -> None:
        import torch

        if not self.enabled or self._parked is not None:
            return
        tensors = {f"{i}.{key}": value for i, state in enumerate(self.optimizer.state.values())
                   for key, value in state.items()
                   if torch.is_tensor(value) and value.device.type == "cpu" and value.numel() > 1}
        if not tensors:
            return
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(self.path))
        self._parked = {k: (v, v.shape, v.dtype) for k, v in tensors.items()}
        for value in tensors.values():
            value.data = value.data.new_empty(0)
        trim_heap()

    def restore(self) -> None:
        if self._parked is None:
            return
        trim_heap()  # what was freed meanwhile (a KV cache) leaves before the state comes back, not after
        _read_back(self.path, self._parked)
        self._parked = None
        self.path.unlink(missing_ok=True)


def _read_back(path: Path, parked: dict) -> None:
    """Refill the tensors of ``parked`` (key -> (tensor, shape, dtype)) from the safetensors file
    :class:`OptimizerStateOnDisk` wrote: its header (JSON) gives each tensor's byte range, read with
    ``readinto`` into views of one buffer, wider elements first so that every view is aligned."""
    import torch

    order = sorted(parked, key=lambda k: -parked[k][2].itemsize)
    sizes = {k: math.prod(parked[k][1]) * parked[k][2].itemsize for k in order}
    flat = torch.empty(sum(sizes.values()), dtype=torch.uint8)
    raw = flat.numpy()
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        offset = 0
        for key in order:
            start, end = header[key]["data_offsets"]
            if end - start != sizes[key]:
                raise RuntimeError(f"{path}: {key} has {end - start} bytes, expected {sizes[key]}")
            f.seek(8 + header_len + start)
            view = memoryview(raw[offset:offset + sizes[key]])
            while view.nbytes:
                n = f.readinto(view)
                if not n:
                    raise RuntimeError(f"{path}: ends inside {key}")
                view = view[n:]
            tensor, shape, dtype = parked[key]
            tensor.data = flat[offset:offset + sizes[key]].view(dtype).view(shape)
            offset += sizes[key]


_threshold_now: list[int | None] = [None]  # the threshold this process set (None: glibc's own, dynamic)


@contextlib.contextmanager
def large_buffers_returned(threshold: int | None, device=None):
    """Inside: CPU buffers of >= ``threshold`` bytes are allocated by glibc as their own memory
    mappings, so freeing one hands its pages back to the OS at once.

    Why: glibc raises its mmap threshold to the size of any mapped buffer that is freed (up to 32 MB),
    so after the first few tensors of an update pass, activations and their gradients (1-25 MB each
    here) come from the heap instead, and a heap that mixes short- and long-lived buffers cannot
    shrink. Measured on PPO's update (SmolLM2-135M, answers of 512 tokens, micro-batches of one): peak
    RSS 3,644 MiB with glibc's default, 2,494 MiB with a 1 MiB threshold, 2,334 MiB with 128 KiB;
    fresh pages cost the kernel some zeroing. Generation is kept out (:func:`heap_buffers`): each
    decoding step would map and unmap its KV-cache copies, 15% slower. Nested uses restore the outer
    threshold; the outermost entry and exit trim the heap (on exit glibc's largest threshold is set,
    what its own rule ends at). Not glibc (macOS, musl), not a CPU, or a threshold of 0/None: nothing changes."""
    libc = _glibc() if threshold and str(device or "cpu").startswith("cpu") else None
    if libc is None:
        yield
        return
    previous = _threshold_now[0]
    if previous is None:  # pages freed before (sampling's KV cache) must not stay resident in here
        libc.malloc_trim(0)
    libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
    _threshold_now[0] = int(threshold)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, previous or _GLIBC_MAX_MMAP_THRESHOLD)
        _threshold_now[0] = previous
        if previous is None:
            libc.malloc_trim(0)


def heap_buffers(device=None):
    """Inside :func:`large_buffers_returned`: back to heap allocation (up to glibc's largest threshold)
    for a stretch of many short-lived buffers that map/unmap would slow down, e.g. generation."""
    return large_buffers_returned(_GLIBC_MAX_MMAP_THRESHOLD if _threshold_now[0] else None, device)


def flat_gradients(params, device=None) -> list:
    """Give every parameter's ``.grad`` a slice of one zeroed buffer per dtype, to accumulate into
    and to be zeroed in place between optimiser steps (:func:`zero_gradients`). Returns the
    buffers; on a GPU (its caching allocator has no such problem), gives nothing. Drop them with
    ``optimizer.zero_grad(set_to_none=True)`` when the gradients are no longer needed.

    Why: LoRA's gradients are thousands of sub-MiB tensors. Allocated anew in every backward pass,
    they land in glibc's heap between the pass's short-lived activations, and the heap cannot hand
    the holes back while they live. One buffer is a single mapping outside the heap. Measured on
    PPO's update (SmolLM2-135M, LoRA r=128, 241-token answers): peak 2,684-2,706 MiB instead of
    2,933-2,969 MiB. One difference from freed gradients: a parameter that no loss reaches has a
    zero gradient instead of none, so AdamW steps it anyway (momentum, weight decay). PPO has none
    such: its LoRA covers only layers that every pass uses."""
    import torch

    if not str(device or "cpu").startswith("cpu"):
        return []
    groups: dict = {}
    for p in params:
        if p.requires_grad:
            groups.setdefault(p.dtype, []).append(p)
    buffers = []
    for dtype, group in groups.items():
        flat = torch.zeros(sum(p.numel() for p in group), dtype=dtype, device=group[0].device)
        offset = 0
        for p in group:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        buffers.append(flat)
    return buffers


def zero_gradients(optimizer, flat: list) -> None:
    """``optimizer.zero_grad``: in place into the flat buffers when there are any, else freed."""
    if flat:
        for buffer in flat:
            buffer.zero_()
    else:
        optimizer.zero_grad(set_to_none=True)


def run_inside(method, context):
    """``method`` wrapped so that every call runs inside a fresh ``context()``."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        with context():
            return method(*args, **kwargs)

    return wrapped


def with_allocator(method, threshold: int | None, device=None, *, heap: bool = False):
    """``method`` wrapped in :func:`large_buffers_returned` (or :func:`heap_buffers` with ``heap``)."""
    return run_inside(method, (lambda: heap_buffers(device)) if heap
                      else (lambda: large_buffers_returned(threshold, device)))


def float32_base(model) -> bool:
    """Whether every LoRA-adapted layer's base weight is float32: there, merging the adapter into the
    base and unmerging it after leaves the base within a rounding error (in bf16 it would drift)."""
    import torch

    dtypes = {m.base_layer.weight.dtype for m in model.modules()
              if hasattr(m, "base_layer") and hasattr(m.base_layer, "weight")}
    return dtypes == {torch.float32}


@contextlib.contextmanager
def adapter_merged(model, adapter: str | None = None, enabled: bool = True):
    """Inside: the LoRA adapter (``adapter``, or the active one) is merged into the base weights, so
    sampling runs one matrix product per layer instead of three (1.9x faster at r=128 on a CPU,
    identical tokens); unmerged on exit, whatever happens inside."""
    if not enabled:
        yield
        return
    model.merge_adapter([adapter] if adapter else None)
    try:
        yield
    finally:
        model.unmerge_adapter()


def disable_dropout(model) -> None:
    """Dropout off everywhere (p=0), so train mode (needed by gradient checkpointing) is deterministic."""
    import torch.nn as nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _coerce(value: Any, annotation: str, key: str, source: str) -> Any:
    """Light type coercion for file values (YAML reads ``3e-5`` as a string)."""
    if value is None:
        return None
    ann = str(annotation)
    try:
        if ann.startswith("bool"):
            if isinstance(value, str):
                word = value.strip().lower()
                if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError
                return word in ("1", "true", "yes", "on")
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise ValueError
        if ann.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if ann.startswith("float"):
            return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {key} must be {ann.split(' ')[0]}, got {value!r}") from None
    return value


def config_from_dict(values: dict, cls: type, *, source: str = "config") -> Any:
    """``cls`` (a TrainConfig dataclass) with ``values`` over its defaults; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
                        f"valid: {', '.join(sorted(names))}")
    hints = {k: str(v.type) for k, v in names.items()}
    config = cls(**{k: _coerce(v, hints[k], k, source) for k, v in values.items()})
    config.validate()
    return config


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes a clear message
        raise UserError(f"{path}: cannot parse trainer config: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a trainer config must be a mapping of setting -> value")
    return values


def config_from_file(path: str | Path, cls: type, **overrides) -> Any:
    """Defaults of ``cls`` < the JSON/YAML file < ``overrides`` (None values are ignored)."""
    values = read_config_file(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values, cls, source=str(path))


# Which CLI flag feeds which config field (only fields the config class has are set).
_CLI_FIELDS = {"model": "model", "data": "data", "safe_data": "safe_data", "modality": "modality",
               "out": "out_dir", "max_steps": "max_steps", "seed": "seed", "judge": "judge",
               "dtype": "dtype", "device": "device", "trust_remote_code": "trust_remote_code",
               "prompt_format": "prompt_format", "report_to": "report_to"}


def config_from_args(args, cls: type, *, cli_defaults: dict | None = None) -> Any:
    """The trainer config of a ``train`` command: defaults < ``--config`` file < explicit flags.

    A flag still at its argparse default (``cli_defaults``) does not override the file, so
    ``--config text.json`` with ``"modality": "text"`` is not silently reset to ``image``."""
    cli_defaults = cli_defaults or {}
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    fields = {f.name for f in dataclasses.fields(cls)}
    for flag, field in _CLI_FIELDS.items():
        if field not in fields or not hasattr(args, flag):
            continue
        value = getattr(args, flag)
        if value is None:
            continue
        if flag in cli_defaults and value == cli_defaults[flag] and field in values:
            continue
        values[field] = value
    return config_from_dict(values, cls, source=getattr(args, "config", None) or "command line")


# ---------------------------------------------------------------------------- model
def torch_dtype(name: str | None):
    import torch

    if name is None:
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UserError(f"unknown dtype {name!r}: choose float32, bfloat16 or float16")
    return table[name]


def is_vlm_processor(processor) -> bool:
    """A VLM processor carries an image processor; a text model comes with a bare tokenizer."""
    from unsafe_concepts.models import inputs

    return inputs.is_vlm(processor)


def tokenizer_of(processor):
    from unsafe_concepts.models import inputs

    return inputs.tokenizer_of(processor)


def _load_local(path: str | Path, dtype, device):
    """Load a transformers folder directly (used until/unless the HF backend provides load_hf_model)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    cfg = AutoConfig.from_pretrained(path)
    if getattr(cfg, "vision_config", None) is not None:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        processor = AutoTokenizer.from_pretrained(path)
    if device:
        model.to(device)
    return model, processor


def load_base_model(spec: str, *, dtype: str | None = None, device: str | None = None,
                    trust_remote_code: bool = False, prompt_format: str | None = None):
    """(model, processor) for a model spec, through the HF backend when it is installed."""
    try:
        from unsafe_concepts.models.hf import load_hf_model
    except ImportError:
        load_hf_model = None
    if load_hf_model is not None:
        return load_hf_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                             prompt_format=prompt_format)
    # Fallback: the offline SmolLM2, hf:<local path>, or a plain local folder.
    if spec in ("smollm2-135m", "hf:smollm2-135m"):
        from unsafe_concepts.models.offline import smollm2_dir

        return _load_local(smollm2_dir(), torch_dtype(dtype), device)
    if spec == "tiny-vlm":
        from unsafe_concepts.models import offline

        if not hasattr(offline, "tiny_vlm_dir"):
            raise UserError("tiny-vlm is not available in this installation (unsafe_concepts.models.offline.tiny_vlm_dir)")
        return _load_local(offline.tiny_vlm_dir(), torch_dtype(dtype), device)
    path = spec[3:] if spec.startswith("hf:") else spec
    if not Path(path).exists():
        raise UserError(f"model {spec!r}: not a local folder, and the HF backend (unsafe_concepts.models.hf) "
                        "that resolves hub ids is not installed")
    return _load_local(path, torch_dtype(dtype), device)


def lora_target_regex(model) -> str:
    """A PEFT ``target_modules`` regex naming every linear layer of the language model only."""
    import torch.nn as nn

    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and not any(part in name.split(".") for part in _FROZEN_PARTS)]
    if not names:
        raise UserError("found no linear layers in the language model to put LoRA on")
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def prepare_processor(processor) -> None:
    """Left padding (generation appends on the right) and a pad token."""
    tok = tokenizer_of(processor)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def add_lora(model, config: TrainConfig):
    """Wrap ``model`` with a fresh trainable LoRA adapter; everything else is frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=lora_target_regex(model), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def load_policy(config: TrainConfig):
    """(peft_model, processor): the base model with LoRA on its language model, ready to train."""
    model, processor = load_base_model(config.model, dtype=config.dtype, device=config.device,
                                       trust_remote_code=config.trust_remote_code, prompt_format=config.prompt_format)
    if config.modality == "image" and not is_vlm_processor(processor):
        raise UserError(f"--modality image: {config.model} is a text-only model (no image processor); "
                        "use --modality text, or a vision-language model")
    prepare_processor(processor)
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = add_lora(model, config)
    return peft_model, processor


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- encoding
# Prompts are built by the one builder the evaluation backend uses too (``models/inputs.py``), so
# the policy is trained on exactly the inputs it is later evaluated on (tests/models/test_inputs.py).
def chat_messages(prompt: str, *, vlm: bool) -> list[dict]:
    """One user turn; for a VLM the image comes first, as LLaVA-style templates expect."""
    from unsafe_concepts.models import inputs

    return inputs.chat_messages(prompt, with_image=vlm, vlm=vlm)


def chat_text(processor, prompt: str) -> str:
    """The templated prompt string, ending with the assistant's turn opener (VLMs: with the image)."""
    from unsafe_concepts.models import inputs

    return inputs.chat_text(processor, prompt, with_image=inputs.is_vlm(processor))


def load_image(image):
    """A path, a PIL image, or None (-> the protocol's blank white image) as an RGB PIL image."""
    from unsafe_concepts.models import inputs

    return inputs.load_image(image)


def encode_prompts(processor, prompts: Sequence[str], images: Sequence[Any] | None = None, *,
                   max_prompt_len: int | None = None):
    """A left-padded batch (``input_ids``, ``attention_mask``, and ``pixel_values`` for a VLM).

    Text models ignore ``images``; a VLM gets each item's image, or the blank white one when None."""
    from unsafe_concepts.models import inputs

    return inputs.encode(processor, prompts, images, blank_for_missing=True, max_length=max_prompt_len)


# ---------------------------------------------------------------------------- schedule
def make_scheduler(optimizer, config: TrainConfig, total_steps: int):
    """Linear warm-up for ``warmup_steps``, then cosine decay to 0 at ``total_steps`` (or constant)."""
    from torch.optim.lr_scheduler import LambdaLR

    warmup, total = config.warmup_steps, max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------- processes
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")  # what accelerate reads under mpirun


def launched_world_size() -> int:
    """How many processes the launcher started, from its environment: ``WORLD_SIZE`` (torchrun,
    ``accelerate launch --multi_gpu``), else the MPI size (``accelerate launch --cpu`` through mpirun)."""
    import os

    for name in ("WORLD_SIZE", *MPI_SIZE_VARIABLES):
        if name in os.environ:
            try:
                return max(1, int(os.environ[name]))
            except ValueError:
                return 1
    return 1


def flag(name: str) -> bool:
    """An environment variable set to a true value (1, true, yes)."""
    import os

    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def check_launch() -> None:
    """Refuse the launches that would not run the processes asked for, before any model is loaded:

    - ``accelerate launch --cpu --num_processes N`` (N > 1) without ``--mpirun_hostfile``: accelerate
      1.15 starts several CPU processes only through mpirun, so it starts ONE process (it sets
      ``MASTER_ADDR``/``MASTER_PORT`` for N but no ``WORLD_SIZE``), which would train alone at 1/N speed.
    - mpirun (MPI size > 1 and no ``WORLD_SIZE``) for PPO: its process group reads torchrun's
      variables; it is refused by :class:`Dist` (TRL's trainers let accelerate read the MPI ones).
    """
    import os

    env = os.environ
    if (flag("ACCELERATE_USE_CPU") and "ACCELERATE_DYNAMO_BACKEND" in env and "MASTER_PORT" in env
            and "WORLD_SIZE" not in env and not any(k in env for k in MPI_SIZE_VARIABLES)):
        raise UserError("`accelerate launch --cpu --num_processes N` started a single process: accelerate runs several "
                        "CPU processes only through mpirun. On CPUs launch with `ACCELERATE_USE_CPU=true accelerate "
                        "launch --multi_gpu --num_processes N ...` or `ACCELERATE_USE_CPU=true torchrun "
                        "--nproc_per_node N ...` (gloo), or drop --num_processes for one process")


class Dist:
    """The process group as PPO needs it: rank, world size, and the few collective operations.

    One process (no launcher): every operation is the identity. Started by ``torchrun`` or
    ``accelerate launch`` (``WORLD_SIZE`` > 1): joins the default process group (NCCL on GPUs,
    gloo on CPUs), so each process rolls out its own share of the batch and gradients, rewards,
    whitening statistics and metrics are reduced across processes."""

    def __init__(self):
        import os

        import torch.distributed as dist

        self._dist = dist
        check_launch()
        world = launched_world_size()
        if world > 1 and "WORLD_SIZE" not in os.environ:
            raise UserError(f"started by mpirun as {world} processes: PPO joins its process group from torchrun's "
                            "variables (RANK, WORLD_SIZE); launch it with `torchrun --nproc_per_node N` or "
                            "`accelerate launch --multi_gpu --num_processes N` (on CPUs with ACCELERATE_USE_CPU=true)")
        if world > 1 and not dist.is_initialized():
            import torch

            if not dist.is_available():
                raise UserError(f"started as {world} processes but this torch has no distributed support")
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in (
                "1", "true", "yes") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend)
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        self.is_main = self.rank == 0

    def device(self, default: str | None) -> str | None:
        """The device of this process: its own GPU (LOCAL_RANK) under a launcher, else ``default``."""
        import os

        import torch

        if self.active and torch.cuda.is_available() and self._dist.get_backend() == "nccl":
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return default

    def sum(self, tensor):
        """The sum over processes (a new tensor; the input is left as is)."""
        out = tensor.detach().clone()
        if self.active:
            self._dist.all_reduce(out)
        return out

    def min(self, tensor):
        out = tensor.detach().clone()
        if self.active:
            self._dist.all_reduce(out, op=self._dist.ReduceOp.MIN)
        return out

    def max(self, tensor):
        out = tensor.detach().clone()
        if self.active:
            self._dist.all_reduce(out, op=self._dist.ReduceOp.MAX)
        return out

    def mean_metrics(self, metrics: dict) -> dict:
        """Numeric metrics averaged over processes (others kept from this process)."""
        if not self.active:
            return metrics
        import torch

        keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        values = self.sum(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)) / self.world
        return {**metrics, **{k: float(v) for k, v in zip(keys, values)}}

    def sum_gradients(self, params) -> None:
        """Add up every process's gradients (the loss is already divided by the global token count)."""
        if not self.active:
            return
        for p in params:
            if p.grad is not None:
                self._dist.all_reduce(p.grad)

    def broadcast_parameters(self, params) -> None:
        """The main process's values everywhere: every process starts from identical weights."""
        if self.active:
            for p in params:
                self._dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.active:
            self._dist.barrier()

    def agree(self, message: str | None) -> None:
        """Raise the same UserError on every process when any process has one (no rank left waiting)."""
        if not self.active:
            if message:
                raise UserError(message)
            return
        got = [None] * self.world
        self._dist.all_gather_object(got, message)
        first = next((m for m in got if m), None)
        if first:
            raise UserError(first)


def refuse_silent_duplicates(process_count: int) -> None:
    """Several processes launched, but the training library sees one: each would train the whole
    run alone and write the same folder. Refuse instead of duplicating the work silently."""
    check_launch()
    world = launched_world_size()
    if world > 1 and process_count <= 1:
        raise UserError(f"started as {world} processes (WORLD_SIZE={world}) but no process group was formed, so each "
                        "process would train alone and overwrite the others' output; on CPUs set "
                        "ACCELERATE_USE_CPU=true (torchrun --nproc_per_node N), or use accelerate launch on GPUs")


# ---------------------------------------------------------------------------- logging & saving
TRACKERS = ("tensorboard", "wandb")


def trackers(report_to: str | None) -> list[str]:
    """``report_to`` as transformers takes it (a list; [] for none), checked: a known name whose package is
    installed. TRL's trainers hand it to transformers; PPO's TrainLogger writes to the same tools."""
    import importlib.util

    names = [n.strip() for n in (report_to or "none").split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"report_to: unknown tracker {name!r}: choose none, {', '.join(TRACKERS)} "
                            "(comma-separated for several)")
        if importlib.util.find_spec(name) is None:
            raise UserError(f"report_to {name} needs the {name} package: pip install 'unsafe-concepts[tracking]'")
    return names


class TrainLogger:
    """Append-only JSONL log (``<out>/log.jsonl``): one object per logged step; resumes append. With
    ``report_to``, the same numbers also go to TensorBoard (``<out>/runs``) and/or Weights & Biases."""

    def __init__(self, out_dir: str | Path, filename: str = LOG_FILE, *, report_to: str | None = None,
                 run_name: str | None = None):
        self.path = Path(out_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sinks = []
        for name in trackers(report_to):
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(Path(out_dir) / "runs"))
                self._sinks.append(lambda step, m, w=writer: ([w.add_scalar(k, v, step) for k, v in m.items()],
                                                              w.flush()))
            else:
                import wandb

                run = wandb.init(dir=str(out_dir), name=run_name or Path(out_dir).name, resume="allow")
                self._sinks.append(lambda step, m, r=run: r.log(m, step=step))

    def log(self, step: int, **metrics) -> dict:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        numbers = {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        for sink in self._sinks:
            sink(step, numbers)
        return row

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def callback(self):
        """The same log as a ``transformers.TrainerCallback`` (for TRL-based trainers)."""
        from transformers import TrainerCallback

        logger = self

        class JsonlCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:  # one log, written by the main process
                    logger.log(state.global_step, **logs)

        return JsonlCallback()


def _jsonable(v):
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def save_adapter(model, out_dir: str | Path, *, processor=None, extra: dict | None = None) -> Path:
    """Save the LoRA adapter as a standard PEFT folder (adapter_config.json + adapter_model.safetensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if extra:
        (out / "training_info.json").write_text(json.dumps(extra, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def run_record(method: str, config: TrainConfig, **extra) -> dict:
    """What ``train.json`` holds: method, full config, seed, package versions, git commit, argv."""
    from unsafe_concepts.runs import environment

    return {"method": method, "config": config.to_dict(), "seed": config.seed, **environment(), **extra}


def write_json(path: str | Path, obj: dict) -> None:
    """Write atomically (a killed run never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


__all__ = ["TrainConfig", "config_from_dict", "config_from_file", "config_from_args", "read_config_file",
           "load_policy", "load_base_model", "add_lora", "lora_target_regex", "prepare_processor",
           "is_vlm_processor", "tokenizer_of", "chat_messages", "chat_text", "encode_prompts", "load_image",
           "make_scheduler", "TrainLogger", "save_adapter", "run_record", "write_json", "torch_dtype",
           "trainable_parameters", "LOG_FILE"]
