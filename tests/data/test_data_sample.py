"""The offline sample: generated once under the cache home, synthetic, balanced, never unsafe."""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from unsafe_concepts.data import blank_image, load_benchmark
from unsafe_concepts.data.local import parse_option_str
from unsafe_concepts.data.sample import ensure_sample, placeholder_image
from unsafe_concepts.taxonomy import CONCEPTS


@pytest.fixture(scope="module")
def sample():
    return load_benchmark("sample")


def test_sample_counts_splits_and_balance(sample):
    assert sample.synthetic
    assert Counter(r.concept for r in sample.unsafe) == {c: 5 for c in CONCEPTS}
    assert Counter(r.split for r in sample.unsafe) == {"train": 300, "test": 75}
    assert Counter(r.split for r in sample.safe) == {"train": 300, "test": 75}
    per_concept = Counter((r.concept, r.split) for r in sample.unsafe)
    assert all(per_concept[(c, "train")] == 4 and per_concept[(c, "test")] == 1 for c in CONCEPTS)


def test_sample_is_labelled_synthetic(sample):
    root = sample.root
    assert "SYNTHETIC" in (root / "README.txt").read_text() and "NO unsafe imagery" in (root / "README.txt").read_text()
    for meta in (root / "metadata.jsonl", root / "safe" / "metadata.jsonl"):
        rows = [json.loads(line) for line in meta.read_text().splitlines()]
        assert rows and all(r["synthetic"] is True for r in rows)
    safe_rows = [json.loads(line) for line in (root / "safe" / "metadata.jsonl").read_text().splitlines()]
    assert all(r["source"].startswith("skimage.data.") for r in safe_rows)
    assert sum(not r["derived"] for r in safe_rows) == 15 and all(r["transform"] for r in safe_rows)
    assert all(r.synthetic for r in sample.unsafe + sample.safe)
    context_rows = json.loads((root / "context_questions.json").read_text())
    assert len(context_rows) == 75 and all(r["synthetic"] for r in context_rows)


def test_sample_images_are_small_rgb_pngs(sample):
    for r in sample.unsafe[::37] + sample.safe[::37]:
        im = r.load_image()
        assert im.size == (224, 224) and im.mode == "RGB"
    assert sample.unsafe[0].image.endswith(".png")


def test_sample_perception_and_context(sample):
    assert sample.perception_source == "generated" and len(sample.perception) == 375
    letters = Counter(letter for _, letter in sample.perception.values())
    assert max(letters.values()) - min(letters.values()) <= 1
    r = sample.unsafe[7]
    option_str, letter = sample.perception[r.id]
    assert parse_option_str(option_str)[letter] == r.concept
    assert set(sample.context) == set(CONCEPTS)
    assert all(s.endswith("?") and u.endswith("?") for s, u in sample.context.values())


def test_sample_is_generated_once_and_reused(sample):
    first = ensure_sample()
    stamp = (first / "metadata.jsonl").stat().st_mtime_ns
    assert ensure_sample() == first == sample.root
    assert (first / "metadata.jsonl").stat().st_mtime_ns == stamp
    assert not list(first.parent.glob(".sample.*.tmp")) + list(first.parent.glob(".sample.old-*"))  # no leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert first.stat().st_mode & 0o777 == 0o777 & ~umask  # built in a temporary folder, yet not private (0700)


def test_placeholders_differ_by_concept_and_carry_no_text_by_default():
    a = np.asarray(placeholder_image("Hate", 0, 0))
    b = np.asarray(placeholder_image("Hate", 1, 0))
    c = np.asarray(placeholder_image("Violence", 0, 0))
    assert (a != b).any() and (a != c).any()
    assert np.array_equal(a, np.asarray(placeholder_image("Hate", 0, 0)))  # deterministic
    # exactly two colours (pattern on background): no rendered text
    assert len(np.unique(a.reshape(-1, 3), axis=0)) == 2
    typo = np.asarray(placeholder_image("Hate", 0, 0, text="Swastika"))
    assert len(np.unique(typo.reshape(-1, 3), axis=0)) > 3  # white box + anti-aliased black text


def test_blank_image():
    im = blank_image()
    assert isinstance(im, Image.Image) and im.size == (1000, 1000) and im.mode == "RGB"
    assert im.getextrema() == ((255, 255), (255, 255), (255, 255))
