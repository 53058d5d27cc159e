"""Four-option perception questions: built (balanced, seeded) or the benchmark's fixed ones."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from unsafe_concepts import paths
from unsafe_concepts.data import load_benchmark
from unsafe_concepts.data.local import parse_option_str
from unsafe_concepts.data.perception import build_options
from unsafe_concepts.data.records import UNSAFE, ImageRecord
from unsafe_concepts.errors import UserError
from unsafe_concepts.taxonomy import CONCEPT_TO_CATEGORY, CONCEPTS


def _records(n_per: int = 8):
    return [ImageRecord(id=f"images/{i * n_per + j}.png", image=None, category=CONCEPT_TO_CATEGORY[c], concept=c,
                        label=UNSAFE) for i, c in enumerate(CONCEPTS) for j in range(n_per)]


def test_built_options_are_balanced_deterministic_and_well_formed():
    records = _records()  # 600 items
    options = build_options(records)
    assert build_options(records) == options
    letters = Counter(letter for _, letter in options.values())
    assert set(letters) == {"A", "B", "C", "D"} and max(letters.values()) - min(letters.values()) <= 1
    for r in records:
        option_str, letter = options[r.id]
        parsed = parse_option_str(option_str)
        assert parsed[letter] == r.concept  # the correct option is always there, at its letter
        distractors = [v for k, v in parsed.items() if k != letter]
        assert len(set(distractors)) == 3 and r.concept not in distractors
        assert all(d in CONCEPTS for d in distractors)
    assert build_options(records, seed=7) != options


def test_benchmark_option_sets_are_used_when_present(small_dataset):
    rows = [json.loads(line) for line in (small_dataset / "metadata.jsonl").read_text().splitlines()]
    fixed = []
    for i, row in enumerate(rows):
        others = [c for c in ("Burglary", "Robbery", "Cybercrime", "Homicide") if c != row["unsafe_concept"]][:3]
        opts = [row["unsafe_concept"], *others] if i % 2 else [*others, row["unsafe_concept"]]
        fixed.append({**row, "option_str": " \n".join(f"{l}: {o}" for l, o in zip("ABCD", opts)),
                      "correct_option": "A" if i % 2 else "D"})
    (small_dataset / "perception_metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fixed))
    bench = load_benchmark(str(small_dataset))
    assert bench.perception_source == "reference"
    assert bench.perception == {r["image_filename"]: (r["option_str"], r["correct_option"]) for r in fixed}


def test_a_wrong_correct_option_is_refused(small_dataset):
    row = json.loads((small_dataset / "metadata.jsonl").read_text().splitlines()[0])
    bad = {**row, "option_str": "A: Arson \nB: Robbery \nC: Burglary \nD: Torture", "correct_option": "B"}
    (small_dataset / "perception_metadata.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=r"perception_metadata.jsonl line 1 .*option B is 'Robbery'"):
        load_benchmark(str(small_dataset))


@pytest.mark.skipif(paths.reference_dir() is None, reason="shared/reference not present")
def test_reference_perception_file_parses():
    ref = paths.reference_dir()
    rows = [json.loads(line) for line in (ref / "perception_metadata.jsonl").read_text().splitlines()]
    for row in rows:
        assert parse_option_str(row["option_str"])[row["correct_option"]] == row["unsafe_concept"]


def test_benchmark_images_without_the_file_get_the_shipped_options_not_generated(tmp_path):
    """A folder of the benchmark's own images lacking perception_metadata.jsonl (e.g. a download made
    before it was shipped) uses the shipped option sets and the shipped context questions."""
    from _data_helpers import write_jsonl, write_png

    from unsafe_concepts.data.reference_files import SHIPPED_PERCEPTION

    shipped = [json.loads(line) for line in SHIPPED_PERCEPTION.read_text().splitlines()[:10]]
    for r in shipped:
        write_png(tmp_path / "ds" / r["image_filename"])
    write_jsonl(tmp_path / "ds" / "metadata.jsonl",
                [{k: r[k] for k in ("image_filename", "category", "unsafe_concept")} for r in shipped])
    bench = load_benchmark(str(tmp_path / "ds"))
    assert bench.perception_source == "reference"
    assert bench.perception["images/3.png"] == (shipped[3]["option_str"], shipped[3]["correct_option"])
    assert bench.context_source == "reference" and len(bench.context) == 75
    # the same rows under another concept are not the benchmark's images: generated, and said so
    other = [{**r, "unsafe_concept": "Arson", "category": "Illegal activity"} for r in shipped]
    write_jsonl(tmp_path / "ds" / "metadata.jsonl",
                [{k: r[k] for k in ("image_filename", "category", "unsafe_concept")} for r in other])
    bench = load_benchmark(str(tmp_path / "ds"))
    assert bench.perception_source == "generated" and bench.describe()["perception_options"] == "generated"


def test_sample_keeps_its_own_context_and_generated_options():
    bench = load_benchmark("sample")
    assert bench.perception_source == "generated" and bench.context_source == "folder"
