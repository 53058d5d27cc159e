"""The run store on its own: crash-safe appends, a corrupt line set aside, resumption rules, refusal to mix
configurations, the folder lock, records free of secrets."""
import json
import subprocess
import sys

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.io import FolderInUse, folder_lock
from unsafe_concepts.record import environment, redact_arg
from unsafe_concepts.runs import RunConfig, RunStore, parse_prompts, redact_url, select
from unsafe_concepts.tasks import Sample


def _open(store, config):
    """What the runner does when a run starts: check an existing record, else write a new one."""
    store.dir.mkdir(parents=True, exist_ok=True)
    old = store.read_record()
    if old is not None:
        store.check_compatible(old, config)
        old["config"].update({k: v for k, v in config.__dict__.items() if k in ("batch_size", "judge")})
        old["resumed"] = "now"
        store.write_record(old)
        return old
    record = {"config": dict(config.__dict__), "environment": environment()}
    from unsafe_concepts.runs import _recorded

    record["config"] = _recorded(config)
    store.write_record(record)
    return record


def _config(**kw):
    base = dict(model="smollm2-135m", task="alignment_text_only", data="sample",
                generation={"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "do_sample": True, "seed": 0})
    base.update(kw)
    return RunConfig(**base)


def test_torn_last_line_is_dropped_and_file_cut_back(tmp_path):
    store = RunStore(tmp_path)
    _open(store, _config())
    store.append([{"id": "a", "error": None}, {"id": "b", "error": None}])
    with open(store.responses, "ab") as f:  # what SIGKILL mid-write leaves behind
        f.write(b'{"id": "c", "resp')
    rows = store.read_rows()
    assert [r["id"] for r in rows] == ["a", "b"]
    assert store.responses.read_bytes().endswith(b"}\n")
    store.append([{"id": "c", "error": None}])
    assert [r["id"] for r in store.read_rows()] == ["a", "b", "c"]


def test_failed_rows_are_dropped_for_retry_and_duplicates_collapse(tmp_path):
    store = RunStore(tmp_path)
    _open(store, _config())
    store.append([{"id": "a", "error": None, "response": "old"}, {"id": "b", "error": "timeout"},
                  {"id": "a", "error": None, "response": "new"}])
    kept = store.finished_rows()
    assert [(r["id"], r["response"]) for r in kept] == [("a", "new")]
    assert len(store.read_rows()) == 1  # compacted on disk


def test_different_configuration_is_refused_and_names_the_difference(tmp_path):
    _open(RunStore(tmp_path), _config())
    with pytest.raises(UserError, match=r"task: run has 'alignment_text_only', you asked 'perception'"):
        _open(RunStore(tmp_path), _config(task="perception"))
    with pytest.raises(UserError, match="limit"):
        _open(RunStore(tmp_path), _config(limit=5))  # no limit before: shrinking is refused
    # settings that do not change the rows may differ on resumption
    record = _open(RunStore(tmp_path), _config(batch_size=32, judge="rule"))
    assert record["config"]["batch_size"] == 32 and "resumed" in record


def test_record_missing_config_field_is_a_clear_message(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {"model": "smollm2-135m"}}))
    with pytest.raises(UserError, match="config lacks task"):
        RunStore(tmp_path).read_record()
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="no 'config' object"):
        RunStore(tmp_path).read_record()


def test_record_has_versions_and_no_secrets(tmp_path):
    record = _open(RunStore(tmp_path), _config(model="openai:gpt", base_url="https://user:sk-secret@host:8000/v1?key=sk-2"))
    text = (tmp_path / "run.json").read_text()
    assert "sk-secret" not in text and "sk-2" not in text
    assert record["config"]["base_url"] == "https://host:8000/v1"
    assert "torch" in record["environment"]["versions"]
    assert json.loads(text)["config"]["model"] == "openai:gpt"


def test_redact_url_plain():
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact_url(None) is None


def test_select_is_seeded_and_keeps_order():
    items = list(range(100))
    a, b = select(items, 10, 0), select(items, 10, 0)
    assert a == b == sorted(a) and len(a) == 10
    assert select(items, 10, 1) != a
    assert select(items, None, 0) == items
    with pytest.raises(UserError):
        select(items, 0, 0)


def test_parse_prompts():
    assert parse_prompts(None) == [0, 1, 2, 3, 4]
    assert parse_prompts("3,0,3") == [3, 0]
    with pytest.raises(UserError):
        parse_prompts("7")
    with pytest.raises(UserError):
        parse_prompts("a")


def test_corrupt_line_in_the_middle_keeps_every_valid_row_and_is_set_aside(tmp_path):
    store = RunStore(tmp_path)
    _open(store, _config())
    store.append([{"id": "a", "error": None}])
    with open(store.responses, "ab") as f:
        f.write(b'{"id": "b", "resp\xff broken\n')  # a corrupt line in the middle (and not UTF-8)
        f.write(b'[1, 2]\n{"no_id": true}\n')  # a list, and a row without id
    store.append([{"id": "c", "error": None}, {"id": "a", "error": None, "response": "again"}])
    rows = store.read_rows()
    assert [r["id"] for r in rows] == ["c", "a"] and rows[1]["response"] == "again"  # deduped: last copy wins
    corrupt = (tmp_path / "responses.jsonl.corrupt").read_bytes()
    assert corrupt.count(b"\n") == 3 and b'"id": "b"' in corrupt
    assert any("set aside" in n for n in store.notes)
    assert len(store.read_rows()) == 2 and not store.notes[1:]  # the file was cleaned: said once


def test_folder_lock_names_the_holder(tmp_path):
    code = ("import sys, time; from unsafe_concepts.io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=f"in use by PID {holder.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path):  # released when its holder died
        pass


def test_argv_redaction_also_in_the_equals_form():
    assert redact_arg("--base-url=http://u:p@h:1/v1?k=s") == "--base-url=http://h:1/v1"
    assert redact_arg("http://u:p@h/v1") == "http://h/v1"
    assert redact_arg("--limit=4") == "--limit=4"


def test_select_spreads_over_concepts_and_pairs_modalities():
    visual = [Sample(f"img{i}#p{k}", "q", None, f"c{i % 20}", "x", "unsafe") for i in range(60) for k in range(5)]
    text = [Sample(f"c{c}#p{k}", "q", None, f"c{c}", "x", "unsafe") for c in range(20) for k in range(5)]
    a, b = select(visual, 12, 0), select(text, 12, 0)
    assert len({s.concept for s in a}) == 12 and {s.concept for s in a} == {s.concept for s in b}
    assert set(s.id for s in select(visual, 6, 0)) <= set(s.id for s in a)  # a larger limit extends a smaller


def test_api_key_given_where_its_name_belongs_is_refused_before_anything_is_written(tmp_path):
    from unsafe_concepts.api import evaluate

    with pytest.raises(UserError, match="NAME of an environment variable") as e:
        evaluate("openai:m", "alignment_text_only", data="sample", out=tmp_path / "r", api_key_env="sk-live-abc123")
    assert "sk-live" not in str(e.value) and not (tmp_path / "r").exists()


def test_build_dir_and_atomic_writer(tmp_path):
    from unsafe_concepts.io import build_dir, write_text_atomic

    target = tmp_path / "built"
    with build_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()  # readers never see a half-built folder
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with build_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed half way")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the old folder stays whole
    assert [p.name for p in tmp_path.iterdir()] == ["built"]  # no temporary left behind
    write_text_atomic(target / "a.txt", "new")
    assert (target / "a.txt").read_text() == "new" and (target / "a.txt").stat().st_mode & 0o777 != 0o600


def test_a_folder_made_by_another_version_of_the_task_is_refused(tmp_path):
    store = RunStore(tmp_path)
    _open(store, _config(task="unsafeconcepts_test"))  # a record without task version: format 1, version 1
    with pytest.raises(UserError, match="task version: run has 1, you asked 2"):
        store.check_compatible(store.read_record(), _config(task="unsafeconcepts_test"))
