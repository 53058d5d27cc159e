"""The report: the paper's tables (Markdown, CSV), plots (PNG) and one self-contained report.html.

`unsafe-concepts report RUN_DIR... --out DIR`; in Python ``build_report(run_dirs, out)``."""
from __future__ import annotations

from unsafe_concepts.report.build import GAP_PAIRS, Report, build_report, print_summary
from unsafe_concepts.report.loading import RunData, RunProblem, load_run

__all__ = ["GAP_PAIRS", "Report", "RunData", "RunProblem", "build_report", "cli_report", "load_run"]


def cli_report(args) -> int:
    from unsafe_concepts.errors import UserError

    n_boot = getattr(args, "n_boot", 1000)
    if n_boot < 0:
        raise UserError(f"--n-boot must be 0 (no intervals) or more, got {n_boot}")
    report = build_report(args.runs, args.out, n_boot=n_boot, seed=getattr(args, "seed", 0))
    print_summary(report)
    return 0
