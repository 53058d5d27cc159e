"""Training on 2 real processes (gloo on the CPU), as multi-GPU runs do with NCCL.

Each launch starts ``tests/train/dist_worker.py`` under ``python -m torch.distributed.run
--nproc_per_node 2`` (or ``accelerate launch --multi_gpu --num_processes 2``) with
``ACCELERATE_USE_CPU=true``, which runs PPO, SFT, DPO and GRPO one after the other for 2 steps on
SmolLM2-135M (text) or the tiny random LLaVA (images); each process reports what it fed to the model,
its adapter weights' digest and (main process) the first logged loss. A 1-process launch of the same
global batch gives the reference loss. Launches are shared between tests (module-scoped fixtures):
one launch costs about as much as the training in it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each launch imports torch/transformers/TRL twice and trains 4 methods: minutes

WORKER = str(Path(__file__).with_name("dist_worker.py"))
ALL = ("ppo", "sft", "dpo", "grpo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(use_cpu: bool = True, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), **extra)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def _command(processes: int, launcher: str, methods, model, modality, out, report, steps) -> list[str]:
    args = [",".join(methods), str(model), modality, str(out), str(report), str(steps)]
    if processes == 1:
        return [sys.executable, WORKER, *args]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), WORKER, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), WORKER, *args]


def _run(processes, methods, model, modality, out, report, steps, *, launcher="torchrun", use_cpu=True):
    Path(report).mkdir(parents=True, exist_ok=True)
    cmd = _command(processes, launcher, methods, model, modality, out, report, steps)
    started = time.monotonic()
    proc = subprocess.run(cmd, env=_env(use_cpu), capture_output=True, text=True, timeout=1200)
    proc.seconds = time.monotonic() - started
    return proc


def _reports(report, method, n):
    return [json.loads((Path(report) / f"{method}.rank{r}.json").read_text()) for r in range(n)]


def _logged_steps(out) -> list[int]:
    """Steps of the per-step rows of log.jsonl (TRL adds a closing summary row without a loss)."""
    rows = [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


# ---------------------------------------------------------------------------- launches, shared by the tests
# model: (modality, launcher of the 2 processes, trainers also run on 1 process to compare). PPO on 1
# process only for the tiny LLaVA: on SmolLM2 it costs 2 minutes here and matched to the last digit.
MODELS = {"smollm2": ("text", "torchrun", ("sft",)), "tiny-vlm": ("image", "accelerate", ("ppo", "sft"))}


@pytest.fixture(scope="module")
def launches(tmp_path_factory, smollm2_path, tiny_llava_dir):
    """Per model: the 2-process launch of all four trainers and the 1-process launch of the compared ones."""
    done = {}

    def get(name):
        if name not in done:
            modality, launcher, compared = MODELS[name]
            model = f"hf:{smollm2_path}" if name == "smollm2" else f"hf:{tiny_llava_dir}"
            root = tmp_path_factory.mktemp(name)
            two = _run(2, ALL, model, modality, root / "out2", root / "rep2", 2, launcher=launcher)
            assert two.returncode == 0, two.stderr[-4000:]
            one = _run(1, compared, model, modality, root / "out1", root / "rep1", 2)
            assert one.returncode == 0, one.stderr[-4000:]
            print(f"\n{name}: 2 processes ({launcher}, {len(ALL)} trainers) {two.seconds:.0f} s; "
                  f"1 process ({', '.join(compared)}) {one.seconds:.0f} s")
            done[name] = root
        return done[name]

    return get


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", ALL)
def test_two_processes_share_the_data_and_synchronise(launches, model, method):
    root = launches(model)
    rank0, rank1 = _reports(root / "rep2", method, 2)
    assert rank0["processes"] == rank1["processes"] == 2 and rank0["world"] == 2
    # each process took its own half of the first step's batch of 4 rows
    assert len(rank0["seen"]) == len(rank1["seen"]) == 2
    assert not set(rank0["seen"]) & set(rank1["seen"]), (rank0["seen"], rank1["seen"])
    # gradients were synchronised: after 2 steps both hold the same adapter weights
    assert rank0["steps"] == rank1["steps"] == 2
    assert rank0["digest"] == rank1["digest"]
    # only the main process wrote: one log row per step, one train.json / final adapter
    out = root / "out2" / method
    assert _logged_steps(out) == [1, 2]
    assert (out / "adapter_model.safetensors").exists()
    if method != "ppo":  # PPO's train.json is written by the `train` command (train.cli_train), not the trainer
        assert json.loads((out / "train.json").read_text())["processes"] == 2


@pytest.mark.parametrize("model,method", [(m, c) for m, spec in MODELS.items() for c in spec[2]])
def test_two_processes_match_one_process(launches, model, method):
    """The same global batch on 1 and on 2 processes: the same rows, and the same first-step loss."""
    root = launches(model)
    rank0, rank1 = _reports(root / "rep2", method, 2)
    (single,) = _reports(root / "rep1", method, 1)
    assert sorted(single["seen"]) == sorted(rank0["seen"] + rank1["seen"])
    assert rank0["first_loss"] == pytest.approx(single["first_loss"], rel=1e-3, abs=1e-4)


# ---------------------------------------------------------------------------- kill and resume
def _wait_for(pred, proc, timeout=600):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _kill_tree(proc) -> None:
    """SIGKILL the launcher and every worker: torchrun starts each worker in a session of its own, so
    killing the launcher's process group alone would leave the workers running."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            os.killpg(p.pid, signal.SIGKILL) if p.pid == proc.pid else p.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    psutil.wait_procs(family, timeout=30)


@pytest.mark.parametrize("method", ["ppo", "sft"])
def test_a_killed_two_process_run_resumes(tiny_llava_dir, tmp_path, method):
    """Kill the launcher and both workers after step 2 is logged but before its checkpoint is written (the
    worker sleeps there), rerun the same command: it continues from checkpoint 1 to step 3, and the
    log has steps 1, 2, 3 once each."""
    out, report = tmp_path / "out", tmp_path / "rep"
    cmd = _command(2, "torchrun", [method], f"hf:{tiny_llava_dir}", "image", out, report, 3)
    report.mkdir()
    proc = subprocess.Popen(cmd, env=_env(DIST_WORKER_DELAY="4"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpt = out / method / "checkpoints" / ("step-000001" if method == "ppo" else "checkpoint-1")
    try:
        reached = _wait_for(lambda: ckpt.is_dir() and (out / method / "log.jsonl").exists()
                            and 2 in _logged_steps(out / method), proc)
    finally:
        _kill_tree(proc)
        _, err = proc.communicate()
    assert reached, err[-4000:]
    assert not (out / method / "adapter_model.safetensors").exists()  # it did not get to the end
    assert _logged_steps(out / method) == [1, 2]

    again = _run(2, [method], f"hf:{tiny_llava_dir}", "image", out, report, 3)
    assert again.returncode == 0, again.stderr[-4000:]
    rank0, rank1 = _reports(report, method, 2)
    assert rank0["steps"] == rank1["steps"] == 3 and rank0["digest"] == rank1["digest"]
    assert _logged_steps(out / method) == [1, 2, 3]  # step 2 ran again from checkpoint 1, logged once
    assert (out / method / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------------------- refusal
def test_two_processes_without_a_process_group_are_refused(tiny_llava_dir, tmp_path):
    """Plain torchrun on CPUs without ACCELERATE_USE_CPU: accelerate forms no group; each process
    would train alone and overwrite the same folder. The run must stop with a clear message."""
    proc = _run(2, ["sft"], f"hf:{tiny_llava_dir}", "image", tmp_path / "out", tmp_path / "rep", 1, use_cpu=False)
    assert proc.returncode != 0
    assert "no process group was formed" in proc.stderr
    assert not (tmp_path / "out" / "sft" / "adapter_model.safetensors").exists()
