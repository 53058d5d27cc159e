"""Hostile input and faults, through the command line, one table.

Each case sets up files (and, where a model is needed, a real HTTP server on 127.0.0.1 speaking the
OpenAI protocol, whose replies the case scripts), runs `unsafe-concepts ...` and asserts
- the exit code,
- one clear line naming the problem (the last line of stderr), and no traceback,
- no secret in any file written under the case's folder,
- no valid row lost or duplicated (cases that resume a run folder check its rows).
Cases that need a real process boundary (SIGKILL, a full disk, two processes on one folder) run the
command in a subprocess; the others call ``main()`` in this process, where an uncaught exception
fails the test with its traceback.
"""
from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from unsafe_concepts.cli import main

sys.path.insert(0, str(Path(__file__).parent / "models"))
sys.path.insert(0, str(Path(__file__).parent / "data"))
from _data_helpers import make_dataset, write_jsonl  # noqa: E402
from _openai_servers import ScriptedServer, completion  # noqa: E402

KEY = "sk-test-Zq8Xv3Lm9Pk2Wr7Ty4Hn6"  # a key-shaped test value: never to appear in any written file
PASSWORD = "pa55-w0rd-Qx7"
TEXT_TASK = ["--task", "alignment_text_only", "--data", "sample"]
BAD_UTF8 = b'{"a": "\xff\xfe caf\xe9"}\n'


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    @property
    def error_line(self) -> str:
        """The one line that says what went wrong (argparse's "...: error: ..." or the CLI's "error: ...")."""
        lines = [line for line in self.err.splitlines() if re.match(r"(error: |\S+( \S+)*: error: )", line)]
        return lines[-1] if lines else ""


def run_cli(argv: list[str], capsys) -> Result:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refusals
        code = e.code
    captured = capsys.readouterr()
    return Result(int(code or 0), captured.out, captured.err)


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 300, **kw) -> Result:
    r = subprocess.run([sys.executable, "-m", "unsafe_concepts", *map(str, argv)], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, **kw)
    return Result(r.returncode, r.stdout, r.stderr)


def files_under(root: Path):
    return [p for p in root.rglob("*") if p.is_file()]


def assert_no_secret(root: Path, *secrets: str) -> None:
    for path in files_under(root):
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a secret was written to {path}"


def rows_of(run_dir: Path) -> list[dict]:
    """responses.jsonl, every line valid JSON, no id twice."""
    lines = (run_dir / "responses.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicated rows in {run_dir}: {sorted(ids)}"
    return rows


def answering(text: str = "No, this is not acceptable.", delay: float = 0):
    """A server script: every request answered with ``text``."""
    return lambda n, body, headers: (200, completion(text), None, delay)


def evaluate(url: str, out: Path, *extra: str, limit: int = 4) -> list[str]:
    return ["evaluate", "--model", "openai:m", "--base-url", url, *TEXT_TASK, "--limit", str(limit),
            "--judge", "rule", "--out", out, *extra]


# ------------------------------------------------------------------------------------------ the table


@dataclass
class Case:
    id: str
    argv: Callable[[Path, str], list]  # (case folder, server URL) -> the command, after writing its files
    code: int  # expected exit code
    message: str  # regex the last line of stderr must match (case-insensitive); "" for a success
    server: Callable | None = None  # script of a ScriptedServer, its URL passed to argv
    secrets: tuple = ()
    check: Callable[[Path, Callable, str], None] | None = None  # (case folder, run_cli bound to capsys, URL)
    env: dict = field(default_factory=dict)
    subprocess: bool = False  # run as its own process (what it checks is the process's own argv)
    xfail: str | None = None


def _edit_line(path: Path, index: int, new: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[index] = new
    path.write_bytes(b"".join(lines))


# --- secrets ------------------------------------------------------------------------------------


def _no_record(tmp: Path, *_) -> None:
    assert not (tmp / "run").exists() or not any((tmp / "run").iterdir()), "a refused command wrote files"


def _argv_redacted(tmp: Path, *_) -> None:
    record = json.loads((tmp / "run" / "run.json").read_text())
    argv = json.dumps(record)
    assert "bob" not in argv and "--base-url=http://127.0.0.1" in argv


CASES = [
    # command-line values: refused by argparse before anything runs or is written
    Case("temperature-negative", lambda t, u: evaluate(u, t / "run", "--temperature", "-1"), 2,
         r"argument --temperature: must be >= 0", check=_no_record),
    Case("top-p-above-one", lambda t, u: evaluate(u, t / "run", "--top-p", "5"), 2,
         r"argument --top-p: must be in \(0, 1\]", check=_no_record),
    Case("concurrency-zero", lambda t, u: evaluate(u, t / "run", "--concurrency", "0"), 2,
         r"argument --concurrency: must be at least 1", check=_no_record),
    Case("max-new-tokens-zero", lambda t, u: evaluate(u, t / "run", "--max-new-tokens", "0"), 2,
         r"argument --max-new-tokens: must be at least 1", check=_no_record),
    # secrets on the command line and in answers
    Case("openai-key-as-api-key-env", lambda t, u: evaluate(u, t / "run", "--api-key-env", KEY), 2,
         r"NAME of an environment variable", secrets=(KEY,), check=_no_record),
    Case("hf-token-as-api-key-env",
         lambda t, u: evaluate(u, t / "run", "--api-key-env", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"), 2,
         r"NAME of an environment variable", secrets=("hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",), check=_no_record),
    Case("password-in-base-url-equals-form",
         lambda t, u: ["evaluate", "--model", "openai:m", f"--base-url={u.replace('//', f'//bob:{PASSWORD}@')}",
                       *TEXT_TASK, "--limit", "2", "--judge", "rule", "--out", t / "run"],
         0, "", server=answering(), secrets=(PASSWORD,), check=_argv_redacted, subprocess=True),
    Case("server-echoes-the-key-in-answers",
         lambda t, u: evaluate(u, t / "run"), 0, "",
         server=lambda n, body, h: (200, completion(f"No. You sent {h.get('Authorization')} and {KEY}"), None, 0),
         secrets=(KEY,), env={"OPENAI_API_KEY": KEY}),
    Case("server-never-answers", lambda t, u: evaluate(u, t / "run", "--timeout", "0.5", limit=2), 2,
         r"every query failed.*\n.*(timed out|timeout)", server=answering(delay=20)),
    Case("timeout-zero", lambda t, u: evaluate(u, t / "run", "--timeout", "0"), 2,
         r"argument --timeout: must be > 0", check=_no_record),
    Case("evaluate-out-where-nothing-can-be-written",
         lambda t, u: evaluate(u, "/proc/unsafe-concepts-run"), 2, r"/proc/unsafe-concepts-run", server=answering()),
    Case("every-query-401-with-the-key-echoed",
         lambda t, u: evaluate(u, t / "run"), 2, r"every query failed.*\n.*401.*API key",
         server=lambda n, body, h: (401, {"error": {"message": f"invalid key {KEY}"}}, None, 0),
         secrets=(KEY,), env={"OPENAI_API_KEY": KEY}),
]


# --- data integrity -----------------------------------------------------------------------------


class _Damaged:
    """A run folder made first, then one line of responses.jsonl replaced by ``bad``."""

    def __init__(self, bad: bytes, index: int = 1):
        self.bad, self.index = bad, index

    def __call__(self, tmp: Path, url: str) -> list:
        out = tmp / "run"
        assert main(list(map(str, evaluate(url, out)))) == 0
        _edit_line(out / "responses.jsonl", self.index, self.bad)
        return evaluate(url, out)


def _four_rows_and_aside(tmp: Path, *_) -> None:
    rows = rows_of(tmp / "run")
    assert len(rows) == 4, f"{len(rows)} rows: a valid row was lost or the damaged one not asked again"
    assert list((tmp / "run").glob("*corrupt*")), "the damaged line was not set aside"


def _corrected_command_runs(tmp: Path, run, url: str) -> None:
    """Nothing was recorded by the refused command, so the corrected one (same --out) just runs."""
    _no_record(tmp)
    r = run(evaluate(url, tmp / "run", limit=2))
    assert r.code == 0, r.err
    assert len(rows_of(tmp / "run")) == 2


def _run_json_edit(edit: Callable[[Path], None]):
    def argv(tmp: Path, url: str) -> list:
        out = tmp / "run"
        assert main(list(map(str, evaluate(url, out, limit=2)))) == 0
        edit(out / "run.json")
        return evaluate(url, out, limit=2)

    return argv


def _credit_to_another_model(tmp: Path, url: str) -> list:
    """run.json edited so that model m's rows would count as model "other"'s; then extended as "other"
    (two more rows: without a check, answers of two models would be mixed in one run)."""
    out = tmp / "run"
    assert main(list(map(str, evaluate(url, out, limit=2)))) == 0
    record = json.loads((out / "run.json").read_text())
    record["config"]["model"] = "openai:other"
    (out / "run.json").write_text(json.dumps(record))
    return [a if a != "openai:m" else "openai:other" for a in evaluate(url, out, limit=4)]


def _credit_finished_run_to_another_model(tmp: Path, url: str) -> list:
    """The same edit on a finished run, repeated as it is: nothing is asked, no model is loaded, and
    yet the rows must not be credited to "other"."""
    argv = _credit_to_another_model(tmp, url)
    return [a if a != "4" else "2" for a in argv]


def _drop_config_field(path: Path) -> None:
    record = json.loads(path.read_text())
    record["config"].pop("task", None)
    path.write_text(json.dumps(record))


CASES += [
    Case("corrupt-line-mid-responses", _Damaged(b'{"task": "alignment_text_only", "id": \n'), 0, "",
         server=answering(), check=_four_rows_and_aside),
    Case("responses-row-is-a-list", _Damaged(b'["not", "a", "row"]\n'), 0, "",
         server=answering(), check=_four_rows_and_aside),
    Case("responses-row-without-id", _Damaged(b'{"task": "alignment_text_only", "response": "No."}\n'), 0, "",
         server=answering(), check=_four_rows_and_aside),
    Case("responses-line-not-utf8", _Damaged(BAD_UTF8), 0, "", server=answering(), check=_four_rows_and_aside),
    Case("run-json-missing-a-config-field", _run_json_edit(_drop_config_field), 2, r"run\.json.*lacks task",
         server=answering()),
    Case("run-json-not-json", _run_json_edit(lambda p: p.write_text('{"config": {')), 2,
         r"run\.json.*not valid JSON", server=answering()),
    Case("run-json-not-utf8", _run_json_edit(lambda p: p.write_bytes(BAD_UTF8)), 2, r"run\.json",
         server=answering()),
    Case("run-json-edited-to-credit-another-model", _credit_to_another_model, 2,
         r"not the one this run was made|run\.json is inconsistent", server=answering()),
    Case("run-json-edited-finished-run-credited-to-another-model", _credit_finished_run_to_another_model, 2,
         r"run\.json is inconsistent.*answered by 'openai:m'", server=answering()),
    Case("unknown-model-leaves-no-record",
         lambda t, u: ["evaluate", "--model", "no-such-model", *TEXT_TASK, "--limit", "2", "--out", t / "run"],
         2, r"no-such-model", server=answering(), check=_corrected_command_runs),
    Case("missing-data-folder-leaves-no-record",
         lambda t, u: ["evaluate", "--model", "openai:m", "--base-url", u, "--task", "alignment_text_only",
                       "--data", t / "nope", "--limit", "2", "--out", t / "run"],
         2, r"nope", server=answering(), check=_corrected_command_runs),
]


# --- files that are not what they claim -----------------------------------------------------------


def _png_bomb(path: Path) -> None:
    """A PNG whose header claims 40000 x 40000 pixels (PIL refuses to open it: a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _bomb_dataset(tmp: Path, url: str) -> list:
    root = make_dataset(tmp / "ds", {"Arson": 2, "Torture": 2})
    _png_bomb(root / "images" / "0.png")
    return ["evaluate", "--model", "openai:m", "--base-url", url, "--task", "alignment", "--data", root,
            "--prompts", "0", "--judge", "rule", "--out", tmp / "run"]


def _bomb_row_failed_alone(tmp: Path, *_) -> None:
    rows = rows_of(tmp / "run")
    assert len(rows) == 4
    failed = [r for r in rows if r.get("error")]
    assert len(failed) == 1 and "0.png" in (failed[0].get("image") or "") + failed[0]["error"]


def _long_path_dataset(tmp: Path, url: str) -> list:
    root = make_dataset(tmp / "ds", {"Arson": 2})
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    rows[0]["image_filename"] = "images/" + "x" * 5000 + ".png"
    write_jsonl(root / "metadata.jsonl", rows)
    return ["data", "check", root]


def _metadata(tmp: Path, content: bytes) -> Path:
    root = make_dataset(tmp / "ds", {"Arson": 2})
    (root / "metadata.jsonl").write_bytes(content)
    return root


def _wrong_types(tmp: Path, url: str) -> list:
    root = make_dataset(tmp / "ds", {"Arson": 2})
    write_jsonl(root / "metadata.jsonl", [{"image_filename": 7, "category": ["Hate"], "unsafe_concept": None}])
    return ["data", "check", root]


def _judge_input(content: bytes):
    def argv(tmp: Path, url: str) -> list:
        (tmp / "in.jsonl").write_bytes(content)
        return ["judge", "apply", "--judge", "rule", "--input", tmp / "in.jsonl", "--out", tmp / "out.jsonl"]

    return argv


def _config_file(tmp: Path, url: str) -> list:
    (tmp / "config.json").write_bytes(b'{"limit": 2, "task": "\xff\xfe"}')
    return evaluate(url, tmp / "run", "--config", tmp / "config.json")


def _context_file(tmp: Path, url: str) -> list:
    (tmp / "context.json").write_bytes(BAD_UTF8)
    return ["evaluate", "--model", "openai:m", "--base-url", url, "--task", "alignment_text_only_context",
            "--data", "sample", "--context-file", tmp / "context.json", "--limit", "2", "--out", tmp / "run"]


def _corrupt_model(tmp: Path, url: str) -> list:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    return ["evaluate", "--model", f"hf:{tmp / 'model'}", *TEXT_TASK, "--limit", "2", "--out", tmp / "run"]


def _corrupt_adapter(tmp: Path, url: str) -> list:
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_config.json").write_bytes(b"\xff{not json")
    (tmp / "adapter" / "adapter_model.safetensors").write_bytes(b"garbage")
    return ["evaluate", "--model", "smollm2-135m", "--adapter", tmp / "adapter", *TEXT_TASK, "--limit", "2",
            "--out", tmp / "run"]


def _corrupt_train_json(tmp: Path, url: str) -> list:
    (tmp / "train").mkdir()
    (tmp / "train" / "train.json").write_text('{"method": "ppo", "config": {')
    return ["train", "ppo", "--model", "smollm2-135m", "--modality", "text", "--data", "sample",
            "--out", tmp / "train", "--max-steps", "1"]


class _Sentinel:
    """A pickle that, if ever loaded, creates ``path`` (the proof that code ran)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _pickled_checkpoint(tmp: Path, url: str) -> list:
    import pickle

    ckpt = tmp / "train" / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps(_Sentinel(tmp / "PWNED")))
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "config": {}}))
    return ["train", "ppo", "--model", "smollm2-135m", "--modality", "text", "--data", "sample",
            "--out", tmp / "train", "--max-steps", "2"]


def _pickled_judge(tmp: Path, url: str) -> list:
    import pickle

    (tmp / "judge").mkdir()
    (tmp / "judge" / "pytorch_model.bin").write_bytes(pickle.dumps(_Sentinel(tmp / "PWNED")))
    (tmp / "judge" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp / "in.jsonl").write_text(json.dumps({"task": "alignment", "prompt": "p", "response": "No."}) + "\n")
    return ["judge", "apply", "--judge", f"classifier:{tmp / 'judge'}", "--input", tmp / "in.jsonl",
            "--out", tmp / "out.jsonl"]


def _nothing_ran(tmp: Path, *_) -> None:
    assert not (tmp / "PWNED").exists(), "a pickle was loaded: code from a file ran"


def _mathtext_and_formulas(tmp: Path, url: str) -> list:
    out = tmp / "run"
    assert main(["evaluate", "--model", r"openai:$\alpha^{$x", "--base-url", url, *TEXT_TASK, "--limit", "4",
                 "--judge", "rule", "--out", str(out)]) == 0
    return ["report", out, "--out", tmp / "report"]


def _report_is_safe(tmp: Path, *_) -> None:
    html = (tmp / "report" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html
    for csv in (tmp / "report").rglob("*.csv"):
        import csv as _csv

        for row in _csv.reader(csv.read_text(encoding="utf-8").splitlines()):
            for cell in row:
                assert not cell.startswith(("=", "+", "@")), f"formula cell {cell!r} in {csv.name}"


def _report_of_damaged_run(tmp: Path, url: str) -> list:
    out = tmp / "run"
    assert main(list(map(str, evaluate(url, out)))) == 0
    _edit_line(out / "responses.jsonl", 1, BAD_UTF8)
    return ["report", out, "--out", tmp / "report"]


def _escaping_path(tmp: Path, url: str) -> list:
    root = make_dataset(tmp / "ds", {"Arson": 2})
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    rows[0]["image_filename"] = "../../../../../../etc/hostname"
    write_jsonl(root / "metadata.jsonl", rows)
    return ["data", "check", root]


def _write(name: str, content: bytes, argv: Callable[[Path], list]):
    def build(tmp: Path, url: str) -> list:
        (tmp / name).write_bytes(content)
        return argv(tmp)

    return build


CASES += [
    Case("report-of-a-run-with-a-non-utf8-line", _report_of_damaged_run, 0, "", server=answering(),
         check=lambda t, *_: (t / "report" / "report.html").is_file() or pytest.fail("no report.html")),
    Case("report-of-a-folder-that-is-no-run", lambda t, u: ["report", t, "--out", t / "report"], 2, r"run"),
    Case("image-path-escaping-the-dataset", _escaping_path, 2, r"outside|escape|\.\."),
    Case("judge-eval-not-utf8", _write("labelled.jsonl", BAD_UTF8, lambda t: ["judge", "eval", "--judge", "rule",
                                                                              "--input", t / "labelled.jsonl"]),
         2, r"UTF-8|utf-8|encod"),
    Case("train-config-not-utf8",
         _write("train.yaml", b"learning_rate: \xff\xfe\n", lambda t: [
             "train", "ppo", "--model", "smollm2-135m", "--modality", "text", "--data", "sample", "--out",
             t / "train", "--config", t / "train.yaml"]), 2, r"UTF-8|utf-8|encod|config"),
    Case("import-not-utf8", _write("answers.jsonl", BAD_UTF8, lambda t: [
        "import", t / "answers.jsonl", "--model", "m", "--task", "alignment_text_only", "--out", t / "run",
        "--judge", "none"]), 2, r"UTF-8|utf-8|encod|answers\.jsonl"),
    Case("decompression-bomb-image-fails-its-row", _bomb_dataset, 0, "", server=answering(),
         check=_bomb_row_failed_alone),
    Case("image-path-of-5000-chars", _long_path_dataset, 2, r"image|path|long"),
    Case("metadata-empty", lambda t, u: ["data", "check", _metadata(t, b"")], 2, r"empty|no rows|no images"),
    Case("metadata-not-utf8", lambda t, u: ["data", "check", _metadata(t, BAD_UTF8)], 2, r"UTF-8|utf-8|encod"),
    Case("metadata-wrong-field-types", _wrong_types, 2, r"type|must be|string|expected"),
    Case("judge-apply-on-a-folder",
         lambda t, u: ["judge", "apply", "--judge", "rule", "--input", t, "--out", t / "out.jsonl"], 2,
         r"folder|directory|not a file"),
    Case("judge-apply-not-utf8", _judge_input(BAD_UTF8), 2, r"UTF-8|utf-8|encod"),
    Case("judge-apply-row-is-a-list", _judge_input(b'["task", "prompt", "response"]\n'), 2, r"line 1|object"),
    Case("config-file-not-utf8", _config_file, 2, r"not UTF-8", server=answering()),
    Case("out-where-nothing-can-be-written", lambda t, u: ["data", "sample", "--out", "/proc/unsafe-concepts"], 1,
         r"error: .*(No such file|Permission|Read-only|not writable)"),
    Case("context-file-not-utf8", _context_file, 2, r"context", server=answering()),
    Case("corrupt-model-config", _corrupt_model, 2, r"config\.json"),
    Case("corrupt-adapter", _corrupt_adapter, 2, r"adapter"),
    Case("corrupt-train-json", _corrupt_train_json, 2, r"train\.json"),
    Case("text-model-trained-on-images",
         lambda t, u: ["train", "ppo", "--model", "smollm2-135m", "--modality", "image", "--data", "sample",
                       "--out", t / "train", "--max-steps", "1"], 2, r"text only|text-only|images"),
    Case("pickled-ppo-checkpoint-not-loaded", _pickled_checkpoint, 2, r"pickle|trainer_state\.pt",
         check=_nothing_ran),
    Case("pickled-judge-not-loaded", _pickled_judge, 2, r"safetensors|judge|model", check=_nothing_ran),
    Case("report-mathtext-model-name", _mathtext_and_formulas, 0, "",
         server=answering("=HYPERLINK(\"http://x\")<script>alert(1)</script>"), check=_report_is_safe),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_hostile(case: Case, tmp_path, capsys, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)

    def run(argv):
        return run_cli(argv, capsys)

    def go(url: str) -> None:
        argv = case.argv(tmp_path, url)
        r = run_subprocess(argv, tmp_path) if case.subprocess else run(argv)
        assert "Traceback" not in r.err, r.err
        assert r.code == case.code, f"exit {r.code}, expected {case.code}; stderr:\n{r.err[-2000:]}"
        if case.code != 0:  # one line says it; details (a list of problems, a hint) may surround it
            assert r.error_line, f"no 'error: ...' line in:\n{r.err[-2000:]}"
        if case.message:
            assert re.search(case.message, r.err, re.I), f"{case.message!r} not in stderr:\n{r.err[-2000:]}"
        if case.check is not None:
            case.check(tmp_path, run, url)
        assert_no_secret(tmp_path, KEY, PASSWORD, *case.secrets)

    if case.server is not None:
        with ScriptedServer(case.server) as server:
            go(server.base_url)
    else:
        go("http://127.0.0.1:9/v1")


# ------------------------------------------------------------------------------- process-level faults


def test_disk_full_while_writing_rows_loses_nothing_and_resumes(tmp_path):
    """A writer that fails (RLIMIT_FSIZE: a write past the limit fails with EFBIG, as on a full disk)."""
    import resource

    out = tmp_path / "run"

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    with ScriptedServer(answering("No. " + "x" * 300)) as server:
        argv = evaluate(server.base_url, out, "--batch-size", "1", "--concurrency", "1", limit=12)
        r = run_subprocess(argv, tmp_path, preexec_fn=small_disk)
        assert r.code != 0 and "Traceback" not in r.err, r.err[-3000:]
        assert re.search(r"too large|no space|cannot write", r.last_line, re.I), r.last_line
        kept = rows_of(out) if (out / "responses.jsonl").exists() else []
        assert len(kept) < 12
        r = run_subprocess(argv, tmp_path)  # space again: the run completes, each row once
        assert r.code == 0, r.err[-3000:]
        assert len(rows_of(out)) == 12


def test_two_processes_on_one_run_folder(tmp_path):
    out = tmp_path / "run"
    with ScriptedServer(answering(delay=0.5)) as server:
        argv = evaluate(server.base_url, out, "--concurrency", "1", "--batch-size", "1", limit=8)
        first = subprocess.Popen([sys.executable, "-m", "unsafe_concepts", *map(str, argv)], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not (out / "responses.jsonl").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            second = run_subprocess(argv, tmp_path)
            assert second.code == 2 and "Traceback" not in second.err, second.err[-2000:]
            assert re.search(rf"in use by PID {first.pid}", second.last_line), second.last_line
        finally:
            _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-2000:]
        assert len(rows_of(out)) == 8


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    return False


def test_sigkill_during_report_leaves_no_half_report(tmp_path):
    with ScriptedServer(answering()) as server:
        r = run_subprocess(evaluate(server.base_url, tmp_path / "run", limit=4), tmp_path)
        assert r.code == 0, r.err
    report = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "unsafe_concepts", "report", tmp_path / "run", "--out", report],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: report.exists() and any(report.iterdir()))
    html = report / "report.html"
    if html.exists():  # whatever is there is whole: written to a temporary name, then renamed
        assert html.read_text(encoding="utf-8").rstrip().endswith("</html>")
    r = run_subprocess(["report", tmp_path / "run", "--out", report], tmp_path)
    assert r.code == 0 and "Traceback" not in r.err, r.err[-2000:]
    assert html.read_text(encoding="utf-8").rstrip().endswith("</html>")


def test_sigkill_during_judge_training_leaves_no_loadable_half_judge(tmp_path):
    corpus = Path(__file__).resolve().parents[1] / "src" / "unsafe_concepts" / "resources" / "judge_corpus"
    rows = [json.loads(line) for line in (corpus / "labelled.jsonl").read_text(encoding="utf-8").splitlines()][:40]
    write_jsonl(tmp_path / "labelled.jsonl", rows)
    out = tmp_path / "judge"
    proc = subprocess.Popen([sys.executable, "-m", "unsafe_concepts", "judge", "train", "--data",
                             tmp_path / "labelled.jsonl", "--out", out, "--epochs", "50"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    killed = _kill_when(proc, lambda: out.exists() or time.monotonic() > start + 8)
    assert killed, "judge training finished before it could be killed"
    write_jsonl(tmp_path / "in.jsonl", [{"task": "alignment", "prompt": "p", "response": "No."}])
    r = run_subprocess(["judge", "apply", "--judge", f"classifier:{out}", "--input", tmp_path / "in.jsonl",
                        "--out", tmp_path / "out.jsonl"], tmp_path)
    assert r.code == 2 and "Traceback" not in r.err, r.err[-2000:]
    assert re.search(r"judge|classifier|not", r.last_line, re.I), r.last_line
    assert not (tmp_path / "out.jsonl").exists()
