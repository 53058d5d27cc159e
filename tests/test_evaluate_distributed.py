"""Evaluation across processes: `torchrun --nproc_per_node 2` on the CPU (gloo, ACCELERATE_USE_CPU=true) shards
the queries over the ranks and writes one run folder with every row exactly once; it resumes; shard rows a
killed run left behind are merged; a multi-process launch without a working process group is refused."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unsafe_concepts.runs import RunStore

ARGS = ["evaluate", "--model", "smollm2-135m", "--task", "alignment_text_only", "--data", "sample", "--limit", "6",
        "--max-new-tokens", "4", "--judge", "none"]


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    return [exe, "--nproc_per_node", "2", "-m", "unsafe_concepts"]


@pytest.mark.slow  # two torchrun launches of two processes each (about 1-2 minutes on 2 cores)
def test_two_ranks_share_the_queries_into_one_run_folder_and_resume(tmp_path):
    out = tmp_path / "dist"
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    run = subprocess.run([*_torchrun(), *ARGS, "--out", str(out)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = RunStore(out).read_rows()
    raw = (out / "responses.jsonl").read_text().splitlines()
    assert len(raw) == len(rows) == 6 and len({r["id"] for r in rows}) == 6  # every row exactly once
    assert sorted(r["rank"] for r in rows) == [0, 0, 0, 1, 1, 1]  # each rank asked its share
    assert not list(out.glob("responses.rank*.jsonl"))  # shards merged
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["processes"] == 2 and record["status"]["n_rows"] == 6
    # resume under 2 processes: nothing is asked again
    before = (out / "responses.jsonl").read_text()
    again = subprocess.run([*_torchrun(), *ARGS, "--out", str(out)], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "responses.jsonl").read_text() == before


def test_launch_without_a_process_group_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "dup"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")  # what a launcher without a rendezvous leaves
    proc = subprocess.run([sys.executable, "-m", "unsafe_concepts", *ARGS, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no working process group" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_rows_a_killed_multi_process_run_left_in_shards_are_kept(tmp_path):
    store = RunStore(tmp_path)
    store.append([{"id": "a", "error": None}])
    (tmp_path / "responses.rank1.jsonl").write_text('{"id": "b", "error": null, "rank": 1}\n{"id": "c", "err')
    assert store.merge_shards() == 1  # the torn line of the killed rank is dropped: its query is asked again
    assert [r["id"] for r in store.finished_rows()] == ["a", "b"] and not list(tmp_path.glob("*.rank*"))
