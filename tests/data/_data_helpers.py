"""Small dataset folders built in tmp_path (abstract solid-colour PNGs, real concept names)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from unsafe_concepts.taxonomy import CONCEPT_TO_CATEGORY


def write_png(path: Path, colour=(40, 90, 160), size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def make_dataset(root: Path, per_concept: dict[str, int], *, safe: int = 0) -> Path:
    """A valid folder in the benchmark layout; ``safe`` > 0 adds safe/ with that many images."""
    rows, i = [], 0
    for concept, n in per_concept.items():
        for _ in range(n):
            write_png(root / "images" / f"{i}.png", colour=(i % 255, 80, 120))
            rows.append({"image_filename": f"images/{i}.png", "category": CONCEPT_TO_CATEGORY[concept],
                         "unsafe_concept": concept})
            i += 1
    write_jsonl(root / "metadata.jsonl", rows)
    if safe:
        safe_rows = []
        for j in range(safe):
            write_png(root / "safe" / "images" / f"{j}.png", colour=(200, j % 255, 60))
            safe_rows.append({"image_filename": f"images/{j}.png", "class_name": f"class {j % 7}"})
        write_jsonl(root / "safe" / "metadata.jsonl", safe_rows)
    return root

