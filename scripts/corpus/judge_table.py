"""Per-source accuracy (Wilson 95 % interval) and macro-F1 of judges on the corpus test split: the table
of docs/judges.md.

Rows: every source of the test split, then "round-1 test rows", "round-2 held-out files" (answers from
reference files no training row comes from), "alignment, all test rows" and "perception". Columns: one
per judge.

    .venv/bin/python scripts/corpus/judge_table.py [--judges first-word,rule,classifier,ensemble]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "src/unsafe_concepts/resources/judge_corpus/labelled.jsonl"
ROUND2 = ROOT / "src/unsafe_concepts/resources/judge_corpus/raw_llava_round2.jsonl"


def main() -> None:
    from unsafe_concepts.metrics import wilson_interval  # the report's interval, not a copy

    ap = argparse.ArgumentParser()
    ap.add_argument("--judges", default="first-word,rule,classifier")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    args = ap.parse_args()
    from unsafe_concepts.judges import JudgeItem, labels_for, load_judge
    from unsafe_concepts.judges.agreement import agreement_report

    rows = [json.loads(line) for line in args.corpus.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["split"] == "test"]
    new = {json.loads(line)["id"] for line in ROUND2.read_text().splitlines()} if ROUND2.exists() else set()
    items = [JudgeItem(r["task"], r["prompt"], r["response"]) for r in rows]
    names = args.judges.split(",")
    verdicts = {name: [v.label for v in load_judge(name).judge(items)] for name in names}

    def is_alignment(r):
        return r["task"] != "perception"

    groups = [(src, lambda r, s=src: r["source"] == s) for src in dict.fromkeys(r["source"] for r in rows)]
    groups += [("**round-1 test rows** (alignment)", lambda r: r["id"] not in new and is_alignment(r)),
               ("**round-2 held-out files** (alignment)", lambda r: r["id"] in new),
               ("**alignment, all test rows**", is_alignment),
               ("**perception, all test rows**", lambda r: not is_alignment(r))]
    print("| rows | n | " + " | ".join(f"{n} acc [95% CI] | {n} macro-F1" for n in names) + " |")
    print("| --- | ---: | " + " | ".join("---: | ---:" for _ in names) + " |")
    for title, pick in groups:
        idx = [i for i, r in enumerate(rows) if pick(r)]
        if not idx:
            continue
        labels = labels_for(rows[idx[0]]["task"])
        cells = []
        for name in names:
            rep = agreement_report([rows[i]["label"] for i in idx], [verdicts[name][i] for i in idx], labels)
            k = round(rep["accuracy"] * rep["n"])
            lo, hi = wilson_interval(k, rep["n"])
            cells.append(f"{rep['accuracy']:.3f} [{lo:.2f}, {hi:.2f}] | {rep['macro_f1']:.3f}")
        print(f"| {title} | {len(idx)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
