"""Post-training evaluation end to end on built fixtures with a tiny random LLaVA (answers are noise:
this checks the plumbing, resuming and scoring, not quality)."""
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


def test_all_sets_resume_and_score(tiny_backend, tiny_llava_dir, tmp_path):
    from unsafe_concepts.judges import load_judge

    mme_tsv, llava_folder = builders.build_mme_tsv(tmp_path), builders.build_llava_folder(tmp_path)
    smid_folder, nsfw_folder = builders.build_smid_folder(tmp_path), builders.build_nsfw_folder(tmp_path)

    config = PostEvalConfig(model=f"hf:{tiny_llava_dir}", out_dir=str(tmp_path / "pe"), unsafeconcepts="sample",
                            mme=str(mme_tsv), llavabench=str(llava_folder), smid=str(smid_folder),
                            nsfw=str(nsfw_folder), llava_judge="unused: backend given", judge="rule", limit=4,
                            max_new_tokens=3, batch_size=4)
    record = run_posteval(config, backend=tiny_backend, judge=load_judge("rule"), llava_judge=tiny_backend)
    res = record["results"]
    assert set(res) == {"unsafeconcepts_test", "mme", "llavabench", "smid", "nsfw"}
    uc = res["unsafeconcepts_test"]
    assert uc["n"] == 4 and 0 <= uc["accuracy"] <= 1 and "one_minus_self_bleu" in uc
    assert res["mme"]["n"] == 4 and set(res["mme"]["per_category"]) == {"color"}
    llava = res["llavabench"]
    assert llava["n"] == 3 and llava["n_unparsed"] + (llava["overall"]["n"] if llava["overall"] else 0) == 3
    assert res["smid"]["n"] == 4 * 5  # the limit applies to images; each is asked the five prompts
    assert res["nsfw"]["n_safe"] + res["nsfw"]["n_unsafe"] == res["nsfw"]["n"]
    out = Path(config.out_dir)
    assert json.loads((out / "posteval.json").read_text())["results"]["mme"]["n"] == 4
    # resume: a second run asks nothing again (no new lines in any responses file)
    before = {p: p.read_text().count("\n") for p in out.glob("*/responses.jsonl")}
    run_posteval(config, backend=tiny_backend, judge=load_judge("rule"), llava_judge=tiny_backend)
    assert {p: p.read_text().count("\n") for p in out.glob("*/responses.jsonl")} == before


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
               "--mme", str(tsv), "--limit", "2", "--max-new-tokens", "2", "--greedy"])
    assert rc == 0
    record = json.loads((out / "posteval.json").read_text())
    assert record["config"]["adapter"] is None and record["results"]["mme"]["n"] == 2
    assert main(["posteval", "--model", "smollm2-135m", "--out", str(out), "--unsafeconcepts", "none"]) == 2
