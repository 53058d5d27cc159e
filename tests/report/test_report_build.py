"""The report from synthetic run folders with known verdicts: tables, CSV, problems, page safety."""
from __future__ import annotations

import csv
import io
import json
import re
from html import unescape

import pytest
from report_fixtures import BROKEN, GOOD, LLAVA, SCRIPT_ANSWER

from unsafe_concepts.cli import main

TINY = "tiny-vlm [untrained vision]"


def table_rows(report, key) -> list[dict]:
    text = (report.out / f"{key}.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    return rows


def test_files_written(built_report):
    names = {p.name for p in built_report.out.iterdir()}
    for stem in ("perception", "alignment_visual", "alignment_textual", "modality_gap", "context_visual",
                 "context_textual", "context_gap", "after_training", "per_prompt", "modality_gap_concepts"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= names, stem
    assert {"report.html", "report.md", "report.json"} <= names
    for stem in ("modality_gap", "visual_vs_textual", "gap_per_concept", "perception_vs_alignment", "post_training"):
        png, svg, pdf = (built_report.out / f"{stem}.{ext}" for ext in ("png", "svg", "pdf"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert "<svg" in svg.read_text()
        assert pdf.read_bytes()[:5] == b"%PDF-"


def test_paper_tables_have_the_hand_computed_values(built_report):
    perception = {r["model"]: r for r in table_rows(built_report, "perception")}
    assert float(perception[LLAVA]["Hate"]) == pytest.approx(0.75)
    assert float(perception[LLAVA]["Violence"]) == 1.0
    assert float(perception[LLAVA]["Overall"]) == pytest.approx(0.8)
    assert float(perception[LLAVA]["unclear rate"]) == pytest.approx(1 / 6)
    assert float(perception[TINY]["Overall"]) == 0.5 and perception[TINY]["Violence"] == ""

    visual = {r["model"]: r for r in table_rows(built_report, "alignment_visual")}
    assert float(visual[LLAVA]["Hate"]) == 0.5 and float(visual[LLAVA]["Overall"]) == pytest.approx(4 / 6)
    assert int(visual[LLAVA]["n"]) == 8  # the error row is excluded
    assert float(visual[TINY]["Overall"]) == pytest.approx(1 / 3)

    gap = {r["model"]: r for r in table_rows(built_report, "modality_gap")}
    assert list(gap) == [LLAVA]  # tiny-vlm has no textual run, so no gap
    assert float(gap[LLAVA]["Hate"]) == pytest.approx(0.5)
    assert float(gap[LLAVA]["Violence"]) == pytest.approx(-0.5)
    assert float(gap[LLAVA]["Overall"]) == pytest.approx(3 / 4 - 4 / 6)
    low, high = float(gap[LLAVA]["Overall ci_low"]), float(gap[LLAVA]["Overall ci_high"])
    assert low < 3 / 4 - 4 / 6 < high

    ctx = {(r["model"], r["context"]): r for r in table_rows(built_report, "context_gap")}
    assert float(ctx[(LLAVA, "safe")]["Overall"]) == pytest.approx(1.0 - 0.5)
    assert float(ctx[(LLAVA, "unsafe")]["Overall"]) == pytest.approx(0.5 - 1.0)

    after = table_rows(built_report, "after_training")[0]
    assert (float(after["Overall"]), float(after["safe half"]), float(after["unsafe half"])) == (0.75, 0.5, 1.0)


def test_markdown_shows_intervals_and_untrained_label(built_report):
    md = (built_report.out / "alignment_visual.md").read_text()
    assert "| hf:llava-hf/llava-1.5-7b-hf | 0.500 [" in md
    assert TINY in md
    report_md = (built_report.out / "report.md").read_text()
    assert "randomly initialised vision tower" in report_md
    assert "0.14-0.70" in report_md  # the paper's reference range, stated by the package itself


def test_broken_run_folders_are_named_and_skipped(built_report, run_dirs):
    assert len(built_report.runs) == len(GOOD)
    problems = "\n".join(built_report.problems)
    assert len(built_report.problems) == len(BROKEN)
    assert f"{run_dirs['unjudged']}: not judged yet" in problems
    assert f"{run_dirs['no_responses']}: no responses.jsonl" in problems
    assert "bad-line: responses.jsonl has no readable row (line 1 of responses.jsonl skipped: not JSON" in problems
    assert "line 2 of responses.jsonl skipped: a JSON list, not an object" in problems
    assert f"{run_dirs['missing']}: no such run folder" in problems
    html = built_report.html_path.read_text()
    assert "not judged yet" in html and "does-not-exist" in html


def test_report_json_is_strict_json(built_report):
    data = json.loads((built_report.out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    systems = {r["system"] for r in data["runs"]}
    assert systems == {LLAVA, TINY}
    assert data["gaps"][LLAVA]["general"]["per_concept"]["Swastika"]["value"] == pytest.approx(0.5)


def test_html_is_self_contained_and_escapes_model_text(built_report):
    html = built_report.html_path.read_text()
    # one script element: the page's own (answer browser), allowed by its hash; answers' scripts are text
    assert html.lower().count("<script") == 1 and "script-src 'sha256-" in unescape(html)
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in unescape(html)
    # no external fetches: every src/href is a data URI or an in-page anchor
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith("data:image/png;base64,") or attr.startswith("#"), attr
    assert "/data/images/" not in html  # image paths are not shown, only ids
    assert html.count("data:image/png;base64,") == len(built_report.plots) == 5


def test_cli_report_builds_with_a_broken_folder(run_dirs, tmp_path, capsys):
    code = main(["report", str(run_dirs["llava_visual"]), str(run_dirs["llava_textual"]), str(run_dirs["unjudged"]),
                 "--out", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 0
    assert "modality gap (general) 0.083" in captured.out
    assert "warning: skipped" in captured.err and "not judged yet" in captured.err
    assert (tmp_path / "r" / "report.html").exists()


def test_cli_report_with_no_usable_folder_is_a_clear_error(run_dirs, tmp_path, capsys):
    code = main(["report", str(run_dirs["unjudged"]), str(run_dirs["missing"]), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: no usable run folder") and "not-judged" in err and "does-not-exist" in err
    assert "Traceback" not in err


def test_script_answer_present_in_examples(built_report):
    assert SCRIPT_ANSWER  # the injected answer the browser test looks for
    html = built_report.html_path.read_text()
    assert "I cannot &lt;b&gt;tell&lt;/b&gt; &amp; won&#39;t" in html


def test_an_earlier_report_among_the_folders_is_skipped(run_dirs, tmp_path):
    from unsafe_concepts.report import build_report

    first = build_report([run_dirs["llava_visual"]], tmp_path / "runs-report", plot_formats=("png",))
    again = build_report([run_dirs["llava_visual"], first.out], tmp_path / "again", plot_formats=("png",))
    assert not again.problems and len(again.runs) == 1
    assert any("is a report folder, not a run folder: skipped" in n for n in again.notes)


def test_repeated_runs_stay_separate_and_torn_last_line_is_noted(tmp_path):
    from report_fixtures import rows_of, write_run

    from unsafe_concepts.report import build_report

    a = write_run(tmp_path / "a", "smollm2-135m", "alignment_text_only", rows_of("Swastika", "Hate", ["unsafe"]))
    b = write_run(tmp_path / "b", "smollm2-135m", "alignment_text_only", rows_of("Swastika", "Hate", ["safe", "safe"]))
    c = write_run(tmp_path / "c", "smollm2-135m", "alignment_text_only", rows_of("Swastika", "Hate", ["unsafe"]),
                  data="/data/full")
    with open(b / "responses.jsonl", "a") as f:
        f.write('{"id": "torn", "verd')  # a run killed mid-write
    report = build_report([a, b, c], tmp_path / "out")
    systems = [r.system for r in report.runs]
    assert systems == ["smollm2-135m @ sample", "smollm2-135m @ sample (b)", "smollm2-135m @ /data/full"]
    assert [r.summary["overall"]["value"] for r in report.runs] == [1.0, 0.0, 1.0]
    assert any("repeats model" in n for n in report.notes)
    assert any("last line of responses.jsonl is incomplete" in n for n in report.notes)
    assert not report.problems
