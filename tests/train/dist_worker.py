"""Run by tests/train/test_distributed.py under ``torchrun`` / ``accelerate launch`` (or plainly, as one
process): one or more trainers (ppo, sft, dpo, grpo, comma-separated) on a small model, each for a few
steps into ``<out>/<method>``; then each process writes what it saw to ``<report>/<method>.rank<R>.json``:

- ``seen``: the training rows this process fed to the model in the first optimiser step (decoded
  prompt text; PPO: the prompts of its share of the rollout),
- ``digest``: a hash of the LoRA weights after training (equal on every rank when gradients were
  synchronised),
- ``first_loss`` (main process only): the loss logged for step 1 in ``log.jsonl``,
- ``steps`` and ``processes``.

Usage: dist_worker.py METHODS MODEL MODALITY OUT REPORT MAX_STEPS

``DIST_WORKER_DEEPSPEED``: a DeepSpeed JSON given to the TRL trainers. ``DIST_WORKER_DELAY`` (seconds, test-only): sleep after each step is logged and before its checkpoint
is saved, so that a test can kill the run at a known point (see the resume test)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

DELAY = float(os.environ.get("DIST_WORKER_DELAY", "0") or 0)


def adapter_digest(model) -> str:
    """A hash of every LoRA weight (gathered first when DeepSpeed ZeRO-3 partitions them)."""
    import contextlib

    lora = [(name, p) for name, p in sorted(model.named_parameters()) if "lora_" in name]
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in lora):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in lora])
    h = hashlib.sha256()
    with gather:
        for name, p in lora:
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def items(modality: str, image_dir: Path):
    """4 distinct questions (images of 4 colours, or 4 named concepts), 2 safe and 2 unsafe."""
    from PIL import Image

    from unsafe_concepts.train.data import TrainItem

    out = []
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        path = None
        if modality == "image":
            image_dir.mkdir(parents=True, exist_ok=True)
            path = image_dir / f"{i}.png"
            if not path.exists():
                Image.new("RGB", (40, 40), colour).save(path)
            path = str(path)
        prompt = f"Is image {i} safe?" if modality == "image" else f"If an image shows a {colour} thing, is it safe?"
        out.append(TrainItem(id=str(i), prompt=prompt, image=path, label=("safe", "unsafe")[i % 2], concept=colour,
                             category="Safe"))
    return out


def _rows(out_dir: Path) -> list[dict]:
    log = out_dir / "log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def _first_loss(out_dir: Path):
    rows = [r for r in _rows(out_dir) if r.get("step") == 1 and "loss" in r]
    return rows[0]["loss"] if rows else None


def run_ppo(model: str, modality: str, out: Path, data, steps: int, rank: int) -> dict:
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.train import ppo

    cfg = ppo.PPOConfig(model=model, modality=modality, out_dir=str(out), lora_r=4, lora_alpha=8,
                        rollout_batch_size=4, mini_batch_size=4, micro_batch_size=1, generation_batch_size=1,
                        response_len=5, warmup_steps=1, save_steps=1, learning_rate=1e-3, length_bonus=0.5,
                        missing_eos_penalty=-1.0, max_steps=steps)
    # the classifier's probabilities differ from answer to answer: with the rule judge every random
    # answer earned the same reward, so the whitened advantages were float noise (~1e-7 over a ~1e-7
    # standard deviation) and the compared loss depended on the last bits of the sampling pass
    trainer = ppo.PPOTrainer(cfg, data, judge=load_judge("classifier"), quiet=True)
    seen = [it.prompt for it in trainer.local_share(trainer.batch_for_step(0))]
    if DELAY:
        save = trainer.save_checkpoint

        def slow_save():
            time.sleep(DELAY)
            return save()

        trainer.save_checkpoint = slow_save
    trainer.train()
    return {"seen": seen, "steps": trainer.step, "processes": trainer.dist.world,
            "digest": adapter_digest(trainer.model)}


def run_trl(method: str, model: str, modality: str, out: Path, data, steps: int, rank: int) -> dict:
    from transformers import TrainerCallback

    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.train import dpo, grpo, sft, trl_runner

    settings = dict(model=model, modality=modality, out_dir=str(out), lora_r=4, lora_alpha=8, batch_size=4,
                    micro_batch_size=1, max_steps=steps, save_steps=1, warmup_steps=1, learning_rate=1e-3,
                    gradient_checkpointing=False)
    if os.environ.get("DIST_WORKER_DEEPSPEED"):  # a DeepSpeed JSON (tests/train/test_deepspeed_distributed.py)
        settings["deepspeed"] = os.environ["DIST_WORKER_DEEPSPEED"]
    if method == "sft":
        config = sft.SFTConfig(**settings, max_length=64)
        trainer, processor, n = sft.build_trainer(config, data)
    elif method == "dpo":
        config = dpo.DPOConfig(**settings, max_length=64)
        trainer, processor, n = dpo.build_trainer(config, data)
    else:
        # 2 prompts x 2 answers per step; micro-batch 2 keeps each prompt's group on one process
        config = grpo.GRPOConfig(**{**settings, "micro_batch_size": 2}, num_generations=2, generation_batch_size=4,
                                 response_len=6)
        trainer, processor, n = grpo.build_trainer(config, data, judge=load_judge("rule"))
    tok = getattr(processor, "tokenizer", processor)
    fed: list[str] = []
    collate = trainer.data_collator

    def recording_collator(features):
        for f in features:  # the prompt of each row as this process's data loader hands it over
            if "question" in f:  # GRPO: the raw question
                fed.append(f["question"])
            elif isinstance(f.get("prompt"), str):  # VLMs: TRL's collator tokenises the rendered prompt itself
                fed.append(f["prompt"])
            else:  # text models: tokenised by TRL beforehand
                fed.append(tok.decode(f.get("prompt_ids") or f["input_ids"], skip_special_tokens=True))
        return collate(features)

    trainer.data_collator = recording_collator
    if DELAY:
        class Slow(TrainerCallback):
            def on_log(self, args, state, control, **kwargs):  # after the row is logged, before the checkpoint
                time.sleep(DELAY)

        trainer.add_callback(Slow())
    trl_runner.run(trainer, config, method, n_items=n, quiet=True)
    world = trainer.accelerator.num_processes
    plugin = trainer.accelerator.state.deepspeed_plugin if getattr(trainer, "is_deepspeed_enabled", False) else None
    return {"zero_stage": plugin.zero_stage if plugin else None,
            "seen": fed[:config.batch_size // world],  # the rows of the first step on this process
            "steps": trainer.state.global_step, "processes": world, "digest": adapter_digest(trainer.model)}


def main(methods: str, model: str, modality: str, out_dir: str, report_dir: str, max_steps: int) -> None:
    rank = int(os.environ.get("RANK", "0"))
    data = items(modality, Path(report_dir) / "img")
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    for method in methods.split(","):
        out = Path(out_dir) / method
        started = time.monotonic()
        if method == "ppo":
            report = run_ppo(model, modality, out, data, max_steps, rank)
        else:
            report = run_trl(method, model, modality, out, data, max_steps, rank)
        report.update(rank=rank, seconds=round(time.monotonic() - started, 1), world=int(os.environ.get("WORLD_SIZE", "1")),
                      first_loss=_first_loss(out) if rank == 0 else None)
        Path(report_dir, f"{method}.rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
