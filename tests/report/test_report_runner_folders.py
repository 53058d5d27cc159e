"""The report on run folders written by the real runner (format version 2): a sweep over the visual and
text-only alignment tasks, and the whole posteval suite (UnsafeConcepts_TEST, MME, LLaVA-Bench, SMID, NSFW,
the general check) on the offline sample and the evaluation-set builders' fixtures. The model is the tiny
random LLaVA of the training tests (its answers are noise: this checks what the report reads, not quality);
the runner, the rule judge, MME's rule and the LLaVA-Bench review are the real ones."""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "evalsets"))
import builders  # noqa: E402  (the evaluation-set fixture builders)

pytestmark = pytest.mark.slow  # builds a tiny model and asks ~30 short questions


def _build_tiny_llava(out):
    spec = importlib.util.spec_from_file_location("train_conftest", TESTS / "train" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_llava(out)


@pytest.fixture(scope="module")
def runner_report(tmp_path_factory):
    from unsafe_concepts import evaluate
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.models.registry import load_model
    from unsafe_concepts.report import build_report
    from unsafe_concepts.train.posteval import PostEvalConfig, run_posteval

    root = tmp_path_factory.mktemp("runner")
    model = f"hf:{_build_tiny_llava(root / 'tiny-llava')}"
    backend = load_model(model)
    sweep = evaluate(model, ["alignment", "alignment_text_only"], data="sample", out=root / "sweep", limit=3,
                     judge="rule", max_new_tokens=4, backend=backend)
    config = PostEvalConfig(model=model, out_dir=str(root / "post"), unsafeconcepts="sample",
                            mme=str(builders.build_mme_tsv(root)), llavabench=str(builders.build_llava_folder(root)),
                            smid=str(builders.build_smid_folder(root)), nsfw=str(builders.build_nsfw_folder(root)),
                            llava_judge="tiny", judge="rule", limit=3, max_new_tokens=4, general=True)
    post = run_posteval(config, backend=backend, judge=load_judge("rule"), llava_judge=backend, quiet=True)
    assert not post["failures"]
    folders = [r.out for r in sweep.results] + [r.out for r in post["results"].values()]
    return build_report(folders, root / "report", plot_formats=("png",)), folders, model


def test_every_runner_folder_is_read(runner_report):
    report, folders, model = runner_report
    assert not report.problems and len(report.runs) == len(folders) == 8
    assert all(r.format_version == 2 for r in report.runs)
    assert {r.system for r in report.runs} == {model}  # one model: one row in every table
    # the sample is synthetic; the general check's questions and the built fixtures are not
    assert {r.task for r in report.runs if r.synthetic} == {"alignment", "alignment_text_only", "unsafeconcepts_test"}
    # the figures agree with what the runner wrote into metrics.json
    for run in report.runs:
        written = json.loads((run.path / "metrics.json").read_text())
        assert run.summary["overall"]["value"] == written["overall"]["value"], run.task
        assert run.summary["n"] == written["n"], run.task


def test_gap_row_and_banner(runner_report):
    report, _, model = runner_report
    gap = list(csv.DictReader((report.out / "modality_gap.csv").open()))
    assert [row["model"] for row in gap] == [model]
    assert gap[0]["Overall n"] == "3/3"  # visual/textual answers behind the gap
    assert not report.gap_missing
    page = report.html_path.read_text()
    assert "Synthetic data." in page
    assert page.index('id="gap"') < page.index('id="per-category"') < page.index('id="post-training"')


def test_post_training_table_reads_the_posteval_suite(runner_report):
    report, _, model = runner_report
    rows = list(csv.DictReader((report.out / "post_training.csv").open()))
    assert len(rows) == 1 and rows[0]["model"] == model
    row = rows[0]
    by_task = {r.task: r.summary for r in report.runs}
    for column, task in (("UnsafeConcepts_TEST", "unsafeconcepts_test"), ("MME", "mme"), ("LLaVA-Bench", "llavabench"),
                         ("SMID", "smid"), ("NSFW", "nsfw")):
        assert row[f"{column} n"] == str(by_task[task]["overall"]["n"]) != "", column  # every set has its n
        value = by_task[task]["overall"]["value"]
        assert row[column] == "" if value is None else float(row[column]) == pytest.approx(value), column
    diversity = by_task["unsafeconcepts_test"]["diversity"]["one_minus_self_bleu"]
    assert row["1 - Self-BLEU"] == "" if diversity is None else float(row["1 - Self-BLEU"]) == pytest.approx(diversity)
    other = list(csv.DictReader((report.out / "other_tasks.csv").open()))
    assert [r["task"] for r in other] == ["general_yes_no"]
