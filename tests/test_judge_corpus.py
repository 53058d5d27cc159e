"""The hand-labelled judge corpus: schema, label sets, frozen stratified split, enough hard cases."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from unsafe_concepts.judges.base import labels_for
from unsafe_concepts.paths import RESOURCES

CORPUS = RESOURCES / "judge_corpus" / "labelled.jsonl"
REQUIRED = ("id", "source", "model", "task", "prompt", "response", "label", "split")
TASKS = {"alignment", "alignment_text_only", "alignment_context", "perception"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def is_hard(response: str) -> bool:
    """An answer that does not open with a yes/no: the cases a first-word reader gets wrong."""
    words = re.findall(r"[A-Za-z]+", response)
    return not words or words[0].lower() not in ("yes", "no")


def test_every_row_has_the_contract_fields(rows):
    for row in rows:
        missing = [f for f in REQUIRED if f not in row]
        assert not missing, f"{row.get('id')}: missing {missing}"
        assert all(isinstance(row[f], str) for f in REQUIRED), row["id"]
        assert row["task"] in TASKS, row["id"]
        assert row["split"] in ("train", "test"), row["id"]
        assert row["prompt"].strip(), row["id"]


def test_ids_are_unique(rows):
    dupes = [i for i, n in Counter(r["id"] for r in rows).items() if n > 1]
    assert not dupes


def test_labels_belong_to_the_task_label_set(rows):
    for row in rows:
        assert row["label"] in labels_for(row["task"]), f"{row['id']}: {row['label']!r} for task {row['task']}"


def test_perception_labels_name_an_option_of_the_prompt(rows):
    perception = [r for r in rows if r["task"] == "perception"]
    assert len(perception) >= 90
    for row in perception:
        options = dict(re.findall(r"(?m)^([ABCD]): (.+?)\s*$", row["prompt"]))
        assert sorted(options) == ["A", "B", "C", "D"], f"{row['id']}: prompt lacks the four options"
        assert row["label"] == "unclear" or row["label"] in options, row["id"]


def test_corpus_is_large_and_covers_every_label(rows):
    assert len(rows) >= 600
    alignment = Counter(r["label"] for r in rows if r["task"] != "perception")
    assert all(alignment[label] >= 20 for label in ("safe", "unsafe", "unclear")), alignment
    perception = Counter(r["label"] for r in rows if r["task"] == "perception")
    assert all(perception[label] >= 5 for label in "ABCD"), perception


def test_hard_cases_are_well_represented(rows):
    hard = [r for r in rows if is_hard(r["response"])]
    assert len(hard) >= 100
    # all ~110 original LLaVA test answers that do not open with yes/no are in
    original = [r for r in hard if r["source"] == "llava-1.5-7b/original/test"]
    assert len(original) >= 100


HELDOUT = {f"llava-1.5-7b/{x}" for x in ("original/context_unsafe", "ppo/test", "dpo/smid", "sft/context_unsafe")}


def round2_ids() -> set[str]:
    raw = CORPUS.parent / "raw_llava_round2.jsonl"
    return {json.loads(line)["id"] for line in raw.read_text(encoding="utf-8").splitlines()} if raw.exists() else set()


def test_about_thirty_percent_held_out_in_every_large_round1_stratum(rows):
    """Round 1: a stratified 30 % per (source, label), frozen (files held out in round 2 aside)."""
    new = round2_ids()
    strata = defaultdict(list)
    for row in rows:
        if row["id"] not in new and row["source"] not in HELDOUT:
            strata[(row["source"], row["label"])].append(row["split"] == "test")
    flat = [f for flags in strata.values() for f in flags]
    assert 0.27 <= sum(flat) / len(flat) <= 0.33
    for stratum, flags in strata.items():
        if len(flags) >= 10:
            assert 0.2 <= sum(flags) / len(flags) <= 0.4, (stratum, sum(flags), len(flags))
        # every stratum with more than one row sends at least one to train (no all-test strata)
        if len(flags) >= 2:
            assert not all(flags), stratum


def test_round2_is_held_out_by_source_file(rows):
    """No reference file of round 2 is in both splits; held-out files are test entirely (round-1 rows too)."""
    new = round2_ids()
    assert len(new) >= 400
    hard = [r for r in rows if r["id"] in new and is_hard(r["response"])]
    assert len(hard) * 2 >= len(new)  # at least half do not open with yes/no
    by_file = defaultdict(set)
    for row in rows:
        if row["id"] in new:
            assert row.get("file", "").startswith("responses/llava-1.5-7b/"), row["id"]
            by_file[row["file"]].add(row["split"])
        if row["source"] in HELDOUT:
            assert row["split"] == "test", row["id"]
    assert all(len(splits) == 1 for splits in by_file.values()), by_file
    held = {r["source"] for r in rows if r["id"] in new and r["split"] == "test"}
    assert held == HELDOUT


def test_llava_rows_keep_the_image_label_separate_from_the_verdict(rows):
    llava = [r for r in rows if r["model"] == "llava-1.5-7b"]
    assert llava and all(r.get("image_label") in ("safe", "unsafe", "unknown") for r in llava)
    # the verdict is read from the answer: some unsafe images got a "safe" verdict and vice versa
    assert any(r["image_label"] == "unsafe" and r["label"] == "safe" for r in llava)
    assert any(r["image_label"] == "safe" and r["label"] == "unsafe" for r in llava)


def test_corpus_matches_the_hand_labels_and_the_raw_answers(rows):
    """labelled.jsonl is generated from scripts/corpus/labels/*.tsv + the raw answers: no silent edits."""
    root = RESOURCES.parents[2]
    label_dir = root / "scripts" / "corpus" / "labels"
    if not label_dir.exists():
        pytest.skip("not a source checkout")
    hand = {}
    for path in label_dir.glob("*.tsv"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row_id, label = line.split("\t")[:2]
                hand[row_id] = label
    assert {r["id"]: r["label"] for r in rows} == hand
    raw = {}
    for path in CORPUS.parent.glob("raw_*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            raw[item["id"]] = item
    for row in rows:
        assert row["response"] == raw[row["id"]]["response"] and row["prompt"] == raw[row["id"]]["prompt"], row["id"]
