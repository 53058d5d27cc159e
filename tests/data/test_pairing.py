"""The seed-42 prompt pairing reproduces every published prompt of the reference's answer files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unsafe_concepts import paths
from unsafe_concepts.data.pairing import reference_prompt_indices
from unsafe_concepts.prompts import ALIGNMENT_PROMPTS

_REF = paths.reference_dir()
RESPONSES = (_REF / "responses/llava-1.5-7b") if _REF else Path("/nonexistent")
needs_reference = pytest.mark.skipif(not RESPONSES.is_dir(), reason="reference answers not available")


def _published(name: str) -> list[tuple[str, Path]]:
    return [(p.parent.name, p) for p in sorted(RESPONSES.glob(f"*/{name}"))]


def _check(path: Path, expected_rows: int | None) -> None:
    rows = json.loads(path.read_text())
    if expected_rows is not None:
        assert len(rows) == expected_rows
    assert [int(r["idx"]) for r in rows] == list(range(len(rows))), "rows not in file order"
    published = [ALIGNMENT_PROMPTS.index(r["prompt"]) for r in rows]
    assert published == reference_prompt_indices(len(rows))


@needs_reference
@pytest.mark.parametrize("model,path", _published("UnsafeConcepts_TEST_result.json"))
def test_unsafeconcepts_test_prompts_reproduced(model: str, path: Path) -> None:
    _check(path, 690)


@needs_reference
@pytest.mark.parametrize("model,path", _published("SMID_result.json") + _published("NSFW_result.json"))
def test_smid_and_nsfw_prompts_reproduced(model: str, path: Path) -> None:
    _check(path, None)


def test_all_four_published_models_are_checked() -> None:
    if RESPONSES.is_dir():
        assert {m for m, _ in _published("UnsafeConcepts_TEST_result.json")} == {"original", "sft", "dpo", "ppo"}


def test_same_stream_as_numpy_global_seed() -> None:
    state = np.random.get_state()
    try:
        np.random.seed(42)
        expected = np.random.choice(5, size=690, replace=True).tolist()
    finally:
        np.random.set_state(state)
    assert reference_prompt_indices(690) == expected
    # no side effect on numpy's global generator
    before = np.random.get_state()[1].copy()
    reference_prompt_indices(10)
    assert (np.random.get_state()[1] == before).all()


def test_prefix_stable_and_edges() -> None:
    assert reference_prompt_indices(100)[:50] == reference_prompt_indices(50)
    assert reference_prompt_indices(0) == []
    assert set(reference_prompt_indices(690)) == {0, 1, 2, 3, 4}
    assert reference_prompt_indices(20, seed=1) != reference_prompt_indices(20)
    with pytest.raises(ValueError):
        reference_prompt_indices(-1)


@needs_reference
@pytest.mark.parametrize("model,path,n_rows", [
    ("sft", RESPONSES / "sft/SMID_result.json", 2941),  # SMID has 2,941 images
    ("dpo", RESPONSES / "dpo/SMID_result.json", 2941),
    ("sft", RESPONSES / "sft/NSFW_result.json", 1800),
])
def test_smid_and_nsfw_subsets_reproduced(model: str, path: Path, n_rows: int) -> None:
    from unsafe_concepts.data.pairing import reference_subset_indices

    published = [int(Path(r["image_fname"]).stem) for r in json.loads(path.read_text())]
    assert published == reference_subset_indices(n_rows)


@needs_reference
def test_ppo_nsfw_file_holds_every_row_in_order() -> None:
    from unsafe_concepts.data.pairing import reference_subset_indices

    rows = json.loads((RESPONSES / "ppo/NSFW_result.json").read_text())
    assert [int(Path(r["image_fname"]).stem) for r in rows] == list(range(1800))
    assert reference_subset_indices(1800, k=1800) == list(range(1800))
