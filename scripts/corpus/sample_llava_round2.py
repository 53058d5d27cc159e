"""Sample a second round of real LLaVA-1.5-7B answers (original / SFT / DPO / PPO) for hand labelling.

Round 2 adds the sets the first round lacked (NSFW, SMID, the fine-tunes' context answers, PPO's test
answers) and the original model's context answers not yet labelled, over-sampling answers that do
not open with "yes"/"no" (the hedges live there). Answers already in round 1 are skipped.

Held out by source file: every row of a file in ``HELDOUT`` goes to the test split (see
``merge_labels.py``), every other round-2 row to train, so no file of round 2 is in both.

    .venv/bin/python scripts/corpus/sample_llava_round2.py [--reference /work/shared/reference]
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "src/unsafe_concepts/resources/judge_corpus"
OUT = CORPUS / "raw_llava_round2.jsonl"
MODEL = "llava-1.5-7b"
SEED = 2025

# file (under responses/llava-1.5-7b/), source tag, task, (n_hard, n_yes, n_no)
PLAN = [
    # train files
    ("original/context_safe_result.json", "original/context_safe", "alignment_context", (135, 3, 3)),
    ("dpo/UnsafeConcepts_TEST_result.json", "dpo/test", "alignment", (0, 10, 10)),
    ("sft/NSFW_result.json", "sft/nsfw", "alignment", (0, 10, 10)),
    ("sft/SMID_result.json", "sft/smid", "alignment", (0, 10, 10)),
    ("ppo/NSFW_result.json", "ppo/nsfw", "alignment", (4, 8, 8)),
    ("sft/context_safe_result.json", "sft/context_safe", "alignment_context", (0, 5, 5)),
    ("ppo/context_safe_result.json", "ppo/context_safe", "alignment_context", (0, 8, 7)),
    # held-out files (test)
    ("original/context_unsafe_result.json", "original/context_unsafe", "alignment_context", (118, 3, 3)),
    ("ppo/UnsafeConcepts_TEST_result.json", "ppo/test", "alignment", (15, 20, 20)),
    ("dpo/SMID_result.json", "dpo/smid", "alignment", (7, 15, 15)),
    ("sft/context_unsafe_result.json", "sft/context_unsafe", "alignment_context", (0, 7, 8)),
]
# Then every remaining answer of these files that hedges or carries a caveat (the mirror cases: a verdict
# with "some viewers might ..." or "depending on the context" attached), and every remaining
# original/context_safe answer that does not open with a stock verdict sentence.
HEDGE = re.compile(r"depend|some (?:viewers|people|individuals) (?:might|may)")
STOCK = re.compile(r"It is (?:not |generally )?safe|It is not appropriate")
EXTRA = [
    ("original/UnsafeConcepts_TEST_result.json", "original/test", "alignment"),
    ("dpo/UnsafeConcepts_TEST_result.json", "dpo/test", "alignment"),
    ("ppo/NSFW_result.json", "ppo/nsfw", "alignment"),
    ("original/context_safe_result.json", "original/context_safe", "alignment_context"),
    ("original/context_unsafe_result.json", "original/context_unsafe", "alignment_context"),
    ("ppo/UnsafeConcepts_TEST_result.json", "ppo/test", "alignment"),
    ("dpo/SMID_result.json", "dpo/smid", "alignment"),
]
HELDOUT = ("original/context_unsafe", "ppo/test", "dpo/smid", "sft/context_unsafe")


def first_word(text: str) -> str:
    words = re.findall(r"[A-Za-z]+", text)
    return words[0].lower() if words else ""


def image_label(fname: str) -> str:
    """SMID/NSFW images are of mixed content: their file name says nothing, so no image label."""
    if "imagenet" in fname:
        return "safe"
    if "/SMID/" in fname or "/NSFW/" in fname:
        return "unknown"
    return "unsafe"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    args = ap.parse_args()
    rng = random.Random(SEED)
    have = {json.loads(line)["id"] for line in (CORPUS / "raw_llava.jsonl").read_text().splitlines()}
    rows = []
    for fname, tag, task, (n_hard, n_yes, n_no) in PLAN:
        answers = json.loads((args.reference / "responses" / MODEL / fname).read_text())
        groups = {"hard": [], "yes": [], "no": []}
        for a in answers:
            if f"llava-{tag.replace('/', '-')}-{a['idx']}" in have:
                continue
            w = first_word(a["output"])
            groups[w if w in ("yes", "no") else "hard"].append(a)
        picked = []
        for group, n in (("hard", n_hard), ("yes", n_yes), ("no", n_no)):
            picked += rng.sample(groups[group], min(n, len(groups[group])))
        picked.sort(key=lambda a: int(a["idx"]))
        for a in picked:
            rows.append(dict(id=f"llava-{tag.replace('/', '-')}-{a['idx']}", source=f"{MODEL}/{tag}", model=MODEL,
                             task=task, prompt=a["prompt"], response=a["output"],
                             image_label=image_label(a["image_fname"]), file=f"responses/{MODEL}/{fname}"))
    taken = {r["id"] for r in rows}
    for fname, tag, task in EXTRA:
        answers = json.loads((args.reference / "responses" / MODEL / fname).read_text())
        for a in answers:
            row_id = f"llava-{tag.replace('/', '-')}-{a['idx']}"
            if row_id in have or row_id in taken:
                continue
            hard_stock = tag == "original/context_safe" and first_word(a["output"]) not in ("yes", "no") \
                and not STOCK.match(a["output"])
            if HEDGE.search(a["output"]) or hard_stock:
                taken.add(row_id)
                rows.append(dict(id=row_id, source=f"{MODEL}/{tag}", model=MODEL, task=task, prompt=a["prompt"],
                                 response=a["output"], image_label=image_label(a["image_fname"]),
                                 file=f"responses/{MODEL}/{fname}"))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    with OUT.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
