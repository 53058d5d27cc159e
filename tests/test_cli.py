"""The command line surface: every subcommand explains itself; bad input is a message, not a traceback."""
import json
import subprocess
import sys

import pytest

from unsafe_concepts.cli import build_parser, main
from unsafe_concepts.taxonomy import as_json_dict

SUBCOMMANDS = [[], ["taxonomy"], ["data"], ["data", "check"], ["data", "sample"], ["data", "download"],
               ["data", "splits"], ["evaluate"], ["tasks"], ["judge"], ["judge", "apply"], ["judge", "eval"],
               ["judge", "train"], ["report"], ["train"], ["demo"], ["setup"]]


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
