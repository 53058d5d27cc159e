"""Four-option perception questions: the benchmark's fixed option sets when the dataset has them,
otherwise seeded ones built here.

Built options: the image's concept plus three distinct distractors drawn from the other 74 concepts;
the correct letter's position is balanced (letters dealt round-robin, then shuffled, so each of A-D
is correct for n/4 items, +-1). Deterministic for a given seed and record order.
"""
from __future__ import annotations

import random

from unsafe_concepts import prompts
from unsafe_concepts.data.records import ImageRecord
from unsafe_concepts.taxonomy import CONCEPTS

SEED = 2024


def build_options(records: list[ImageRecord], seed: int = SEED) -> dict[str, tuple[str, str]]:
    """``{record id: (option_str, correct_letter)}`` for every record (in the given order)."""
    rng = random.Random(seed)
    letters = [prompts.PERCEPTION_LETTERS[i % 4] for i in range(len(records))]
    rng.shuffle(letters)
    out: dict[str, tuple[str, str]] = {}
    for record, letter in zip(records, letters):
        others = [c for c in CONCEPTS if c != record.concept]
        distractors = rng.sample(others, 3)
        position = prompts.PERCEPTION_LETTERS.index(letter)
        options = distractors[:position] + [record.concept] + distractors[position:]
        out[record.id] = (prompts.format_options(options), letter)
    return out
