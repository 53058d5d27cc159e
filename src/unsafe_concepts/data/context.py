"""Context questions: per concept one question in a safe context and one in an unsafe context.

File format (the benchmark's ``context_questions.json``): a JSON list of rows
``{"category", "unsafe concept", "image_fname", "output"}`` where ``output`` holds
"Safe Context: <question>\\n\\nUnsafe Context: <question>". The parser accepts either order,
markdown emphasis (``**Safe Context:**``), quotes and extra whitespace; anything else is a
UserError naming the row.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from unsafe_concepts.errors import UserError
from unsafe_concepts.taxonomy import CONCEPT_TO_CATEGORY

_MARKER = re.compile(r"(?i)(?<![a-z])(unsafe|safe)[ \t]+context[ \t*_]*[:\-][ \t*_]*")
_STRIP = " \t\r\n*_\"'`“”"
CONCEPT_KEYS = ("unsafe concept", "unsafe_concept", "concept")


def parse_context_output(text: str) -> tuple[str, str]:
    """"Safe Context: ... Unsafe Context: ..." -> (safe question, unsafe question); ValueError if malformed."""
    if not isinstance(text, str):
        raise ValueError(f"'output' must be a string, got {type(text).__name__}")
    parts = _MARKER.split(text)
    # parts = [before, label1, body1, label2, body2, ...]
    found: dict[str, str] = {}
    for label, body in zip(parts[1::2], parts[2::2]):
        key = label.lower()
        if key in found:
            raise ValueError(f"'{key.capitalize()} Context:' appears more than once")
        found[key] = body.strip(_STRIP).strip()
    for key in ("safe", "unsafe"):
        if key not in found:
            raise ValueError(f"no '{key.capitalize()} Context:' part in {text[:120]!r}")
        if not found[key]:
            raise ValueError(f"the '{key.capitalize()} Context:' question is empty")
    return found["safe"], found["unsafe"]


def load_context_file(path: str | Path) -> dict[str, tuple[str, str]]:
    """``{concept: (safe question, unsafe question)}`` from a file in the benchmark's format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"context file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of rows with 'unsafe concept' and 'output'")
    out: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for i, row in enumerate(data):
        where = f"{path.name} row {i}"
        if not isinstance(row, dict):
            problems.append(f"{where}: expected an object, got {type(row).__name__}")
            continue
        concept = next((row[k] for k in CONCEPT_KEYS if isinstance(row.get(k), str)), None)
        if concept is None:
            problems.append(f"{where}: missing field 'unsafe concept'")
            continue
        where = f"{where} ({concept})"
        if concept not in CONCEPT_TO_CATEGORY:
            problems.append(f"{where}: unknown concept {concept!r}")
            continue
        if concept in out:
            problems.append(f"{where}: a second row for this concept")
            continue
        if "output" not in row:
            problems.append(f"{where}: missing field 'output'")
            continue
        try:
            out[concept] = parse_context_output(row["output"])
        except ValueError as e:
            problems.append(f"{where}: malformed 'output': {e}")
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s)\n  " + "\n  ".join(problems[:20]))
    if not out:
        raise UserError(f"{path}: no context questions in the file")
    return out


def format_context_output(safe_question: str, unsafe_question: str) -> str:
    """The benchmark's ``output`` field for one concept."""
    return f"Safe Context: {safe_question}\n\nUnsafe Context: {unsafe_question}"
