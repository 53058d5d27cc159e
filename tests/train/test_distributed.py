"""Training on 2 real processes (torchrun, gloo on the CPU), as multi-GPU runs do with NCCL.

Each test starts ``tests/train/dist_worker.py`` under ``python -m torch.distributed.run
--nproc_per_node 2`` with ``ACCELERATE_USE_CPU=true`` on the tiny LLaVA (images), and compares what
each process reports with a 1-process run of the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # several process launches: minutes on a shared 2-core CPU

WORKER = str(Path(__file__).with_name("dist_worker.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(processes: int, method: str, model_dir, out, report, steps: int, *, use_cpu: bool = True):
    Path(report).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    args = [method, str(model_dir), str(out), str(report), str(steps)]
    if processes == 1:
        cmd = [sys.executable, WORKER, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), WORKER, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return proc


def _reports(report, n):
    return [json.loads((Path(report) / f"rank{r}.json").read_text()) for r in range(n)]


def test_ppo_on_two_processes_matches_one_and_resumes(tiny_llava_dir, tmp_path):
    proc = _run(2, "ppo", tiny_llava_dir, tmp_path / "out2", tmp_path / "rep2", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = _reports(tmp_path / "rep2", 2)
    assert rank0["world"] == rank1["world"] == 2
    # each process rolled out its own half of the rollout of 4
    assert len(rank0["prompts"]) == len(rank1["prompts"]) == 2
    assert not set(rank0["prompts"]) & set(rank1["prompts"])
    # gradients were summed across processes: both hold the same adapters after the step
    assert rank0["digest"] == rank1["digest"]
    # only the main process wrote the log (one row per step) and the checkpoint
    rows = (tmp_path / "out2" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]
    assert [p.name for p in (tmp_path / "out2" / "checkpoints").iterdir()] == ["step-000001"]

    proc = _run(1, "ppo", tiny_llava_dir, tmp_path / "out1", tmp_path / "rep1", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (single,) = _reports(tmp_path / "rep1", 1)
    assert sorted(single["prompts"]) == sorted(rank0["prompts"] + rank1["prompts"])
    # the same global batch (answers sampled per item with the same seeds): the same first-step loss
    assert rank0["first_loss"] == pytest.approx(single["first_loss"], rel=1e-3, abs=1e-4)

    # the 2-process run continues from its checkpoint under 2 processes
    proc = _run(2, "ppo", tiny_llava_dir, tmp_path / "out2", tmp_path / "rep2b", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = _reports(tmp_path / "rep2b", 2)
    assert rank0["steps"] == rank1["steps"] == 2 and rank0["digest"] == rank1["digest"]
    rows = (tmp_path / "out2" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]


def test_sft_on_two_processes_synchronises(tiny_llava_dir, tmp_path):
    proc = _run(2, "sft", tiny_llava_dir, tmp_path / "out", tmp_path / "rep", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = _reports(tmp_path / "rep", 2)
    assert rank0["processes"] == rank1["processes"] == 2
    assert rank0["steps"] == rank1["steps"] == 1
    assert rank0["digest"] == rank1["digest"]
    assert json.loads((tmp_path / "out" / "train.json").read_text())["processes"] == 2


def test_two_processes_without_a_process_group_are_refused(tiny_llava_dir, tmp_path):
    """Plain torchrun on CPUs without ACCELERATE_USE_CPU: accelerate forms no group; each process
    would train alone and overwrite the same folder. The run must stop with a clear message."""
    proc = _run(2, "sft", tiny_llava_dir, tmp_path / "out", tmp_path / "rep", 1, use_cpu=False)
    assert proc.returncode != 0
    assert "no process group was formed" in proc.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
