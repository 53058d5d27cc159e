"""The command line surface: every subcommand explains itself; bad input is a message, not a traceback."""
import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unsafe_concepts.cli import build_parser, main
from unsafe_concepts.taxonomy import as_json_dict

SUBCOMMANDS = [[], ["taxonomy"], ["data"], ["data", "check"], ["data", "sample"], ["data", "download"],
               ["data", "splits"], ["evaluate"], ["tasks"], ["judge"], ["judge", "apply"], ["judge", "eval"],
               ["judge", "train"], ["report"], ["train"], ["demo"], ["setup"], ["completion"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "top")
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        main(words + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unsafe-concepts") and len(out) > 100


def test_every_subcommand_has_a_help_line():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for choice in sub._choices_actions:
        assert choice.help, f"subcommand {choice.dest} has no help text"


def test_python_dash_m_and_taxonomy_json():
    out = subprocess.run([sys.executable, "-m", "unsafe_concepts", "taxonomy", "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == as_json_dict()
    assert len(json.loads(out)) == 9 and sum(map(len, json.loads(out).values())) == 75


def test_unknown_task_is_a_clear_error(capsys, tmp_path):
    code = main(["evaluate", "--model", "smollm2-135m", "--task", "nope", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown task 'nope'" in err and "alignment_text_only" in err


def test_tasks_lists_the_protocol_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("perception", "alignment", "alignment_text_only", "alignment_context", "alignment_text_only_context"):
        assert name in out


# --- conventions: help for every flag, defaults shown, examples, version, completion ---


def _all_parsers(parser, path=()):
    """Every (sub)parser of the command line, with its command words."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, path + (name,))


def test_every_flag_of_every_subcommand_has_help():
    missing = [f"{' '.join(path) or 'top'}: {a.option_strings or a.dest}"
               for path, p in _all_parsers(build_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert not missing, "flags without help text: " + ", ".join(missing)


def test_every_subcommand_is_reachable_and_its_help_renders(capsys):
    paths = [path for path, _ in _all_parsers(build_parser())]
    assert len(paths) >= len(SUBCOMMANDS)
    for path in paths:
        with pytest.raises(SystemExit) as e:
            main(list(path) + ["--help"])
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith("usage: unsafe-concepts")


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help wraps lines at the terminal's width
    assert "(default: 512)" in out and "(default: 0.9)" in out and "(default: OPENAI_API_KEY)" in out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "examples:" in out and "unsafe-concepts evaluate --model" in out


def test_version_comes_from_the_package_and_names_the_commit_in_a_checkout():
    import unsafe_concepts

    out = subprocess.run([sys.executable, "-m", "unsafe_concepts", "--version"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.startswith(f"unsafe-concepts {unsafe_concepts.__version__}")
    root = Path(unsafe_concepts.__file__).resolve().parents[2]
    if (root / ".git").exists() and shutil.which("git"):
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        commit = re.search(r"\(git ([0-9a-f]{7,})(-dirty)?\)", out)
        assert commit and head.startswith(commit.group(1)), out


@pytest.mark.skipif(not shutil.which("bash"), reason="bash is not installed")
@pytest.mark.parametrize("line,expected", [
    ("unsafe-concepts da", {"data"}),
    ("unsafe-concepts data s", {"sample", "splits"}),
    ("unsafe-concepts evaluate --spl", {"--split"}),
    ("unsafe-concepts evaluate --split ", {"all", "train", "test"}),
    ("unsafe-concepts train ", {"ppo", "sft", "dpo", "grpo"}),
    ("unsafe-concepts train ppo --modality t", {"text"}),
    ("unsafe-concepts judge apply --ju", {"--judge"}),
])
def test_bash_completion_script_completes_commands_flags_and_choices(line, expected, capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    words = line.split(" ")
    # Drive the completion function as bash does: COMP_WORDS/COMP_CWORD set, then read COMPREPLY.
    probe = (script + "\nCOMP_WORDS=(" + " ".join(shlex.quote(w) for w in words) + ")\n"
             f"COMP_CWORD={len(words) - 1}\n_unsafe_concepts_complete\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    out = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert set(out.split()) == expected


# --- validation: bad values are refused by argparse, before anything runs or is written ---

EVALUATE = ["evaluate", "--model", "smollm2-135m", "--task", "alignment_text_only"]


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "argument --temperature: must be >= 0"),
    (["--temperature", "nan"], "argument --temperature: expected a finite number"),
    (["--top-p", "5"], "argument --top-p: must be in (0, 1], got 5"),
    (["--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
    (["--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
    (["--limit", "0"], "argument --limit: must be at least 1, got 0"),
    (["--limit", "-3"], "argument --limit: must be at least 1, got -3"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--batch-size", "two"], "argument --batch-size: expected a whole number, got 'two'"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
])
def test_out_of_range_values_are_refused_before_anything_is_written(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(EVALUATE + ["--out", str(out)] + flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["judge", "train", "--data", "d", "--out", "o", "--epochs", "0"],
    ["train", "ppo", "--model", "smollm2-135m", "--out", "o", "--max-steps", "0"],
    ["posteval", "--model", "smollm2-135m", "--out", "o", "--limit", "0"],
    ["demo", "--limit", "0"],
])
def test_counts_of_other_commands_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("value", [
    "sk-proj-Xq3vB8nT2mL9pR4wK7yZ1aC6", "sk-abc", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "hf_short",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "Zx9Qw3Er7Ty1Ui5Op2As8Df4Gh6Jk0L",
    "my key with spaces",
])
def test_a_key_passed_as_api_key_env_is_refused_and_never_echoed(value, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1", "--task", "alignment_text_only",
              "--out", str(out), "--api-key-env", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "NAME of an environment variable" in err and value not in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "AZURE_OPENAI_API_KEY_2", "my_token", "VLLM_KEY"])
def test_ordinary_variable_names_are_accepted(name):
    args = build_parser().parse_args(EVALUATE + ["--out", "o", "--api-key-env", name])
    assert args.api_key_env == name
