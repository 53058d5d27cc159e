"""Faster ``model.generate()`` decoding steps on a CPU, in three independent pieces.

Measured on SmolLM2-135M (float32, 2 threads), a decoding step of ``generate()`` spends its time in
the projection GEMMs (MKL, at 8-32 rows), in ``torch.cat`` growing the default ``DynamicCache``
(a copy of the whole cache per layer per step) and in ``torch.multinomial`` (one exponential draw
per vocabulary entry). Each piece below removes one of these; each can be used alone:

* :class:`PreallocatedCache` - a ``DynamicCache`` whose layers write new keys/values in place into
  preallocated buffers and hand attention views of the filled part (no per-step copy of the cache).
  Bit-identical ``generate()`` outputs to the default cache. Pass it as ``cache=`` (transformers 5
  renamed ``past_key_values=``; the old name still works, with a deprecation warning).
* :func:`packed_linears` - a context manager inside which every plain ``nn.Linear`` runs through
  oneDNN with a prepacked weight (faster at few rows). Costs one packed copy of those weights.
* :class:`InverseCDFSampler` / :func:`sample_categorical` - exact categorical sampling with one
  uniform per row (inverse CDF) instead of one exponential per vocabulary entry.

Wiring into a sampling ``generate()`` call (temperature applied by the caller's own processor)::

    with packed_linears(model):  # inside any LoRA merge: it packs the weights as they are now
        seq = model.generate(**q, generation_config=GenerationConfig(do_sample=False, ...),
                             cache=PreallocatedCache(model.config, max_length=q_len + new_tokens),
                             logits_processor=LogitsProcessorList([*warpers, recorder, InverseCDFSampler()]))
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from transformers import DynamicCache, LogitsProcessor
from transformers.cache_utils import DynamicLayer

__all__ = ["PreallocatedLayer", "PreallocatedCache", "PackedLinears", "packed_linears", "onednn_usable", "own_weights",
           "sample_categorical", "InverseCDFSampler"]


# --------------------------------------------------------------------------------------------------
# 1. A KV cache that does not copy itself every step
# --------------------------------------------------------------------------------------------------

class PreallocatedLayer(DynamicLayer):
    """One layer's KV cache: (B, H, capacity, D) buffers filled in place; ``update`` returns views of
    the filled part (``buffer[:, :, :length]``), which SDPA reads as they are (strided, no copy).

    The default ``DynamicLayer`` runs ``torch.cat([past, new])`` per step, i.e. copies the whole
    cache of every layer at every step (O(T^2) bytes over a generation). Here a step writes only
    the new token's keys/values; the buffers grow (one copy) only when full: to ``max_length`` if it
    is known and large enough, else geometrically (x2, at least ``min_growth`` slots), so the copies
    cost O(T) overall. The values and their order are exactly those of the default cache, only the
    memory they live in differs, so attention gives the same bits (tested with ``generate()``).

    A view handed out earlier sees later writes only after ``crop`` (slots are then reused); the
    batch-changing operations (beam reorder, batch select/repeat) rebuild the buffers from the
    filled part."""

    def __init__(self, max_length: int | None = None, min_growth: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.min_growth = max(1, int(min_growth))
        self._k: torch.Tensor | None = None  # (B, H, capacity, D)
        self._v: torch.Tensor | None = None
        self._len = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._k = self._v = None
        self._len = 0
        # zero-length views of the right shape, so code reading .keys/.values before any token works
        self.keys = key_states.new_empty((*key_states.shape[:-2], 0, key_states.shape[-1]))
        self.values = value_states.new_empty((*value_states.shape[:-2], 0, value_states.shape[-1]))
        self.is_initialized = True

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        old = 0 if self._k is None else self._k.shape[-2]
        if self.max_length is not None and needed <= self.max_length:
            capacity = self.max_length
        else:
            capacity = max(needed + self.min_growth, 2 * old)
        k = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        v = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if self._len:
            k[..., : self._len, :].copy_(self._k[..., : self._len, :])
            v[..., : self._len, :].copy_(self._v[..., : self._len, :])
        self._k, self._v = k, v

    def _set_views(self) -> None:
        self.keys = self._k[..., : self._len, :]
        self.values = self._v[..., : self._len, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._len, self._len + key_states.shape[-2]
        if self._k is None or end > self._k.shape[-2]:
            self._grow(key_states, value_states, end)
        self._k[..., start:end, :].copy_(key_states)
        self._v[..., start:end, :].copy_(value_states)
        self._len = end
        self._set_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def capacity(self) -> int:
        """Slots allocated per (batch, head): the memory held is 2 x B x H x capacity x D elements."""
        return 0 if self._k is None else self._k.shape[-2]

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make ``keys``/``values`` (new tensors) the whole, full buffers; the next update regrows."""
        self._k, self._v = keys.contiguous(), values.contiguous()
        self._len = keys.shape[-2]
        self._set_views()

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        super().reset()  # drops .keys/.values and clears is_initialized (a new batch may follow)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"Calling `crop` with a positive value (`{tokens_to_remove}`) is not supported; "
                             "pass minus the number of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized or self._k is None:
            return
        self._len = max(0, self._len + tokens_to_remove)  # the slots are kept and rewritten later
        self._set_views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() > 0:
            idx = beam_idx.to(self.keys.device)
            self._adopt(self.keys.index_select(0, idx), self.values.index_select(0, idx))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._adopt(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._adopt(self.keys[indices, ...], self.values[indices, ...])

    def offload(self):
        if self._k is not None:
            self._k, self._v = self._k.to("cpu", non_blocking=True), self._v.to("cpu", non_blocking=True)
            self._set_views()

    def prefetch(self):
        if self._k is not None and self._k.device != self.device:
            self._k = self._k.to(self.device, non_blocking=True)
            self._v = self._v.to(self.device, non_blocking=True)
            self._set_views()


class PreallocatedCache(DynamicCache):
    """A ``DynamicCache`` whose full-attention layers are :class:`PreallocatedLayer` (other layer
    kinds a config may declare - sliding window, linear attention - keep transformers' own layers).

    ``max_length``: the longest sequence the cache will hold, prompt + new tokens (generate()'s
    ``input_ids.shape[1] + max_new_tokens``); the buffers are then allocated once, at prefill. Without
    it they grow geometrically. Use one cache per ``generate()`` call, passed as ``cache=``:
    ``model.generate(**inputs, cache=PreallocatedCache(model.config, max_length=...))``."""

    def __init__(self, config=None, max_length: int | None = None, min_growth: int = 64, **kwargs):
        super().__init__(config=config, **kwargs)
        make = functools.partial(PreallocatedLayer, max_length=max_length, min_growth=min_growth)
        if self.layer_class_to_replicate is not None:  # no config: layers are created lazily
            self.layer_class_to_replicate = make
        self.layers = [make() if type(layer) is DynamicLayer else layer for layer in self.layers]


# --------------------------------------------------------------------------------------------------
# 2. oneDNN prepacked linear layers
# --------------------------------------------------------------------------------------------------

def onednn_usable() -> bool:
    """Whether this PyTorch build can run oneDNN (mkldnn) prepacked float32 linears here."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def own_weights(model: nn.Module) -> int:
    """Copy every CPU parameter and buffer of ``model`` into memory of its own; returns the bytes copied.

    Why: ``from_pretrained`` maps the safetensors file privately and hands out tensors inside that
    mapping. A page written there (a LoRA merge) becomes an anonymous copy that stays resident as
    long as any tensor of the file is alive, so freeing a weight frees nothing, and
    ``packed_linears(release_dense=True)`` would only add its packed copies. Owned tensors are freed
    when dropped. Same resident memory once every weight has been read (a training step reads all)."""
    copied = 0
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and not tensor.is_meta and tensor.numel():
                tensor.data = tensor.data.clone()
                copied += tensor.numel() * tensor.element_size()
    return copied


@dataclass
class PackedLinears:
    """What :func:`packed_linears` packed: the module names, and the bytes of the packed copies
    (held on top of the model's own weights while inside; a weight shared by several layers is
    packed once)."""
    names: list[str] = field(default_factory=list)
    packed_bytes: int = 0
    released_bytes: int = 0  # ``release_dense``: dense weights freed while inside


def _pack(weight: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def _weight_key(weight: torch.Tensor) -> tuple[int, int]:
    """What changes when a weight is replaced or updated in place by a tracked op (inference
    tensors have no version counter)."""
    return weight.data_ptr(), (-1 if weight.is_inference() else weight._version)


def _packed_forward(module: nn.Linear, packed: torch.Tensor, fallback: Callable, min_rows: int) -> Callable:
    """A ``forward`` for ``module`` that multiplies by the prepacked weight, and otherwise calls
    ``fallback`` (the original forward) whenever the packed path could differ in meaning: an input
    that is not float32 on the CPU, autograd needing a graph (the packed op is for inference; LoRA
    training must reach the base layer's plain matmul), fewer than ``min_rows`` rows (a single row
    is slower packed: 1.59 vs 1.35 ms for one SmolLM2 layer), or a weight changed since it was
    packed (an optimizer step or ``weight.data = ...``: the packed copy is then rebuilt; an in-place
    ``weight.data += ...`` is NOT seen, see :func:`packed_linears`).

    The returned function carries its state as ``forward.state`` (``packed``, ``key`` and
    ``released``: the dense weight was freed, so there is no fallback and every call is packed)."""
    state = {"packed": packed, "key": _weight_key(module.weight), "released": False}
    linear = torch.ops.mkldnn._linear_pointwise

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight, bias = module.weight, module.bias
        key = _weight_key(weight)
        released = state["released"] and key == state["key"]
        needs_graph = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                   or (bias is not None and bias.requires_grad))
        if released:
            if needs_graph or x.dtype != torch.float32 or x.device.type != "cpu":
                raise RuntimeError(
                    "this layer's dense weight is released while inside packed_linears(release_dense=True): "
                    "only float32 CPU inference without autograd can run there (use torch.no_grad(), or "
                    "release_dense=False)")
            return linear(x, state["packed"], bias, "none", [], "")
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() < min_rows * x.shape[-1] or needs_graph:
            return fallback(x)
        if key != state["key"]:
            state["packed"], state["key"], state["released"] = _pack(weight), key, False
        return linear(x, state["packed"], bias, "none", [], "")

    forward.state = state
    return forward


@contextlib.contextmanager
def packed_linears(model: nn.Module, *, min_rows: int = 2,
                   include: Callable[[str, nn.Linear], bool] | None = None,
                   release_dense: bool = False, trim: Callable[[], None] | None = None) -> Iterator[PackedLinears]:
    """Inside, every plain ``nn.Linear`` of ``model`` (exact type, float32 weight on the CPU) runs
    through oneDNN with a weight prepacked on entry; on exit (also on an exception) every module
    gets its own ``forward`` back. Yields a :class:`PackedLinears`.

    Why: at the 8-32 rows of a batched decoding step, oneDNN's prepacked GEMM is ~1.6x faster than
    MKL's ``x @ W.t()`` on SmolLM2's projections (and ~3x on its 49k x 576 LM head); beyond a few
    hundred rows (prefill) the two are even. Results differ from MKL's in the last bits (a
    different summation order): ~1e-6 on a projection.

    Cost: one packed copy of every packed weight while inside (same number of float32 elements:
    for SmolLM2-135M, 134.5M parameters, ~513 MiB, the tied LM head included - resident memory
    grew by 496-508 MiB), and packing on every entry (211 weights: ~0.3 s on 2 threads).

    PEFT LoRA: ``lora.Linear`` is not an ``nn.Linear``; its ``base_layer`` and the ``lora_A``/
    ``lora_B`` layers are, and are packed, so merged and unmerged adapters both work. Enter this
    AFTER merging an adapter (``common.adapter_merged``) and do not merge/unmerge inside: PEFT
    changes the base weight with ``weight.data += delta``, which no cheap check can see, and the
    packed copy would be stale. Weights replaced (``weight.data = ...``) or updated by an optimizer
    (version counter) are re-packed automatically. Calls that need autograd (grad mode on and a
    tensor requiring grad) use the original forward.

    ``release_dense=True`` removes that cost: each packed layer's dense weight is freed once packed
    (a weight tied to another module, such as an LM head tied to the embeddings, is kept) and
    rebuilt from the packed copy on exit - exactly (the packing only reorders float32 values), one
    layer at a time, so memory never holds both copies of more than one layer. Inside, those layers
    run packed at any row count and refuse autograd; nothing may read their ``weight`` there.
    A weight freed into the allocator's heap stays resident until the heap is trimmed: ``trim``
    (e.g. glibc's ``malloc_trim``) is called after every 64 MiB released (and rebuilt on exit), so
    neither end holds much more than one copy of the weights at once.

    A no-op (yields an empty :class:`PackedLinears`) when oneDNN is unavailable; modules off the
    CPU or not float32 are left alone. ``include(name, module)`` can restrict what is packed."""
    info = PackedLinears()
    patched: list[tuple[nn.Module, object]] = []  # (module, its previous instance-level forward or None)
    if not onednn_usable():
        yield info
        return
    released: list[tuple[nn.Parameter, dict]] = []  # (weight, its forward's state), to rebuild on exit
    users: dict[int, int] = {}  # how many modules hold each Parameter: tied weights are never released
    untrimmed = [0]  # bytes released or rebuilt since the last trim

    def freed(nbytes: int) -> None:  # trim after every 64 MiB, so freed weights leave the heap as we go
        untrimmed[0] += nbytes
        if trim is not None and untrimmed[0] >= 64 << 20:
            trim()
            untrimmed[0] = 0

    for _, param in model.named_parameters(remove_duplicate=False):
        users[id(param)] = users.get(id(param), 0) + 1
    try:
        by_weight: dict[int, torch.Tensor] = {}  # tied weights (same Parameter) are packed once
        for name, module in model.named_modules():
            if type(module) is not nn.Linear:
                continue
            weight = module.weight
            if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.is_meta:
                continue
            if include is not None and not include(name, module):
                continue
            packed = by_weight.get(id(weight))
            if packed is None:
                packed = by_weight[id(weight)] = _pack(weight)
                info.packed_bytes += weight.numel() * weight.element_size()
            previous = module.__dict__.get("forward")  # e.g. a hook library's wrapper
            fallback = previous if previous is not None else functools.partial(type(module).forward, module)
            patched.append((module, previous))
            module.forward = _packed_forward(module, packed, fallback, min_rows)
            info.names.append(name)
            if release_dense and users.get(id(weight)) == 1 and not weight.requires_grad:
                state = module.forward.state
                weight.data = torch.empty(0, dtype=weight.dtype)  # the dense copy goes; the packed one stays
                state["key"], state["released"] = _weight_key(weight), True
                released.append((weight, state))
                info.released_bytes += state["packed"].numel() * weight.element_size()
                by_weight.pop(id(weight), None)
                freed(state["packed"].numel() * weight.element_size())
        if trim is not None and untrimmed[0]:
            trim()
        yield info
    finally:
        untrimmed[0] = 0
        for weight, state in reversed(released):  # one layer at a time: dense rebuilt, packed freed
            rebuilt = state["released"] and _weight_key(weight) == state["key"]
            if rebuilt:
                weight.data = state["packed"].to_dense()
            state["packed"], state["released"] = None, False
            if rebuilt:
                freed(weight.numel() * weight.element_size())
        for module, previous in reversed(patched):
            if previous is not None:
                module.forward = previous
            else:
                module.__dict__.pop("forward", None)


# --------------------------------------------------------------------------------------------------
# 3. An exact inverse-CDF sampler
# --------------------------------------------------------------------------------------------------

def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None,
                       uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (B, V), drawn with probability ``probs[b, i] / probs[b].sum()``.

    Why: ``torch.multinomial`` draws one exponential variate per entry (B x V random numbers: 26 ms
    at 16 x 49152 on 2 threads); the inverse CDF needs one uniform per row and a cumulative sum
    (2.5 ms). The sum runs in float64 so the interval of every entry keeps its float32 probability
    to ~1e-16 (a float32 cumsum over 49k entries would blur entries below ~1e-5); entries of
    probability 0 have empty intervals and are never drawn. Rows must be non-negative with a
    positive finite sum (as softmax output is). Uses the global RNG unless ``generator`` is given,
    or ``uniforms`` (B, 1) float64 in [0, 1): the draws themselves (one generator per row)."""
    cdf = probs.cumsum(-1, dtype=torch.float64)
    total = cdf[:, -1:]
    u = uniforms if uniforms is not None else torch.rand(total.shape, dtype=torch.float64, device=probs.device,
                                                         generator=generator)
    # u < 1, but u * total may round up to total: keep the point strictly inside [0, total) so the
    # search lands on an entry whose interval is non-empty
    point = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True).squeeze(-1)


class InverseCDFSampler(LogitsProcessor):
    """A logits processor that samples the next token itself (softmax of the scores it receives,
    then :func:`sample_categorical`) and returns scores that are -inf everywhere but 0 at the drawn
    token, so that ``generate(do_sample=False)`` - whose argmax then picks that token - samples
    without ``torch.multinomial``.

    Put it LAST in ``logits_processor``, with ``do_sample=False`` (so generate() adds no warper of
    its own after it: apply a temperature with a ``TemperatureLogitsWarper`` before it). Every
    processor before it sees the true scores; a log-prob recorder placed before it (as PPO's
    ``SampledLogprobs``) records the distribution actually sampled from. Whatever reads the
    returned scores afterwards (``output_scores=True``) sees the one-hot -inf/0 rows.

    Same distribution as ``do_sample=True`` with ``torch.multinomial``, not the same draws: for a
    fixed seed the tokens differ (the RNG is consumed differently: B float64 uniforms per step)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float(), dim=-1)  # as generate() does before multinomial
        tokens = sample_categorical(probs, self.generator)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, tokens.unsqueeze(-1), 0.0)
