"""`unsafe-concepts data check PATH`: validate a dataset folder, list EVERY problem, print counts.

Checks: malformed JSON lines, missing fields, duplicate ids, unknown concepts/categories and concepts
filed under the wrong category, image paths escaping the root (absolute, ``..``, symlinks pointing
outside), missing/unreadable/truncated images (each image is fully decoded), the optional
perception_metadata.jsonl, safe/ sub-folder and context_questions.json.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from unsafe_concepts.data.context import load_context_file
from unsafe_concepts.data.layout import CONTEXT_FILE, METADATA, SAFE_DIR, Problems, first_row
from unsafe_concepts.data.local import check_image_file, read_perception_file, read_safe_folder, read_unsafe_folder
from unsafe_concepts.errors import UserError
from unsafe_concepts.taxonomy import CATEGORIES


@dataclass
class CheckReport:
    root: Path
    kind: str  # "unsafe" (benchmark layout), "safe" (class name per image) or "labelled" (SMID, NSFW)
    per_category: Counter = field(default_factory=Counter)
    safe_images: int = 0
    safe_classes: int = 0
    perception_rows: int = 0
    context_concepts: int = 0
    labels: Counter = field(default_factory=Counter)  # a labelled set (SMID, NSFW): images per label
    problems: Problems = field(default_factory=Problems)

    @property
    def ok(self) -> bool:
        return not self.problems


def _looks_like_safe_folder(root: Path) -> bool:
    meta = root / METADATA
    if not meta.is_file():
        return True  # only the folder-per-class layout has no metadata.jsonl
    row = first_row(meta)
    return row is not None and "class_name" in row and "unsafe_concept" not in row


def check_folder(path: str | Path) -> CheckReport:
    """Validate ``path`` (an unsafe dataset in the benchmark layout, or a safe image folder)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{path}: not a folder")
    root = root.resolve()
    from unsafe_concepts.data.labelled import is_labelled_folder

    if is_labelled_folder(root):  # SMID / NSFW as `data download --set smid|nsfw` writes them
        report = CheckReport(root, "labelled")
        _check_labelled(root, report)
        return report
    if _looks_like_safe_folder(root):
        report = CheckReport(root, "safe")
        _check_safe(root, report, prefix="")
        return report
    report = CheckReport(root, "unsafe")
    records = read_unsafe_folder(root, report.problems, decode_images=True)
    if not records and not report.problems:
        report.problems.add(METADATA, "lists no images (the file is empty): nothing to evaluate")
    report.per_category.update(r.category for r in records)
    report.perception_rows = len(read_perception_file(root, records, report.problems))
    if (root / SAFE_DIR).is_dir():
        _check_safe(root / SAFE_DIR, report, prefix=f"{SAFE_DIR}/")
    if (root / CONTEXT_FILE).is_file():
        try:
            report.context_concepts = len(load_context_file(root / CONTEXT_FILE))
        except UserError as e:
            report.problems.add(CONTEXT_FILE, str(e))
    return report


def _check_labelled(root: Path, report: CheckReport) -> None:
    from unsafe_concepts.data.labelled import read_labelled_folder

    try:
        rows = read_labelled_folder(root)
    except UserError as e:
        report.problems.add(METADATA, str(e))
        return
    for r in rows:
        check_image_file(Path(r["image"]), f"{METADATA} ({r['id']})", report.problems, decode=True)
    report.labels.update(r["label"] for r in rows)


def _check_safe(root: Path, report: CheckReport, prefix: str) -> None:
    inner = Problems()
    records, _ = read_safe_folder(root, inner, decode_images=True)
    if not records and not inner:
        inner.add(METADATA if (root / METADATA).is_file() else str(root), "lists no images (empty)")
    for item in inner.items:
        report.problems.items.append(prefix + item)
    report.safe_images = len(records)
    report.safe_classes = len({r.concept for r in records})


def cli_check(args) -> int:
    report = check_folder(args.path)
    print(f"dataset: {report.root}")
    if report.kind == "unsafe":
        width = max(len(c) for c in CATEGORIES)
        for category in CATEGORIES:
            print(f"  {category:<{width}}  {report.per_category.get(category, 0):>5}")
        print(f"  {'total':<{width}}  {sum(report.per_category.values()):>5}  unsafe images "
              f"({len(report.per_category)} categories)")
        if report.perception_rows:
            print(f"perception_metadata.jsonl: {report.perception_rows} fixed option sets")
        if report.context_concepts:
            print(f"{CONTEXT_FILE}: context questions for {report.context_concepts} concepts")
    if report.kind == "labelled":
        print(f"labelled images: {sum(report.labels.values())} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(report.labels.items()))})")
    if report.safe_images or report.kind == "safe":
        print(f"safe images: {report.safe_images} ({report.safe_classes} classes)")
    if report.ok:
        print("OK: no problems found")
        return 0
    print(f"{len(report.problems)} problem(s):", file=sys.stderr)
    for item in report.problems.items:
        print(f"  {item}", file=sys.stderr)
    raise UserError(f"{report.root}: {len(report.problems)} problem(s) found (listed above)")
