"""An NSFW image set for the generalisation check: images labelled safe or unsafe.

The reference's set is ``yiting/NSFWDataset`` on the hub (``image`` base64, ``label``, ``index``;
1,800 rows): ``hf`` converts it once into the cache (only when asked: nothing downloads by
default), as does ``unsafe-concepts data download --set nsfw``; ``subset="reference"`` keeps the
reference's 500 evaluation images. Other sources:
- a folder written by ``data download --set nsfw`` (``metadata.jsonl`` with ``label``);
- a folder with ``safe/`` and ``unsafe/`` subfolders of images;
- a ``.tsv``/``.csv`` file with columns ``image`` (path relative to the file, or base64) and
  ``label`` (``safe``/``unsafe``; ``sfw``/``nsfw`` are accepted as synonyms);
- ``hf:<repo>`` for another repo (optional ``split``, ``image_column``, ``label_column``; an ``Image``
  feature): rows whose label (string or ClassLabel name) maps to safe/unsafe through ``LABEL_SYNONYMS``.
"""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts.errors import UserError
from unsafe_concepts.evalsets.common import (
    IMAGE_SUFFIXES,
    LabelledImage,
    first_items,
    hub_spec,
    load_hub_split,
    load_labelled_folder,
    load_labelled_hub,
    read_table,
    require_columns,
)

LABEL_SYNONYMS = {"safe": "safe", "sfw": "safe", "normal": "safe", "neutral": "safe",
                  "unsafe": "unsafe", "nsfw": "unsafe"}


def _label(value, where: str) -> str:
    key = str(value).strip().lower()
    if key not in LABEL_SYNONYMS:
        raise UserError(f"{where}: label must be one of {sorted(LABEL_SYNONYMS)}, got {value!r}")
    return LABEL_SYNONYMS[key]


def load_nsfw(source: str, *, split: str = "train", image_column: str = "image", label_column: str = "label",
              limit: int | None = None, subset: str = "all") -> list[LabelledImage]:
    from unsafe_concepts.data.labelled import NSFW_REPO, is_labelled_folder

    repo = hub_spec(source)
    if repo is not None:
        if repo in ("", NSFW_REPO):
            return load_labelled_hub("nsfw", repo, subset, limit)
        items = _from_hub(repo, split, image_column, label_column)
    else:
        path = Path(source)
        if path.is_dir() and is_labelled_folder(path):
            items = load_labelled_folder(path, "nsfw")
        elif path.is_dir():
            items = _from_folder(path)
        elif path.is_file():
            items = _from_table(path, image_column, label_column)
        else:
            raise UserError(f"NSFW source not found: {source}")
    return first_items(items, limit, f"NSFW source {source} has no images")


def _from_folder(root: Path) -> list[LabelledImage]:
    if not (root / "safe").is_dir() and not (root / "unsafe").is_dir():
        raise UserError(f"{root}: expected subfolders safe/ and unsafe/")
    items = []
    for label in ("safe", "unsafe"):
        for p in sorted((root / label).glob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                items.append(LabelledImage(id=f"{label}/{p.name}", image=str(p), label=label, source="nsfw"))
    return items


def _from_table(path: Path, image_column: str, label_column: str) -> list[LabelledImage]:
    from unsafe_concepts.evalsets.common import decode_base64_image

    rows = read_table(path)
    require_columns(rows[0].keys() if rows else [], (image_column, label_column), str(path))
    items = []
    for n, r in enumerate(rows, start=2):
        where = f"{path}:{n}"
        cell = (r[image_column] or "").strip()
        candidate = path.parent / cell
        if cell and Path(cell).suffix.lower() in IMAGE_SUFFIXES:
            if not candidate.exists():
                raise UserError(f"{where}: image file not found: {candidate}")
            image = str(candidate)
        else:
            image = decode_base64_image(cell, where)
        items.append(LabelledImage(id=r.get("id") or r.get("index") or str(n - 1), image=image,
                                   label=_label(r[label_column], where), source="nsfw"))
    return items


def _from_hub(repo: str, split: str, image_column: str, label_column: str) -> list[LabelledImage]:
    ds = load_hub_split(repo, split)
    names = getattr(ds.features.get(label_column), "names", None)
    items = []
    for i, r in enumerate(ds):
        value = r[label_column]
        if names is not None and isinstance(value, int):
            value = names[value]
        items.append(LabelledImage(id=str(i), image=r[image_column], label=_label(value, f"{repo} row {i}"),
                                   source="nsfw"))
    return items
