"""Labelled image sets from the hub (SMID, the NSFW set), converted to a folder of image files.

Hub schema (the reference's ``yiting/SMID`` and ``yiting/NSFWDataset``): ``image`` = the image file
as a base64 string, ``label`` = an integer or a string (or a ClassLabel), ``index`` = the row's
number, which names the image file (the reference saves ``data/SMID/images/<index>.jpg``).

Folder layout written here (and read by ``read_labelled_folder``)::

    OUT/metadata.jsonl   {"image_filename": "images/1925.jpg", "label": "safe", "hub_label": 0,
                          "index": 1925, "row": 1925, "source": "yiting/SMID"}
    OUT/images/1925.jpg  the decoded bytes as they were (no re-encoding)

Images are written as they come, not decoded: a row whose image is broken (or a decompression bomb)
fails its own query at evaluation time, like any bad image, instead of stopping the download.

``subset="reference"`` keeps the reference's 500 evaluation images (``random.seed(2024);
random.sample(range(n_rows), 500)``, see ``data.pairing``) in the order drawn, so that the
reference's seed-42 prompt pairing over this folder's order reproduces its published prompts.

Labels: a string or ClassLabel name maps through ``LABEL_SYNONYMS``; a plain integer through
``INT_LABELS`` (0 = safe, 1 = unsafe: an assumption, the hub cards do not say; pass ``label_map``
to override). Any other value stops the conversion with the labels found.
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

from unsafe_concepts import paths
from unsafe_concepts.data.layout import METADATA, FirstSeen, Problems, file_number, first_row, read_jsonl, resolve_inside
from unsafe_concepts.errors import UserError
from unsafe_concepts.io import write_bytes_atomic, write_jsonl_atomic

SMID_REPO = "yiting/SMID"
NSFW_REPO = "yiting/NSFWDataset"
HUB_SETS = {"smid": SMID_REPO, "nsfw": NSFW_REPO}

LABEL_SYNONYMS = {"safe": "safe", "sfw": "safe", "normal": "safe", "neutral": "safe", "benign": "safe",
                  "moral": "safe", "unsafe": "unsafe", "nsfw": "unsafe", "harmful": "unsafe", "immoral": "unsafe"}
INT_LABELS = {0: "safe", 1: "unsafe"}  # assumption (see module doc); override with label_map

# magic bytes -> file suffix; anything else is saved as ".img" (and fails at decode time, on its row)
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"RIFF", ".webp"))


def image_suffix(data: bytes) -> str:
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    return ".img"


def binary_label(value, names: list[str] | None, where: str, label_map: dict | None = None) -> str:
    """A hub label (int, string or ClassLabel index) -> "safe"/"unsafe"; UserError naming the row otherwise."""
    if label_map is not None:
        key = value if value in label_map else str(value).strip().lower()
        if key in label_map:
            return label_map[key]
        raise UserError(f"{where}: label {value!r} is not in the given label map {sorted(map(str, label_map))}")
    if names is not None and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        value = names[value]
    if isinstance(value, int) and not isinstance(value, bool):
        if value in INT_LABELS:
            return INT_LABELS[value]
        raise UserError(f"{where}: integer label {value} has no meaning here (0 = safe, 1 = unsafe are known); "
                        "pass a label map")
    if isinstance(value, str) and value.strip().lower() in LABEL_SYNONYMS:
        return LABEL_SYNONYMS[value.strip().lower()]
    raise UserError(f"{where}: label must be safe/unsafe (or a synonym: {sorted(LABEL_SYNONYMS)}) or 0/1, "
                    f"got {value!r} ({type(value).__name__})")


def _decode_b64(value, where: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: the image column must be a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("data:") and "," in text:  # a data URL: keep the payload
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as e:
        raise UserError(f"{where}: the image column is not valid base64 ({e})") from None


def labelled_dataset_to_layout(ds, out: Path, source: str, *, subset: str = "all",
                               label_map: dict | None = None) -> int:
    """Write a hub labelled set (``image`` base64, ``label``, ``index``) into ``out``; returns the count."""
    from unsafe_concepts.data.pairing import reference_subset_indices

    if subset not in ("all", "reference"):
        raise UserError(f"subset must be 'all' or 'reference', got {subset!r}")
    missing = [c for c in ("image", "label") if c not in ds.column_names]
    if missing:
        raise UserError(f"{source}: missing column(s) {missing}: columns found are {ds.column_names} "
                        "(expected image as base64, label, index)")
    names = getattr(ds.features.get("label"), "names", None)
    order = reference_subset_indices(len(ds)) if subset == "reference" else list(range(len(ds)))
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, seen = [], {}
    for row in _progress(order, source):
        item = ds[row]
        where = f"{source} row {row}"
        index = row if item.get("index") is None else file_number(item["index"], "index", where)
        if index in seen:
            raise UserError(f"{where}: index {index} repeats row {seen[index]} (image file names must be unique)")
        seen[index] = row
        label = binary_label(item["label"], names, where, label_map)
        data = _decode_b64(item["image"], where)
        rel = f"images/{index}{image_suffix(data)}"
        target = out / rel
        if not (target.is_file() and target.stat().st_size == len(data)):  # resumable: written atomically
            write_bytes_atomic(target, data)
        hub_label = item["label"] if isinstance(item["label"], (int, str)) else str(item["label"])
        rows.append({"image_filename": rel, "label": label, "hub_label": hub_label, "index": index, "row": row,
                     "source": source})
    write_jsonl_atomic(out / METADATA, rows)  # last: a folder with metadata.jsonl is complete
    return len(rows)


def _progress(order, source):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return order
    return tqdm(order, desc=f"writing {source}", unit="img")


def download_labelled(name: str, out: Path, *, subset: str = "all", repo: str | None = None) -> int:
    """``data download --set smid|nsfw``: the hub set ``name`` into ``out``."""
    from unsafe_concepts.data.hub import load_hub_dataset

    repo = repo or HUB_SETS[name]
    return labelled_dataset_to_layout(load_hub_dataset(repo), out, repo, subset=subset)


def hub_cache(name: str, subset: str = "all") -> Path:
    return paths.home() / "hf" / (HUB_SETS[name].split("/")[-1] + ("" if subset == "all" else f"-{subset}"))


def ensure_hub_labelled(name: str, *, subset: str = "all", repo: str | None = None) -> Path:
    """The hub set ``name`` ("smid"/"nsfw") as a folder in the cache, downloaded on first use."""
    root = hub_cache(name, subset) if repo is None else paths.home() / "hf" / repo.replace("/", "__")
    if not (root / METADATA).is_file():
        download_labelled(name, root, subset=subset, repo=repo)
    return root


def is_labelled_folder(root: Path) -> bool:
    """True when ``root/metadata.jsonl``'s first row has a ``label`` (this module's layout)."""
    row = first_row(Path(root) / METADATA)
    return row is not None and "label" in row and "unsafe_concept" not in row


def read_labelled_folder(root: str | Path) -> list[dict]:
    """Rows ``{"id", "image" (absolute path), "label", "meta"}`` of a folder in this module's layout,
    in file order; every problem (row, field) listed in one UserError."""
    root = Path(root).expanduser().resolve()
    meta = root / METADATA
    problems = Problems()
    out, seen = [], FirstSeen()
    for n, row in read_jsonl(meta, problems):
        where = f"{METADATA} line {n}"
        rel, label = row.get("image_filename"), row.get("label")
        if not isinstance(rel, str) or not rel.strip():
            problems.add(where, "missing field 'image_filename'" if rel is None
                         else f"'image_filename' must be a non-empty string, got {type(rel).__name__}")
            continue
        if label not in ("safe", "unsafe"):
            problems.add(where, f"'label' must be 'safe' or 'unsafe', got {label!r}")
            continue
        if not seen.first(rel, n, where, problems):
            continue
        try:
            path = resolve_inside(root, rel)
        except ValueError as e:
            problems.add(where, str(e))
            continue
        meta_fields = {k: v for k, v in row.items() if k not in ("image_filename", "label")}
        out.append({"id": Path(rel).stem if "index" in row else rel, "image": str(path), "label": label,
                    "meta": meta_fields})
    problems.raise_if_any(f"{root}")
    if not out:
        raise UserError(f"{meta}: no images listed")
    return out
