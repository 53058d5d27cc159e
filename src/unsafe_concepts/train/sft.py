"""Supervised fine-tuning baseline: teach the protocol's template answer for every training item
("No. The image shows torture, which is considered harmful." / "Yes. The image shows golden
retriever, which is considered harmless.").

Runs on TRL's ``SFTTrainer`` (text LMs and VLMs, prompt-completion format, loss on the completion
only) with the shared LoRA policy; see ``train/trl_runner.py`` for what is ours around it.
Protocol defaults: lr 3e-5, 4 epochs, batch 32, 5 warm-up steps, cosine schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

from unsafe_concepts.train import common, trl_runner
from unsafe_concepts.errors import UserError


@dataclass
class SFTConfig(common.TrainConfig):
    CPU_MICRO_BATCH = 4  # short rows (prompt + template answer): 4 per pass on a CPU

    learning_rate: float = 3e-5
    max_length: int = 512  # prompt + answer tokens (longer rows are cut at the end)
    gradient_checkpointing: bool = True  # recompute activations in the backward pass: less memory, ~30% slower
    deepspeed: str | None = None  # path to a DeepSpeed JSON (configs/deepspeed/zero2.json), GPU only

    def validate(self) -> None:
        super().validate()
        if self.max_length < 8:
            raise UserError(f"max_length must be >= 8, got {self.max_length}")


def build_trainer(config: SFTConfig, items=None):
    """(trainer, processor, n_items) ready to ``.train()``; ``items`` defaults to the config's data."""
    import trl

    from unsafe_concepts.train.data import sft_examples

    items = trl_runner.load_train_items(config) if items is None else items
    model, processor = trl_runner.load_policy(config)
    dataset = trl_runner.to_dataset(sft_examples(items), processor, answer_keys=("completion",))
    args = trl_runner.trl_args(config, trl.SFTConfig, max_length=config.max_length, completion_only_loss=True,
                               packing=False, dataset_num_proc=None)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                             callbacks=[common.TrainLogger(config.out_dir).callback()])
    trl_runner.return_freed_buffers(trainer, config)  # off by default (cpu_mmap_threshold None)
    return trainer, processor, len(items)


CONFIG = SFTConfig


def train(config, *, items=None, judge=None, quiet: bool = False) -> dict:
    """Run SFT: ``config`` is a SFTConfig, a dict of settings, or the ``train`` command's arguments.
    ``judge`` is accepted for a uniform trainer signature and unused (no reward model)."""
    config = trl_runner.resolve_config(config, SFTConfig)
    trainer, _, n = build_trainer(config, items)
    return trl_runner.run(trainer, config, "sft", n_items=n, quiet=quiet)
