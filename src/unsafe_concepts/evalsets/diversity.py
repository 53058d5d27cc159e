"""Response diversity as 1 - Self-BLEU (Zhu et al., Texygen 2018), the protocol's measure of how
templated a fine-tuned model's answers have become.

As the reference computes it (the default, ``tokenizer="reference"``): Self-BLEU = the mean over
answers of NLTK ``sentence_bleu(references=all OTHER answers, hypothesis=answer)`` with the default
uniform 4-gram weights and ``SmoothingFunction().method1``; tokens = ``str.split()`` (whitespace,
case kept, punctuation stays on its word); an empty answer is skipped as a hypothesis but stays
among the references of the others. Reported overall and per half (``self_bleu_by_half``).

``tokenizer="words"`` is this project's earlier variant (lower-cased, words and punctuation marks
split apart by ``\\w+|[^\\w\\s]``), kept as an option; it gives different numbers.

Implementation: NLTK's ``sentence_bleu`` against n-1 references costs O(n^2) n-gram counting (about
a minute for 690 answers). ``self_bleu`` computes the same quantity exactly in O(total n-grams):
for each n-gram it keeps the largest and second-largest count over all answers, so the largest
count among the *other* answers is known for each hypothesis; the closest reference length comes
from a count of answer lengths. Every float operation then mirrors NLTK's, so the scores agree to
the last bit (a test compares against ``sentence_bleu`` itself).
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from fractions import Fraction

_TOKEN = re.compile(r"\w+|[^\w\s]")
MAX_N = 4
EPSILON = 0.1  # SmoothingFunction().method1's epsilon
TOKENIZERS = ("reference", "words")


def tokenize(text: str, tokenizer: str = "words") -> list[str]:
    """``words``: lower-cased words and punctuation marks; ``reference``: ``str.split()``."""
    if tokenizer == "reference":
        return (text or "").split()
    if tokenizer == "words":
        return _TOKEN.findall((text or "").lower())
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")


def _ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _max_other_counts(counts: list[Counter]):
    """For each n-gram: (largest count, index holding it, largest count among all other texts)."""
    best: dict[tuple, list] = {}  # ngram -> [max1, holder, max2]
    for j, c in enumerate(counts):
        for g, k in c.items():
            entry = best.get(g)
            if entry is None:
                best[g] = [k, j, 0]
            elif k > entry[0]:
                best[g] = [k, j, entry[0]]
            elif k > entry[2]:
                entry[2] = k
    return best


def _closest_other_length(length_counts: Counter, own: int) -> int:
    """NLTK's closest_ref_length over all texts but one of length ``own``: min by (|len - own|, len)."""
    candidates = [ln for ln, k in length_counts.items() if k > (1 if ln == own else 0)]
    return min(candidates, key=lambda ln: (abs(ln - own), ln))


def _bleu(numerators: list[int], denominators: list[int], hyp_len: int, ref_len: int) -> float:
    """NLTK corpus_bleu for one hypothesis, method1 smoothing, uniform weights (same float steps)."""
    if numerators[0] == 0:
        return 0.0
    if hyp_len > ref_len:
        bp = 1
    elif hyp_len == 0:
        bp = 0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    p_n = [(num + EPSILON) / den if num == 0 else Fraction(num, den) for num, den in zip(numerators, denominators)]
    s = (0.25 * math.log(p) for p in p_n if p > 0)
    return bp * math.exp(math.fsum(s))


def sentence_bleus(token_lists: list[list[str]]) -> list[float | None]:
    """For each text, NLTK ``sentence_bleu(all other texts, text, smoothing_function=method1)``;
    None for an empty text (skipped as a hypothesis, still a reference of the others)."""
    n_texts = len(token_lists)
    if n_texts < 2:
        return [None] * n_texts
    per_order = []
    for n in range(1, MAX_N + 1):
        counts = [_ngram_counts(t, n) for t in token_lists]
        per_order.append((counts, _max_other_counts(counts)))
    lengths = Counter(len(t) for t in token_lists)
    out: list[float | None] = []
    for i, tokens in enumerate(token_lists):
        if not tokens:
            out.append(None)
            continue
        nums, dens = [], []
        for counts, best in per_order:
            num = 0
            for g, k in counts[i].items():
                max1, holder, max2 = best[g]
                # max over the others: max1 unless i alone holds it (then the runner-up, max2)
                other = max1 if holder != i or max2 == max1 else max2
                num += min(k, other)
            nums.append(num)
            dens.append(max(1, sum(counts[i].values())))
        out.append(_bleu(nums, dens, len(tokens), _closest_other_length(lengths, len(tokens))))
    return out


def self_bleu(texts: list[str], *, max_texts: int | None = None, seed: int = 0,
              tokenizer: str = "reference") -> dict:
    """{'self_bleu', 'one_minus_self_bleu', 'n', 'n_empty', 'tokenizer'}; ``n`` counts the scored
    (non-empty) answers. ``max_texts`` scores a seeded sample (not the reference's way)."""
    tokens = [tokenize(t, tokenizer) for t in texts]
    if max_texts and len(tokens) > max_texts:
        tokens = random.Random(seed).sample(tokens, max_texts)
    n_empty = sum(not t for t in tokens)
    if tokenizer == "words":  # the earlier variant also dropped empty texts from the references
        tokens = [t for t in tokens if t]
    scores = [s for s in sentence_bleus(tokens) if s is not None]
    if not scores or len(tokens) < 2:
        return {"self_bleu": None, "one_minus_self_bleu": None, "n": len(scores), "n_empty": n_empty,
                "tokenizer": tokenizer}
    sb = sum(scores) / len(scores)
    return {"self_bleu": sb, "one_minus_self_bleu": 1.0 - sb, "n": len(scores), "n_empty": n_empty,
            "tokenizer": tokenizer}


def self_bleu_by_half(texts: list[str], labels: list[str], *, tokenizer: str = "reference") -> dict:
    """Self-BLEU overall and within each label group ("safe", "unsafe": the images' halves), each
    group's answers scored against the other answers of the same group."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    out = {"overall": self_bleu(texts, tokenizer=tokenizer)}
    for label in sorted(set(labels)):
        out[label] = self_bleu([t for t, lab in zip(texts, labels) if lab == label], tokenizer=tokenizer)
    return out


def one_minus_self_bleu(texts: list[str], *, max_texts: int | None = None, seed: int = 0,
                        tokenizer: str = "reference") -> float | None:
    """1 - Self-BLEU of ``texts`` (None for fewer than two texts or no non-empty one)."""
    return self_bleu(texts, max_texts=max_texts, seed=seed, tokenizer=tokenizer)["one_minus_self_bleu"]
