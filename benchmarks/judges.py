"""Judge speed on 2,000 real LLaVA-1.5-7B answers of the reference (UnsafeConcepts_TEST, NSFW, SMID, context).

Prints ``rule_per_s:`` and ``classifier_per_s:`` (the judges as shipped: on a CPU with bf16 units the
classifier reads in bf16 and re-reads close calls in float32; ``classifier_fp32_per_s:`` is float32 alone,
with the verdicts that differ), ``ensemble_per_s:`` (rule-first combination) and
``classifier_int8_per_s:`` (dynamic int8, off by default: it changes held-out verdicts),
and, measured side by side in the same run, the rule and classifier judges as they were before the speed
work (their source is read from git history, commit OLD_COMMIT), so that the ratios hold on a loaded
machine too. Also prints how many verdicts each fast path changes, and the load average (``uptime``'s
three numbers) at the start and at the end: on a shared machine the absolute rates mean little without it.

Every rule timing is a cold start (no sentence or answer seen before); the rule rates are the median of
``--reps`` runs, old and new interleaved. The old classifier is slow, so the classifier ratio is measured
on the first ``--n-old`` answers (old and new interleaved, ``--reps-classifier`` times each);
``classifier_per_s`` itself is on all answers.

    .venv/bin/python benchmarks/judges.py [--reference /work/shared/reference] [--n 2000] [--n-old 300]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import random
import statistics
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


CPU_RATES: dict[int, float] = {}  # id(judge.judge's owner) -> answers per CPU-second of this process, last run


def per_second(fn, items) -> tuple[float, list]:
    """Answers per wall-clock second; answers per CPU-second of this process goes to CPU_RATES."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(items)
    CPU_RATES[id(getattr(fn, "__self__", fn))] = len(items) / max(time.process_time() - cpu, 1e-9)
    return len(items) / (time.perf_counter() - start), out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def clear_rule_caches(module) -> None:
    """A cold start: no sentence (and no answer, where the module caches answers) seen before."""
    for name in ("_sentence_reading", "judge_alignment_text"):
        fn = getattr(module, name, None)
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()


def interleaved(judges: dict, items, reps: int, before=None) -> tuple[dict, dict]:
    """Median answers/s of each judge over ``reps`` runs, the judges taking turns; the last verdicts."""
    rates: dict = {name: [] for name in judges}
    cpu_rates: dict = {name: [] for name in judges}
    verdicts: dict = {}
    for _ in range(reps):
        for name, judge in judges.items():
            if before:
                before(name)
            rate, verdicts[name] = per_second(judge.judge, items)
            rates[name].append(rate)
            cpu_rates[name].append(CPU_RATES[id(judge)])
    for name in judges:
        CPU_RATES[id(judges[name])] = statistics.median(cpu_rates[name])
    return {k: statistics.median(v) for k, v in rates.items()}, verdicts


def changed(a, b) -> int:
    return sum(x.label != y.label for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-old", type=int, default=300, help="answers for the side-by-side classifier ratio")
    ap.add_argument("--reps", type=int, default=5, help="cold runs of each rule judge (median reported)")
    ap.add_argument("--reps-classifier", type=int, default=1)
    ap.add_argument("--skip-classifier", action="store_true")
    args = ap.parse_args()
    import torch

    from unsafe_concepts.judges import rule
    from unsafe_concepts.judges.classifier import ClassifierJudge, ensure_default_judge

    items = real_answers(args.reference, args.n)
    print(f"answers: {len(items)} (torch threads: {torch.get_num_threads()})")
    print(f"load_average_start: {load()}")

    old_rule = old_module("src/unsafe_concepts/judges/rule.py", "rule_old")
    judges = {"new": rule.RuleJudge()}
    if old_rule is not None:
        judges["old"] = old_rule.RuleJudge()
    modules = {"new": rule, "old": old_rule}
    rates, verdicts = interleaved(judges, items, args.reps, before=lambda name: clear_rule_caches(modules[name]))
    print(f"rule_per_s: {rates['new']:.0f}")
    # per second of this process's CPU time: what one free core gives (the rule judge is single-threaded)
    print(f"rule_per_cpu_s: {CPU_RATES[id(judges['new'])]:.0f}")
    if old_rule is not None:
        print(f"rule_old_per_s: {rates['old']:.0f} (per CPU-second: {CPU_RATES[id(judges['old'])]:.0f})")
        print(f"rule_speedup: {rates['new'] / rates['old']:.1f}")
        # the old rules read hedges differently (see docs/judges.md): these are those answers, not speed effects
        print(f"rule_verdicts_differing_from_old_rules: {changed(verdicts['new'], verdicts['old'])}")
    if args.skip_classifier:
        print(f"load_average_end: {load()}")
        return

    directory = ensure_default_judge()
    from unsafe_concepts.judges.classifier import bf16_is_fast

    print(f"cpu_bf16_units: {bf16_is_fast()} (AMX tiles or AVX-512 BF16: the classifier's auto precision reads in bf16)")
    fast = ClassifierJudge.load(directory)
    cls_s, fast_v = per_second(fast.judge, items)
    print(f"classifier_per_s: {cls_s:.1f} (precision: {fast.precision}; re-read in float32: {fast.n_rechecked} "
          f"of {fast.n_read} distinct answers)")
    # CPU-seconds summed over torch's threads (spin-waiting included): a free machine with that many cores
    # gives between this and threads x this
    print(f"classifier_per_cpu_s: {CPU_RATES[id(fast)]:.1f}")
    if fast.precision != "float32":  # the same judge reading everything in float32, side by side
        exact = ClassifierJudge.load(directory, precision="float32")
        exact_s, exact_v = per_second(exact.judge, items)
        print(f"classifier_fp32_per_s: {exact_s:.1f}")
        print(f"classifier_vs_fp32_changed: {changed(fast_v, exact_v)}")
        print("classifier_vs_fp32_max_prob_diff: "
              f"{max(max(abs(a.probs[k] - b.probs[k]) for k in a.probs) for a, b in zip(fast_v, exact_v)):.4f}")
        print(f"classifier_speedup_vs_fp32: {cls_s / exact_s:.2f}")
    old_cls = old_module("src/unsafe_concepts/judges/classifier.py", "classifier_old")
    if old_cls is not None:
        sub = items[: args.n_old]
        rates, got = interleaved({"new": fast, "old": old_cls.ClassifierJudge.load(directory)}, sub,
                                 args.reps_classifier)
        print(f"classifier_old_per_s: {rates['old']:.1f} (on {len(sub)}; new on the same: {rates['new']:.1f})")
        print(f"classifier_speedup: {rates['new'] / rates['old']:.2f}")
        print(f"classifier_vs_old_changed: {changed(got['new'], got['old'])} of {len(sub)}")
    from unsafe_concepts.judges.ensemble import EnsembleJudge

    ens = EnsembleJudge(fast)
    ens_s, ens_v = per_second(ens.judge, items)
    print(f"ensemble_per_s: {ens_s:.1f} (encoder read {ens.n_classifier} of {len(items)})")
    print(f"ensemble_vs_classifier_changed: {changed(ens_v, fast_v)}")
    int8 = ClassifierJudge.load(directory, int8=True)
    int8_s, int8_v = per_second(int8.judge, items)
    print(f"classifier_int8_per_s: {int8_s:.1f}")
    print(f"classifier_int8_changed: {changed(int8_v, fast_v)}")
    print(f"load_average_end: {load()}")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # lines appear as they are measured, also into a pipe
    main()
