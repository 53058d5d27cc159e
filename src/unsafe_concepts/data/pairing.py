"""The reference's pairing of evaluation images with one alignment prompt each.

The reference code (TrustAIRLab/SaferVLM) asks every image of UnsafeConcepts_TEST, SMID and the NSFW
set exactly one of the five alignment prompts, drawn by

    numpy.random.seed(42); numpy.random.choice(5, size=n, replace=True)

over the images in file order. Reproducing it needs numpy's legacy global generator (the
``RandomState`` Mersenne Twister), not ``numpy.random.default_rng``: the draws differ otherwise.
A private ``RandomState`` gives the same stream without touching numpy's global state.
"""
from __future__ import annotations

import numpy as np

REFERENCE_SEED = 42


def reference_prompt_indices(n: int, seed: int = REFERENCE_SEED, n_prompts: int = 5) -> list[int]:
    """Prompt index (0-based, into the alignment prompts) for each of ``n`` images in file order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if n == 0:
        return []
    # RandomState(seed).choice == numpy.random.seed(seed); numpy.random.choice(...) (same legacy MT19937).
    return [int(i) for i in np.random.RandomState(seed).choice(n_prompts, size=n, replace=True)]
