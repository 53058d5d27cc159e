"""Judge saved evidence answers again with another judge, without regenerating them.

  python scripts/train_evidence/rejudge.py --judge classifier $OUT/eval_base ...

Adds ``judges[<judge>]`` to each folder's metrics.json (same summary as train/evaluate.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from unsafe_concepts import metrics
from unsafe_concepts.judges import load_judge
from unsafe_concepts.judges.base import JudgeItem


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--judge", required=True)
    p.add_argument("folders", nargs="+")
    args = p.parse_args()
    judge = load_judge(args.judge)
    for folder in map(Path, args.folders):
        rows = [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines() if line.strip()]
        task = rows[0]["task"]
        ok = [r for r in rows if not r.get("error")]
        verdicts = judge.judge([JudgeItem(task=task, prompt=r["prompt"], response=r["response"] or "") for r in ok])
        for r, v in zip(ok, verdicts):
            r["verdict"] = v.label
        summary = metrics.summarize(rows, task, after_training=True, n_boot=1000, seed=0)
        result = json.loads((folder / "metrics.json").read_text())
        result["judges"][args.judge] = {
            "overall": summary["overall"]["value"],
            "overall_ci": [summary["overall"]["ci_low"], summary["overall"]["ci_high"]],
            "safe": summary["safe"]["value"], "unsafe": summary["unsafe"]["value"],
            "unclear_rate": summary["unclear_rate"], "n": summary["n"],
        }
        (folder / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        print(folder.name, json.dumps(result["judges"][args.judge]))


if __name__ == "__main__":
    main()
