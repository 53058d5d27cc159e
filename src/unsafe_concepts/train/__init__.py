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


def cli_train(args) -> int:
    from unsafe_concepts.train import common

    module = trainer_module(args.method)
    config = common.config_from_args(args, module.CONFIG, cli_defaults=_cli_defaults(args.method))
    if getattr(args, "adapter", None):
        raise UserError("--adapter is for evaluation; training starts a fresh adapter (resume by re-running into the same --out)")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / RUN_RECORD
    previous = json.loads(record_path.read_text()) if record_path.exists() else None
    record = common.run_record(args.method, config)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["started"] = (previous or {}).get("started", now)
    if previous:
        record["resumed"] = previous.get("resumed", 0) + 1
        record["resumed_at"] = now
    common.write_json(record_path, record)
    result = module.train(config)
    record["result"] = result
    common.write_json(record_path, record)
    print(json.dumps({"method": args.method, "out": str(out), **(result or {})}, indent=2, default=str))
    return 0
