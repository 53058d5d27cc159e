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
    return build_report(runs, tmp_path_factory.mktemp("ref-report"), n_boot=300)


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
    assert html.count('<table class="results"') >= 3 and "<script" not in html
