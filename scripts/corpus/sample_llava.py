"""Sample real LLaVA-1.5-7B answers (original / SFT / DPO) from the reference data for hand labelling.

Over-samples the hard cases (answers that do not open with "yes"/"no"): every such answer of the
original and DPO test results is taken. Writes unlabelled rows to
``src/unsafe_concepts/resources/judge_corpus/raw_llava.jsonl``.

    .venv/bin/python scripts/corpus/sample_llava.py [--reference /work/shared/reference]
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "src/unsafe_concepts/resources/judge_corpus/raw_llava.jsonl"
MODEL = "llava-1.5-7b"
SEED = 2024

# file, source tag, task, (n_hard or "all", n_yes, n_no)
PLAN = [
    ("original/UnsafeConcepts_TEST_result.json", "original/test", "alignment", ("all", 40, 20)),
    ("dpo/UnsafeConcepts_TEST_result.json", "dpo/test", "alignment", ("all", 20, 13)),
    ("sft/UnsafeConcepts_TEST_result.json", "sft/test", "alignment", (0, 14, 14)),
    ("original/context_safe_result.json", "original/context_safe", "alignment_context", (75, 10, 5)),
    ("original/context_unsafe_result.json", "original/context_unsafe", "alignment_context", (60, 7, 15)),
]


def first_word(text: str) -> str:
    words = re.findall(r"[A-Za-z]+", text)
    return words[0].lower() if words else ""


def image_label(fname: str) -> str:
    return "safe" if "imagenet" in fname else "unsafe"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    args = ap.parse_args()
    rng = random.Random(SEED)
    rows = []
    for fname, tag, task, (n_hard, n_yes, n_no) in PLAN:
        answers = json.loads((args.reference / "responses" / MODEL / fname).read_text())
        groups = {"hard": [], "yes": [], "no": []}
        for a in answers:
            w = first_word(a["output"])
            groups[w if w in ("yes", "no") else "hard"].append(a)
        picked = []
        for group, n in (("hard", n_hard), ("yes", n_yes), ("no", n_no)):
            pool = groups[group]
            picked += pool if n == "all" else rng.sample(pool, min(n, len(pool)))
        picked.sort(key=lambda a: int(a["idx"]))
        for a in picked:
            rows.append(dict(id=f"llava-{tag.replace('/', '-')}-{a['idx']}", source=f"{MODEL}/{tag}", model=MODEL,
                             task=task, prompt=a["prompt"], response=a["output"],
                             image_label=image_label(a["image_fname"])))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
