"""Verdicts from the next-token distribution: how much probability a model puts on each answer option.

The protocol asks yes/no questions (alignment) and A-D questions (perception), then generates up to
512 tokens and has a judge read the verdict out of the answer. Reading it straight from the
distribution of the answer's first token needs one forward pass instead.

An option's mass is the summed probability of every vocabulary token that spells it, ignoring case
and surrounding whitespace: for "Yes" that is "Yes", " yes", "YES", "yes" ... (whichever of those the
tokenizer has as single tokens). Spellings that need several tokens ("Y" + "ES") are not counted: their
first token ("Y") does not determine the option. The options' masses are then normalised to sum to 1.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from unsafe_concepts.models.base import OptionProbs, normalise_option

#: Characters tokenizers use to write whitespace inside a token, and whitespace itself.
_MARKERS = "\u0120\u010a\u0109\u2581 \t\n\r"


def option_token_ids(tokenizer, options: Sequence[str]) -> dict[str, list[int]]:
    """For each option, the ids of the single tokens that spell it (case and whitespace ignored).

    Special tokens are never counted. Raises ValueError if an option has no single-token spelling."""
    wanted = {normalise_option(o): o for o in options}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    # Decoding all ~50k tokens one by one takes seconds: decode only the candidates, the raw tokens
    # that spell an option once the space/newline markers of byte-level BPE ("Ġ", "Ċ") and
    # SentencePiece ("▁") are dropped, plus SentencePiece's byte tokens ("<0x41>").
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    candidates = [i for i, r in enumerate(raw)
                  if isinstance(r, str) and (r.strip(_MARKERS).casefold() in wanted or r.startswith("<0x"))]
    texts = tokenizer.batch_decode([[i] for i in candidates], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    ids: dict[str, list[int]] = {o: [] for o in options}
    for i, text in zip(candidates, texts):
        option = wanted.get(normalise_option(text))
        if option is not None and i not in special:
            ids[option].append(i)
    missing = [o for o, found in ids.items() if not found]
    if missing:
        raise ValueError(f"no single token spells {missing!r} in this tokenizer: "
                         "these options cannot be scored from the next-token distribution")
    return ids


def from_log_probs(log_probs, token_ids: dict[str, list[int]], latency_s: float = 0.0) -> OptionProbs:
    """One row of next-token log-probabilities (a 1-D torch tensor over the vocabulary) -> OptionProbs."""
    import torch

    log_mass = {o: float(torch.logsumexp(log_probs[ids], dim=0)) for o, ids in token_ids.items()}
    return _normalise(log_mass, source="full", latency_s=latency_s)


def from_top_logprobs(top: Sequence[tuple[str, float]], options: Sequence[str], k: int,
                      latency_s: float = 0.0) -> OptionProbs:
    """A server's top-k (token text, log-probability) pairs -> OptionProbs.

    Only the k most likely tokens are known: an option absent from them gets mass 0 (its true mass is
    below the k-th token's). If no option is among them, the verdict is an error, not a guess."""
    wanted = {normalise_option(o): o for o in options}
    seen: dict[str, list[float]] = {o: [] for o in options}
    for token, logprob in top:
        option = wanted.get(normalise_option(token))
        if option is not None and logprob is not None and math.isfinite(logprob):
            seen[option].append(float(logprob))
    if not any(seen.values()):
        shown = ", ".join(repr(t) for t, _ in list(top)[:5])
        return OptionProbs(probs=None, error=(f"none of the options {list(options)} is among the model's top {k} "
                                              f"next tokens (most likely: {shown})"),
                           latency_s=latency_s, source=f"top-{k}")
    log_mass = {o: (_logsumexp(v) if v else -math.inf) for o, v in seen.items()}
    return _normalise(log_mass, source=f"top-{k}", latency_s=latency_s)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _normalise(log_mass: dict[str, float], *, source: str, latency_s: float) -> OptionProbs:
    """Log-masses -> raw masses and probabilities normalised over the options (in log space: a
    model that puts 1e-50 on both options still gets a well-defined verdict)."""
    total = _logsumexp([v for v in log_mass.values() if v != -math.inf])
    probs = {o: (math.exp(v - total) if v != -math.inf else 0.0) for o, v in log_mass.items()}
    mass = {o: (math.exp(v) if v != -math.inf else 0.0) for o, v in log_mass.items()}
    return OptionProbs(probs=probs, mass=mass, latency_s=latency_s, source=source)
