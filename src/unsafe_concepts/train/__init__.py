"""Alignment training: response-reward PPO (the paper's method), SFT, DPO, GRPO.

``unsafe-concepts train {ppo,sft,dpo,grpo} --model SPEC --data PATH|sample|hf|heldout-text
--modality image|text --out DIR [--max-steps N] [--config FILE] [--judge NAME] [--seed N]``

Each method lives in its own module (``train/ppo.py``, ``sft.py``, ``dpo.py``, ``grpo.py``) exposing
``CONFIG`` (its config dataclass, derived from ``common.TrainConfig``) and ``train(config) -> dict``.
This dispatcher builds the config (defaults < ``--config`` file < explicit flags), writes the run
record ``train.json`` into the output folder, and runs the trainer. Running the same command again
on the same folder resumes (trainers that support it) instead of starting over.
"""
from __future__ import annotations

import importlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from unsafe_concepts.errors import UserError

METHODS = ("ppo", "sft", "dpo", "grpo")
RUN_RECORD = "train.json"


def _cli_defaults(method: str) -> dict:
    """The train subcommand's argparse defaults, to tell explicit flags from untouched ones."""
    from unsafe_concepts.cli import build_parser

    args = build_parser().parse_args(["train", method, "--model", "x", "--out", "x"])
    return {k: v for k, v in vars(args).items() if k not in ("model", "out", "func", "method", "command")}


def trainer_module(method: str):
    if method not in METHODS:
        raise UserError(f"unknown training method {method!r}: choose {', '.join(METHODS)}")
    try:
        return importlib.import_module(f"unsafe_concepts.train.{method}")
    except ModuleNotFoundError as e:
        if e.name == f"unsafe_concepts.train.{method}":
            raise UserError(f"training method {method!r} is not available in this installation") from None
        raise


# settings a resumed run must share with the run already in the folder
RESUME_KEYS = ("model", "modality", "data", "seed", "lora_r", "lora_alpha")


def read_run_record(path: Path) -> dict | None:
    """The previous ``train.json`` of an output folder, or None; a clear error when it is damaged."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]}); it records the run in this folder: "
                        "restore it, or use a new --out folder") from None
    if not isinstance(record, dict) or not isinstance(record.get("config", {}), dict):
        raise UserError(f"{path} is not a training record (expected a JSON object with a 'config'): "
                        "use a new --out folder")
    return record


def check_resume(previous: dict | None, config, out: Path) -> None:
    """Refuse, before anything is written, to continue a run in ``out`` made with other settings.

    Only a run that trained something (a checkpoint or an adapter) binds the folder: a record left
    by a command that failed before its first step does not block the corrected command."""
    if not ((out / "checkpoints").is_dir() or (out / "adapter_config.json").exists()):
        return
    saved = (previous or {}).get("config") or {}
    for key in RESUME_KEYS:
        if key in saved and hasattr(config, key) and saved[key] != getattr(config, key):
            raise UserError(f"{out} holds a run with {key}={saved[key]!r}, not {getattr(config, key)!r}: "
                            "use a new --out folder, or the same settings to resume")


def check_modality(config) -> None:
    """``--modality image`` needs a model that reads images: say so before anything is written.

    Only models whose config can be read locally are checked here (offline aliases, local folders,
    hub ids already in the cache); the trainers check the loaded processor again."""
    if config.modality != "image":
        return
    try:
        from transformers import AutoConfig

        from unsafe_concepts.models.hf import resolve_source

        source = resolve_source(config.model)
        model_config = AutoConfig.from_pretrained(source, local_files_only=True)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - not resolvable offline: the trainer checks after loading
        return
    if getattr(model_config, "vision_config", None) is None:
        raise UserError(f"--modality image: {config.model} is a text-only model (no vision tower); "
                        "use --modality text, or a vision-language model")


def cli_train(args) -> int:
    from unsafe_concepts.train import common

    module = trainer_module(args.method)
    config = common.config_from_args(args, module.CONFIG, cli_defaults=_cli_defaults(args.method))
    if getattr(args, "adapter", None):
        raise UserError("--adapter is for evaluation; training starts a fresh adapter (resume by re-running into the same --out)")
    # everything that can refuse the command is checked before the first file is written
    out = Path(config.out_dir)
    record_path = out / RUN_RECORD
    previous = read_run_record(record_path)
    check_resume(previous, config, out)
    check_modality(config)
    if hasattr(module, "preflight"):
        module.preflight(config)
    main_process = int(os.environ.get("RANK", "0")) == 0
    record = common.run_record(args.method, config)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["started"] = (previous or {}).get("started", now)
    if previous:
        record["resumed"] = previous.get("resumed", 0) + 1
        record["resumed_at"] = now
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        common.write_json(record_path, record)
    result = module.train(config)
    if main_process:
        record["result"] = result
        common.write_json(record_path, record)
        print(json.dumps({"method": args.method, "out": str(out), **(result or {})}, indent=2, default=str))
    return 0
