"""Shared pieces of the post-training evaluation sets: the typed items, image decoding, and the
hub access every loader goes through (never called in tests: every loader also reads local files)."""
from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unsafe_concepts.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


@dataclass
class LabelledImage:
    """One image with a ground-truth safe/unsafe label (SMID after binarising, NSFW).

    ``image`` is a path on disk or an already decoded PIL image (hub rows)."""

    id: str
    image: Any
    label: str  # "safe" or "unsafe"
    source: str
    meta: dict = field(default_factory=dict)


def decode_base64_image(data: str, where: str):
    """A base64 string (as MME's TSV ships its images) -> RGB PIL image; UserError naming the row."""
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as e:
        raise UserError(f"{where}: the image column is not a base64-encoded image ({e})") from None
    return decode_image_bytes(raw, where, what="the image column is not a base64-encoded image")


def decode_image_bytes(raw: bytes, where: str, what: str = "not a decodable image"):
    """Image file bytes -> RGB PIL; a UserError naming ``where`` for anything undecodable, including a
    decompression bomb (PIL refuses to decode it; one bad row must not stop a run)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise UserError(f"{where}: image refused as a possible decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise UserError(f"{where}: {what} (unknown image format)") from None
    except (ValueError, OSError, SyntaxError, MemoryError) as e:
        raise UserError(f"{where}: {what} ({e})") from None


def as_pil(image: Any, where: str):
    """A hub ``Image`` feature value (PIL, or {'bytes','path'}), a path, or PIL -> RGB PIL."""
    from PIL import Image

    from unsafe_concepts.data.records import load_rgb

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, dict) and image.get("bytes"):
        return decode_image_bytes(image["bytes"], where)
    if isinstance(image, dict) and image.get("path"):
        return load_rgb(image["path"], where)
    if isinstance(image, (str, Path)):
        return load_rgb(image, where)
    raise UserError(f"{where}: no usable image (got {type(image).__name__})")


def read_table(path: Path, delimiter: str | None = None) -> list[dict]:
    """Rows of a CSV/TSV file as dicts (delimiter from the suffix unless given). Large base64 cells
    are fine: the csv field limit is raised to the maximum."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise UserError(f"{path}: empty file (no header row)")
        return list(reader)


def require_columns(rows_or_header, needed: tuple[str, ...], where: str) -> None:
    header = rows_or_header if isinstance(rows_or_header, (list, tuple, set)) else list(rows_or_header)
    missing = [c for c in needed if c not in header]
    if missing:
        raise UserError(f"{where}: missing column(s) {missing}; found {list(header)}")


def load_hub_split(repo_id: str, split: str, revision: str | None = None):
    """``datasets.load_dataset`` on a hub dataset: the ordinary code path, used only when a user
    asks for ``hf:`` sources (nothing downloads by default or in tests)."""
    try:
        from datasets import load_dataset

        return load_dataset(repo_id, split=split, revision=revision)
    except Exception as e:  # network, auth, missing repo: say which dataset failed
        raise UserError(f"could not load hub dataset {repo_id!r} (split {split!r}): {e}") from None


def hub_spec(source: str) -> str | None:
    """'hf' / 'hf:<repo>' -> the repo id part ('' for the default); None for a local path."""
    if source == "hf":
        return ""
    if source.startswith("hf:"):
        return source[3:]
    return None


def first_items(items: list, limit: int | None, empty: str) -> list:
    """The first ``limit`` items (all with no limit), in source order; UserError ``empty`` when there are none."""
    if not items:
        raise UserError(empty)
    return items[:limit] if limit else items


def load_labelled_folder(root: str | Path, source: str, limit: int | None = None) -> list[LabelledImage]:
    """A folder written by ``data download --set smid|nsfw`` (``unsafe_concepts.data.labelled``) as items."""
    from unsafe_concepts.data.labelled import read_labelled_folder

    rows = read_labelled_folder(root)
    items = [LabelledImage(id=r["id"], image=r["image"], label=r["label"], source=source, meta=r["meta"])
             for r in rows]
    return items[:limit] if limit else items


def load_labelled_hub(name: str, repo: str, subset: str = "all", limit: int | None = None) -> list[LabelledImage]:
    """``hf`` / ``hf:<repo>`` for SMID and NSFW: the hub set converted once into the cache, then read."""
    from unsafe_concepts.data.labelled import HUB_SETS, ensure_hub_labelled

    root = ensure_hub_labelled(name, subset=subset, repo=None if repo in ("", HUB_SETS[name]) else repo)
    return load_labelled_folder(root, name, limit)


_XLSX_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_XLSX_MAX_BYTES = 64 * 2**20  # an uncompressed part larger than this is refused (zip bomb)


def read_xlsx(path: str | Path) -> list[dict]:
    """Rows of the first sheet of an .xlsx file as dicts keyed by the header row (values: str, int,
    float or None). Read with zipfile + ElementTree (no openpyxl needed): the reference ships its
    LLaVA-Bench question sheet and GPT-4o reviews this way. Shared strings, inline strings and
    numbers are supported; formulas give their cached value."""
    import re
    import zipfile
    from xml.etree import ElementTree

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            def part(name: str) -> bytes | None:
                try:
                    info = z.getinfo(name)
                except KeyError:
                    return None
                if info.file_size > _XLSX_MAX_BYTES:
                    raise UserError(f"{path}: {name} is larger than {_XLSX_MAX_BYTES // 2**20} MiB uncompressed")
                return z.read(name)

            shared_xml = part("xl/sharedStrings.xml")
            sheet_xml = part("xl/worksheets/sheet1.xml")
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a readable .xlsx file ({e})") from None
    if sheet_xml is None:
        raise UserError(f"{path}: no first worksheet (xl/worksheets/sheet1.xml)")
    try:
        shared = ["".join(t.text or "" for t in si.iter(_XLSX_NS + "t"))
                  for si in ElementTree.fromstring(shared_xml).findall(_XLSX_NS + "si")] if shared_xml else []
        sheet = ElementTree.fromstring(sheet_xml)
    except ElementTree.ParseError as e:
        raise UserError(f"{path}: malformed spreadsheet XML ({e})") from None

    def column(ref: str) -> int:
        letters = re.match(r"[A-Z]+", ref).group(0)
        n = 0
        for ch in letters:
            n = n * 26 + ord(ch) - 64
        return n - 1

    def value(c):
        kind = c.get("t")
        if kind == "inlineStr":
            return "".join(t.text or "" for t in c.iter(_XLSX_NS + "t"))
        v = c.find(_XLSX_NS + "v")
        if v is None or v.text is None:
            return None
        if kind == "s":
            return shared[int(v.text)]
        if kind in ("str", "e"):
            return v.text
        if kind == "b":
            return v.text == "1"
        number = float(v.text)
        return int(number) if number.is_integer() and re.fullmatch(r"-?\d+", v.text) else number

    table = []
    for row in sheet.iter(_XLSX_NS + "row"):
        cells = {column(c.get("r")): value(c) for c in row.findall(_XLSX_NS + "c") if c.get("r")}
        table.append([cells.get(i) for i in range(max(cells) + 1)] if cells else [])
    if not table or not table[0]:
        raise UserError(f"{path}: empty sheet (no header row)")
    header = [str(h) if h is not None else "" for h in table[0]]
    return [{h: (r[i] if i < len(r) else None) for i, h in enumerate(header) if h} for r in table[1:] if r]

