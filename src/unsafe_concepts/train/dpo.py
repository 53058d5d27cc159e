"""DPO baseline: prefer the template answer with the true label ("chosen") over the same template
with the opposite label ("rejected"), as the protocol defines the pairs.

Runs on TRL's ``DPOTrainer`` (sigmoid loss) with the shared LoRA policy. The reference model is the
policy with its adapter at initialisation: TRL copies the fresh LoRA into a frozen "ref" adapter
(LoRA starts at B = 0, so that is exactly the base model) instead of loading a second model.
Protocol defaults: lr 2e-6, beta 0.1, 4 epochs, batch 32, 5 warm-up steps, cosine schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common, trl_runner


@dataclass
class DPOConfig(common.TrainConfig):
    CPU_MICRO_BATCH = 2  # pairs: chosen + rejected = 4 rows per pass on a CPU

    learning_rate: float = 2e-6
    beta: float = 0.1
    loss_type: str = "sigmoid"  # TRL's loss names: sigmoid (the DPO paper), ipo, hinge, ...
    max_length: int = 512
    gradient_checkpointing: bool = True  # recompute activations in the backward pass: less memory, ~30% slower
    deepspeed: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise UserError(f"beta must be > 0, got {self.beta}")
        if self.max_length < 8:
            raise UserError(f"max_length must be >= 8, got {self.max_length}")


def build_trainer(config: DPOConfig, items=None):
    import trl

    from unsafe_concepts.train.data import dpo_pairs

    items = trl_runner.load_train_items(config) if items is None else items
    model, processor = trl_runner.load_policy(config)
    dataset = trl_runner.to_dataset(dpo_pairs(items), processor, answer_keys=("chosen", "rejected"))
    args = trl_runner.trl_args(config, trl.DPOConfig, beta=config.beta, loss_type=[config.loss_type],
                               max_length=config.max_length, precompute_ref_log_probs=False)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                             callbacks=[common.TrainLogger(config.out_dir).callback()])
    trl_runner.return_freed_buffers(trainer, config)  # off by default (cpu_mmap_threshold None)
    return trainer, processor, len(items)


CONFIG = DPOConfig


def train(config, *, items=None, judge=None, quiet: bool = False) -> dict:
    """Run DPO: ``config`` is a DPOConfig, a dict of settings, or the ``train`` command's arguments.
    ``judge`` is accepted for a uniform trainer signature and unused (no reward model)."""
    config = trl_runner.resolve_config(config, DPOConfig)
    trainer, _, n = build_trainer(config, items)
    return trl_runner.run(trainer, config, "dpo", n_items=n, quiet=quiet)
