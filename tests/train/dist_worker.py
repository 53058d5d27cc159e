"""Run by tests/train/test_distributed.py under ``torchrun`` (or plainly, as one process): one PPO or
SFT run on the tiny LLaVA, then each process writes what it saw to ``<report>/rank<R>.json``."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def adapter_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def items(image_dir: Path):
    from PIL import Image

    from unsafe_concepts.train.data import TrainItem

    image_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        path = image_dir / f"{i}.png"
        if not path.exists():
            Image.new("RGB", (40, 40), colour).save(path)
        out.append(TrainItem(id=str(i), prompt=f"Is image {i} safe?" + " Answer." * i, image=str(path),
                             label=("safe", "unsafe")[i % 2], concept="x", category="Safe"))
    return out


def main(method: str, model_dir: str, out_dir: str, report_dir: str, max_steps: int) -> None:
    from unsafe_concepts.judges import load_judge

    rank = int(os.environ.get("RANK", "0"))
    report = {"rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1"))}
    if method == "ppo":
        from unsafe_concepts.train import ppo

        cfg = ppo.PPOConfig(model=f"hf:{model_dir}", modality="image", out_dir=out_dir, lora_r=4, lora_alpha=8,
                            rollout_batch_size=4, mini_batch_size=4, micro_batch_size=1, generation_batch_size=1,
                            response_len=5, warmup_steps=1, save_steps=1, learning_rate=1e-3, length_bonus=0.5,
                            missing_eos_penalty=-1.0, max_steps=max_steps)
        trainer = ppo.PPOTrainer(cfg, items(Path(report_dir) / "img"), judge=load_judge("rule"), quiet=True)
        report["prompts"] = [it.prompt for it in trainer.local_share(trainer.batch_for_step(trainer.step))]
        trainer.train()
        rows = [json.loads(x) for x in (Path(out_dir) / "log.jsonl").read_text().splitlines()] if rank == 0 else []
        report["first_loss"] = rows[0]["loss"] if rows else None
        report["steps"] = trainer.step
        report["digest"] = adapter_digest(trainer.model)
    else:
        from unsafe_concepts.train import sft

        cfg = sft.SFTConfig(model=f"hf:{model_dir}", modality="image", out_dir=out_dir, lora_r=4, lora_alpha=8,
                            batch_size=4, micro_batch_size=1, max_steps=max_steps, save_steps=1, warmup_steps=1,
                            learning_rate=1e-3)
        trainer, _, _ = sft.build_trainer(cfg, items(Path(report_dir) / "img"))
        from unsafe_concepts.train import trl_runner

        trl_runner.run(trainer, cfg, "sft", n_items=4, quiet=True)
        report["processes"] = trainer.accelerator.num_processes
        report["steps"] = trainer.state.global_step
        report["digest"] = adapter_digest(trainer.model)
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
