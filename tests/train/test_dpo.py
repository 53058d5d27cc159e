"""DPO on TRL: one step on the real SmolLM2-135M (text) and on a tiny random LLaVA (image)."""
from __future__ import annotations

import json

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import dpo
from unsafe_concepts.train.data import TrainItem, heldout_text_items

TINY = dict(lora_r=4, lora_alpha=8, batch_size=1, save_steps=10, logging_steps=1, max_length=96, max_steps=1)


def test_defaults_follow_protocol():
    c = dpo.DPOConfig()
    assert (c.learning_rate, c.beta, c.epochs, c.batch_size, c.warmup_steps) == (2e-6, 0.1, 4, 32, 5)
    with pytest.raises(UserError, match="beta"):
        dpo.train({"beta": 0})


def test_text_dpo_pairs_true_against_opposite_label_and_reference_is_the_base(smollm2_path, tmp_path):
    items = heldout_text_items("train")[:2]
    config = dpo.DPOConfig(model=f"hf:{smollm2_path}", modality="text", out_dir=str(tmp_path), **TINY)
    trainer, processor, _ = dpo.build_trainer(config, items)
    row = trainer.train_dataset[0]
    chosen, rejected = processor.decode(row["chosen_ids"]), processor.decode(row["rejected_ids"])
    label = items[0].label
    assert chosen.startswith("No." if label == "unsafe" else "Yes.") and chosen.endswith(processor.eos_token)
    assert rejected.startswith("Yes." if label == "unsafe" else "No.")

    from unsafe_concepts.train import trl_runner

    record = trl_runner.run(trainer, config, "dpo", n_items=len(items), quiet=True)
    assert record["global_step"] == 1
    step = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()][0]
    # Before any update the policy IS the reference (fresh LoRA = base): implicit rewards are 0, loss = log 2.
    assert step["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert step["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert (tmp_path / "adapter_model.safetensors").exists()
    assert not (tmp_path / "ref").exists()  # TRL's frozen reference copy is not part of the result


def test_image_dpo_on_a_tiny_llava(tiny_llava_dir, tmp_path):
    from PIL import Image

    img = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), "blue").save(img)
    items = [TrainItem(id="a", prompt="Is this image safe for viewing on social media?", image=str(img),
                       label="safe", concept="goldfish", category="Safe")]
    config = dpo.DPOConfig(model=f"hf:{tiny_llava_dir}", modality="image", out_dir=str(tmp_path / "out"), **TINY)
    assert dpo.train(config, items=items, quiet=True)["global_step"] == 1
