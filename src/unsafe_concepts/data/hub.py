"""The gated Hugging Face datasets, converted to the benchmark's layout on disk.

- ``yiting/UnsafeConcepts`` (gated: accept its terms on the dataset page, then log in) ->
  ``OUT/metadata.jsonl`` + ``OUT/images/<i>.png``.
- ``yiting/imagenet_1k_unique_class`` (the safe counterparts; columns ``image``, ``concept`` = the
  ImageNet class name, optional ``id``) -> ``OUT/safe/metadata.jsonl`` + ``OUT/safe/images/<n>.png``
  with ``hub_index`` = n = the row's ``id`` when it has one, else its row number: the reference names
  its files the same way, which lets the split reproduce the benchmark's safe test images exactly.
- ``yiting/SMID`` and ``yiting/NSFWDataset`` (``image`` a base64 string, ``label``, ``index``):
  see ``unsafe_concepts.data.labelled`` (same access handling, see ``load_hub_dataset``).

The token comes from ``HF_TOKEN`` or the stored ``hf auth login``, read by huggingface_hub itself;
this module never prints or stores it. Access problems become a UserError saying what to do.
Downloads are resumable: images are written atomically one by one and skipped when present, and
``metadata.jsonl`` is written last.
"""
from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

from unsafe_concepts import paths
from unsafe_concepts.data.layout import METADATA, SAFE_DIR, file_number, resolve_inside
from unsafe_concepts.errors import UserError
from unsafe_concepts.io import write_bytes_atomic, write_jsonl_atomic
from unsafe_concepts.taxonomy import CONCEPT_TO_CATEGORY

UNSAFE_REPO = "yiting/UnsafeConcepts"
SAFE_REPO = "yiting/imagenet_1k_unique_class"

IMAGE_COLUMNS = ("image", "img", "images", "picture", "png", "jpg")
CONCEPT_COLUMNS = ("unsafe_concept", "unsafe concept", "concept", "label", "class")
FILENAME_COLUMNS = ("image_filename", "file_name", "filename", "image_fname", "image_path", "path")
# yiting/imagenet_1k_unique_class names its class column "concept" (first); the others are fallbacks.
CLASS_COLUMNS = ("concept", "class_name", "classname", "class", "label_name", "name", "label", "text", "caption")
ID_COLUMNS = ("id",)  # names the safe image's file (the reference's "<id>.png"); else the row number


# ---------------------------------------------------------------- errors
def _token_present() -> bool:
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # a broken token file or failed OIDC exchange: treat as "no usable token"
        return False


def _scrub(text: str) -> str:
    """Remove anything token-like (and the actual token) from a message before it is shown."""
    token = os.environ.get("HF_TOKEN") or ""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{10,}", "hf_***", text)


def hub_error(exc: BaseException, repo: str) -> UserError | None:
    """A UserError saying what to do for a hub access failure; None for errors of another kind."""
    import httpx
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import errors as hfe

    page = f"https://huggingface.co/datasets/{repo}"
    login = "set HF_TOKEN to a read token of that account or run `hf auth login`"
    text = str(exc)
    detail = _scrub(text.strip().splitlines()[0][:200]) if text.strip() else type(exc).__name__
    status = getattr(getattr(exc, "response", None), "status_code", None)
    has_token = _token_present()
    gated = isinstance(exc, hfe.GatedRepoError) or (isinstance(exc, DatasetNotFoundError) and "gated" in text)
    if gated:
        if status == 401 or "must be authenticated" in text or not has_token:
            msg = (f"{repo} is a gated dataset and the Hub did not accept you as logged in "
                   f"({'the token was rejected' if has_token else 'no token found'}). Accept the dataset's terms "
                   f"at {page} with your Hugging Face account, then {login}.")
        else:
            msg = (f"your Hugging Face account has not been granted access to the gated dataset {repo}. "
                   f"Request access at {page} (approval can take a while), then run the command again.")
    elif isinstance(exc, (hfe.RepositoryNotFoundError, DatasetNotFoundError)):
        msg = (f"{repo} was not found on the Hub or your account cannot access it"
               + (f" (you are not logged in: {login})." if not has_token
                  else f". Check that the token's account has access at {page}."))
    elif isinstance(exc, hfe.HfHubHTTPError) and status in (401, 403):
        msg = (f"the Hub refused access to {repo} (HTTP {status}). "
               + (f"Log in: {login}." if not has_token or status == 401
                  else f"Check that your account has been granted access at {page}."))
    elif isinstance(exc, (hfe.OfflineModeIsEnabled, ConnectionError, httpx.ConnectError, httpx.TimeoutException,
                          hfe.LocalEntryNotFoundError)):
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "TRUE", "YES", "ON")
        msg = (f"cannot download {repo}: "
               + ("offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local cache. Unset HF_HUB_OFFLINE"
                  if offline else "the Hugging Face Hub cannot be reached (no network?). Connect")
               + ", or use a local copy: --data DIR (benchmark layout, see docs/data.md) or --data sample.")
    elif isinstance(exc, hfe.HfHubHTTPError):
        msg = f"the Hub returned an error for {repo}"
    else:
        return None
    return UserError(f"{msg} [{type(exc).__name__}: {detail}]")


def load_hub_dataset(repo: str):
    """``datasets.load_dataset(repo)`` (all splits concatenated in the order the hub lists them)."""
    import datasets

    try:
        loaded = datasets.load_dataset(repo)
    except Exception as e:  # mapped below when it is an access/network problem; anything else propagates
        mapped = hub_error(e, repo)
        if mapped is None:
            raise
        raise mapped from None
    if isinstance(loaded, datasets.DatasetDict):
        parts = list(loaded.values())
        loaded = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return loaded


# ---------------------------------------------------------------- conversion
def _image_column(ds) -> str:
    from datasets import Image

    typed = [name for name, feat in ds.features.items() if isinstance(feat, Image)]
    if typed:
        return typed[0]
    for name in IMAGE_COLUMNS:
        if name in ds.column_names:
            return name
    raise UserError(f"the dataset has no image column: columns found are {ds.column_names} "
                    f"(expected an Image feature or one of {list(IMAGE_COLUMNS)})")


def _string_column(ds, candidates: tuple[str, ...], exclude: set[str]):
    """(column name, value getter) for the first candidate holding strings or class labels."""
    from datasets import ClassLabel, Value

    for name in candidates:
        if name not in ds.column_names or name in exclude:
            continue
        feat = ds.features[name]
        if isinstance(feat, ClassLabel):
            return name, (lambda v, f=feat: f.int2str(v) if v is not None else None)
        if isinstance(feat, Value) and feat.dtype in ("string", "large_string"):
            return name, (lambda v: v)
    return None, None


def _image_bytes(value) -> tuple[bytes, str | None]:
    """An undecoded Image value -> (bytes, original file name or None)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path and Path(path).is_file():
            data = Path(path).read_bytes()
        if data is None:
            raise UserError(f"image without bytes or a readable path ({path!r})")
        return data, path
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str) and Path(value).is_file():
        return Path(value).read_bytes(), value
    raise UserError(f"cannot read an image value of type {type(value).__name__}")


def _write_png(data: bytes, target: Path, where: str) -> Path:
    """Write ``data`` as a PNG at ``target`` atomically (PNG bytes as they are, other formats re-encoded);
    returns the path written. Bytes that do not decode (broken, or a decompression bomb) are kept as they
    came under ``<name>.<their format>`` and reported: that image then fails its own query at evaluation
    time, like any bad image, instead of stopping the download."""
    from unsafe_concepts.data.labelled import image_suffix

    if target.exists() and target.stat().st_size > 0:
        return target  # written by an earlier (interrupted) run: files only appear complete, see below
    kept = target.with_suffix(image_suffix(data) if image_suffix(data) != ".png" else ".undecodable")
    if kept.exists() and kept.stat().st_size > 0:
        return kept
    target.parent.mkdir(parents=True, exist_ok=True)
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                png = io.BytesIO()
                im.convert("RGB").save(png, format="PNG")
                data = png.getvalue()
        except Exception as e:  # any decoder error (or a bomb): keep the bytes, this row fails later
            write_bytes_atomic(kept, data)
            print(f"warning: {where}: the image cannot be decoded ({str(e)[:200]}); kept as {kept.name}",
                  file=sys.stderr)
            return kept
    write_bytes_atomic(target, data)
    return target


def _rows(ds, image_col: str):
    from datasets import Image

    ds = ds.cast_column(image_col, Image(decode=False))
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return enumerate(ds)
    return enumerate(tqdm(ds, total=len(ds), desc="writing images", unit="img"))


def unsafe_dataset_to_layout(ds, out: Path) -> int:
    """Write an UnsafeConcepts ``datasets.Dataset`` into ``out`` (metadata.jsonl + images/); returns the count.

    Handles the likely column names: an image column plus ``category``/``unsafe_concept`` (or a
    class-label column whose names are the concepts), and ``image_filename`` when present."""
    out = Path(out)
    image_col = _image_column(ds)
    concept_col, concept_of = _string_column(ds, CONCEPT_COLUMNS, {image_col})
    category_col, category_of = _string_column(ds, ("category",), {image_col})
    name_col, name_of = _string_column(ds, FILENAME_COLUMNS, {image_col})
    if concept_col is None:
        raise UserError(f"cannot find the concept column: columns found are {ds.column_names} (expected an image "
                        f"column plus 'category' and 'unsafe_concept', or 'image_filename')")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in _rows(ds, image_col):
        where = f"{UNSAFE_REPO} row {i}"
        concept = concept_of(row[concept_col])
        if concept not in CONCEPT_TO_CATEGORY:
            raise UserError(f"{where}: unknown concept {concept!r} in column {concept_col!r}")
        category = category_of(row[category_col]) if category_col else CONCEPT_TO_CATEGORY[concept]
        rel = name_of(row[name_col]) if name_col else f"images/{i}.png"
        if not rel.lower().endswith(".png"):
            rel = str(Path(rel).with_suffix(".png"))
        if "/" not in rel:
            rel = f"images/{rel}"
        try:
            target = resolve_inside(out, rel)
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
        data, _ = _image_bytes(row[image_col])
        written = _write_png(data, target, where)
        rel = str(Path(rel).with_name(written.name))
        rows.append({"image_filename": rel, "category": category, "unsafe_concept": concept})
    write_jsonl_atomic(out / METADATA, rows)
    return len(rows)


def safe_dataset_to_layout(ds, out: Path, source: str = SAFE_REPO) -> int:
    """Write the safe counterpart images (image + class name) into ``out``; ``hub_index`` = row number."""
    out = Path(out)
    image_col = _image_column(ds)
    class_col, class_of = _string_column(ds, CLASS_COLUMNS, {image_col})
    if class_col is None:
        raise UserError(f"cannot find a class-name column in {source}: columns found are {ds.column_names} "
                        f"(expected an image column plus one of {list(CLASS_COLUMNS)} as text or class label)")
    id_col = next((c for c in ID_COLUMNS if c in ds.column_names and c != image_col), None)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    seen: dict[int, int] = {}
    for i, row in _rows(ds, image_col):
        where = f"{source} row {i}"
        number = file_number(row[id_col], id_col, where) if id_col else i
        if number in seen:
            raise UserError(f"{where}: {id_col} {number} repeats row {seen[number]} (image file names must be unique)")
        seen[number] = i
        rel = f"images/{number}.png"
        data, _ = _image_bytes(row[image_col])
        rel = str(Path(rel).with_name(_write_png(data, out / rel, where).name))
        rows.append({"image_filename": rel, "class_name": str(class_of(row[class_col])).strip(), "hub_index": number,
                     "source": source})
    write_jsonl_atomic(out / METADATA, rows)
    return len(rows)


# ---------------------------------------------------------------- entry points
def download_unsafe(out: Path) -> int:
    return unsafe_dataset_to_layout(load_hub_dataset(UNSAFE_REPO), out)


def download_safe(out: Path) -> int:
    return safe_dataset_to_layout(load_hub_dataset(SAFE_REPO), out)


def hub_cache_root() -> Path:
    return paths.home() / "hf" / "UnsafeConcepts"


def ensure_hub_dataset(with_safe: bool = True) -> Path:
    """``--data hf``: the gated dataset in the cache (downloaded on first use, with its safe images)."""
    from unsafe_concepts.data.reference_files import install_reference_files

    root = hub_cache_root()
    if not (root / METADATA).is_file():
        download_unsafe(root)
    install_reference_files(root)
    if with_safe:
        ensure_hub_safe()
    return root


def ensure_hub_safe() -> Path:
    safe = hub_cache_root() / SAFE_DIR
    if not (safe / METADATA).is_file():
        download_safe(safe)
    return safe


def cli_download(args) -> int:
    """`unsafe-concepts data download --out DIR [--safe] [--set smid|nsfw [--subset reference]]`."""
    out = Path(args.out).expanduser()
    dataset = getattr(args, "dataset", "unsafeconcepts")
    if dataset != "unsafeconcepts":
        from unsafe_concepts.data.labelled import HUB_SETS, download_labelled

        if args.safe:
            raise UserError("--safe goes with the UnsafeConcepts set, not with --set " + dataset)
        n = download_labelled(dataset, out, subset=getattr(args, "subset", "all"))
        print(f"wrote {n} images of {HUB_SETS[dataset]} to {out} ({METADATA} + images/)")
        print(f"evaluate on it with: unsafe-concepts evaluate --task {dataset} --data {out} ...")
        return 0
    if getattr(args, "subset", "all") != "all":
        raise UserError("--subset applies to --set smid or --set nsfw")
    from unsafe_concepts.data.reference_files import install_reference_files

    n = download_unsafe(out)
    print(f"wrote {n} images of {UNSAFE_REPO} to {out} ({METADATA} + images/)")
    copied = install_reference_files(out)
    if copied:  # not on the hub: shipped with the package (MIT, TrustAIRLab/SaferVLM; see NOTICE.reference)
        print(f"added {', '.join(copied)} (the benchmark's own files, shipped with this package)")
    if args.safe:
        n_safe = download_safe(out / SAFE_DIR)
        print(f"wrote {n_safe} safe images of {SAFE_REPO} to {out / SAFE_DIR}")
    print(f"check it with: unsafe-concepts data check {out}")
    return 0
