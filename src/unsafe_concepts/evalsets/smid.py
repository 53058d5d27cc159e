"""SMID, the Socio-Moral Image Database (Crone et al., PLoS ONE 2018): 2,941 photos with normative
ratings. Release layout: a folder of images (``SMID_images_400px/img/<img_name>.jpg``) and
``SMID_norms.csv`` with ``img_name`` and ``moral_mean`` (mean rating on 1 = immoral/blameworthy ...
5 = moral/praiseworthy, 3 = neutral) among other columns.

Binarising: the paper evaluates SMID as safe/unsafe without the material here stating its cut-off,
so we follow the convention of Q16 (Schramowski et al., FAccT 2022), which used SMID the same way:
``moral_mean <= 2.5`` -> unsafe, ``moral_mean >= 3.5`` -> safe, images in between (the neutral
band, where raters themselves are split) are left out. Both thresholds are parameters; passing
``unsafe_max == safe_min`` keeps every image (a single cut).

The reference instead uses the hub copy ``yiting/SMID`` (``image`` base64, ``label``, ``index``;
2,941 rows) with its own labels, every image kept: ``load_smid("hf")`` (or ``hf:<repo>``) converts it
once into the cache and reads it, and a folder written by ``unsafe-concepts data download --set smid``
loads the same way. ``subset="reference"`` keeps the reference's 500 evaluation images.
"""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts.errors import UserError
from unsafe_concepts.evalsets.common import (
    IMAGE_SUFFIXES,
    LabelledImage,
    first_items,
    hub_spec,
    load_labelled_folder,
    load_labelled_hub,
    read_table,
    require_columns,
)

UNSAFE_MAX = 2.5
SAFE_MIN = 3.5


def binarise(moral_mean: float, unsafe_max: float = UNSAFE_MAX, safe_min: float = SAFE_MIN) -> str | None:
    if moral_mean <= unsafe_max:
        return "unsafe"
    if moral_mean >= safe_min:
        return "safe"
    return None


def _find_norms(root: Path) -> Path:
    found = sorted(root.glob("*norms*.csv")) or sorted(root.glob("*.csv"))
    if not found:
        raise UserError(f"no SMID norms CSV (e.g. SMID_norms.csv) in {root}")
    return found[0]


def _find_image(dirs: list[Path], name: str) -> Path | None:
    stem = Path(name)
    for d in dirs:
        if stem.suffix.lower() in IMAGE_SUFFIXES and (d / stem).exists():
            return d / stem
        for s in IMAGE_SUFFIXES:
            if (d / (name + s)).exists():
                return d / (name + s)
    return None


def load_smid(root: str | Path, *, norms_csv: str | Path | None = None, image_dir: str | Path | None = None,
              unsafe_max: float = UNSAFE_MAX, safe_min: float = SAFE_MIN,
              limit: int | None = None, balanced: bool = False, subset: str = "all") -> list[LabelledImage]:
    """Items labelled safe/unsafe: from the hub (``hf``, ``hf:<repo>``) or a downloaded hub folder with
    the hub's labels, else from the release's norms. ``balanced`` keeps equally many of each label
    (the first ones in file order, for a cheaper, balanced run)."""
    from unsafe_concepts.data.labelled import is_labelled_folder

    repo = hub_spec(str(root))
    if repo is not None:
        return load_labelled_hub("smid", repo, subset, limit)
    if is_labelled_folder(Path(root)):
        return load_labelled_folder(root, "smid", limit)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"SMID folder not found: {root}")
    if unsafe_max > safe_min:
        raise UserError(f"SMID thresholds: unsafe_max ({unsafe_max}) must not exceed safe_min ({safe_min})")
    norms = Path(norms_csv) if norms_csv else _find_norms(root)
    rows = read_table(norms)
    require_columns(rows[0].keys() if rows else [], ("img_name", "moral_mean"), str(norms))
    dirs = [Path(image_dir)] if image_dir else [root, root / "img", root / "images",
                                                 *sorted(p / "img" for p in root.glob("SMID_images*"))]
    items = []
    for n, r in enumerate(rows, start=2):
        try:
            moral = float(r["moral_mean"])
        except (TypeError, ValueError):
            raise UserError(f"{norms}:{n}: moral_mean is not a number: {r['moral_mean']!r}") from None
        label = binarise(moral, unsafe_max, safe_min)
        if label is None:
            continue
        path = _find_image(dirs, r["img_name"].strip())
        if path is None:
            raise UserError(f"{norms}:{n}: image {r['img_name']!r} not found under {', '.join(map(str, dirs))}")
        items.append(LabelledImage(id=r["img_name"].strip(), image=str(path), label=label, source="smid",
                                   meta={"moral_mean": moral}))
    if balanced:
        k = min(sum(i.label == "safe" for i in items), sum(i.label == "unsafe" for i in items))
        counts = {"safe": 0, "unsafe": 0}
        kept = []
        for i in items:
            if counts[i.label] < k:
                counts[i.label] += 1
                kept.append(i)
        items = kept
    return first_items(items, limit, f"{norms}: no image falls outside the neutral band ({unsafe_max}, {safe_min})")
