"""Agreement of the blind second reading of 80 round-2 rows (relabel.tsv) with the corpus labels:
raw agreement and Cohen's kappa (the same function `judge eval` uses).

    .venv/bin/python scripts/corpus/audit2/compare.py
"""
from pathlib import Path

from unsafe_concepts.judges.agreement import agreement_report

here = Path(__file__).resolve().parent
first = {}
for line in (here.parent / "labels" / "llava_round2.tsv").read_text().splitlines():
    if line.strip():
        row_id, label = line.split("\t")[:2]
        first[row_id] = label
second = dict(line.split("\t")[:2] for line in (here / "relabel.tsv").read_text().splitlines() if line.strip())
ids = [i.strip() for i in (here / "sample_ids.txt").read_text().splitlines() if i.strip()]
assert set(ids) == set(second), "relabel.tsv must cover exactly the sampled ids"
rep = agreement_report([first[i] for i in ids], [second[i] for i in ids], ("safe", "unsafe", "unclear"))
print(f"n={rep['n']} agreement={rep['accuracy']:.3f} kappa={rep['kappa']:.3f}")
print("first reading (rows) x second reading (columns), safe/unsafe/unclear:", rep["confusion"])
for i in ids:
    if first[i] != second[i]:
        print(f"  {i}: first={first[i]} second={second[i]}")
