"""The report on real model text: the reference implementation's LLaVA-1.5-7B answers, judged by the rule judge.

Skips when shared/reference is not beside the repo."""
from __future__ import annotations

import pytest
from report_fixtures import runs_from_reference_answers

from unsafe_concepts.paths import reference_dir

REFERENCE = reference_dir()
pytestmark = pytest.mark.skipif(REFERENCE is None or not (REFERENCE / "responses").exists(),
                                reason="shared/reference/responses is not available")


@pytest.fixture(scope="module")
def reference_report(tmp_path_factory):
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.report import build_report

    runs = runs_from_reference_answers(REFERENCE, tmp_path_factory.mktemp("ref-runs"), load_judge("rule"))
    return build_report(runs, tmp_path_factory.mktemp("ref-report"))


def test_after_training_ordering_matches_the_paper(reference_report):
    """The paper: SFT 0.977 > original 0.736 > DPO 0.648 on UnsafeConcepts_TEST."""
    overall = {r.model: r.summary for r in reference_report.runs if r.task == "unsafeconcepts_test"}
    sft, original, dpo = (overall[f"llava-1.5-7b ({v})"] for v in ("sft", "original", "dpo"))
    assert all(s["n"] == 690 and s["safe"]["n"] == 345 and s["unsafe"]["n"] == 345 for s in (sft, original, dpo))
    assert sft["overall"]["ci_low"] > original["overall"]["ci_high"]  # SFT clearly better
    assert original["overall"]["value"] > dpo["overall"]["value"]
    # the original model's errors are on the unsafe half: it calls unsafe images safe
    assert original["unsafe"]["value"] < 0.5 < 0.9 < original["safe"]["value"]


def test_context_runs_and_page(reference_report):
    context = next(r for r in reference_report.runs if r.task == "alignment_context")
    per = context.summary["per_context"]
    assert per["safe"]["overall"]["n"] == per["unsafe"]["overall"]["n"] == 345
    assert len(context.summary["per_category"]) == 9
    html = reference_report.html_path.read_text()
    assert html.count('<table class="results"') >= 3 and html.count("<script") == 1  # the page's own only


def test_post_training_table_in_the_papers_layout(reference_report):
    """One row per model, UnsafeConcepts_TEST overall / safe / unsafe with n and interval, as in the paper."""
    import csv

    rows = {r["model"]: r for r in csv.DictReader((reference_report.out / "post_training.csv").open())}
    assert set(rows) == {f"llava-1.5-7b ({v})" for v in ("original", "sft", "dpo")}
    for variant in ("original", "sft", "dpo"):
        row = rows[f"llava-1.5-7b ({variant})"]
        run = next(r for r in reference_report.runs if r.model == f"llava-1.5-7b ({variant})"
                   and r.task == "unsafeconcepts_test")
        assert float(row["UnsafeConcepts_TEST"]) == pytest.approx(run.summary["overall"]["value"])
        assert row["UnsafeConcepts_TEST n"] == "690" and row["safe half n"] == row["unsafe half n"] == "345"
        assert float(row["UnsafeConcepts_TEST ci_low"]) < float(row["UnsafeConcepts_TEST"]) \
            < float(row["UnsafeConcepts_TEST ci_high"])
        assert row["MME"] == "" and row["SMID"] == ""  # no such run: empty, never 0
    assert float(rows["llava-1.5-7b (sft)"]["UnsafeConcepts_TEST"]) > float(rows["llava-1.5-7b (dpo)"]["UnsafeConcepts_TEST"])
