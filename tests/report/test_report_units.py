"""Small pieces of the report on their own: how a 0 and a missing value are drawn, LaTeX escaping, cells."""
from __future__ import annotations

import pytest

from unsafe_concepts.report import plots
from unsafe_concepts.report.tables import Table, fmt_stat, to_latex, to_markdown


def _stat(value, n=40):
    if value is None:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    return {"value": value, "ci_low": max(-1, value - 0.1), "ci_high": min(1, value + 0.1), "n": n, "n_eff": n}


def test_a_zero_bar_does_not_look_like_a_missing_one():
    gap = {"per_category": {"Hate": _stat(0.0), "Violence": _stat(None), "Sexual": _stat(0.4)},
           "overall": _stat(0.2)}
    fig = plots.gap_overview({"model": {"general": gap}})
    ax = fig.axes[0]
    heights = {round(p.get_x() + p.get_width() / 2): p.get_height() for p in ax.patches}
    labels = [t.get_text() for t in ax.get_xticklabels()]
    at = {label: heights[i] for i, label in enumerate(labels)}
    assert at["Hate"] == plots.ZERO_STUB > 0  # a visible stub ...
    assert at["Violence"] == 0  # ... where a missing value has no bar at all
    assert at["Sexual"] == pytest.approx(0.4)
    texts = {t.get_text(): t.get_position()[0] for t in ax.texts}
    assert texts["0"] == pytest.approx(labels.index("Hate"))  # labelled "0"
    assert texts["n/a"] == pytest.approx(labels.index("Violence"))  # labelled "n/a"


def test_thin_bars_are_pale():
    hate = {**_stat(0.5), "visual": _stat(0.2, n=3), "textual": _stat(0.7, n=30)}  # 3 visual answers
    ax = plots.gap_overview({"m": {"general": {"per_category": {"Hate": hate}, "overall": _stat(0.5)}}}).axes[0]
    alphas = [p.get_alpha() for p in ax.patches]
    assert alphas == [0.45, None]  # the category rests on 3 visual answers; the overall is not thin


def test_latex_escapes_and_marks_thin_cells():
    table = Table("t", "A & B", "50% of #1", ["model_name", "Overall"],
                  [["m_1 & {x} $y$ ~^\\", _stat(0.5, n=3)], ["plain", _stat(None)]])
    tex = to_latex(table)
    assert r"m\_1 \& \{x\} \$y\$ \textasciitilde{}\textasciicircum{}\textbackslash{}" in tex
    assert r"0.500 {\scriptsize [0.400, 0.600]}$^\dagger$" in tex and "n/a" in tex
    assert r"model\_name & Overall \\" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "A \\& B" in tex.splitlines()[0] and "50\\% of \\#1" in tex.splitlines()[0]


def test_markdown_cell_shows_value_interval_n_and_thinness():
    assert fmt_stat(_stat(0.5, n=40)) == "0.500 [0.400, 0.600] n=40"
    assert fmt_stat(_stat(0.5, n=3)) == "0.500 [0.400, 0.600] n=3 †"
    gap = {**_stat(0.25), "visual": _stat(0.5, n=12), "textual": _stat(0.75, n=20)}
    assert fmt_stat(gap).endswith("n=12/20")
    md = to_markdown(Table("t", "T", "note", ["m", "x"], [["a|b", _stat(0.5, n=3)]]))
    assert "a\\|b" in md and "† fewer than 10 effective answers" in md
