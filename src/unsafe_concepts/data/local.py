"""Loaders for local folders: the unsafe images (benchmark layout) and the safe counterpart images.

Both collect every problem (see ``layout.Problems``) and raise one UserError listing them; the
``data check`` command uses the same readers with image decoding switched on.
"""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts import prompts
from unsafe_concepts.data.layout import (
    IMAGE_SUFFIXES,
    METADATA,
    PERCEPTION_METADATA,
    FirstSeen,
    Problems,
    read_jsonl,
    require_fields,
    resolve_inside,
)
from unsafe_concepts.data.records import SAFE, SAFE_CATEGORY, UNSAFE, ImageRecord, short_path
from unsafe_concepts.errors import UserError
from unsafe_concepts.taxonomy import CATEGORIES, CONCEPT_TO_CATEGORY

SAFE_ID_PREFIX = "safe/"  # safe record ids are "safe/<path inside the safe folder>": never clash with "images/..."


def check_image_file(path: Path, where: str, problems: Problems, decode: bool) -> None:
    """Missing file, or (``decode``) an unreadable, truncated or decompression-bomb one."""
    from unsafe_concepts.data.records import load_rgb

    try:
        exists = path.is_file()
    except OSError as e:  # e.g. ENAMETOOLONG: pathlib only ignores "does not exist"-like errors
        problems.add(where, f"image path unusable ({e.strerror or e}, {len(str(path))} characters): "
                            f"{short_path(path)}")
        return
    if not exists:
        problems.add(where, f"image file not found: {short_path(path)}")
        return
    if not decode:
        return
    try:
        load_rgb(path, path.name)  # a full decode: catches truncated files that Image.verify() lets through
    except UserError as e:
        problems.add(where, str(e))


def _resolve(root: Path, rel, where: str, problems: Problems) -> Path | None:
    try:
        return resolve_inside(root, rel)
    except ValueError as e:
        problems.add(where, str(e))
        return None


def read_unsafe_folder(root: Path, problems: Problems, *, decode_images: bool = False) -> list[ImageRecord]:
    """The unsafe ImageRecords of ``root/metadata.jsonl`` (split not set yet)."""
    meta = root / METADATA
    if not meta.is_file():
        raise UserError(
            f"{root}: no {METADATA} here. A dataset folder needs {METADATA} (rows image_filename, category, "
            "unsafe_concept) and the images it names; see docs/data.md"
        )
    records: list[ImageRecord] = []
    seen = FirstSeen()
    for n, row in read_jsonl(meta, problems):
        where = f"{METADATA} line {n}"
        if not require_fields(row, ("image_filename", "category", "unsafe_concept"), where, problems):
            continue
        rel, category, concept = row["image_filename"], row["category"], row["unsafe_concept"]
        where = f"{where} ({short_path(rel)})"
        if not seen.first(rel, n, where, problems):
            continue
        if concept not in CONCEPT_TO_CATEGORY:
            problems.add(where, f"unknown concept {concept!r} (not one of the 75 UnsafeConcepts concepts)")
            continue
        if category not in CATEGORIES:
            problems.add(where, f"unknown category {category!r} (expected one of: {', '.join(CATEGORIES)})")
            continue
        if CONCEPT_TO_CATEGORY[concept] != category:
            problems.add(where, f"concept {concept!r} is filed under {category!r}, but belongs to "
                                f"{CONCEPT_TO_CATEGORY[concept]!r}")
            continue
        path = _resolve(root, rel, where, problems)
        if path is None:
            continue
        check_image_file(path, where, problems, decode_images)
        records.append(ImageRecord(id=rel, image=str(path), category=category, concept=concept, label=UNSAFE,
                                   synthetic=bool(row.get("synthetic", False))))
    return records


def read_perception_file(root: Path, records: list[ImageRecord], problems: Problems) -> dict[str, tuple[str, str]]:
    """The benchmark's fixed option sets, ``{record id: (option_str, correct_letter)}``; {} when absent.

    Rows are matched by ``image_filename``; the option at the correct letter must be the row's concept.
    (The benchmark's own file repeats a distractor in some rows; that is kept as is for exactness.)"""
    path = root / PERCEPTION_METADATA
    if not path.is_file():
        return {}
    concept_of = {r.id: r.concept for r in records}
    out: dict[str, tuple[str, str]] = {}
    for n, row in read_jsonl(path, problems):
        where = f"{PERCEPTION_METADATA} line {n}"
        if not require_fields(row, ("image_filename", "option_str", "correct_option"), where, problems):
            continue
        rid, option_str, letter = row["image_filename"], row["option_str"], row["correct_option"].strip()
        where = f"{where} ({short_path(rid)})"
        if rid not in concept_of:
            problems.add(where, f"image {rid!r} is not in {METADATA}")
            continue
        options = parse_option_str(option_str)
        if options is None:
            problems.add(where, f"option_str is not four lines 'A: ...' to 'D: ...': {option_str!r}")
            continue
        if letter not in prompts.PERCEPTION_LETTERS:
            problems.add(where, f"correct_option must be one of A-D, got {letter!r}")
            continue
        if options[letter] != concept_of[rid]:
            problems.add(where, f"option {letter} is {options[letter]!r}, not the image's concept {concept_of[rid]!r}")
            continue
        out[rid] = (option_str, letter)
    return out


def parse_option_str(option_str: str) -> dict[str, str] | None:
    """"A: x \\nB: y \\nC: z \\nD: w" -> {"A": "x", ...}; None when it is not that shape."""
    lines = [ln.strip() for ln in option_str.strip().split("\n") if ln.strip()]
    if len(lines) != 4:
        return None
    out = {}
    for letter, line in zip(prompts.PERCEPTION_LETTERS, lines):
        if not line.startswith(f"{letter}:"):
            return None
        out[letter] = line[2:].strip()
    return out


def read_safe_folder(root: Path, problems: Problems, *,
                     decode_images: bool = False) -> tuple[list[ImageRecord], dict[str, int]]:
    """Safe ImageRecords (label safe, category "Safe", concept = class name), split not set yet, and
    ``{record id: hub_index}`` for rows that carry their row number in the hub's safe dataset (this lets
    the split reproduce the benchmark's exact safe test images)."""
    if not root.is_dir():
        raise UserError(f"safe image folder {root} does not exist")
    if (root / METADATA).is_file():
        return _read_safe_metadata(root, problems, decode_images)
    return _read_safe_class_folders(root, problems, decode_images), {}


def _read_safe_metadata(root: Path, problems: Problems,
                        decode_images: bool) -> tuple[list[ImageRecord], dict[str, int]]:
    meta = root / METADATA
    records: list[ImageRecord] = []
    seen, hub_indices = FirstSeen(), FirstSeen("hub_index")
    by_id: dict[str, int] = {}
    for n, row in read_jsonl(meta, problems):
        where = f"{METADATA} line {n}"
        if not require_fields(row, ("image_filename", "class_name"), where, problems):
            continue
        rel = row["image_filename"]
        where = f"{where} ({short_path(rel)})"
        if not seen.first(rel, n, where, problems):
            continue
        hub_index = row.get("hub_index")
        if hub_index is not None:
            if not isinstance(hub_index, int) or isinstance(hub_index, bool) or hub_index < 0:
                problems.add(where, f"hub_index must be a non-negative integer, got {hub_index!r}")
                continue
            if not hub_indices.first(hub_index, n, where, problems):
                continue
        path = _resolve(root, rel, where, problems)
        if path is None:
            continue
        check_image_file(path, where, problems, decode_images)
        records.append(ImageRecord(
            id=SAFE_ID_PREFIX + rel, image=str(path), category=SAFE_CATEGORY, concept=row["class_name"].strip(),
            label=SAFE, synthetic=bool(row.get("synthetic", False)),
        ))
        if hub_index is not None:
            by_id[SAFE_ID_PREFIX + rel] = hub_index
    return records, by_id


def _read_safe_class_folders(root: Path, problems: Problems, decode_images: bool) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in class_dirs:
        for f in sorted(d.iterdir()):
            if f.name.startswith(".") or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = f"{d.name}/{f.name}"
            path = _resolve(root, rel, rel, problems)
            if path is None:
                continue
            check_image_file(path, rel, problems, decode_images)
            records.append(ImageRecord(id=SAFE_ID_PREFIX + rel, image=str(path), category=SAFE_CATEGORY,
                                      concept=d.name, label=SAFE))
    if not records and not problems:
        problems.add(str(root), f"no {METADATA} and no class sub-folders with images ({', '.join(IMAGE_SUFFIXES)})")
    return records
