"""Merge hand labels (scripts/corpus/labels/*.tsv: id<TAB>label<TAB>note) with the raw answers.

Writes ``src/unsafe_concepts/resources/judge_corpus/labelled.jsonl``. Two split rules:

- held-out source files (``HELDOUT``, round 2): every row of such a file is ``test``, including
  rows of round 1 (``original/context_unsafe`` had 58 train rows in round 1; they moved to test when
  round 2 made that file a held-out file), so no held-out file is in both splits;
- every other row keeps its frozen split forever (even if its label is later revised); new rows of
  round 1 were assigned so that each stratum (source x label) holds ~30 % test, chosen by a seeded hash
  of the id; new rows of round 2 from a file that is not held out go to ``train``.

    .venv/bin/python scripts/corpus/merge_labels.py
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "src/unsafe_concepts/resources/judge_corpus"
LABELS = Path(__file__).resolve().parent / "labels"
RAW_FILES = ("raw_llava.jsonl", "raw_smollm2.jsonl", "raw_smollm2_round2.jsonl", "raw_llava_round2.jsonl")
ROUND2 = "raw_llava_round2.jsonl"
HELDOUT = {f"llava-1.5-7b/{s}" for s in ("original/context_unsafe", "ppo/test", "dpo/smid", "sft/context_unsafe")}
# the reference file each round-1 LLaVA source was sampled from (round-2 raw rows carry their own "file")
ROUND1_FILES = {
    "llava-1.5-7b/original/test": "responses/llava-1.5-7b/original/UnsafeConcepts_TEST_result.json",
    "llava-1.5-7b/dpo/test": "responses/llava-1.5-7b/dpo/UnsafeConcepts_TEST_result.json",
    "llava-1.5-7b/sft/test": "responses/llava-1.5-7b/sft/UnsafeConcepts_TEST_result.json",
    "llava-1.5-7b/original/context_safe": "responses/llava-1.5-7b/original/context_safe_result.json",
    "llava-1.5-7b/original/context_unsafe": "responses/llava-1.5-7b/original/context_unsafe_result.json",
}
TEST_SHARE = 0.3
SEED = "judge-corpus-2024"
ALIGNMENT = {"safe", "unsafe", "unclear"}
PERCEPTION = {"A", "B", "C", "D", "unclear"}
FIELDS = ("id", "source", "file", "model", "task", "prompt", "response", "label", "image_label", "split", "note")


def seeded_rank(row_id: str) -> str:
    return hashlib.sha256(f"{SEED}:{row_id}".encode()).hexdigest()


def read_labels() -> dict[str, tuple[str, str]]:
    labels: dict[str, tuple[str, str]] = {}
    for path in sorted(LABELS.glob("*.tsv")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise SystemExit(f"{path.name}:{n}: expected id<TAB>label[<TAB>note]")
            row_id, label, note = parts[0].strip(), parts[1].strip(), (parts[2].strip() if len(parts) > 2 else "")
            if row_id in labels:
                raise SystemExit(f"{path.name}:{n}: {row_id} labelled twice")
            labels[row_id] = (label, note)
    return labels


def main() -> None:
    raw, round2 = {}, set()
    for name in RAW_FILES:
        path = CORPUS / name
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                raw[row["id"]] = row
                if name == ROUND2:
                    round2.add(row["id"])
    labels = read_labels()
    out_path = CORPUS / "labelled.jsonl"
    frozen = {}
    if out_path.exists():
        frozen = {r["id"]: r["split"] for r in map(json.loads, out_path.read_text().splitlines())}
    rows = []
    for row_id, (label, note) in labels.items():
        if row_id not in raw:
            raise SystemExit(f"label for unknown id {row_id}")
        r = raw[row_id]
        allowed = PERCEPTION if r["task"] == "perception" else ALIGNMENT
        if label not in allowed:
            raise SystemExit(f"{row_id}: label {label!r} not in {sorted(allowed)}")
        if r["task"] == "perception" and label != "unclear" and not re.search(rf"(^|\n){label}: ", r["prompt"]):
            raise SystemExit(f"{row_id}: option {label} not in the prompt")
        row = {k: r[k] for k in ("id", "source", "model", "task", "prompt", "response")}
        split = frozen.get(row_id)
        if r["source"] in HELDOUT:
            split = "test"
        elif row_id in round2:
            split = "train"
        row.update(label=label, image_label=r.get("image_label"), split=split, note=note,
                   file=r.get("file") or ROUND1_FILES.get(r["source"]))
        rows.append(row)
    # assign splits to new rows, per stratum
    strata = defaultdict(list)
    for row in rows:
        strata[(row["source"], row["label"])].append(row)
    for members in strata.values():
        n_test = sum(r["split"] == "test" for r in members)
        target = round(TEST_SHARE * len(members))
        for row in sorted((r for r in members if r["split"] is None), key=lambda r: seeded_rank(r["id"])):
            row["split"] = "test" if n_test < target else "train"
            n_test += row["split"] == "test"
    order = {row_id: i for i, row_id in enumerate(raw)}
    rows.sort(key=lambda r: order[r["id"]])
    with out_path.open("w") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in FIELDS if row.get(k) not in (None, "")}, ensure_ascii=False) + "\n")
    n_test = sum(r["split"] == "test" for r in rows)
    print(f"{len(rows)} labelled rows ({n_test} test) -> {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
