"""The end-of-run summary in the terminal: one compact table (rich) per run, and the next command.

``print_run_summary(metrics, task=..., out_dir=...)`` takes the dict ``metrics.summarize`` returns
(what a run folder's metrics.json holds) and prints per category, overall, the unclear rate, the 95%
interval and n. Text from the run (category names, model specs) is printed as plain text, never as
rich markup."""
from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

THIN_N = 10  # fewer effective answers than this: the cell is shown dimmed (see docs/metrics-and-report.md)


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def is_thin(stat: dict | None) -> bool:
    """Too few answers behind a value to read much into it (effective size, else decided answers)."""
    if not stat or stat.get("value") is None:
        return False
    n = stat.get("n_eff", stat.get("n_decided", stat.get("n")))
    return n is not None and n < THIN_N


def _row(label: str, stat: dict | None, *, bold: bool = False) -> list[Text]:
    stat = stat or {}
    value = stat.get("value")
    style = "bold" if bold else ""
    if is_thin(stat):
        style += " dim"
    interval = (f"[{_fmt(stat.get('ci_low'))}, {_fmt(stat.get('ci_high'))}]"
                if value is not None and stat.get("ci_low") is not None else "")
    n = stat.get("n")
    return [Text(str(label), style=style), Text(_fmt(value), style=style), Text(interval, style=style),
            Text(_fmt(stat.get("unclear_rate"), 2), style=style), Text("" if n is None else str(n), style=style)]


def summary_table(metrics: dict, *, task: str, title: str | None = None) -> Table:
    table = Table(title=Text(title or task), title_justify="left", show_edge=False, pad_edge=False)
    for name, justify in (("category", "left"), ("accuracy", "right"), ("95% interval", "right"),
                          ("unclear", "right"), ("n", "right")):
        table.add_column(name, justify=justify, no_wrap=name != "category")
    for category, stat in (metrics.get("per_category") or {}).items():
        table.add_row(*_row(category, stat))
    for half in ("safe", "unsafe"):
        if isinstance(metrics.get(half), dict):
            table.add_row(*_row(f"{half} half", metrics[half]))
    table.add_row(*_row("Overall", metrics.get("overall"), bold=True), end_section=True)
    return table


def default_next_command(out_dir: str | Path) -> str:
    out = Path(out_dir)
    return f"unsafe-concepts report {shlex.quote(str(out))} --out {shlex.quote(str(out / 'report'))}"


def print_run_summary(metrics: dict, *, task: str, out_dir: str | Path, next_command: str | None = None,
                      console: Console | None = None) -> None:
    """Print the run's scores as a table, the unclear rate and errors, and the next command to run.

    ``metrics``: the dict of ``metrics.summarize`` (or a run's metrics.json); missing fields print as
    n/a. ``next_command``: what to suggest; default: the report on this run folder."""
    console = console or Console(highlight=False)
    model = metrics.get("model")
    title = f"{task}" + (f"  ({model})" if model else "")
    console.print(summary_table(metrics, task=task, title=title))
    facts = [f"answers {metrics.get('n', 'n/a')}", f"unclear rate {_fmt(metrics.get('unclear_rate'), 2)}"]
    if metrics.get("n_error"):
        facts.append(f"failed queries {metrics['n_error']} (run the same command again to retry them)")
    if metrics.get("metric"):
        facts.append(str(metrics["metric"]))
    console.print(Text("; ".join(facts), style="dim"))
    if any(is_thin(s) for s in [metrics.get("overall"), *(metrics.get("per_category") or {}).values()]):
        console.print(Text(f"dimmed: fewer than {THIN_N} effective answers; read the interval, not the value",
                           style="dim"))
    # soft_wrap: a long command stays on one line, so that it can be copied
    console.print(Text("next: ") + Text(next_command or default_next_command(out_dir), style="bold"), soft_wrap=True)
