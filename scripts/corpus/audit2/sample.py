"""Pick the rows of round 2 that get a second blind reading: 60 answers that do not open with yes/no and
20 that do, seeded, chosen from the raw answers only (never from their labels).

    .venv/bin/python scripts/corpus/audit2/sample.py > scripts/corpus/audit2/sample_ids.txt
"""
import json
import random
import re
from pathlib import Path

RAW = Path(__file__).resolve().parents[3] / "src/unsafe_concepts/resources/judge_corpus/raw_llava_round2.jsonl"
rows = [json.loads(line) for line in RAW.read_text().splitlines()]


def hard(text: str) -> bool:
    words = re.findall(r"[A-Za-z]+", text)
    return not words or words[0].lower() not in ("yes", "no")


rng = random.Random(7)
picked = rng.sample([r["id"] for r in rows if hard(r["response"])], 60)
picked += rng.sample([r["id"] for r in rows if not hard(r["response"])], 20)
for row_id in sorted(picked):
    print(row_id)
