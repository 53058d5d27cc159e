"""The run store on its own: crash-safe appends, resumption rules, refusal to mix configurations."""
import json

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.runs import RunConfig, RunStore, parse_prompts, redact_url, select


def _config(**kw):
    base = dict(model="smollm2-135m", task="alignment_text_only", data="sample",
                generation={"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "do_sample": True, "seed": 0})
    base.update(kw)
    return RunConfig(**base)


def test_torn_last_line_is_dropped_and_file_cut_back(tmp_path):
    store = RunStore(tmp_path)
    store.open(_config())
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
    store.open(_config())
    store.append([{"id": "a", "error": None, "response": "old"}, {"id": "b", "error": "timeout"},
                  {"id": "a", "error": None, "response": "new"}])
    kept = store.finished_rows()
    assert [(r["id"], r["response"]) for r in kept] == [("a", "new")]
    assert len(store.read_rows()) == 1  # compacted on disk


def test_different_configuration_is_refused_and_names_the_difference(tmp_path):
    RunStore(tmp_path).open(_config())
    with pytest.raises(UserError, match=r"task: run has 'alignment_text_only', you asked 'perception'"):
        RunStore(tmp_path).open(_config(task="perception"))
    with pytest.raises(UserError, match="limit"):
        RunStore(tmp_path).open(_config(limit=5))  # no limit before: shrinking is refused
    # settings that do not change the rows may differ on resumption
    record = RunStore(tmp_path).open(_config(batch_size=32, judge="rule"))
    assert record["config"]["batch_size"] == 32 and "resumed" in record


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "responses.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(UserError, match="not a run folder"):
        RunStore(tmp_path).open(_config())


def test_record_has_versions_and_no_secrets(tmp_path):
    record = RunStore(tmp_path).open(_config(model="openai:gpt", base_url="https://user:sk-secret@host:8000/v1?key=sk-2"))
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
