"""Response diversity as 1 - Self-BLEU (Zhu et al., Texygen 2018), the protocol's measure of how
templated a fine-tuned model's answers have become.

Self-BLEU = mean over texts of NLTK ``sentence_bleu(hypothesis=text_i, references=all other texts)``
with the default uniform 4-gram weights and ``SmoothingFunction().method1``, as the protocol states.

Tokenisation: lower-cased, split into words and single punctuation marks with the regex
``\\w+|[^\\w\\s]``. (NLTK's ``word_tokenize`` would need the ``punkt`` data download; on English
answers this regex gives the same tokens except for contractions, which it splits at the
apostrophe.) Texts with no tokens are left out and counted.
"""
from __future__ import annotations

import random
import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall((text or "").lower())


def self_bleu(texts: list[str], *, max_texts: int | None = None, seed: int = 0) -> dict:
    """{'self_bleu', 'one_minus_self_bleu', 'n', 'n_empty'}; ``max_texts`` scores a seeded sample
    (Self-BLEU is quadratic in the number of texts)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    tokens = [tokenize(t) for t in texts]
    n_empty = sum(not t for t in tokens)
    tokens = [t for t in tokens if t]
    if max_texts and len(tokens) > max_texts:
        tokens = random.Random(seed).sample(tokens, max_texts)
    if len(tokens) < 2:
        return {"self_bleu": None, "one_minus_self_bleu": None, "n": len(tokens), "n_empty": n_empty}
    smooth = SmoothingFunction().method1
    scores = [sentence_bleu(tokens[:i] + tokens[i + 1:], hyp, smoothing_function=smooth)
              for i, hyp in enumerate(tokens)]
    sb = sum(scores) / len(scores)
    return {"self_bleu": sb, "one_minus_self_bleu": 1.0 - sb, "n": len(tokens), "n_empty": n_empty}


def one_minus_self_bleu(texts: list[str], *, max_texts: int | None = None, seed: int = 0) -> float | None:
    """1 - Self-BLEU of ``texts`` (None for fewer than two non-empty texts)."""
    return self_bleu(texts, max_texts=max_texts, seed=seed)["one_minus_self_bleu"]
