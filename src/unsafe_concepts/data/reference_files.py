"""The two protocol files that are not on the hub, shipped with the package (MIT, see NOTICE there).

- ``perception_metadata.jsonl``: the benchmark's fixed four-option question for each of its 1,567
  images (``option_str``, ``correct_option``);
- ``context_questions.json``: per concept, one safe-context and one unsafe-context question.

``data download`` (and ``--data hf``) copies both into the dataset folder, so a downloaded dataset
is complete on disk; ``load_benchmark`` falls back to them when a folder lacks its own copy (the
perception options only when the folder's images are the benchmark's: same ids, same concepts).
"""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts.data.layout import CONTEXT_FILE, METADATA, PERCEPTION_METADATA, Problems, read_jsonl
from unsafe_concepts.io import write_bytes_atomic, write_text_atomic
from unsafe_concepts.paths import RESOURCES

REFERENCE_FILES_DIR = RESOURCES / "data" / "reference"
SHIPPED_PERCEPTION = REFERENCE_FILES_DIR / PERCEPTION_METADATA
SHIPPED_CONTEXT = REFERENCE_FILES_DIR / CONTEXT_FILE
NOTICE = REFERENCE_FILES_DIR / "NOTICE"


def install_reference_files(root: str | Path) -> list[str]:
    """Copy the shipped files into dataset folder ``root`` where it has none; the names written.

    The perception file gets the rows of the images ``root/metadata.jsonl`` lists with the same
    concept (all 1,567 for the full dataset: the file unchanged), and is skipped when none match."""
    root = Path(root)
    written = []
    target = root / PERCEPTION_METADATA
    if not target.exists():
        listed = {r.get("image_filename"): r.get("unsafe_concept") for _, r in read_jsonl(root / METADATA, Problems())}
        # the shipped lines as they are (the full dataset gets the file byte for byte)
        shipped = SHIPPED_PERCEPTION.read_bytes().splitlines(keepends=True)
        lines = [shipped[n - 1] for n, row in read_jsonl(SHIPPED_PERCEPTION, Problems()) if _listed(row, listed)]
        if lines:
            write_bytes_atomic(target, b"".join(lines))
            written.append(PERCEPTION_METADATA)
    if not (root / CONTEXT_FILE).exists():
        write_text_atomic(root / CONTEXT_FILE, SHIPPED_CONTEXT.read_text(encoding="utf-8"))
        written.append(CONTEXT_FILE)
    if written:
        write_text_atomic(root / "NOTICE.reference", NOTICE.read_text(encoding="utf-8"))
    return written


def _listed(row: dict, listed: dict) -> bool:
    return listed.get(row.get("image_filename"), object()) == row.get("unsafe_concept")

