"""DeepSpeed ZeRO-2 and ZeRO-3 with the shipped configs (configs/deepspeed/zero{2,3}.json), on 2 real CPU
processes: DeepSpeed's CPU accelerator with gloo (``DS_ACCELERATOR=cpu``), on the tiny random LLaVA,
ZeRO-2 started by torchrun and ZeRO-3 by ``accelerate launch`` with the shipped accelerate YAML. Skipped unless DeepSpeed is installed (the ``[deepspeed]`` extra; CI does not install
it). The first run on a machine compiles DeepSpeed's shared-memory communication op with ninja (minutes,
then cached in ~/.cache/torch_extensions)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from test_distributed import _free_port, _logged_steps, _reports  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("dist_worker.py"))


def _launch(stage: int, methods, model_dir, root: Path):
    """ZeRO-2: torchrun, the JSON file named in the trainer config (``deepspeed``). ZeRO-3: ``accelerate
    launch --config_file configs/accelerate/deepspeed_zero3.yaml`` (which points at zero3.json)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_CPU")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), DS_ACCELERATOR="cpu")
    (root / "rep").mkdir(parents=True)
    args = [WORKER, ",".join(methods), f"hf:{model_dir}", "image", str(root / "out"), str(root / "rep"), "2"]
    if stage == 2:
        env["DIST_WORKER_DEEPSPEED"] = str(ROOT / "configs" / "deepspeed" / "zero2.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml"), "--num_processes", "2",
               "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory, tiny_llava_dir):
    runs = {}
    for stage, methods in ((2, ["sft"]), (3, ["sft", "dpo"])):
        root = tmp_path_factory.mktemp(f"zero{stage}")
        proc = _launch(stage, methods, tiny_llava_dir, root)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[stage] = root
    return runs


@pytest.mark.parametrize("stage,method", [(2, "sft"), (3, "sft"), (3, "dpo")])
def test_zero_on_two_cpu_processes(zero_runs, stage, method):
    from safetensors.torch import load_file

    root = zero_runs[stage]
    rank0, rank1 = _reports(root / "rep", method, 2)
    assert rank0["zero_stage"] == rank1["zero_stage"] == stage  # the HF Trainer ran under DeepSpeed
    assert rank0["processes"] == rank1["processes"] == 2  # DeepSpeed's group, as accelerate reports it
    assert len(rank0["seen"]) == len(rank1["seen"]) == 2 and not set(rank0["seen"]) & set(rank1["seen"])
    assert rank0["steps"] == rank1["steps"] == 2
    assert rank0["digest"] == rank1["digest"]  # ZeRO-3: gathered before hashing
    out = root / "out" / method
    assert _logged_steps(out) == [1, 2]
    assert json.loads((out / "train.json").read_text())["processes"] == 2
    # the saved adapter holds whole matrices (ZeRO-3 gathers them on save), no DPO reference copy
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all(v.numel() > 0 for v in weights.values())
    assert not any(".ref." in k for k in weights)


def test_zero2_and_zero3_give_the_same_first_loss(zero_runs):
    (z2,) = _reports(zero_runs[2] / "rep", "sft", 1)
    (z3,) = _reports(zero_runs[3] / "rep", "sft", 1)
    assert z2["first_loss"] == pytest.approx(z3["first_loss"], rel=1e-4)
