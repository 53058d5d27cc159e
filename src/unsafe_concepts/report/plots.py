"""The report's figures as PNG files (matplotlib's Agg renderer, no display needed).

Each function takes the per-system results and returns the written path, or None when no run
has what the figure needs. Error bars are the 95% bootstrap intervals of metrics.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unsafe_concepts.report.tables import categories_in

DPI = 100
VISUAL_COLOR, TEXTUAL_COLOR, PERCEPTION_COLOR = "#d95f02", "#1b9e77", "#7570b3"


def _values(stats: list[dict | None]) -> tuple[np.ndarray, np.ndarray]:
    """Bar heights and asymmetric error bars; NaN (no bar) where a value is missing."""
    v = np.array([np.nan if not s or s.get("value") is None else s["value"] for s in stats], dtype=float)
    low = np.array([np.nan if not s or s.get("ci_low") is None else s["ci_low"] for s in stats], dtype=float)
    high = np.array([np.nan if not s or s.get("ci_high") is None else s["ci_high"] for s in stats], dtype=float)
    err = np.vstack([np.nan_to_num(v - low, nan=0.0), np.nan_to_num(high - v, nan=0.0)])
    return v, np.clip(err, 0, None)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _grouped_bars(ax, labels: list[str], series: list[tuple[str, str, list[dict | None]]], ylabel: str) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, color, stats) in enumerate(series):
        v, err = _values(stats)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(v, nan=0.0), width, yerr=err, color=color,
               label=name, capsize=2, error_kw={"elinewidth": 0.8})
        for xi, vi in zip(x, v):
            if np.isnan(vi):  # say "n/a" instead of drawing a zero-height bar that looks like 0.0
                ax.text(xi + (i - (len(series) - 1) / 2) * width, 0.02, "n/a", ha="center", va="bottom",
                        fontsize=6, rotation=90, color="#555")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))  # outside: bars reach 1.0


def visual_vs_textual(systems: dict[str, dict], path: Path) -> Path | None:
    """Per category, alignment accuracy with the concept shown (visual) vs named (textual), per model."""
    chosen = [(s, t) for s, t in systems.items() if "alignment" in t or "alignment_text_only" in t]
    if not chosen:
        return None
    fig = Figure(figsize=(11, 3.3 * len(chosen)), layout="constrained")
    for i, (system, tasks) in enumerate(chosen):
        ax = fig.add_subplot(len(chosen), 1, i + 1)
        vis = tasks.get("alignment")
        txt = tasks.get("alignment_text_only")
        cats = categories_in([r.summary["per_category"] for r in (vis, txt) if r])
        series = []
        for name, color, run in (("visual (image)", VISUAL_COLOR, vis), ("textual (concept named)", TEXTUAL_COLOR, txt)):
            if run:
                series.append((name, color, [run.summary["per_category"].get(c) for c in cats]
                               + [run.summary["overall"]]))
        _grouped_bars(ax, cats + ["Overall"], series, "alignment accuracy")
        ax.set_title(system, fontsize=9)
    fig.suptitle("Alignment accuracy per category: visual vs textual (95% bootstrap intervals)", fontsize=10)
    return _save(fig, path)


def gap_per_concept(gaps: dict[str, dict], path: Path) -> Path | None:
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
            ax.set_title(system, fontsize=9)
            continue
        v, err = _values([e for _, e in items])
        y = np.arange(len(items))
        colors = [TEXTUAL_COLOR if x >= 0 else VISUAL_COLOR for x in v]
        ax.barh(y, v, xerr=err, color=colors, capsize=1.5, error_kw={"elinewidth": 0.6}, height=0.7)
        ax.set_yticks(y)
        ax.set_yticklabels([c for c, _ in items], fontsize=6.5)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("gap = textual - visual accuracy", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(system, fontsize=9)
    fig.suptitle("Modality gap per concept, sorted (95% bootstrap intervals)", fontsize=10)
    return _save(fig, path)


def perception_vs_alignment(systems: dict[str, dict], path: Path) -> Path | None:
    """Per category: does the model recognise the concept (perception) and call it unsafe (alignment)?"""
    chosen = [(s, t) for s, t in systems.items() if "perception" in t and "alignment" in t]
    if not chosen:
        return None
    fig = Figure(figsize=(11, 3.3 * len(chosen)), layout="constrained")
    for i, (system, tasks) in enumerate(chosen):
        ax = fig.add_subplot(len(chosen), 1, i + 1)
        per, vis = tasks["perception"], tasks["alignment"]
        cats = categories_in([per.summary["per_category"], vis.summary["per_category"]])
        series = [
            ("perception accuracy", PERCEPTION_COLOR, [per.summary["per_category"].get(c) for c in cats]
             + [per.summary["overall"]]),
            ("visual alignment accuracy", VISUAL_COLOR, [vis.summary["per_category"].get(c) for c in cats]
             + [vis.summary["overall"]]),
        ]
        _grouped_bars(ax, cats + ["Overall"], series, "accuracy")
        ax.set_title(system, fontsize=9)
    fig.suptitle("Recognised (perception) vs called unsafe (visual alignment), per category", fontsize=10)
    return _save(fig, path)


def after_training(systems: dict[str, dict], path: Path) -> Path | None:
    """UnsafeConcepts_TEST accuracy per model: overall and on the safe / unsafe halves."""
    chosen = [(s, run) for s, tasks in systems.items() for task, run in tasks.items()
              if run.after_training and task.startswith("unsafeconcepts_test")]
    if not chosen:
        return None
    fig = Figure(figsize=(max(6.0, 1.6 * len(chosen) + 3), 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"{s}\n{run.task}" if run.task != "unsafeconcepts_test" else s for s, run in chosen]
    series = [(name, color, [run.summary.get(key) for _, run in chosen])
              for name, color, key in (("overall", PERCEPTION_COLOR, "overall"), ("safe half", TEXTUAL_COLOR, "safe"),
                                       ("unsafe half", VISUAL_COLOR, "unsafe"))]
    _grouped_bars(ax, labels, series, "accuracy (unclear = wrong)")
    fig.suptitle("Accuracy on UnsafeConcepts_TEST (95% bootstrap intervals)", fontsize=10)
    return _save(fig, path)
