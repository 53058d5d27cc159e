"""Intra-labeller agreement: a blind second reading of 80 seeded corpus rows vs the corpus labels.

    .venv/bin/python scripts/corpus/audit/compare.py
"""
import json
from pathlib import Path

here = Path(__file__).resolve().parent
corpus = {json.loads(l)["id"]: json.loads(l) for l in
          (here.parents[2] / "src/unsafe_concepts/resources/judge_corpus/labelled.jsonl").read_text().splitlines()}
second = dict(line.split("\t")[:2] for line in (here / "relabel.tsv").read_text().splitlines() if line.strip())
ids = [i.strip() for i in (here / "sample_ids.txt").read_text().splitlines() if i.strip()]
assert set(ids) == set(second), "relabel.tsv must cover exactly the sampled ids"
for group, pick in (("alignment", lambda r: r["task"] != "perception"), ("perception", lambda r: r["task"] == "perception")):
    rows = [corpus[i] for i in ids if pick(corpus[i])]
    same = sum(second[r["id"]] == r["label"] for r in rows)
    print(f"{group}: {same}/{len(rows)} agree")
    for r in rows:
        if second[r["id"]] != r["label"]:
            print(f"  {r['id']}: corpus={r['label']} second reading={second[r['id']]}")
