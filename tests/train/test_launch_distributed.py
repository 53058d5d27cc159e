"""Launches that would not start the processes asked for are refused before a model is loaded.

``accelerate launch --cpu --num_processes N`` (accelerate 1.15) starts one process unless mpirun is
used; ``accelerate launch --multi_gpu --num_processes N`` with ``ACCELERATE_USE_CPU=true`` starts N
real gloo processes (tests/train/test_distributed.py trains the tiny LLaVA that way)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU",
                    "ACCELERATE_DYNAMO_BACKEND", *common.MPI_SIZE_VARIABLES)


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_mpi_size_counts_as_the_launched_world(clean_env):
    assert common.launched_world_size() == 1
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert common.launched_world_size() == 4
    clean_env.setenv("WORLD_SIZE", "2")  # torchrun's variable wins
    assert common.launched_world_size() == 2


def test_ppo_process_group_refuses_mpirun(clean_env):
    """Variables as mpirun sets them (no torchrun WORLD_SIZE/RANK): PPO's group cannot form; refused."""
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "2")
    clean_env.setenv("OMPI_COMM_WORLD_RANK", "0")
    with pytest.raises(UserError, match="started by mpirun as 2 processes"):
        common.Dist()


def test_one_process_needs_no_launcher(clean_env):
    common.check_launch()
    dist = common.Dist()
    assert (dist.world, dist.rank, dist.active) == (1, 0, False)


@pytest.mark.slow
def test_accelerate_cpu_launch_of_two_processes_is_refused(tmp_path, tiny_llava_dir):
    """The real `accelerate launch --cpu --num_processes 2 -m unsafe_concepts train sft ...`: accelerate
    starts one process; the command says so and how to start two, before loading the model."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "unsafe_concepts", "train", "sft",
           "--model", f"hf:{tiny_llava_dir}", "--out", str(out), "--max-steps", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "started a single process" in proc.stderr and "--multi_gpu" in proc.stderr, proc.stderr[-3000:]
    assert not (out / "adapter_model.safetensors").exists()
