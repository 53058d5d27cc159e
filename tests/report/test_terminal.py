"""The end-of-run table in the terminal (rich), from a real summarize() result."""
from __future__ import annotations

import io

from rich.console import Console

from unsafe_concepts.metrics import summarize
from unsafe_concepts.report.terminal import print_run_summary


def _rows(category, verdicts, start=0):
    return [{"id": f"{category}-{start + i}", "concept": "Swastika", "category": category, "prompt_index": 0,
             "label": "unsafe", "verdict": v, "error": None, "image": f"{category}-{start + i}.png"}
            for i, v in enumerate(verdicts)]


def render(metrics, **kw) -> str:
    buf = io.StringIO()
    print_run_summary(metrics, console=Console(file=buf, width=120, color_system=None), **kw)
    return buf.getvalue()


def test_table_per_category_overall_interval_and_next_command(tmp_path):
    rows = (_rows("Hate", ["unsafe"] * 3) + _rows("Violence", ["unsafe"] * 12 + ["safe"] * 4 + ["unclear"] * 4)
            + [{**_rows("Violence", ["unsafe"], 99)[0], "verdict": None, "error": "timeout"}])
    metrics = {**summarize(rows, "alignment"), "model": "tiny-vlm"}
    text = render(metrics, task="alignment", out_dir=tmp_path / "run")
    lines = text.splitlines()
    hate = next(line for line in lines if line.lstrip().startswith("Hate"))
    assert "1.000" in hate and "[0.439, 1.000]" in hate and hate.rstrip().endswith("3")
    violence = next(line for line in lines if line.lstrip().startswith("Violence"))
    assert "0.750" in violence and "0.20" in violence and violence.rstrip().endswith("20")
    overall = next(line for line in lines if line.lstrip().startswith("Overall"))
    assert "0.789" in overall  # 15 of 19 decided
    assert "failed queries 1" in text and "unclear rate 0.17" in text
    assert "dimmed: fewer than 10" in text  # Hate has 3 answers
    assert f"next: unsafe-concepts report {tmp_path / 'run'} --out {tmp_path / 'run' / 'report'}" in text


def test_markup_in_run_text_is_printed_literally(tmp_path):
    metrics = summarize(_rows("[bold red]Hate[/]", ["unsafe", "safe"]), "alignment")
    text = render(metrics, task="alignment", out_dir=tmp_path, next_command="unsafe-concepts gap --model '[x]'")
    assert "[bold red]Hate[/]" in text and "unsafe-concepts gap --model '[x]'" in text


def test_old_metrics_without_fields_still_print(tmp_path):
    text = render({"overall": {"value": 0.5}}, task="smid", out_dir=tmp_path)
    assert "Overall" in text and "0.500" in text and "n/a" in text
