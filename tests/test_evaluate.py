"""`unsafe-concepts evaluate` end to end with the real SmolLM2-135M-Instruct on the offline sample:
the run folder's files, resumption (also after SIGKILL), refusal to mix configurations."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unsafe_concepts.cli import main
from unsafe_concepts.runs import RunStore

ROW_FIELDS = {"id", "task", "prompt_index", "prompt", "image", "concept", "category", "label", "response", "error",
              "latency_s"}
FAST = ["--max-new-tokens", "8", "--batch-size", "4"]


def _evaluate(out, *extra):
    return main(["evaluate", "--model", "smollm2-135m", "--task", "alignment_text_only", "--data", "sample",
                 "--out", str(out), *FAST, *extra])


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

    # same command again: nothing new is asked, nothing duplicated; judging adds verdicts + metrics
    before = (out / "responses.jsonl").read_text()
    assert _evaluate(out, "--limit", "6", "--judge", "rule") == 0
    rows = _rows(out)
    assert [r["response"] for r in rows] == [json.loads(x)["response"] for x in before.splitlines()]
    assert all(r["verdict"] in ("safe", "unsafe", "unclear") for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("task", "model", "n", "n_unclear", "overall", "per_category"):
        assert key in metrics
    assert metrics["n"] == 6 and metrics["model"] == "smollm2-135m"

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
           "--max-new-tokens", "12"]
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


@pytest.mark.parametrize("task", ["perception", "alignment", "alignment_context"])
def test_tiny_vlm_image_tasks(tmp_path, task):
    out = tmp_path / task
    assert main(["evaluate", "--model", "tiny-vlm", "--task", task, "--data", "sample", "--out", str(out),
                 "--limit", "2", *FAST]) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(r["image"] and os.path.exists(r["image"]) for r in rows)
    assert all(r["error"] is None for r in rows)
    if task == "perception":
        assert all(r["correct_option"] in "ABCD" and "A: " in r["prompt"] for r in rows)
    if task == "alignment_context":
        assert {r["context"] for r in rows} <= {"safe", "unsafe"}
    assert json.loads((out / "run.json").read_text())["model_info"]["untrained_vision"] is True
