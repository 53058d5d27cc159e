"""Evidence for the SFT / DPO / GRPO baselines on this CPU box: the real SmolLM2-135M-Instruct,
TEXT modality, concepts held out (train.data.heldout_text_items). Used by run_baselines.sh.

  python scripts/train_evidence/baselines.py train sft OUT [key=value ...]

(Evaluation: ``unsafe-concepts posteval --unsafeconcepts heldout-text --general``, the same as the PPO evidence.)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

COMMON = dict(model="smollm2-135m", data="heldout-text", modality="text", lora_r=16, lora_alpha=32,
              lora_dropout=0.05, seed=0, warmup_steps=5, lr_schedule="cosine", save_steps=10, logging_steps=1)
METHODS = {
    "sft": dict(learning_rate=1e-4, batch_size=8, max_steps=30, max_length=160),
    "dpo": dict(learning_rate=1e-4, beta=0.1, batch_size=8, max_steps=20, max_length=160),
    # reward judge, response length and KL as the PPO evidence (configs/ppo_smollm2_text.json)
    "grpo": dict(learning_rate=1e-4, batch_size=16, num_generations=4, response_len=40, max_steps=8,
                 kl_coef=0.05, judge="rule"),
}


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def train(method: str, out: str, overrides: list[str]) -> None:
    import importlib

    module = importlib.import_module(f"unsafe_concepts.train.{method}")
    settings = {**COMMON, **METHODS[method], "out_dir": out}
    settings.update({k: _value(v) for k, v in (o.split("=", 1) for o in overrides)})
    t0 = time.time()
    record = module.train(settings)
    print(json.dumps({"method": method, "steps": record["global_step"], "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "train":
        train(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit(__doc__)
