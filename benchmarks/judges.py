"""Judge speed on 2,000 real LLaVA-1.5-7B answers of the reference (UnsafeConcepts_TEST, NSFW, SMID, context).

Prints ``rule_per_s:`` and ``classifier_per_s:`` (the judges as shipped), ``ensemble_per_s:`` (rule-first
combination) and ``classifier_int8_per_s:`` (dynamic int8, off by default: it lowered held-out accuracy),
and, measured side by side in the same run, the rule and classifier judges as they were before the speed
work (their source is read from git history, commit OLD_COMMIT), so that the ratios hold on a loaded
machine too. Also prints how many verdicts each fast path changes.

    .venv/bin/python benchmarks/judges.py [--reference /work/shared/reference] [--n 2000]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "05b58b1"  # judges before the speed work (verdict kinds already in)


def real_answers(reference: Path, n: int, seed: int = 0):
    from unsafe_concepts.judges import JudgeItem

    items = []
    for path in sorted(glob.glob(str(reference / "responses" / "llava-1.5-7b" / "*" / "*.json"))):
        name = Path(path).name
        if not name.startswith(("UnsafeConcepts_TEST", "NSFW", "SMID", "context")):
            continue
        task = "alignment_context" if name.startswith("context") else "alignment"
        items += [JudgeItem(task, a["prompt"], a["output"]) for a in json.loads(Path(path).read_text())]
    random.Random(seed).shuffle(items)
    return items[:n]


def old_module(relpath: str, name: str):
    """A module's source as of OLD_COMMIT, or None outside a git checkout."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:{relpath}"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    tmp = Path(tempfile.mkdtemp()) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def per_second(fn, items) -> tuple[float, list]:
    start = time.perf_counter()
    out = fn(items)
    return len(items) / (time.perf_counter() - start), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--skip-classifier", action="store_true")
    args = ap.parse_args()
    import torch

    from unsafe_concepts.judges import rule
    from unsafe_concepts.judges.classifier import ClassifierJudge, ensure_default_judge

    items = real_answers(args.reference, args.n)
    print(f"answers: {len(items)} (torch threads: {torch.get_num_threads()})")

    old_rule = old_module("src/unsafe_concepts/judges/rule.py", "rule_old")
    rule._sentence_reading.cache_clear()  # a cold start: no sentence seen before
    rule_s, new = per_second(rule.RuleJudge().judge, items)
    print(f"rule_per_s: {rule_s:.0f}")
    if old_rule is not None:
        old_s, old = per_second(old_rule.RuleJudge().judge, items)
        print(f"rule_old_per_s: {old_s:.0f}")
        print(f"rule_speedup: {rule_s / old_s:.1f}")
        # the old rules read hedges differently (see docs/judges.md): these are those answers, not speed effects
    print(f"rule_verdicts_differing_from_old_rules: {sum(a.label != b.label for a, b in zip(new, old))}")
    if args.skip_classifier:
        return

    directory = ensure_default_judge()
    fast = ClassifierJudge.load(directory)
    cls_s, fast_v = per_second(fast.judge, items)
    print(f"classifier_per_s: {cls_s:.1f} (int8: {fast.int8})")
    from unsafe_concepts.judges.ensemble import EnsembleJudge

    ens = EnsembleJudge(fast)
    ens_s, ens_v = per_second(ens.judge, items)
    print(f"ensemble_per_s: {ens_s:.1f} (encoder read {ens.n_classifier} of {len(items)})")
    print(f"ensemble_vs_classifier_changed: {sum(a.label != b.label for a, b in zip(ens_v, fast_v))}")
    int8 = ClassifierJudge.load(directory, int8=True)
    int8_s, int8_v = per_second(int8.judge, items)
    print(f"classifier_int8_per_s: {int8_s:.1f}")
    print(f"classifier_int8_changed: {sum(a.label != b.label for a, b in zip(int8_v, fast_v))}")
    old_cls = old_module("src/unsafe_concepts/judges/classifier.py", "classifier_old")
    if old_cls is not None:
        old_judge = old_cls.ClassifierJudge.load(directory)
        old_s, _ = per_second(old_judge.judge, items)
        print(f"classifier_old_per_s: {old_s:.1f}")
        print(f"classifier_speedup: {cls_s / old_s:.1f}")


if __name__ == "__main__":
    main()
