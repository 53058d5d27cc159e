"""The paper's tables (models x categories) built from scored runs, rendered as Markdown and CSV.

A table cell is a label (str), a plain number (float/int/None) or a statistic (a dict with
``value``, ``ci_low``, ``ci_high`` as metrics.py returns). Markdown shows a statistic as
``0.930 [0.900, 0.950]``; CSV gives it three columns (value, ci_low, ci_high)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from unsafe_concepts.taxonomy import CATEGORIES

Cell = object  # str | float | int | None | dict


@dataclass
class Table:
    key: str  # file stem and HTML anchor
    title: str
    note: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)

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


def fmt_stat(stat: dict) -> str:
    if stat.get("value") is None:
        return "n/a"
    if stat.get("ci_low") is None:
        return fmt_num(stat["value"])
    return f"{fmt_num(stat['value'])} [{fmt_num(stat['ci_low'])}, {fmt_num(stat['ci_high'])}]"


def fmt_cell(cell) -> str:
    if is_stat(cell):
        return fmt_stat(cell)
    if cell is None or isinstance(cell, (int, float)):
        return fmt_num(cell)
    return str(cell)


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def to_markdown(table: Table) -> str:
    return f"### {_md_escape(table.title)}\n\n{_md_escape(table.note)}\n\n{markdown_grid(table)}"


def markdown_grid(table: Table) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in table.columns) + " |"]
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(fmt_cell(c)) for c in row) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    stat_cols = {i for row in table.rows for i, c in enumerate(row) if is_stat(c)}
    header = []
    for i, name in enumerate(table.columns):
        header += [name, f"{name} ci_low", f"{name} ci_high"] if i in stat_cols else [name]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        out = []
        for i, cell in enumerate(row):
            if i in stat_cols:
                stat = cell if is_stat(cell) else {}
                out += [_csv_num(stat.get("value")), _csv_num(stat.get("ci_low")), _csv_num(stat.get("ci_high"))]
            else:
                out.append(_csv_num(cell) if cell is None or isinstance(cell, (int, float)) else str(cell))
        writer.writerow(out)
    return buf.getvalue()


def _csv_num(x) -> str:
    if x is None:
        return ""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.10g}"


# --- building ------------------------------------------------------------------------------


def categories_in(sections: list[dict]) -> list[str]:
    """Categories present in any of the per-category dicts, taxonomy order first."""
    present = {c for s in sections for c in s}
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(present, key=lambda c: (rank.get(c, len(rank)), c))


def category_table(key: str, title: str, note: str, entries: list[tuple[list[str], dict]],
                   lead_columns: list[str], with_counts: bool = True) -> Table:
    """Rows of ``lead cells + one statistic per category + overall (+ unclear rate, n)``.

    ``entries``: (lead cells, section) where section has ``per_category`` and ``overall``."""
    cats = categories_in([s["per_category"] for _, s in entries])
    columns = lead_columns + cats + ["Overall"] + (["unclear rate", "n"] if with_counts else [])
    table = Table(key, title, note, columns)
    for lead, section in entries:
        row = list(lead) + [section["per_category"].get(c, {"value": None}) for c in cats] + [section["overall"]]
        if with_counts:
            row += [section["overall"].get("unclear_rate"), section["overall"].get("n")]
        table.rows.append(row)
    return table
