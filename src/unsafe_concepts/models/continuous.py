"""Continuous batching for decoding many answers on a CPU: ``slots`` rows decode in lockstep, and a
row whose answer ends hands its slot to the next prompt at once. PPO samples its text rollouts this
way (``greedy`` decoding is there too, for evaluation backends; none uses it yet).

Why: ``generate()`` on a chunk of prompts runs until the chunk's longest answer ends; rows that
ended earlier idle in the batch. A CPU decoding step of a small model costs about the same at 4
rows as at 16 (it is bound by reading the weights), so those idle rows are time lost: with
PPO's 512-token budget, a chunk whose answers average 330 tokens runs ~500 steps for ~330 steps
of work per row. Here the steps needed approach ``sum(answer lengths) / slots``.

How: one KV cache of ``slots`` rows whose columns are shared by all rows (as with left padding).
A new prompt is prefilled on its own (as a batch with the other prompts taking a slot at the same
step) and its keys/values are copied into its slot, right-aligned at the current column; the
columns left of it are masked for that row. Every row carries its own position ids, so each
answer is computed as if alone, up to float rounding of the masked, padded attention. When the
cache is full, the columns that no active row uses any more (left of the oldest live prompt) are
dropped; once no prompt waits, the batch shrinks to the live rows.

Each row samples with a generator of its own, seeded by the caller: a row's answer depends on its
prompt and seed only, not on which rows share its steps. The draws are those of
``cpu_decode.InverseCDFSampler`` with that generator in ``generate()`` one prompt at a time, so
both give the same tokens (tested); greedy decoding gives ``generate(do_sample=False)``'s tokens.
No logits processor is applied beyond the temperature.

Only decoder-only language models whose caches are all full-attention layers (the text modality;
image prompts take ``generate()``: their prefill differs per family).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from unsafe_concepts.models.cpu_decode import PreallocatedLayer, sample_categorical

__all__ = ["SlotLayer", "SlotCache", "supports", "sample"]


class SlotLayer(PreallocatedLayer):
    """One layer's KV cache as (slots, heads, capacity, dim) buffers with shared columns; decoding
    steps write at column ``_len`` through :class:`PreallocatedLayer`'s ``update``."""

    def allocate(self, slots: int, like: torch.Tensor, capacity: int) -> None:
        self.lazy_initialization(like, like)
        shape = (slots, like.shape[1], capacity, like.shape[-1])
        # zeros: masked entries must be finite (a 0 attention weight times NaN is NaN)
        self._k, self._v = like.new_zeros(shape), like.new_zeros(shape)
        self._len = 0
        self._set_views()

    def place(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write one prompt's (heads, P, dim) keys/values into ``slot``, ending at column ``_len``."""
        width = keys.shape[-2]
        self._k[slot, :, self._len - width:self._len].copy_(keys)
        self._v[slot, :, self._len - width:self._len].copy_(values)

    def shift(self, columns: int) -> None:
        """Move the filled columns ``columns`` to the right (> 0: room on the left) or left (< 0:
        the first ``-columns`` are dropped). One layer at a time: the copy's transient is small."""
        if columns > 0:
            for buf in (self._k, self._v):
                filled = buf[:, :, :self._len].clone()
                buf[:, :, columns:columns + self._len].copy_(filled)
                buf[:, :, :columns].zero_()
            self._len += columns
        elif columns < 0:
            for buf in (self._k, self._v):
                kept = buf[:, :, -columns:self._len].clone()
                buf[:, :, :kept.shape[-2]].copy_(kept)
            self._len += columns
        self._set_views()

    def keep_rows(self, rows: torch.Tensor) -> None:
        self._k, self._v = self._k[rows].contiguous(), self._v[rows].contiguous()
        self._set_views()


class SlotCache(DynamicCache):
    """A ``DynamicCache`` of :class:`SlotLayer` s (see :func:`supports`)."""

    def __init__(self, config):
        super().__init__(config=config)
        self.layers = [SlotLayer() for _ in self.layers]

    def allocate(self, slots: int, like: Sequence[torch.Tensor], capacity: int) -> None:
        for layer, keys in zip(self.layers, like):
            layer.allocate(slots, keys, capacity)

    @property
    def length(self) -> int:
        return self.layers[0]._len

    def capacity(self) -> int:
        return self.layers[0].capacity()


def supports(model) -> bool:
    """Whether ``model``'s cache is full attention in every layer (no sliding window, no linear
    attention), which is what :class:`SlotCache` stores."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 - a config transformers cannot size a cache for
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@dataclass
class _Slots:
    """Per-slot state; ``row`` is -1 where the slot is free."""
    row: torch.Tensor
    token: torch.Tensor  # the last sampled token, fed at the next step
    position: torch.Tensor  # its position id

    def keep(self, rows: torch.Tensor) -> None:
        self.row, self.token, self.position = self.row[rows], self.token[rows], self.position[rows]


@torch.no_grad()
def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, slots: int, max_new_tokens: int,
           eos_token_ids: Sequence[int], pad_token_id: int, seeds: Sequence[int] | None = None,
           temperature: float = 1.0, greedy: bool = False, on_answer: Callable[[int], None] | None = None,
           slack: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample an answer to each row of the left-padded ``input_ids`` (B, P): the tokens (B, L) with
    ``pad_token_id`` after each answer's end (its EOS token included, as ``generate()``), and the
    log-probability each token was drawn with, from ``softmax(logits / temperature)`` (B, L; 0 on
    padding). ``seeds[b]`` seeds row b's generator; ``greedy``: the most likely token instead (as
    ``generate(do_sample=False)``; no seeds needed). ``on_answer(b)`` is called as row b ends.
    ``slack``: cache columns beyond the longest prompt plus answer; the cache drops the columns no
    live row uses whenever it is full, so about every ``slack`` steps."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n = input_ids.shape[0]
    if not greedy and (seeds is None or len(seeds) != n):
        raise ValueError(f"{0 if seeds is None else len(seeds)} seeds for {n} prompts")
    device = input_ids.device
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
    generators = [] if greedy else [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    answers: list[list[int]] = [[] for _ in range(n)]
    logps: list[list[float]] = [[] for _ in range(n)]
    prompt_width = int(attention_mask.sum(1).max().item()) if n else 0
    capacity = prompt_width + max_new_tokens + max(1, slack)
    cache = SlotCache(config)
    columns = torch.zeros((0, capacity), dtype=attention_mask.dtype, device=device)  # (slots, capacity) mask
    state = _Slots(row=torch.full((0,), -1, dtype=torch.long, device=device),
                   token=torch.zeros(0, dtype=torch.long, device=device),
                   position=torch.zeros(0, dtype=torch.long, device=device))
    waiting = list(range(n))

    def draw(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Sample one token per row (logits (R, V)); record it; return the tokens."""
        scores = logits.float() / temperature if temperature != 1.0 else logits.float()
        logp = torch.log_softmax(scores, dim=-1)
        if greedy:
            tokens = scores.argmax(-1)
        else:
            uniforms = torch.cat([torch.rand((1, 1), dtype=torch.float64, device=device, generator=generators[r])
                                  for r in rows])
            tokens = sample_categorical(torch.softmax(scores, dim=-1), uniforms=uniforms)
        picked = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        for r, t, lp in zip(rows, tokens.tolist(), picked.tolist()):
            answers[r].append(t)
            logps[r].append(lp)
        return tokens

    def ended(row: int, token: int) -> bool:
        done = len(answers[row]) >= max_new_tokens or bool((eos == token).any())
        if done and on_answer is not None:
            on_answer(row)
        return done

    def shift(by: int) -> None:
        """Move every row's columns by ``by`` (> 0: room on the left; < 0: drop the first ``-by``)."""
        nonlocal columns
        for layer in cache.layers:
            layer.shift(by)
        columns = torch.roll(columns, by, dims=1)
        if by > 0:
            columns[:, :by] = 0
        else:
            columns[:, by:] = 0

    def admit(free: list[int]) -> None:
        """Prefill the next waiting prompts into the ``free`` slots (those ending at once leave them free)."""
        nonlocal columns
        while free and waiting:
            rows = [waiting.pop(0) for _ in range(min(len(free), len(waiting)))]
            ids, mask = input_ids[rows], attention_mask[rows]
            first = int((mask.sum(0) > 0).nonzero().min().item()) if mask.any() else mask.shape[1] - 1
            ids, mask = ids[:, first:], mask[:, first:]
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            prefill = DynamicCache(config=config)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=prefill, use_cache=True,
                        logits_to_keep=1)
            tokens = draw(out.logits[:, -1], rows)
            width = ids.shape[1]
            if cache.capacity() == 0:
                cache.allocate(slots, [layer.keys for layer in prefill.layers], capacity)
                columns = torch.zeros((slots, capacity), dtype=attention_mask.dtype, device=device)
                state.row = torch.full((slots,), -1, dtype=torch.long, device=device)
                state.token = torch.full((slots,), pad_token_id, dtype=torch.long, device=device)
                state.position = torch.zeros(slots, dtype=torch.long, device=device)
            if cache.length < width:  # room on the left for this prompt
                shift(width - cache.length)
            for j, (row, token) in enumerate(zip(rows, tokens.tolist())):
                if ended(row, token):
                    continue
                slot = free.pop(0)
                for layer, done in zip(cache.layers, prefill.layers):
                    layer.place(slot, done.keys[j], done.values[j])
                columns[slot].zero_()
                columns[slot, cache.length - width:cache.length] = mask[j]
                state.row[slot], state.token[slot] = row, token
                state.position[slot] = positions[j, -1] + 1
            del prefill, out

    while True:
        free = (state.row < 0).nonzero().flatten().tolist() if state.row.numel() else list(range(slots))
        admit(free)
        live = state.row >= 0
        if not live.any():
            if waiting:
                continue
            break
        if not waiting and not bool(live.all()):  # the tail: decode only the rows still running
            keep = live.nonzero().squeeze(-1)
            for layer in cache.layers:
                layer.keep_rows(keep)
            columns = columns[keep]
            state.keep(keep)
        if cache.length + 1 > cache.capacity():  # drop the columns no live row uses
            used = columns[state.row >= 0, :cache.length].sum(0).nonzero()
            shift(-int(used.min().item()))
        at = cache.length
        columns[:, at] = 1  # free slots attend to their own pad token: no row is all-masked
        out = model(input_ids=state.token.unsqueeze(-1), attention_mask=columns[:, :at + 1],
                    position_ids=state.position.unsqueeze(-1), cache=cache, use_cache=True, logits_to_keep=1)
        busy = (state.row >= 0).nonzero().flatten().tolist()
        rows = state.row[busy].tolist()
        tokens = draw(out.logits[busy, -1], rows)
        del out
        for slot, row, token in zip(busy, rows, tokens.tolist()):
            if ended(row, token):
                state.row[slot], state.token[slot] = -1, pad_token_id
            else:
                state.token[slot] = token
                state.position[slot] += 1

    for layer in cache.layers:  # the cache's memory goes now, not whenever the closures above are collected
        layer.reset()
    columns = None
    width = max((len(a) for a in answers), default=0)
    tokens = torch.full((n, width), pad_token_id, dtype=torch.long, device=device)
    logp = torch.zeros((n, width), dtype=torch.float32, device=device)
    for r in range(n):
        tokens[r, :len(answers[r])] = torch.tensor(answers[r], dtype=torch.long)
        logp[r, :len(logps[r])] = torch.tensor(logps[r], dtype=torch.float32)
    return tokens, logp
