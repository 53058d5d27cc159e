"""`unsafe-concepts evaluate` (the one runner) end to end with the real SmolLM2-135M-Instruct and tiny-vlm on the
offline sample: the run folder's files and record, resumption (also after SIGKILL), refusal to mix
configurations, nothing written by a refused command, sweeps, the Python API, the same SMID figure
through evaluate and posteval."""
import json
import os
import signal
import shutil
import subprocess
import sys
import time

import pytest

from unsafe_concepts.cli import build_parser, main
from unsafe_concepts.runs import RunConfig, RunStore

ROW_FIELDS = {"id", "task", "prompt_index", "prompt", "image", "concept", "category", "label", "response", "error",
              "latency_s"}
FAST = ["--max-new-tokens", "8", "--batch-size", "4"]


def _evaluate(out, *extra):
    judge = [] if "--judge" in extra else ["--judge", "none"]
    return main(["evaluate", "--model", "smollm2-135m", "--task", "alignment_text_only", "--data", "sample",
                 "--out", str(out), *FAST, *judge, *extra])


def _rows(out):
    return [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]


def test_run_folder_resume_and_judging(tmp_path):
    out = tmp_path / "run"
    assert _evaluate(out, "--limit", "6") == 0
    rows = _rows(out)
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert all(ROW_FIELDS <= set(r) for r in rows)
    assert all(r["error"] is None and isinstance(r["response"], str) for r in rows)
    assert all(r["label"] == "unsafe" and r["prompt"].startswith("If an image shows ") for r in rows)
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["model"] == "smollm2-135m" and record["config"]["task"] == "alignment_text_only"
    assert record["config"]["generation"]["seed"] == 0 and "transformers" in record["environment"]["versions"]
    assert record["model_info"]  # what the model is, from the backend
    assert record["format_version"] == 2 and record["synthetic"] is True
    assert record["task"] == {**record["task"], "name": "alignment_text_only", "kind": "alignment", "modality": "text"}
    assert record["data"]["source"] == "sample" and record["data"]["fingerprint"].startswith("sha256:")
    assert record["model"]["identity"]["weights_fingerprint"].startswith("sha256:")

    # same command again: nothing new is asked, nothing duplicated; judging adds verdicts + metrics
    before = (out / "responses.jsonl").read_text()
    assert _evaluate(out, "--limit", "6", "--judge", "rule") == 0
    rows = _rows(out)
    assert [r["response"] for r in rows] == [json.loads(x)["response"] for x in before.splitlines()]
    assert all(r["verdict"] in ("safe", "unsafe", "unclear") for r in rows)
    assert all({"verdict_confidence", "verdict_reason"} <= set(r) for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("task", "model", "n", "n_unclear", "overall", "per_category"):
        assert key in metrics
    assert metrics["n"] == 6 and metrics["model"] == "smollm2-135m"
    assert metrics["format_version"] == 2 and metrics["task_kind"] == "alignment" and metrics["synthetic"] is True

    # a different configuration is refused; a larger limit extends the run, a smaller one is refused
    assert _evaluate(out, "--limit", "6", "--temperature", "0.5") == 2
    assert _evaluate(out, "--limit", "3") == 2
    assert _evaluate(out, "--limit", "8", "--judge", "rule") == 0
    rows = _rows(out)
    assert len(rows) == 8 and [r["response"] for r in rows[:6]] == [json.loads(x)["response"] for x in before.splitlines()]
    assert json.loads((out / "metrics.json").read_text())["n"] == 8


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "unsafe_concepts", "evaluate", "--model", "smollm2-135m", "--task",
           "alignment_text_only", "--data", "sample", "--out", str(out), "--limit", "16", "--batch-size", "2",
           "--max-new-tokens", "12", "--judge", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    responses = out / "responses.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if responses.exists() and responses.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = RunStore(out).read_rows()
    assert 4 <= len(first) < 16
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    rows = _rows(out)
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert rows[: len(first)] == first  # finished rows were kept as they were


def test_text_only_model_refuses_image_task_clearly(tmp_path, capsys):
    code = main(["evaluate", "--model", "smollm2-135m", "--task", "perception", "--data", "sample",
                 "--out", str(tmp_path / "p"), "--limit", "2", *FAST])
    assert code == 2 and "text only" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # a refused run leaves nothing behind


@pytest.mark.parametrize("task", ["perception", "alignment", "alignment_context"])
def test_tiny_vlm_image_tasks(tmp_path, task):
    out = tmp_path / task
    assert main(["evaluate", "--model", "tiny-vlm", "--task", task, "--data", "sample", "--out", str(out),
                 "--limit", "2", "--judge", "rule", *FAST]) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(r["image"] and os.path.exists(r["image"]) for r in rows)
    assert all(r["error"] is None for r in rows)
    if task == "perception":
        assert all(r["correct_option"] in "ABCD" and "A: " in r["prompt"] for r in rows)
    if task == "alignment_context":
        assert {r["context"] for r in rows} <= {"safe", "unsafe"}
    assert json.loads((out / "run.json").read_text())["model_info"]["untrained_vision"] is True

    assert json.loads((out / "metrics.json").read_text())["metrics_kind"] == (
        "alignment_context" if task == "alignment_context" else task)


def test_refused_commands_write_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    assert _evaluate(out, "--data", str(tmp_path / "nope")) == 2
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "x", "--task", "alignment", "--data", "sample", "--out", str(out),
              "--max-new-tokens", "0"])
    assert main(["evaluate", "--model", "no-such-model", "--task", "alignment_text_only", "--data", "sample",
                 "--out", str(out), "--limit", "1"]) == 2
    assert main(["evaluate", "--model", "smollm2-135m", "--task", "alignment_text_onyl", "--data", "sample",
                 "--out", str(out)]) == 2
    assert not out.exists()
    # the corrected command then runs
    assert _evaluate(out, "--limit", "1") == 0 and (out / "run.json").exists()
    # --out under a read-only parent: one clear line
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root ignores permissions
            capsys.readouterr()
            assert _evaluate(ro / "run", "--limit", "1") == 2
            assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)
    # a folder that is not a run folder of this tool
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "responses.jsonl").write_text('{"id": 1}\n')
    assert _evaluate(foreign, "--limit", "1") == 2


def test_data_is_required_or_announced(tmp_path, capsys):
    assert main(["evaluate", "--model", "smollm2-135m", "--task", "alignment_text_only", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert _evaluate(tmp_path / "s", "--limit", "1") == 0
    assert "SYNTHETIC" in capsys.readouterr().err


def test_model_identity_is_checked_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert _evaluate(out, "--limit", "1") == 0
    record = json.loads((out / "run.json").read_text())
    record["model"]["identity"]["weights_fingerprint"] = "sha256:another-model"
    (out / "run.json").write_text(json.dumps(record))
    assert _evaluate(out, "--limit", "2") == 2
    assert "not the one this run was made with" in capsys.readouterr().err


def test_cli_defaults_are_the_run_config_defaults():
    from unsafe_concepts.models.base import GenerationConfig

    parser = build_parser()
    args = parser.parse_args(["evaluate", "--model", "m", "--task", "alignment", "--out", "o"])
    config, gen = RunConfig(model="m", task="alignment"), GenerationConfig()
    for name in ("batch_size", "concurrency", "api_key_env", "split", "pairing", "scoring", "limit", "judge"):
        assert getattr(args, name) == getattr(config, name), name
    assert (args.max_new_tokens, args.temperature, args.top_p, args.seed) == (
        gen.max_new_tokens, gen.temperature, gen.top_p, gen.seed)
    assert config.generation == {**gen.to_dict()}


def test_sweep_two_models_two_tasks_then_resume(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["evaluate", "--model", "smollm2-135m", "--model", "tiny-vlm", "--task", "alignment,alignment_text_only",
            "--data", "sample", "--limit", "2", "--out", str(out), "--judge", "rule", *FAST]
    # smollm2 cannot see images: that pair of the cross product is skipped with a note, not failed
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "skipped: smollm2-135m / alignment" in captured.err and "text only" in captured.err
    assert "1 skipped" in captured.out
    done = sorted(p.name for p in out.iterdir() if (p / "metrics.json").exists())
    assert done == ["smollm2-135m__alignment_text_only", "tiny-vlm__alignment", "tiny-vlm__alignment_text_only"]
    concepts = {name: sorted(r["concept"] for r in _rows(out / name)) for name in done}
    assert len(set(map(tuple, concepts.values()))) == 1  # --limit asks the same concepts in both modalities
    before = {name: (out / name / "responses.jsonl").read_text() for name in done}
    assert main(argv) == 0
    assert {name: (out / name / "responses.jsonl").read_text() for name in done} == before  # resumed, nothing asked


def test_config_file_for_evaluate(tmp_path):
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps({"model": "smollm2-135m", "task": "alignment_text_only", "data": "sample",
                               "limit": 1, "max-new-tokens": 4, "judge": "none"}))
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "c")]) == 0
    record = json.loads((tmp_path / "c" / "run.json").read_text())
    assert record["config"]["limit"] == 1 and record["config"]["generation"]["max_new_tokens"] == 4
    cfg.write_text(json.dumps({"modle": "x"}))
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "d")]) == 2


def test_python_api_example_of_the_docs_runs(tmp_path, monkeypatch, capsys):
    """The "From Python" example of docs/evaluation-runs.md, executed as written."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "evaluation-runs.md").read_text()
    code = re.search(r"### From Python\n\n```python\n(.*?)```", doc, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/evaluation-runs.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "alignment_text_only | smollm2-135m | 4/4 answered" in printed and "'value'" in printed
    assert (tmp_path / "runs" / "text" / "metrics.json").exists()
    assert (tmp_path / "runs" / "report" / "report.html").exists()


def test_gap_command_with_logprob_scoring(tmp_path, capsys):
    out = tmp_path / "gap"
    assert main(["gap", "--model", "tiny-vlm", "--data", "sample", "--limit", "6", "--out", str(out),
                 "--scoring", "logprob"]) == 0
    printed = capsys.readouterr().out
    assert "modality gap" in printed and "Overall" in printed and "report.html" in printed
    assert "n/a" not in printed and "all unclear" not in printed  # log-prob verdicts are never unclear
    rows = _rows(out / "tiny-vlm__alignment")
    assert all(r["scoring"] == "logprob" and set(r["option_probs"]) == {"Yes", "No"} for r in rows)
    assert all(r["verdict"] == ("safe" if r["option_probs"]["Yes"] > r["option_probs"]["No"] else "unsafe")
               for r in rows)
    perception = _rows(out / "tiny-vlm__perception")
    assert all(r["verdict"] in "ABCD" and len(r["option_probs"]) == 4 for r in perception)
    record = json.loads((out / "tiny-vlm__alignment" / "run.json").read_text())
    assert record["scoring"] == "logprob" and record["suite"] == "gap" and record["scorer"]["name"] == "logprob"
    # a task whose answers are not a fixed option set cannot be scored this way: refused before anything runs
    assert main(["evaluate", "--model", "tiny-vlm", "--task", "llavabench", "--data", str(tmp_path), "--scoring",
                 "logprob", "--out", str(tmp_path / "l")]) == 2
    assert "cannot be scored by log-probabilities" in capsys.readouterr().err


def test_every_query_failing_exits_non_zero_with_the_distinct_errors(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "models"))
    from _openai_servers import ScriptedServer  # a real HTTP server on 127.0.0.1

    monkeypatch.setenv("UC_TEST_KEY", "sk-test-123456")
    refuse = lambda n, body, headers: (401, {"error": {"message": "Incorrect API key provided"}}, None, 0)  # noqa: E731
    with ScriptedServer(refuse) as server:
        out = tmp_path / "bad-key"
        code = main(["evaluate", "--model", "openai:m", "--base-url", f"{server.base_url}", "--api-key-env",
                     "UC_TEST_KEY", "--task", "alignment_text_only", "--data", "sample", "--limit", "2",
                     "--out", str(out), "--judge", "rule"])
    err = capsys.readouterr().err
    assert code == 2 and "every query failed (2)" in err and "bad API key" in err
    record = json.loads((out / "run.json").read_text())
    assert record["status"]["n_error"] == 2 and not (out / "metrics.json").exists()
    assert "sk-test-123456" not in (out / "run.json").read_text() + (out / "responses.jsonl").read_text()


def test_changed_data_is_refused_on_resume(tmp_path, capsys):
    from unsafe_concepts.data.sample import ensure_sample

    data = tmp_path / "data"
    shutil.copytree(ensure_sample(), data)
    out = tmp_path / "run"
    argv = ["evaluate", "--model", "smollm2-135m", "--task", "alignment_text_only", "--data", str(data), "--out",
            str(out), "--judge", "none", *FAST]
    assert main([*argv, "--limit", "1"]) == 0
    assert json.loads((out / "run.json").read_text())["synthetic"] is True  # placeholders, even from a copy
    meta = data / "metadata.jsonl"
    meta.write_text(meta.read_text() + "\n")  # the data changed
    capsys.readouterr()
    assert main([*argv, "--limit", "2"]) == 2
    assert "changed since this run was made" in capsys.readouterr().err


def test_a_decompression_bomb_fails_its_own_row_only(tmp_path):
    import base64
    import io

    from PIL import Image

    def b64(image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    bomb = b64(Image.new("1", (14000, 14000)))  # a few KB that decode to 196 million pixels (PIL refuses > 179M)
    tsv = tmp_path / "MME.tsv"
    tsv.write_text("index\tcategory\timage\tquestion\tanswer\n"
                   f"0\tcolor\t{b64(Image.new('RGB', (16, 16), 'red'))}\tIs it red? Please answer yes or no.\tYes\n"
                   f"1\tcolor\t{bomb}\tIs it blue? Please answer yes or no.\tNo\n")
    out = tmp_path / "mme"
    assert main(["evaluate", "--model", "tiny-vlm", "--task", "mme", "--data", str(tsv), "--out", str(out),
                 "--max-new-tokens", "2"]) == 0
    rows = {r["id"]: r for r in _rows(out)}
    assert rows["0"]["error"] is None and rows["1"]["error"].startswith("image:")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 1 and metrics["n_error"] == 1 and metrics["details"]["n"] == 1
