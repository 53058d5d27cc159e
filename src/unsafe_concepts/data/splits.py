"""The benchmark's train/test splits (seed 2024, 80/20), unsafe per concept and safe balanced to it.

Unsafe images (reproduces the reference split exactly: 1,222 train / 345 test, the same 345 test
images as the reference results): ONE ``random.Random(2024)`` for the whole dataset; concepts are
visited in ``sorted()`` order of their names (not metadata order); per concept its images are taken
in metadata order, shuffled with that generator, and the first ``int(n * 0.8)`` are train.

Safe images: the documented algorithm (shuffle with seed 2024, first 80% train, then truncate train
and test to the unsafe counts). The reference's safe test set cannot be reproduced from that
description, so when the safe folder is the benchmark's (rows carry ``hub_index``, the row number in
``yiting/imagenet_1k_unique_class``, and all 345 shipped test indices are present) the shipped test
indices are used instead; see docs/data.md.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import replace
from functools import lru_cache

from unsafe_concepts.data.records import ImageRecord
from unsafe_concepts.paths import RESOURCES

SEED = 2024
TRAIN_FRACTION = 0.8
TRAIN, TEST = "train", "test"
BENCHMARK_SAFE_TEST_FILE = RESOURCES / "data" / "benchmark_safe_test_indices.json"


def split_unsafe(records: list[ImageRecord], seed: int = SEED) -> list[ImageRecord]:
    """The records in their original order, each with ``split`` set (the reference algorithm)."""
    by_concept: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_concept[r.concept].append(i)
    rng = random.Random(seed)  # created once: the shuffles of all concepts share one stream
    split_of: dict[int, str] = {}
    for concept in sorted(by_concept):  # sorted names, not metadata order: verified 345/345 against the reference
        indices = list(by_concept[concept])
        rng.shuffle(indices)
        n_train = int(len(indices) * TRAIN_FRACTION)
        for j, i in enumerate(indices):
            split_of[i] = TRAIN if j < n_train else TEST
    return [replace(r, split=split_of[i]) for i, r in enumerate(records)]


@lru_cache(maxsize=1)
def benchmark_safe_test_indices() -> tuple[int, ...]:
    """The reference's 345 safe test images as row indices of yiting/imagenet_1k_unique_class."""
    return tuple(json.loads(BENCHMARK_SAFE_TEST_FILE.read_text())["test_indices"])


def is_benchmark_safe_pool(hub_index: dict[str, int]) -> bool:
    """True when the safe folder is the benchmark's: every shipped test index is one of its rows."""
    present = set(hub_index.values())
    return bool(present) and all(i in present for i in benchmark_safe_test_indices())


def split_safe(records: list[ImageRecord], n_train: int, n_test: int, *,
               hub_index: dict[str, int] | None = None, seed: int = SEED) -> tuple[list[ImageRecord], str]:
    """Safe records with ``split`` set, truncated to ``n_train`` / ``n_test`` for balance.

    Returns (train records then test records, method) where method is "benchmark-indices" or
    "seeded-shuffle". Images beyond the truncation are left out (the protocol never uses them)."""
    hub_index = hub_index or {}
    if is_benchmark_safe_pool(hub_index):
        by_index = {hub_index[r.id]: r for r in records if r.id in hub_index}
        test = [by_index[i] for i in benchmark_safe_test_indices()]
        test_ids = {r.id for r in test}
        rest = [r for r in records if r.id not in test_ids]
        random.Random(seed).shuffle(rest)
        train, method = rest, "benchmark-indices"
    else:
        pool = list(records)
        random.Random(seed).shuffle(pool)
        k = int(len(pool) * TRAIN_FRACTION)
        train, test, method = pool[:k], pool[k:], "seeded-shuffle"
    train = [replace(r, split=TRAIN) for r in train[:n_train]]
    test = [replace(r, split=TEST) for r in test[:n_test]]
    return train + test, method


def counts(records: list[ImageRecord]) -> dict[str, int]:
    out = {TRAIN: 0, TEST: 0}
    for r in records:
        out[r.split] = out.get(r.split, 0) + 1
    return out


def cli_splits(args) -> int:
    """`unsafe-concepts data splits --data ...`: train/test counts of the unsafe and safe images."""
    from unsafe_concepts.data import load_benchmark

    bench = load_benchmark(args.data, safe=getattr(args, "safe_data", None))
    u, s = counts(bench.unsafe), counts(bench.safe)
    print(f"dataset: {bench.root}" + ("  (synthetic offline sample)" if bench.synthetic else ""))
    print(f"{'':8}{'train':>8}{'test':>8}{'total':>8}")
    print(f"{'unsafe':8}{u[TRAIN]:>8}{u[TEST]:>8}{u[TRAIN] + u[TEST]:>8}")
    print(f"{'safe':8}{s[TRAIN]:>8}{s[TEST]:>8}{s[TRAIN] + s[TEST]:>8}")
    print(f"safe split: {bench.safe_split_method or 'no safe images'}")
    for note in bench.notes:
        print(f"note: {note}")
    return 0
