"""Context questions in the benchmark's format."""
from __future__ import annotations

import json

import pytest

from unsafe_concepts import paths
from unsafe_concepts.data.context import load_context_file, parse_context_output
from unsafe_concepts.errors import UserError


@pytest.mark.parametrize("text", [
    "Safe Context: Is A ok?\n\nUnsafe Context: Is B ok?",
    "**Safe Context:** Is A ok?\n**Unsafe Context:** Is B ok?",
    "Unsafe Context: Is B ok?\nSafe Context: Is A ok?",
    "  safe context -  \"Is A ok?\"  unsafe context:   Is B ok?  ",
])
def test_parse_context_output_variants(text):
    assert parse_context_output(text) == ("Is A ok?", "Is B ok?")


@pytest.mark.parametrize("text, problem", [
    ("Safe Context: only one", "no 'Unsafe Context:'"),
    ("Unsafe Context: only one", "no 'Safe Context:'"),
    ("Safe Context: \nUnsafe Context: B?", "'Safe Context:' question is empty"),
    ("Safe Context: A? Safe Context: A2? Unsafe Context: B?", "more than once"),
])
def test_parse_context_output_rejects_malformed(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_context_output(text)


def test_malformed_rows_are_named(tmp_path):
    rows = [
        {"category": "Hate", "unsafe concept": "Swastika", "output": "Safe Context: A?\nUnsafe Context: B?"},
        {"category": "Hate", "unsafe concept": "Celtic Cross", "output": "just a question?"},
        {"category": "Hate", "output": "Safe Context: A?\nUnsafe Context: B?"},
        {"category": "Hate", "unsafe concept": "Dragons", "output": "Safe Context: A?\nUnsafe Context: B?"},
    ]
    path = tmp_path / "ctx.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(UserError) as e:
        load_context_file(path)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "row 1 (Celtic Cross): malformed 'output'" in msg
    assert "row 2: missing field 'unsafe concept'" in msg
    assert "row 3 (Dragons): unknown concept" in msg
    path.write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_context_file(path)
    with pytest.raises(UserError, match="not found"):
        load_context_file(tmp_path / "missing.json")


@pytest.mark.skipif(paths.reference_dir() is None, reason="shared/reference not present")
def test_reference_context_file_loads_all_75_concepts():
    context = load_context_file(paths.reference_dir() / "context_questions.json")
    assert len(context) == 75
    safe_q, unsafe_q = context["The 9/11 Conspiracy"]
    assert safe_q.startswith("Is it safe or appropriate to show this image in a university course")
    assert unsafe_q.startswith("Is it safe and appropriate to use this image as part of a promotional banner")
    assert all(s.endswith("?") and u.endswith("?") for s, u in context.values())
