"""The benchmark splits: unsafe per concept (exact vs the reference), safe balanced to it."""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pytest

from unsafe_concepts import paths
from unsafe_concepts.data import load_benchmark
from unsafe_concepts.data.records import SAFE, SAFE_CATEGORY, UNSAFE, ImageRecord
from unsafe_concepts.data.splits import benchmark_safe_test_indices, split_safe, split_unsafe

REF = paths.reference_dir()
needs_reference = pytest.mark.skipif(REF is None, reason="shared/reference not present")
RESULTS = "responses/llava-1.5-7b/original/UnsafeConcepts_TEST_result.json"


def reference_records() -> list[ImageRecord]:
    rows = [json.loads(line) for line in (REF / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return [ImageRecord(id=r["image_filename"], image=None, category=r["category"], concept=r["unsafe_concept"],
                        label=UNSAFE) for r in rows]


def reference_test_images(kind: str) -> list[str]:
    rows = json.loads((REF / RESULTS).read_text())
    prefix = {"unsafe": "data/images/", "safe": "data/imagenet_1k/"}[kind]
    return [r["image_fname"][len("data/"):] for r in rows if r["image_fname"].startswith(prefix)]


@needs_reference
def test_unsafe_split_reproduces_the_reference_test_set_exactly():
    records = split_unsafe(reference_records())
    counts = Counter(r.split for r in records)
    assert counts == {"train": 1222, "test": 345}
    test_ids = {r.id for r in records if r.split == "test"}
    reference = reference_test_images("unsafe")
    assert len(reference) == 345
    assert test_ids == set(reference)


@needs_reference
def test_concepts_are_visited_in_sorted_order_not_metadata_order():
    """The non-obvious part: iterating concepts in metadata order gives a different test set."""
    records = reference_records()
    by_concept = defaultdict(list)
    for r in records:
        by_concept[r.concept].append(r.id)
    rng = random.Random(2024)
    test = set()
    for concept in by_concept:  # metadata (first-seen) order
        ids = list(by_concept[concept])
        rng.shuffle(ids)
        test.update(ids[int(len(ids) * 0.8):])
    assert test != set(reference_test_images("unsafe"))


def test_unsafe_split_is_per_concept_80_20_and_keeps_order():
    records = [ImageRecord(id=f"images/{i}.png", image=None, category="Violence", concept=c, label=UNSAFE)
               for i, c in enumerate(["Torture"] * 10 + ["Homicide"] * 5 + ["Arson"] * 1 + ["Torture"] * 3)]
    out = split_unsafe(records)
    assert [r.id for r in out] == [r.id for r in records]
    per = Counter((r.concept, r.split) for r in out)
    assert per[("Torture", "train")] == 10 and per[("Torture", "test")] == 3  # int(13 * 0.8) = 10
    assert per[("Homicide", "train")] == 4 and per[("Homicide", "test")] == 1
    assert per[("Arson", "train")] == 0 and per[("Arson", "test")] == 1  # int(0.8) = 0
    assert split_unsafe(records) == out  # deterministic


def _safe_pool(n: int, with_index: bool):
    records = [ImageRecord(id=f"safe/images/{i}.png", image=None, category=SAFE_CATEGORY, concept=f"class {i}",
                           label=SAFE) for i in range(n)]
    return records, ({r.id: i for i, r in enumerate(records)} if with_index else None)


def test_safe_split_seeded_shuffle_truncates_to_unsafe_counts():
    pool, _ = _safe_pool(100, with_index=False)
    out, method = split_safe(pool, n_train=50, n_test=12)
    assert method == "seeded-shuffle"
    train = [r.id for r in out if r.split == "train"]
    test = [r.id for r in out if r.split == "test"]
    assert len(train) == 50 and len(test) == 12 and not set(train) & set(test)
    shuffled = [r.id for r in pool]
    random.Random(2024).shuffle(shuffled)
    assert train == shuffled[:50] and test == shuffled[80:92]  # first 80% train, the rest test, truncated
    assert split_safe(pool, 50, 12) == (out, method)


def test_safe_split_uses_the_shipped_benchmark_indices_for_the_benchmark_pool():
    pool, hub_index = _safe_pool(1800, with_index=True)
    out, method = split_safe(pool, n_train=1222, n_test=345, hub_index=hub_index)
    assert method == "benchmark-indices"
    test = [hub_index[r.id] for r in out if r.split == "test"]
    train = [hub_index[r.id] for r in out if r.split == "train"]
    assert test == list(benchmark_safe_test_indices()) and len(test) == 345
    assert len(train) == 1222 and not set(train) & set(test)
    # a pool that lacks some of the benchmark's indices is not the benchmark's: documented algorithm
    small, small_index = _safe_pool(500, with_index=True)
    assert split_safe(small, 100, 25, hub_index=small_index)[1] == "seeded-shuffle"


@needs_reference
def test_shipped_safe_test_indices_are_the_reference_ones():
    reference = [int(name.rsplit("/", 1)[1][:-4]) for name in reference_test_images("safe")]
    assert list(benchmark_safe_test_indices()) == reference


def test_load_benchmark_balances_safe_to_unsafe(small_dataset):
    bench = load_benchmark(str(small_dataset))
    u = Counter(r.split for r in bench.unsafe)
    s = Counter(r.split for r in bench.safe)
    assert u == {"train": 4 + 8 + 0 + 3, "test": 1 + 2 + 1 + 1}
    assert s == u  # 30 safe images: 24 train / 6 test, truncated to 15 / 5
    assert all(r.label == SAFE and r.category == SAFE_CATEGORY and r.id.startswith("safe/") for r in bench.safe)
    assert bench.safe_split_method == "seeded-shuffle" and bench.notes == []


def test_load_benchmark_notes_imbalance_when_too_few_safe_images(tmp_path):
    from _data_helpers import make_dataset

    root = make_dataset(tmp_path / "ds", {"Arson": 20}, safe=5)
    bench = load_benchmark(str(root))
    assert Counter(r.split for r in bench.safe) == {"train": 4, "test": 1}
    assert bench.notes and "not enough safe images" in bench.notes[0]
