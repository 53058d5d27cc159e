"""The whole offline pipeline on the sample data: evaluate -> judge -> report (`unsafe-concepts demo`).

It runs on 2 CPU cores in a few minutes: the real SmolLM2-135M-Instruct answers the text-only
prompts, and `tiny-vlm` (SmolLM2 as language model, an UNTRAINED vision tower) answers the image
tasks, so its visual numbers say nothing about any real model: they show the machinery working.
"""
from __future__ import annotations

import time
from pathlib import Path

from unsafe_concepts.runs import RunConfig, parse_prompts, run_task

# (model, task, items asked): sized so that the demo stays within a few minutes on 2 cores.
DEMO_PLAN = (
    ("smollm2-135m", "alignment_text_only", 60),
    ("tiny-vlm", "alignment_text_only", 30),
    ("tiny-vlm", "alignment", 30),
    ("tiny-vlm", "perception", 20),
)
DEMO_MAX_NEW_TOKENS = 48  # the protocol allows 512; short answers keep the demo fast and are still judged


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def task_kind(name: str) -> str:
    from unsafe_concepts.tasks import get_task

    return get_task(name).kind


def run_demo(out: str | Path, *, limit: int | None = None, judge_name: str | None = None, quiet: bool = False) -> Path:
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.models.registry import load_model
    from unsafe_concepts.report import build_report
    from unsafe_concepts.runs import quiet_loading
    from unsafe_concepts.scorers import JudgeScorer, default_judge

    judge_name = judge_name or default_judge()
    quiet_loading()

    out = Path(out)
    judge = load_judge(judge_name)
    backends: dict = {}
    run_dirs = []
    for model, task, n in DEMO_PLAN:
        if model not in backends:
            backends[model] = load_model(model)
        run_dir = out / "runs" / f"{model}-{task}"
        config = RunConfig(model=model, task=task, data="sample", limit=limit or n,
                           prompts=parse_prompts(None), judge=judge_name,
                           generation={"max_new_tokens": DEMO_MAX_NEW_TOKENS, "temperature": 1.0, "top_p": 0.9,
                                       "do_sample": True, "seed": 0})
        t0 = time.time()
        result = run_task(config, run_dir, backend=backends[model], scorer=JudgeScorer(judge, judge_name, task_kind(task)),
                          quiet=quiet)
        if not quiet and result.metrics:
            overall = result.metrics["overall"]
            print(f"  {model} / {task}: {_fmt(overall['value'])} [{_fmt(overall.get('ci_low'))}, "
                  f"{_fmt(overall.get('ci_high'))}] n={overall['n']}, unclear {_fmt(result.metrics['unclear_rate'])}")
        if not quiet:
            print(f"  {model} / {task}: {time.time() - t0:.0f}s -> {run_dir}")
        run_dirs.append(run_dir)
    report_dir = out / "report"
    build_report(run_dirs, report_dir)
    return report_dir


def cli_demo(args) -> int:
    t0 = time.time()
    print("unsafe-concepts demo: offline models on the offline sample (synthetic placeholders, safe photos).")
    print("tiny-vlm has an UNTRAINED vision tower: its image results only show the pipeline working.")
    report_dir = run_demo(args.out, limit=args.limit)
    print(f"\ndone in {time.time() - t0:.0f}s. Report: {report_dir / 'report.html'} "
          f"(tables: {report_dir}/*.md, *.csv; runs: {Path(args.out) / 'runs'})")
    return 0
