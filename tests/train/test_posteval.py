"""Post-training evaluation: a suite of tasks run by the one runner into ordinary run folders, end to end on
built fixtures with a tiny random LLaVA (answers are noise: this checks the plumbing, resuming and scoring,
not quality); and the same SMID rows giving the same figure through evaluate and posteval."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evalsets"))
import builders  # noqa: E402  (the evaluation-set fixture builders)

from unsafe_concepts.errors import UserError  # noqa: E402
from unsafe_concepts.train.posteval import PostEvalConfig, run_posteval  # noqa: E402


@pytest.fixture(scope="module")
def tiny_backend(tiny_llava_dir):
    from unsafe_concepts.models.registry import load_model

    return load_model(f"hf:{tiny_llava_dir}")


def test_all_sets_write_ordinary_run_folders_and_resume(tiny_backend, tiny_llava_dir, tmp_path):
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.report.loading import load_run

    mme_tsv, llava_folder = builders.build_mme_tsv(tmp_path), builders.build_llava_folder(tmp_path)
    smid_folder, nsfw_folder = builders.build_smid_folder(tmp_path), builders.build_nsfw_folder(tmp_path)

    config = PostEvalConfig(model=f"hf:{tiny_llava_dir}", out_dir=str(tmp_path / "pe"), unsafeconcepts="sample",
                            mme=str(mme_tsv), llavabench=str(llava_folder), smid=str(smid_folder),
                            nsfw=str(nsfw_folder), llava_judge="tiny", judge="rule", limit=4,
                            max_new_tokens=3, batch_size=4, general=True)
    done = run_posteval(config, backend=tiny_backend, judge=load_judge("rule"), llava_judge=tiny_backend, quiet=True)
    assert not done["failures"]
    res = done["results"]
    assert set(res) == {"unsafeconcepts_test", "mme", "llavabench", "smid", "nsfw", "general_yes_no"}
    out = Path(config.out_dir)
    for name, result in res.items():
        record = json.loads((out / name / "run.json").read_text())
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert record["suite"] == "posteval" and record["task"]["name"] == name and metrics["format_version"] == 2
        assert record["config"]["generation"]["do_sample"] is False  # greedy, as the reference
        assert result.metrics["n"] + result.metrics["n_error"] == len((out / name / "responses.jsonl")
                                                                      .read_text().splitlines())
    uc = res["unsafeconcepts_test"].metrics
    assert uc["n"] == 4 and uc["after_training"] and {"safe", "unsafe", "diversity"} <= set(uc)
    mme = res["mme"].metrics
    assert mme["n"] == 4 and mme["details"]["n"] == 4 and mme["metrics_kind"] == "mme"
    llava = res["llavabench"].metrics
    assert llava["n"] == 3 and llava["details"]["n_unparsed"] + (llava["details"]["overall"] or {"n": 0})["n"] == 3
    assert res["smid"].metrics["n"] == 4  # one prompt per image, as the reference pairs them
    assert res["general_yes_no"].metrics["n"] == 4
    assert res["general_yes_no"].record["scoring"] == "logprob"  # P(Yes) vs P(No), as the training evidence
    # the report reads them like any other run folder
    assert load_run(out / "unsafeconcepts_test").summary["n"] == 4
    # resume: a second run asks nothing again
    before = {p: p.read_text().count("\n") for p in out.glob("*/responses.jsonl")}
    run_posteval(config, backend=tiny_backend, judge=load_judge("rule"), llava_judge=tiny_backend, quiet=True)
    assert {p: p.read_text().count("\n") for p in out.glob("*/responses.jsonl")} == before


def test_same_smid_rows_same_figure_through_evaluate_and_posteval(tiny_backend, tiny_llava_dir, tmp_path):
    from unsafe_concepts.api import evaluate

    smid = builders.build_smid_folder(tmp_path)
    config = PostEvalConfig(model=f"hf:{tiny_llava_dir}", out_dir=str(tmp_path / "pe"), smid=str(smid),
                            judge="rule", max_new_tokens=3)
    through_posteval = run_posteval(config, backend=tiny_backend, quiet=True)["results"]["smid"]
    ev = tmp_path / "ev"
    ev.mkdir()
    # the same rows, scored again by `evaluate` (same task, same settings): same figure, same interval
    for name in ("responses.jsonl", "run.json"):
        (ev / name).write_text((tmp_path / "pe" / "smid" / name).read_text())
    through_evaluate = evaluate(f"hf:{tiny_llava_dir}", "smid", data=str(smid), out=ev, judge="rule",
                                max_new_tokens=3, greedy=True, suite="posteval", backend=tiny_backend)
    a, b = through_posteval.metrics, through_evaluate.metrics
    assert a["overall"] == b["overall"] and a["safe"] == b["safe"] and a["unsafe"] == b["unsafe"]


def test_config_errors(tmp_path):
    with pytest.raises(UserError, match="needs a judge model"):
        run_posteval(PostEvalConfig(model="x", out_dir=str(tmp_path), llavabench="hf"))
    with pytest.raises(UserError, match="nothing to evaluate"):
        run_posteval(PostEvalConfig(model="x", out_dir=str(tmp_path), unsafeconcepts=None), backend=object())


def test_posteval_command(tiny_llava_dir, tmp_path):
    from unsafe_concepts.cli import main

    tsv = builders.build_mme_tsv(tmp_path)
    out = tmp_path / "cli"
    rc = main(["posteval", "--model", f"hf:{tiny_llava_dir}", "--out", str(out), "--unsafeconcepts", "none",
               "--mme", str(tsv), "--limit", "2", "--max-new-tokens", "2"])
    assert rc == 0
    record = json.loads((out / "mme" / "run.json").read_text())
    assert record["config"]["adapter"] is None and json.loads((out / "mme" / "metrics.json").read_text())["n"] == 2
    assert main(["posteval", "--model", "smollm2-135m", "--out", str(out), "--unsafeconcepts", "none"]) == 2


def test_posteval_flags_default_to_the_config_dataclass():
    from dataclasses import fields

    from unsafe_concepts.cli import build_parser

    args = build_parser().parse_args(["posteval", "--model", "m", "--out", "o"])
    defaults = {f.name: f.default for f in fields(PostEvalConfig)}
    for name in ("unsafeconcepts", "modality", "max_new_tokens", "temperature", "top_p", "seed", "batch_size",
                 "pairing", "api_key_env", "concurrency", "limit", "judge", "general"):
        assert getattr(args, name) == defaults[name], name
    assert (not args.sample) == defaults["greedy"]
