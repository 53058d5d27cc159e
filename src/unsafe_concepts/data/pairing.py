"""The reference's pairing of evaluation images with one alignment prompt each.

The reference code (TrustAIRLab/SaferVLM) asks every image of UnsafeConcepts_TEST, SMID and the NSFW
set exactly one of the five alignment prompts, drawn by

    numpy.random.seed(42); numpy.random.choice(5, size=n, replace=True)

over the images in file order. Reproducing it needs numpy's legacy global generator (the
``RandomState`` Mersenne Twister), not ``numpy.random.default_rng``: the draws differ otherwise.
A private ``RandomState`` gives the same stream without touching numpy's global state.

SMID and NSFW are first subsampled: the reference's answer files hold 500 images drawn by
``random.seed(2024); random.sample(range(n_rows), 500)`` (Python's ``random``), in the order drawn,
with the image files named by row number. That reproduces the images of ``SMID_result.json``
(n_rows = 2,941, the whole SMID) and of the 500-image ``NSFW_result.json`` (n_rows = 1,800); the PPO
model's NSFW file instead holds all 1,800 rows in order.
"""
from __future__ import annotations

import random

import numpy as np

REFERENCE_SEED = 42
SUBSET_SEED = 2024
SUBSET_SIZE = 500


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


def reference_subset_indices(n_rows: int, k: int = SUBSET_SIZE, seed: int = SUBSET_SEED) -> list[int]:
    """Row numbers of the reference's evaluation subset of a hub set (SMID, NSFW), in the order drawn;
    every row (in order) when the set has ``k`` rows or fewer."""
    if n_rows < 0 or k < 0:
        raise ValueError(f"n_rows and k must be >= 0, got {n_rows}, {k}")
    if n_rows <= k:
        return list(range(n_rows))
    return random.Random(seed).sample(range(n_rows), k)  # == random.seed(seed); random.sample(...)
