"""Memory and time of a PPO step: reference log-probs from the adapter-off policy (ours) vs a
separate frozen reference model copy (what PPO implementations without PEFT do).

Each variant runs in a fresh subprocess (so peak RSS is its own): load SmolLM2-135M-Instruct with
LoRA, run ``--steps`` PPO steps on text items with the ``rule`` judge, and report the process's peak
resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the mean step time after the
first (warm-up) step.

    .venv/bin/python benchmarks/ppo_memory.py [--steps 3] [--model smollm2-135m]

The last two lines are ``memory_ratio: X.XX`` and ``step_time_ratio: X.XX`` (ours / separate copy).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from gpu_check import separate_reference_trainer  # benchmarks/ is on sys.path: run as a script


def run_variant(variant: str, model: str, steps: int) -> dict:
    import resource
    import time

    import torch

    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.train import data, ppo

    # the baseline: a frozen copy of the base model as the reference (one definition, shared with gpu_check)
    SeparateReferenceTrainer = separate_reference_trainer(ppo)

    items = data.heldout_text_items("train")[: 4 * steps]
    with tempfile.TemporaryDirectory() as out:
        cfg = ppo.PPOConfig(model=model, modality="text", out_dir=out, lora_r=16, lora_alpha=32, rollout_batch_size=4,
                            mini_batch_size=4, response_len=16, max_steps=steps, save_steps=10_000, seed=0)
        cls = ppo.PPOTrainer if variant == "adapter_off" else SeparateReferenceTrainer
        trainer = cls(cfg, items, judge=load_judge("rule"), quiet=True)
        times = []
        for step in range(steps):
            t0 = time.perf_counter()
            trainer.train_step(trainer.batch_for_step(step))
            times.append(time.perf_counter() - t0)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    timed = times[1:] or times
    return {"variant": variant, "peak_rss_mb": rss_kb / 1024, "step_s": sum(timed) / len(timed),
            "steps": steps, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.model, args.steps)))
        return 0
    results = {}
    for variant in ("adapter_off", "separate_copy"):
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                               "--model", args.model], capture_output=True, text=True, env=os.environ.copy())
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[variant] = json.loads(lines[-1][len("RESULT "):])
        r = results[variant]
        print(f"{variant:14s} peak RSS {r['peak_rss_mb']:8.1f} MB   step {r['step_s']:6.2f} s   "
              f"({r['steps']} steps, {r['threads']} threads)")
    ours, copy_ = results["adapter_off"], results["separate_copy"]
    print(f"memory_ratio: {ours['peak_rss_mb'] / copy_['peak_rss_mb']:.2f}")
    print(f"step_time_ratio: {ours['step_s'] / copy_['step_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
