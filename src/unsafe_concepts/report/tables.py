"""The report's tables (models x categories, the post-training comparison, ...) as Markdown, CSV and LaTeX.

A table cell is a label (str), a plain number (float/int/None) or a statistic (a dict with ``value``,
``ci_low``, ``ci_high`` and ``n`` as metrics.py returns; a gap carries its ``visual`` and ``textual``
sides). Markdown shows a statistic as ``0.930 [0.900, 0.950] n=40``; CSV gives it four columns
(value, ci_low, ci_high, n); LaTeX ``0.930 [0.900, 0.950]``. A statistic backed by fewer than THIN_N
effective answers is marked (``†``) and greyed on the page."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from unsafe_concepts.report.terminal import THIN_N, is_thin
from unsafe_concepts.taxonomy import CATEGORIES

Cell = object  # str | float | int | None | dict

__all__ = ["THIN_N", "Table", "category_table", "cell_n", "fmt_cell", "fmt_num", "is_stat", "is_thin",
           "neutralise_csv", "to_csv", "to_latex", "to_markdown"]


@dataclass
class Table:
    key: str  # file stem and HTML anchor
    title: str
    note: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    section: str = "details"  # where the page shows it: "gap", "per_category", "post_training", "details"

    def __bool__(self) -> bool:
        return bool(self.rows)


def is_stat(cell) -> bool:
    return isinstance(cell, dict) and "value" in cell


def fmt_num(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}f}"


def cell_n(stat: dict) -> str:
    """The answers behind a statistic: ``n``, or ``visual/textual`` for a gap."""
    if isinstance(stat.get("visual"), dict) and isinstance(stat.get("textual"), dict):
        return f"{stat['visual'].get('n', '?')}/{stat['textual'].get('n', '?')}"
    n = stat.get("n")
    return "" if n is None else str(n)


def thin(stat: dict) -> bool:
    """A statistic (or either side of a gap) backed by too few answers."""
    if isinstance(stat.get("visual"), dict) and stat.get("value") is not None:
        return is_thin(stat["visual"]) or is_thin(stat.get("textual"))
    return is_thin(stat)


def fmt_stat(stat: dict, with_n: bool = True) -> str:
    if stat.get("value") is None:
        text = "n/a"
    elif stat.get("ci_low") is None:
        text = fmt_num(stat["value"])
    else:
        text = f"{fmt_num(stat['value'])} [{fmt_num(stat['ci_low'])}, {fmt_num(stat['ci_high'])}]"
    if with_n and cell_n(stat):
        text += f" n={cell_n(stat)}"
    return text + (" †" if thin(stat) else "")


def fmt_cell(cell) -> str:
    if is_stat(cell):
        return fmt_stat(cell)
    if cell is None or isinstance(cell, (int, float)):
        return fmt_num(cell)
    return str(cell)


# --- Markdown --------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
            .replace("<", "&lt;"))


THIN_NOTE = f"† fewer than {THIN_N} effective answers behind the figure: read its interval, not its value."


def to_markdown(table: Table) -> str:
    note = table.note + (f" {THIN_NOTE}" if any(is_stat(c) and thin(c) for r in table.rows for c in r) else "")
    return f"### {_md_escape(table.title)}\n\n{_md_escape(note)}\n\n{markdown_grid(table)}"


def markdown_grid(table: Table) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in table.columns) + " |"]
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(fmt_cell(c)) for c in row) + " |")
    return "\n".join(lines) + "\n"


# --- CSV ---------------------------------------------------------------------------------------

# A cell starting with one of these is run as a formula by spreadsheet tools (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_csv(text: str) -> str:
    """Text from a run (model spec, category, answer) made inert for spreadsheets: prefixed with ``'``
    when it starts like a formula. Numbers are written by ``_csv_num`` and left alone."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(table: Table) -> str:
    stat_cols = {i for row in table.rows for i, c in enumerate(row) if is_stat(c)}
    header = []
    for i, name in enumerate(table.columns):
        header += [name, f"{name} ci_low", f"{name} ci_high", f"{name} n"] if i in stat_cols else [name]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([neutralise_csv(h) for h in header])
    for row in table.rows:
        out = []
        for i, cell in enumerate(row):
            if i in stat_cols:
                stat = cell if is_stat(cell) else {}
                out += [_csv_num(stat.get("value")), _csv_num(stat.get("ci_low")), _csv_num(stat.get("ci_high")),
                        cell_n(stat) if stat else ""]
            elif cell is None or (isinstance(cell, (int, float)) and not isinstance(cell, bool)):
                out.append(_csv_num(cell))
            else:
                out.append(neutralise_csv(str(cell)))
        writer.writerow(out)
    return buf.getvalue()


def _csv_num(x) -> str:
    if x is None:
        return ""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.10g}"


# --- LaTeX -------------------------------------------------------------------------------------

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "\n": " ", "\r": " "}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_cell(cell) -> str:
    if is_stat(cell):
        text = latex_escape(fmt_stat(cell, with_n=False).replace(" †", ""))
        if cell.get("value") is not None and cell.get("ci_low") is not None:
            value, _, interval = text.partition(" ")
            text = f"{value} {{\\scriptsize {interval}}}"
        return text + ("$^\\dagger$" if thin(cell) else "")
    return latex_escape(fmt_cell(cell))


def to_latex(table: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``): value and 95% interval per cell, † for thin cells."""
    align = "".join("r" if any(is_stat(r[i]) or isinstance(r[i], (int, float)) for r in table.rows if i < len(r))
                    else "l" for i in range(len(table.columns)))
    lines = [f"% {latex_escape(table.title)}: {latex_escape(table.note)}", f"\\begin{{tabular}}{{{align}}}",
             "\\toprule", " & ".join(latex_escape(c) for c in table.columns) + r" \\", "\\midrule"]
    lines += [" & ".join(_latex_cell(c) for c in row) + r" \\" for row in table.rows]
    lines.append("\\bottomrule\n\\end{tabular}")
    if any(is_stat(c) and thin(c) for r in table.rows for c in r):
        lines.append(f"% $^\\dagger$: fewer than {THIN_N} effective answers behind the figure.")
    return "\n".join(lines) + "\n"


# --- building ----------------------------------------------------------------------------------


def categories_in(sections: list[dict]) -> list[str]:
    """Categories present in any of the per-category dicts, taxonomy order first."""
    present = {c for s in sections for c in s}
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(present, key=lambda c: (rank.get(c, len(rank)), c))


def category_table(key: str, title: str, note: str, entries: list[tuple[list[str], dict]],
                   lead_columns: list[str], with_counts: bool = True, section: str = "per_category") -> Table:
    """Rows of ``lead cells + one statistic per category + overall (+ unclear rate, n)``.

    ``entries``: (lead cells, section) where section has ``per_category`` and ``overall``."""
    cats = categories_in([s.get("per_category") or {} for _, s in entries])
    columns = lead_columns + cats + ["Overall"] + (["unclear rate", "n"] if with_counts else [])
    table = Table(key, title, note, columns, section=section)
    for lead, sec in entries:
        overall = sec.get("overall") or {"value": None}
        row = list(lead) + [(sec.get("per_category") or {}).get(c, {"value": None}) for c in cats] + [overall]
        if with_counts:
            row += [overall.get("unclear_rate"), overall.get("n")]
        table.rows.append(row)
    return table
