"""Print corpus statistics as Markdown tables (pasted into docs/labelling-guide.md).

    .venv/bin/python scripts/corpus/stats.py
"""
import json
import re
from collections import Counter
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "src/unsafe_concepts/resources/judge_corpus/labelled.jsonl"
rows = [json.loads(line) for line in CORPUS.read_text().splitlines()]


def hard(text: str) -> bool:
    words = re.findall(r"[A-Za-z]+", text)
    return not words or words[0].lower() not in ("yes", "no")


labels = ["safe", "unsafe", "unclear", "A", "B", "C", "D"]
print(f"{len(rows)} rows, {sum(r['split'] == 'test' for r in rows)} test, "
      f"{sum(hard(r['response']) for r in rows)} hard cases (answer does not open with yes/no)\n")
print("| source | task | " + " | ".join(labels) + " | total | test | hard |")
print("| --- | --- | " + " | ".join("---:" for _ in labels) + " | ---: | ---: | ---: |")
for source in dict.fromkeys(r["source"] for r in rows):
    sub = [r for r in rows if r["source"] == source]
    c = Counter(r["label"] for r in sub)
    print(f"| {source} | {sub[0]['task']} | " + " | ".join(str(c.get(lab, 0) or "") for lab in labels)
          + f" | {len(sub)} | {sum(r['split'] == 'test' for r in sub)} | {sum(hard(r['response']) for r in sub)} |")
c = Counter(r["label"] for r in rows)
print("| **all** | | " + " | ".join(str(c.get(lab, 0)) for lab in labels)
      + f" | {len(rows)} | {sum(r['split'] == 'test' for r in rows)} | {sum(hard(r['response']) for r in rows)} |")
