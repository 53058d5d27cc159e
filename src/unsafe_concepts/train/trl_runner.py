"""What the TRL-based baselines (SFT, DPO, GRPO) share: the policy, the dataset, the TRL arguments,
resuming, and the saved adapter.

The policy is ``train.common.load_policy`` (the same LoRA on the language model as PPO, vision
tower and projector frozen) handed to TRL as a ready ``PeftModel``. Prompts are rendered with
``train.common.chat_text`` *before* TRL sees them (TRL's "standard" prompt-completion format), so
training uses exactly the string the evaluation backend sends; TRL only tokenises, masks the
prompt out of the loss, and (for VLMs) runs the processor on the image. Text-modality items given
to a VLM carry the protocol's blank white image, as the text modality is evaluated.

Output folder layout (the same as PPO's):
``<out>/adapter_config.json`` + ``adapter_model.safetensors`` (the final PEFT adapter at the top
of the folder: ``unsafe-concepts evaluate --model SPEC --adapter <out>``),
``<out>/checkpoints/checkpoint-N`` (TRL checkpoints; a rerun resumes from the last one),
``<out>/log.jsonl`` (one JSON object per logged step), ``<out>/train.json`` (method, config,
versions, items).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common

CHECKPOINT_SUBDIR = "checkpoints"
# argparse defaults of `unsafe-concepts train`: a flag left at its default does not override --config
CLI_DEFAULTS = {"data": "sample", "modality": "image", "judge": "classifier", "seed": 0}


def resolve_config(args_or_config, cls: type):
    """A config instance as is, an argparse Namespace from the CLI, or a dict of settings -> ``cls``."""
    if isinstance(args_or_config, cls):
        args_or_config.validate()
        return args_or_config
    if isinstance(args_or_config, dict):
        return common.config_from_dict(args_or_config, cls)
    if isinstance(args_or_config, argparse.Namespace):
        return common.config_from_args(args_or_config, cls, cli_defaults=CLI_DEFAULTS)
    raise UserError(f"expected a {cls.__name__}, a dict or command-line arguments, got {type(args_or_config).__name__}")


def load_train_items(config) -> list:
    from unsafe_concepts.train.data import load_items

    items = load_items(config.data, modality=config.modality, split="train", safe=config.safe_data,
                       seed=config.data_seed)
    if not items:
        raise UserError(f"no training items in {config.data!r}")
    return items


def eos_token(processor) -> str:
    tok = common.tokenizer_of(processor)
    if not tok.eos_token:
        raise UserError("the tokenizer has no EOS token: the model could not learn to stop answering")
    return tok.eos_token


def to_dataset(rows: list[dict], processor, *, answer_keys: tuple[str, ...], conversational_vlm: bool = False):
    """A ``datasets.Dataset`` in TRL's standard format: ``prompt`` rendered with the chat template,
    each answer column ending in EOS (the model must learn to stop; TRL adds EOS itself only on
    the text path), and an ``image`` column for VLMs (PIL; blank white for text items).

    ``conversational_vlm``: for a VLM, give the prompt as one user message instead (TRL's GRPO insists
    on that for images); TRL then puts the image first and applies the same chat template."""
    from datasets import Dataset

    vlm = common.is_vlm_processor(processor)
    eos = eos_token(processor)
    records = []
    for row in rows:
        if vlm and conversational_vlm:
            rec = {"prompt": [{"role": "user", "content": row["prompt"]}]}
        else:
            rec = {"prompt": common.chat_text(processor, row["prompt"])}
        for key in answer_keys:
            rec[key] = row[key] if row[key].endswith(eos) else row[key] + eos
        if vlm:
            rec["image"] = common.load_image(row.get("image"))
        records.append(rec)
    return Dataset.from_list(records)


def trl_args(config, cls, **method_kwargs):
    """The TRL config (``cls``: trl.SFTConfig / DPOConfig / GRPOConfig) from our config."""
    dtype = (config.dtype or "").lower()
    # only a micro-batch in memory; the global batch (config.batch_size) by gradient accumulation
    micro, accum = common.batch_plan(config, world_size=common.launched_world_size(),
                                     device=config.device or common.default_device())
    kwargs: dict[str, Any] = dict(
        output_dir=str(Path(config.out_dir) / CHECKPOINT_SUBDIR),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="cosine" if config.lr_schedule == "cosine" else "constant_with_warmup",
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        bf16=dtype in ("bfloat16", "bf16"),
        fp16=dtype in ("float16", "fp16"),
        gradient_checkpointing=getattr(config, "gradient_checkpointing", False),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to=common.trackers(getattr(config, "report_to", None)),  # [] unless asked (TensorBoard, W&B)
        remove_unused_columns=False,  # the image column and GRPO's label column must reach the collator
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    if getattr(config, "deepspeed", None):
        kwargs["deepspeed"] = config.deepspeed
    # DeepSpeed from the config, or from `accelerate launch --config_file configs/accelerate/deepspeed_zero*.yaml`
    if (getattr(config, "deepspeed", None) or common.flag("ACCELERATE_USE_DEEPSPEED")) and _deepspeed_on_cpus(config):
        kwargs["accelerator_config"] = {"use_configured_state": True}
    kwargs.update(method_kwargs)
    return cls(**kwargs)


def _deepspeed_on_cpus(config) -> bool:
    """DeepSpeed without a GPU (its CPU accelerator, gloo): accelerate 1.15 finds no process-group backend
    for DeepSpeed on CPUs and reports 1 process although DeepSpeed joined all of them, so every process
    would see the whole data set. Form the group here with gloo, flagged for DeepSpeed, and let the HF
    Trainer use that state. True when it did (several processes launched, no CUDA)."""
    import os

    import torch

    if common.launched_world_size() <= 1 or torch.cuda.is_available() or (config.device or "cpu") != "cpu":
        return False
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # as TrainingArguments does; the group itself stays
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    return True


def last_checkpoint(out_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = Path(out_dir) / CHECKPOINT_SUBDIR
    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def _finished(checkpoint: str, max_steps: int) -> bool:
    """Did the run that wrote ``checkpoint`` reach its end, with no larger budget asked now?"""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    done = state["global_step"] >= state.get("max_steps", float("inf"))
    return done and (max_steps <= 0 or max_steps <= state["global_step"])


def _load_adapter_weights(model, checkpoint: str) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(checkpoint) / "adapter_model.safetensors")))


def load_policy(config):
    """``common.load_policy`` after seeding every generator with ``config.seed``: the fresh LoRA's random
    A matrices are then the same in every run with that seed, whatever ran before in the process (TRL
    seeds only when the trainer is built, after the adapter exists)."""
    from transformers import set_seed

    common.check_launch()  # a launch that did not start the processes asked for: refused before loading
    set_seed(config.seed)
    return common.load_policy(config)


def _drop_rows_after(out: Path, step: int) -> None:
    """Rows of ``log.jsonl`` after ``step`` were written by a run killed before its next checkpoint:
    those steps run again from the checkpoint and log again, so each step is logged once."""
    from unsafe_concepts.io import write_text_atomic

    log = common.TrainLogger(out)
    rows = log.rows()
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) != len(rows):
        write_text_atomic(log.path, "".join(json.dumps(r) + "\n" for r in kept))


def return_freed_buffers(trainer, config, *, generation: tuple[str, ...] = ()) -> None:
    """With ``config.cpu_mmap_threshold`` on a CPU: the trainer's ``training_step`` (forward and
    backward passes) runs under :func:`common.large_buffers_returned`, and the methods named in
    ``generation`` (sampling inside a step) back on the heap. Nothing changes otherwise."""
    threshold = config.cpu_mmap_threshold
    device = str(trainer.args.device)
    if not threshold or not device.startswith("cpu"):
        return
    trainer.training_step = common.with_allocator(trainer.training_step, threshold, device)
    for name in generation:
        setattr(trainer, name, common.with_allocator(getattr(trainer, name), threshold, device, heap=True))


def run(trainer, config, method: str, *, n_items: int, quiet: bool = False) -> dict:
    """Train (resuming from the last checkpoint in ``<out>/checkpoints``), then save the adapter and
    ``train.json``; returns the record written to ``train.json``."""
    common.refuse_silent_duplicates(trainer.accelerator.num_processes)
    out = Path(config.out_dir)
    resume = last_checkpoint(out)
    if resume and not quiet:
        print(f"resuming {method} from {resume}")
    if resume and trainer.is_world_process_zero():
        _drop_rows_after(out, json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"])
    if resume and _finished(resume, trainer.args.max_steps):
        # transformers would still take one more step when resuming a finished run: load instead
        _load_adapter_weights(trainer.model, resume)
        trainer.state.global_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
        metrics = {"note": "already finished at this checkpoint; nothing trained"}
    else:
        metrics = trainer.train(resume_from_checkpoint=resume).metrics or {}
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):  # DPO's frozen copy of the initial adapter: not part of the result
        model.delete_adapter("ref")
        model.set_adapter("default")
    if getattr(trainer, "is_deepspeed_enabled", False):
        trainer.save_model(str(out))  # gathers ZeRO-3 partitions; writes on the main process only
        adapter = out
    elif trainer.is_world_process_zero():
        adapter = common.save_adapter(model, out)
    else:
        adapter = out
    record = common.run_record(method, config, n_items=n_items, resumed_from=resume,
                               global_step=trainer.state.global_step,
                               train_metrics=dict(metrics), processes=trainer.accelerator.num_processes)
    record["adapter"] = str(adapter)
    if trainer.is_world_process_zero():
        common.write_json(out / "train.json", record)
    if not quiet:
        print(f"{method}: {trainer.state.global_step} steps; adapter saved to {adapter}")
    return record
