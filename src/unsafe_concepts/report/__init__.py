"""The report: the modality gap first, then the paper's tables (Markdown, CSV, LaTeX), plots (PNG, SVG,
PDF), every answer, all in one self-contained report.html; and the end-of-run table in the terminal.

`unsafe-concepts report RUN_DIR... --out DIR`; in Python ``build_report(run_dirs, out)``. The names are
imported on first use, so that ``unsafe_concepts.report.terminal`` loads without matplotlib."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "GAP_PAIRS": "build", "Report": "build", "build_report": "build", "print_summary": "build",
    "RunData": "loading", "RunProblem": "loading", "load_run": "loading",
    "print_run_summary": "terminal",
}
__all__ = sorted([*_EXPORTS, "cli_report"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"unsafe_concepts.report.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cli_report(args) -> int:
    from unsafe_concepts.report.build import build_report, print_summary

    report = build_report(args.runs, args.out)
    print_summary(report)
    return 0
