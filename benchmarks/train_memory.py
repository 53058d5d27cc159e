"""Peak memory and step time of each trainer at its defaults (the protocol's), a fresh process per method.

Each method (ppo, sft, dpo, grpo) runs ``--steps`` optimiser steps of the real trainer on
SmolLM2-135M-Instruct, ``--data sample --modality text``, every other setting at its default (LoRA
r=128, global batch 32, answers of up to 512 tokens, ...), in a child process of its own, so the
peak is that method's alone:

- on a CPU: the child's peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``);
- on a GPU: ``torch.cuda.max_memory_allocated()``.

    .venv/bin/python benchmarks/train_memory.py [--methods ppo,sft,dpo,grpo] [--steps 2] [--judge classifier]
        [--set key=value ...]   # e.g. --set micro_batch_size=2 to see its effect

Prints, per method: ``peak_mb_<method>: X``, ``step_s_<method>: X`` (wall time of the steps divided
by their number, model loading excluded) and ``step_cpu_s_<method>: X`` (the process's CPU time per
step: comparable across runs on a machine shared with other jobs), then the settings used and, for
PPO, each step's phases (sampling, passes, judge, update; mean answer length in tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

METHODS = ("ppo", "sft", "dpo", "grpo")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_method(method: str, steps: int, model: str, judge: str, overrides: dict) -> dict:
    import resource

    import torch

    def cpu_seconds() -> float:  # this process's CPU time: robust to other jobs sharing the machine
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    from unsafe_concepts.train import trainer_module

    module = trainer_module(method)
    with tempfile.TemporaryDirectory() as out:
        settings = {"model": model, "data": "sample", "modality": "text", "out_dir": out, "max_steps": steps,
                    "save_steps": 10_000, **overrides}
        fields = {f for f in module.CONFIG.__dataclass_fields__}
        if "judge" in fields:
            settings["judge"] = judge
        config = module.CONFIG(**{k: v for k, v in settings.items() if k in fields})
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        cpu0, phases = None, []
        if method == "ppo":
            from unsafe_concepts.train import ppo
            from unsafe_concepts.train.data import load_items

            items = load_items(config.data, modality=config.modality, split="train", seed=config.data_seed)
            trainer = ppo.PPOTrainer(config, items, quiet=True)
            loaded, cpu0 = time.perf_counter(), cpu_seconds()
            phases = []
            for step in range(steps):
                metrics = trainer.train_step(trainer.batch_for_step(step))
                trainer.step += 1
                phases.append({k: round(v, 1) for k, v in metrics.items()
                               if k.endswith("_s") or k == "response_len"})
            done, cpu1 = time.perf_counter(), cpu_seconds()
            micro = trainer.micro_batch
        else:
            trainer, _, _ = module.build_trainer(config)
            loaded, cpu0 = time.perf_counter(), cpu_seconds()
            trainer.train()
            done, cpu1 = time.perf_counter(), cpu_seconds()
            micro = trainer.args.per_device_train_batch_size
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        where = "cuda max_memory_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
        where = "peak RSS"
    return {"method": method, "peak_mb": peak_mb, "measure": where, "step_s": (done - loaded) / steps,
            "step_cpu_s": (cpu1 - cpu0) / steps,
            "load_s": loaded - t0, "micro_batch": micro, "threads": torch.get_num_threads(), "phases": phases,
            "settings": {k: v for k, v in config.to_dict().items()
                         if k in ("batch_size", "rollout_batch_size", "mini_batch_size", "micro_batch_size",
                                  "response_len", "max_length", "lora_r", "num_generations", "generation_batch_size",
                                  "gradient_checkpointing", "value_model", "judge")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--judge", default="classifier", help="reward judge of ppo/grpo (default: the protocol's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a trainer setting")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.child:
        result = run_method(args.child, args.steps, args.model, args.judge, overrides)
        print("RESULT " + json.dumps(result), flush=True)
        if os.environ.get("TRAIN_MEMORY_RESULTS"):  # optional: keep every result (JSON lines)
            with open(os.environ["TRAIN_MEMORY_RESULTS"], "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
        return 0
    failed = 0
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--child", method, "--steps", str(args.steps), "--model", args.model,
               "--judge", args.judge] + [x for kv in args.set for x in ("--set", kv)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{method}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
            failed += 1
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        print(f"peak_mb_{method}: {r['peak_mb']:.0f}")
        print(f"step_s_{method}: {r['step_s']:.1f}")
        print(f"step_cpu_s_{method}: {r['step_cpu_s']:.1f}")
        print(f"  ({r['measure']}; micro-batch {r['micro_batch']}; {r['threads']} threads; load {r['load_s']:.0f} s; "
              f"{json.dumps(r['settings'])})", flush=True)
        for step, phases in enumerate(r.get("phases", []), 1):  # PPO: where each step's time went
            print(f"  step {step}: " + ", ".join(f"{k} {v}" for k, v in phases.items()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
