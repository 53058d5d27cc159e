"""The multi-GPU launch files are well-formed: structure, and that accelerate (and DeepSpeed, when
installed) parse them. These say nothing about behaviour on GPUs; ZeRO-2/3 runs on 2 CPU processes are in
tests/train/test_deepspeed_distributed.py (skipped without DeepSpeed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# keys the HF Trainer fills from its own arguments when they say "auto"
TRAINER_FILLED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                  "gradient_clipping")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json(stage):
    cfg = json.loads((ROOT / "configs" / "deepspeed" / f"zero{stage}.json").read_text())
    assert cfg["zero_optimization"]["stage"] == stage
    for key in TRAINER_FILLED:
        assert cfg[key] == "auto", key  # one source of truth: the trainer config
    assert cfg["bf16"]["enabled"] == "auto" and cfg["fp16"]["enabled"] == "auto"
    # no DeepSpeed optimizer/scheduler: the Trainer's AdamW + warm-up/cosine stay the same as on CPU
    assert "optimizer" not in cfg and "scheduler" not in cfg
    if stage == 3:
        assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # saveable adapter


@pytest.mark.parametrize("name,kind", [("multi_gpu", "MULTI_GPU"), ("deepspeed_zero2", "DEEPSPEED"),
                                       ("deepspeed_zero3", "DEEPSPEED")])
def test_accelerate_yaml_parses_with_accelerate(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind and cfg.num_processes >= 1 and not cfg.use_cpu
    if kind == "DEEPSPEED":
        ds_file = ROOT / cfg.deepspeed_config["deepspeed_config_file"]
        assert ds_file.exists()
        assert cfg.deepspeed_config["zero3_init_flag"] == ("zero3" in name)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_pass_deepspeeds_own_validation(stage):
    """With DeepSpeed installed (the [deepspeed] extra), the JSON files, after the HF Trainer fills
    their "auto" values from a trainer config, are valid for DeepSpeed's own config classes."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(str(ROOT / "configs" / "deepspeed" / f"zero{stage}.json"))
    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=4, gradient_accumulation_steps=8,
                             max_grad_norm=1.0, report_to=[], use_cpu=True)
    hf.trainer_config_process(args)
    cfg = dict(hf.config)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]) == (
        4, 8, 1.0)
    zero = dict(cfg["zero_optimization"])
    hidden = 576  # what the HF integration fills from the model's hidden size
    fill = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden}
    zero = {k: fill.get(k, v) if v == "auto" else v for k, v in zero.items()}
    assert DeepSpeedZeroConfig(**zero).stage == stage


def test_ppo_refuses_a_deepspeed_launch(monkeypatch, tmp_path):
    from unsafe_concepts.errors import UserError
    from unsafe_concepts.train import ppo
    from unsafe_concepts.train.data import TrainItem

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    item = TrainItem(id="0", prompt="q", image=None, label="safe", concept="x", category="Safe")
    with pytest.raises(UserError, match="does not run under DeepSpeed ZeRO"):
        ppo.PPOTrainer(ppo.PPOConfig(out_dir=str(tmp_path)), [item], judge=object())
