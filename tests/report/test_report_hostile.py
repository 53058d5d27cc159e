"""The report against hostile or broken run folders: formula injection in CSV cells, TeX in model names,
secrets echoed in answers, folders that cannot be read. The report is always written, bad runs are named."""
from __future__ import annotations

import csv
import io
import json

import matplotlib
import pytest
from report_fixtures import rows_of, write_run

from unsafe_concepts.report import build_report
from unsafe_concepts.report.tables import neutralise_csv

PNG = ("png",)  # SVG and PDF are checked where they matter (TeX in names), PNG is enough elsewhere
FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1,1)", "\tTAB", "\rCR"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_neutralise_csv_cases():
    for text in FORMULAS:
        assert neutralise_csv(text) == "'" + text
    for text in ("Hate", "0.5", "a=b", " =x", ""):
        assert neutralise_csv(text) == text


def test_csv_cells_cannot_start_a_formula(tmp_path):
    runs = []
    for i, name in enumerate(FORMULAS[:4]):
        rows = rows_of("@concept", FORMULAS[i + 1] if i + 1 < len(FORMULAS) else "Hate", ["unsafe", "safe"])
        runs.append(write_run(tmp_path / f"v{i}", name, "alignment", rows))
        runs.append(write_run(tmp_path / f"t{i}", name, "alignment_text_only", rows_of("@concept", "=Cat", ["safe"])))
    report = build_report(runs, tmp_path / "out", plot_formats=PNG)
    cells = 0
    for path in report.out.glob("*.csv"):
        for row in csv.reader(io.StringIO(path.read_text())):
            for cell in row:
                cells += 1
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or _is_number(cell), (path.name, cell)
    assert cells > 50
    gap = (report.out / "modality_gap.csv").read_text()
    assert "'=HYPERLINK" in gap and "'-2+3" in gap and "'@SUM(1,1)" in gap and "'=Cat" in gap
    assert ",-" in gap  # negative gaps stay numbers (textual 0 - visual 0.5)


@pytest.mark.parametrize("model", ["$\\frac{1$", "$x^2$ and $y"])
def test_tex_in_a_model_name_does_not_break_the_plots(tmp_path, model):
    visual = write_run(tmp_path / "v", model, "alignment", rows_of("Swastika", "Hate", ["unsafe", "safe"]))
    textual = write_run(tmp_path / "t", model, "alignment_text_only", rows_of("Swastika", "Hate", ["unsafe"]))
    report = build_report([visual, textual], tmp_path / "out")
    assert not [n for n in report.notes if "could not be drawn" in n]
    assert {p.key for p in report.plots} >= {"modality_gap", "visual_vs_textual", "gap_per_concept"}
    assert report.html_path.exists() and model.replace("$", "") in report.html_path.read_text().replace("$", "")
    assert "\\$" in (report.out / "modality_gap.tex").read_text()  # escaped for LaTeX


def test_harness_detects_mathtext_failure(tmp_path):
    """Negative control: the same label with mathtext on (matplotlib's default) does break a figure."""
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot(1, 1, 1).set_title("$\\frac{1$")
    with matplotlib.rc_context({"text.parse_math": True}), pytest.raises(ValueError):
        fig.savefig(tmp_path / "x.png")


def test_a_figure_that_fails_costs_only_itself(tmp_path, monkeypatch):
    from unsafe_concepts.report import plots

    def broken(*_):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(plots, "gap_per_concept", broken)
    visual = write_run(tmp_path / "v", "m", "alignment", rows_of("Swastika", "Hate", ["unsafe"]))
    textual = write_run(tmp_path / "t", "m", "alignment_text_only", rows_of("Swastika", "Hate", ["unsafe"]))
    report = build_report([visual, textual], tmp_path / "out", plot_formats=PNG)
    assert any("figure gap_per_concept could not be drawn (RuntimeError: disk on fire)" in n for n in report.notes)
    assert report.html_path.exists() and "disk on fire" in report.html_path.read_text()


def test_bad_run_folders_are_named_and_the_report_is_still_written(tmp_path):
    good = write_run(tmp_path / "good", "m", "alignment", rows_of("Swastika", "Hate", ["unsafe"]))
    broken_line = write_run(tmp_path / "list-row", "m2", "alignment", rows_of("Swastika", "Hate", ["unsafe"]))
    with open(broken_line / "responses.jsonl", "a") as f:
        f.write("[1, 2]\n" + json.dumps({"id": "z", "verdict": "unsafe", "concept": "Swastika", "category": "Hate"})
                + "\n")
    bad = {}
    bad["list_record"] = tmp_path / "list-record"
    bad["list_record"].mkdir()
    (bad["list_record"] / "run.json").write_text("[1, 2]")
    bad["no_model"] = tmp_path / "no-model"
    bad["no_model"].mkdir()
    (bad["no_model"] / "run.json").write_text(json.dumps({"config": {"task": "alignment"}}))
    (bad["no_model"] / "responses.jsonl").write_text("{}\n")
    bad["latin1"] = write_run(tmp_path / "latin1", "m", "alignment", rows_of("Swastika", "Hate", ["unsafe"]))
    (bad["latin1"] / "responses.jsonl").write_bytes(b'{"id": "x", "response": "caf\xe9"}\n')
    bad["bad_verdict"] = write_run(tmp_path / "bad-verdict", "m", "alignment",
                                   rows_of("Swastika", "Hate", ["unsafe", "maybe"]))
    bad["run_json_dir"] = tmp_path / "run-json-dir"
    (bad["run_json_dir"] / "run.json").mkdir(parents=True)
    report = build_report([good, broken_line, *bad.values()], tmp_path / "out", plot_formats=PNG)
    assert [r.path for r in report.runs] == [good, broken_line]
    problems = "\n".join(report.problems)
    assert len(report.problems) == len(bad)
    for path in bad.values():
        assert str(path) in problems
    assert "not a JSON object" in problems and "names no task or model" in problems
    assert "has no readable row (line 1 of responses.jsonl skipped: not UTF-8)" in problems
    # a broken line in the middle costs only that line, as in the run store: named, the rows after it kept
    kept = report.runs[1]
    assert [r["id"] for r in kept.rows] == ["alignment-0", "z"]
    assert any(n.endswith("line 2 of responses.jsonl skipped: a JSON list, not an object") for n in report.notes)
    assert "verdict 'maybe'" in problems
    page = report.html_path.read_text()
    assert all(p.name in page for p in bad.values())


def test_secrets_echoed_in_answers_are_masked(tmp_path):
    key = "sk-proj-Xq3vB8nT2mL9pR4wK7yZ1aC6"
    rows = rows_of("Swastika", "Hate", ["unsafe", "safe"])
    rows[0]["response"] = f"Your header was: Authorization: Bearer {key}"
    rows[1]["response"] = "token hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 ok"
    run = write_run(tmp_path / "r", "m", "alignment", rows)
    report = build_report([run], tmp_path / "out", plot_formats=PNG)
    page = report.html_path.read_text()
    assert key not in page and "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345" not in page
    assert page.count("[secret removed]") >= 2
