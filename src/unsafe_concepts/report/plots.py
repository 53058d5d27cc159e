"""The report's figures: PNG (inlined in the page), SVG and PDF (for a paper), matplotlib's Agg renderer.

Each figure function takes the per-system results and returns a Figure, or None when no run has what
the figure needs; ``draw`` saves it. Error bars are the 95% intervals of metrics.py. Model specs and
concept names are drawn as plain text: mathtext is off (``draw`` sets ``text.parse_math``), so a model
called ``$x$`` (or ``$\\frac{``) neither renders as math nor breaks the figure.

A value of 0 is drawn as a visible stub with "0" above it; a missing value as "n/a" with no bar."""
from __future__ import annotations

from pathlib import Path

import re

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unsafe_concepts.report.tables import categories_in, thin

DPI = 100
FORMATS = ("png", "svg", "pdf")
VISUAL_COLOR, TEXTUAL_COLOR, PERCEPTION_COLOR = "#d95f02", "#1b9e77", "#7570b3"
GAP_POS, GAP_NEG = "#1b9e77", "#d95f02"
SERIES_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
ZERO_STUB = 0.012  # height of the stub that shows a value of exactly 0 (axis units of accuracy)


def draw(fn, *args, stem: Path, formats: tuple[str, ...] = FORMATS) -> Path | None:
    """Make one figure with mathtext off (run text is never parsed as TeX) and save it as ``stem``.png
    (always: the page inlines it) and in the other ``formats``; None when the runs do not allow it."""
    with matplotlib.rc_context({"text.parse_math": False, "svg.fonttype": "path"}):
        fig = fn(*args)
        if fig is None:
            return None
        FigureCanvasAgg(fig)
        for fmt in dict.fromkeys(("png", *formats)):
            fig.savefig(stem.with_suffix(f".{fmt}"), dpi=DPI, format=fmt, metadata=_metadata(fmt))
    return stem.with_suffix(".png")


def _clean(text) -> str:
    """Run text as a label: control characters (tabs, newlines) drawn as spaces."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", str(text))


def _values(stats: list[dict | None]) -> tuple[np.ndarray, np.ndarray]:
    """Bar heights and asymmetric error bars; NaN (no bar) where a value is missing."""
    v = np.array([np.nan if not s or s.get("value") is None else s["value"] for s in stats], dtype=float)
    low = np.array([np.nan if not s or s.get("ci_low") is None else s["ci_low"] for s in stats], dtype=float)
    high = np.array([np.nan if not s or s.get("ci_high") is None else s["ci_high"] for s in stats], dtype=float)
    err = np.vstack([np.nan_to_num(v - low, nan=0.0), np.nan_to_num(high - v, nan=0.0)])
    return v, np.clip(err, 0, None)


def _metadata(fmt: str) -> dict:
    # no creation dates: the same runs give the same files
    return {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]


def _mark_missing_and_zero(ax, xs, values, stats, *, horizontal: bool = False) -> None:
    """'n/a' where there is no value, a stub and '0' where the value is 0; thin values get a light hatch."""
    for x, v, s in zip(xs, values, stats):
        if np.isnan(v):
            if horizontal:
                ax.text(0.02, x, "n/a", ha="left", va="center", fontsize=6, color="#555")
            else:
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="#555")
        elif v == 0:
            if horizontal:
                ax.text(0.03, x, "0", ha="left", va="center", fontsize=6, color="#222")
            else:
                ax.text(x, ZERO_STUB + 0.01, "0", ha="center", va="bottom", fontsize=6, color="#222")


def _grouped_bars(ax, labels: list[str], series: list[tuple[str, str, list[dict | None]]], ylabel: str) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, color, stats) in enumerate(series):
        v, err = _values(stats)
        xs = x + (i - (len(series) - 1) / 2) * width
        heights = np.where(v == 0, ZERO_STUB, np.nan_to_num(v, nan=0.0))  # a 0 must not look like n/a
        alphas = [0.45 if s and thin(s) else 1.0 for s in stats]
        bars = ax.bar(xs, heights, width, yerr=err, color=color, label=_clean(name), capsize=2,
                      error_kw={"elinewidth": 0.8})
        for bar, alpha in zip(bars, alphas):
            bar.set_alpha(alpha)
        _mark_missing_and_zero(ax, xs, v, stats)
    ax.set_xticks(x)
    ax.set_xticklabels([_clean(label) for label in labels], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))  # outside: bars reach 1.0


def gap_overview(gaps: dict[str, dict]) -> Figure | None:
    """The headline: the modality gap (textual - visual) per category and overall, one bar per model."""
    chosen = [(s, g["general"]) for s, g in gaps.items() if "general" in g]
    if not chosen:
        return None
    cats = categories_in([g["per_category"] for _, g in chosen]) + ["Overall"]
    fig = Figure(figsize=(max(7.0, 0.9 * len(cats) * max(1, len(chosen)) ** 0.5 + 3), 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(cats))
    width = 0.8 / len(chosen)
    for i, (system, gap) in enumerate(chosen):
        stats = [gap["per_category"].get(c) for c in cats[:-1]] + [gap["overall"]]
        v, err = _values(stats)
        xs = x + (i - (len(chosen) - 1) / 2) * width
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        heights = np.where(v == 0, ZERO_STUB, np.nan_to_num(v, nan=0.0))
        bars = ax.bar(xs, heights, width, yerr=err, color=color, label=_clean(system), capsize=2,
                      error_kw={"elinewidth": 0.8})
        for bar, s in zip(bars, stats):
            if s and thin(s):
                bar.set_alpha(0.45)
        _mark_missing_and_zero(ax, xs, v, stats)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([_clean(c) for c in cats], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("gap = textual - visual accuracy", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.suptitle("Modality gap per category (textual - visual; 95% intervals; pale: few answers)", fontsize=9)
    return fig


def visual_vs_textual(systems: dict[str, dict]) -> Figure | None:
    """Per category, alignment accuracy with the concept shown (visual) vs named (textual), per model."""
    chosen = [(s, t) for s, t in systems.items() if "alignment" in t or "alignment_text_only" in t]
    return _category_panels(chosen, (("alignment", "visual (image)", VISUAL_COLOR),
                                     ("alignment_text_only", "textual (concept named)", TEXTUAL_COLOR)),
                            "alignment accuracy",
                            "Alignment accuracy per category: visual vs textual (95% intervals)")


def gap_per_concept(gaps: dict[str, dict]) -> Figure | None:
    """The modality gap (textual - visual) of every concept, sorted, one panel per model."""
    chosen = [(s, g["general"]) for s, g in gaps.items() if "general" in g]
    if not chosen:
        return None
    n_max = max(len(g["per_concept"]) for _, g in chosen)
    fig = Figure(figsize=(5.2 * len(chosen) + 1.5, 0.17 * n_max + 1.6), layout="constrained")
    for i, (system, gap) in enumerate(chosen):
        ax = fig.add_subplot(1, len(chosen), i + 1)
        items = [(c, e) for c, e in gap["per_concept"].items() if e.get("value") is not None]
        items.sort(key=lambda ce: ce[1]["value"])
        if not items:
            ax.text(0.5, 0.5, "no concept scored in both modalities", ha="center", va="center", fontsize=8)
            ax.set_axis_off()
            ax.set_title(_clean(system), fontsize=9)
            continue
        v, err = _values([e for _, e in items])
        y = np.arange(len(items))
        colors = [GAP_POS if x >= 0 else GAP_NEG for x in v]
        widths = np.where(v == 0, ZERO_STUB, v)
        bars = ax.barh(y, widths, xerr=err, color=colors, capsize=1.5, error_kw={"elinewidth": 0.6}, height=0.7)
        for bar, (_, e) in zip(bars, items):
            if thin(e):
                bar.set_alpha(0.45)
        _mark_missing_and_zero(ax, y, v, [e for _, e in items], horizontal=True)
        ax.set_yticks(y)
        ax.set_yticklabels([_clean(c) for c, _ in items], fontsize=6.5)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("gap = textual - visual accuracy", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(_clean(system), fontsize=9)
    fig.suptitle("Modality gap per concept, sorted (95% intervals; pale: few answers)", fontsize=10)
    return fig


def perception_vs_alignment(systems: dict[str, dict]) -> Figure | None:
    """Per category: does the model recognise the concept (perception) and call it unsafe (alignment)?"""
    chosen = [(s, t) for s, t in systems.items() if "perception" in t and "alignment" in t]
    return _category_panels(chosen, (("perception", "perception accuracy", PERCEPTION_COLOR),
                                     ("alignment", "visual alignment accuracy", VISUAL_COLOR)),
                            "accuracy", "Recognised (perception) vs called unsafe (visual alignment), per category")


def _category_panels(chosen: list[tuple[str, dict]], bars: tuple[tuple[str, str, str], ...], ylabel: str,
                     title: str) -> Figure | None:
    """One panel per (system, its runs by task): per category and overall, a bar for each (task, label,
    colour) in ``bars`` that the system ran."""
    if not chosen:
        return None
    fig = Figure(figsize=(11, 3.3 * len(chosen)), layout="constrained")
    for i, (system, tasks) in enumerate(chosen):
        ax = fig.add_subplot(len(chosen), 1, i + 1)
        shown = [(label, color, tasks[task].summary) for task, label, color in bars if tasks.get(task)]
        cats = categories_in([summary.get("per_category") or {} for _, _, summary in shown])
        series = [(label, color, [(summary.get("per_category") or {}).get(c) for c in cats] + [summary.get("overall")])
                  for label, color, summary in shown]
        _grouped_bars(ax, cats + ["Overall"], series, ylabel)
        ax.set_title(_clean(system), fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def post_training(rows: list[tuple[str, dict[str, dict | None]]], columns: list[str]) -> Figure | None:
    """The post-training comparison: one group of bars per figure (UnsafeConcepts_TEST, MME, ...), one bar
    per model. ``rows``: (model label, {column: statistic or None})."""
    if not rows:
        return None
    shown = [c for c in columns if any(stats.get(c) and stats[c].get("value") is not None for _, stats in rows)]
    if not shown:
        return None
    fig = Figure(figsize=(max(6.5, 1.2 * len(shown) * max(1, len(rows)) ** 0.5 + 3), 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    series = [(label, SERIES_COLORS[i % len(SERIES_COLORS)], [stats.get(c) for c in shown])
              for i, (label, stats) in enumerate(rows)]
    _grouped_bars(ax, shown, series, "score (0-1)")
    fig.suptitle("After training: each model on the paper's post-training figures (95% intervals)", fontsize=10)
    return fig
