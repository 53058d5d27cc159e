"""Reading a dataset folder in the benchmark's layout, with every problem named (file, row, field).

Unsafe side (the benchmark's layout, as the gated dataset and the reference code use it)::

    ROOT/metadata.jsonl               {"image_filename": "images/0.png", "category": ..., "unsafe_concept": ...}
    ROOT/images/0.png ...
    ROOT/perception_metadata.jsonl    optional: + "option_str", "correct_option" (fixed option sets)
    ROOT/context_questions.json       optional: the context questions
    ROOT/safe/                        optional: the safe counterpart images (see below)

Safe side (a folder of images with a class name per image), either::

    SAFE/metadata.jsonl               {"image_filename": "images/0.png", "class_name": "tabby cat"}
                                      (+ optional "hub_index": row number in yiting/imagenet_1k_unique_class)
or, without metadata.jsonl, one sub-folder per class::

    SAFE/<class name>/<any name>.png|.jpg|.jpeg|.webp|.bmp

Both loaders refuse image paths that escape their root (absolute, ``..``, symlink pointing outside).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from unsafe_concepts import io
from unsafe_concepts.errors import UserError

METADATA = "metadata.jsonl"
PERCEPTION_METADATA = "perception_metadata.jsonl"
CONTEXT_FILE = "context_questions.json"
SAFE_DIR = "safe"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_LISTED = 20  # problems shown in one error message (the `data check` command lists all)


@dataclass
class Problems:
    """Problems collected while reading, so that all of them are reported, not only the first."""

    items: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, title: str) -> None:
        if not self.items:
            return
        shown = "\n  ".join(self.items[:MAX_LISTED])
        more = f"\n  ... and {len(self.items) - MAX_LISTED} more" if len(self.items) > MAX_LISTED else ""
        raise UserError(f"{title}: {len(self.items)} problem(s)\n  {shown}{more}")


@dataclass
class FirstSeen:
    """The line each id (or other unique field) was first seen on; a repeat is reported and refused."""

    what: str = "id"
    lines: dict = field(default_factory=dict)

    def first(self, key, n: int, where: str, problems: Problems) -> bool:
        if key in self.lines:
            problems.add(where, f"duplicate {self.what}: {key!r} already on line {self.lines[key]}")
            return False
        self.lines[key] = n
        return True


def resolve_inside(root: Path, relative: str) -> Path:
    """``root/relative`` as an absolute path; ValueError when it would escape ``root``.

    Refuses absolute paths, ``..`` components and symlinks (anywhere on the way) that lead outside."""
    if not isinstance(relative, str) or not relative.strip():
        raise ValueError("empty image path")
    if relative.startswith(("/", "\\")) or os.path.isabs(relative) or (len(relative) > 1 and relative[1] == ":"):
        raise ValueError(f"absolute image path {relative!r} is not allowed (paths are relative to the dataset root)")
    parts = relative.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"image path {relative!r} contains '..' and would escape the dataset root")
    root_real = root.resolve()
    target = (root / relative).resolve()
    if target != root_real and root_real not in target.parents:
        raise ValueError(f"image path {relative!r} resolves outside the dataset root (symlink to {target})")
    return target


def read_jsonl(path: Path, problems: Problems) -> list[tuple[int, dict]]:
    """(line number, row) for every JSON object line (read by ``io.read_jsonl``); the others go to
    ``problems``, each named by file and line."""
    if not path.is_file() and not path.is_dir():
        raise UserError(f"{path}: file not found")
    content = io.read_jsonl(path)
    for n, _, why in content.bad:
        problems.add(f"{path.name} line {n}", why)
    if content.torn_tail:
        problems.add(f"{path.name} line {content.lines}", "not JSON (the last line is cut off)")
    return list(zip(content.numbers, content.rows))


def first_row(path: Path) -> dict | None:
    """The first JSON object row of a JSONL file, None when it has none: enough to tell the layouts apart."""
    rows = io.read_jsonl(path).rows if path.is_file() else []
    return rows[0] if rows else None


def file_number(value, column: str, where: str) -> int:
    """A hub row's ``index``/``id`` as the non-negative integer its image file is named by (an int or a
    string of digits); UserError naming the row otherwise."""
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = int(str(value).strip())
        if number < 0:
            raise ValueError
    except ValueError:
        raise UserError(f"{where}: {column} must be a non-negative integer, got {value!r}") from None
    return number


def require_fields(row: dict, names: tuple[str, ...], where: str, problems: Problems) -> bool:
    """Each field present and a non-empty string; absent, wrong-typed and empty fields reported as such."""
    missing = [k for k in names if k not in row or row[k] is None]
    wrong = [f"{k!r} must be a string, got {type(row[k]).__name__} {_clip(row[k])}"
             for k in names if k in row and row[k] is not None and not isinstance(row[k], str)]
    empty = [k for k in names if isinstance(row.get(k), str) and not row[k].strip()]
    if missing:
        problems.add(where, "missing field(s) " + ", ".join(repr(k) for k in missing))
    for text in wrong:
        problems.add(where, f"wrong type: {text}")
    if empty:
        problems.add(where, "empty field(s) " + ", ".join(repr(k) for k in empty))
    return not (missing or wrong or empty)


def _clip(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."
