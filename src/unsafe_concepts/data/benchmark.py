"""`load_benchmark`: the one entry point that turns a dataset spec into split, typed records."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from unsafe_concepts.data import splits
from unsafe_concepts.data.context import load_context_file
from unsafe_concepts.data.layout import CONTEXT_FILE, PERCEPTION_METADATA, SAFE_DIR, Problems
from unsafe_concepts.data.local import read_perception_file, read_safe_folder, read_unsafe_folder
from unsafe_concepts.data.perception import build_options
from unsafe_concepts.data.records import ImageRecord
from unsafe_concepts.data.reference_files import SHIPPED_CONTEXT, SHIPPED_PERCEPTION
from unsafe_concepts.errors import UserError

log = logging.getLogger(__name__)

BLANK_SIZE = (1000, 1000)


@dataclass
class Benchmark:
    """A loaded dataset: unsafe images (all, split per concept) and safe counterparts (balanced to them).

    ``perception`` maps every unsafe record id to (option_str, correct letter). ``perception_source``
    says where they come from, and run records and reports show it:
    ``"reference"``: the benchmark's fixed option sets (the folder's ``perception_metadata.jsonl``, or
    the copy shipped with the package when the folder's images are the benchmark's);
    ``"generated"``: seeded options built here (custom data, the offline sample);
    ``"reference+generated"``: the folder's file covers only some images.
    ``context`` is None when no context file was found or given; ``context_source`` is ``"folder"``,
    ``"given"``, ``"reference"`` (the shipped file, for real data without its own) or None."""

    root: Path
    unsafe: list[ImageRecord]
    safe: list[ImageRecord]
    perception: dict[str, tuple[str, str]]
    context: dict[str, tuple[str, str]] | None
    synthetic: bool
    spec: str = ""
    safe_root: Path | None = None
    safe_split_method: str | None = None  # "benchmark-indices", "seeded-shuffle" or None (no safe images)
    perception_source: str = "generated"
    context_file: Path | None = None
    context_source: str | None = None
    notes: list[str] = field(default_factory=list)

    def records(self, split: str | None = None, label: str | None = None) -> list[ImageRecord]:
        """Unsafe then safe records, optionally only one split ("train"/"test") and/or label."""
        out = self.unsafe + self.safe
        if split not in (None, "all"):
            out = [r for r in out if r.split == split]
        if label is not None:
            out = [r for r in out if r.label == label]
        return out

    def describe(self) -> dict:
        """A JSON-able summary for run records (paths, counts, how each part was obtained)."""
        u, s = splits.counts(self.unsafe), splits.counts(self.safe)
        return {
            "spec": self.spec, "root": str(self.root), "synthetic": self.synthetic,
            "unsafe": u, "safe": s,
            "safe_root": str(self.safe_root) if self.safe_root else None,
            "safe_split": self.safe_split_method, "perception_options": self.perception_source,
            "context_file": str(self.context_file) if self.context_file else None,
            "context_source": self.context_source,
        }


def blank_image():
    """The text modality's image: white 1000x1000 RGB (for VLMs that require an image)."""
    from PIL import Image

    return Image.new("RGB", BLANK_SIZE, (255, 255, 255))


def load_benchmark(spec: str, safe: str | None = None, context_file: str | None = None) -> Benchmark:
    """Load a dataset by spec: a local folder in the benchmark layout, ``"sample"`` (offline, synthetic,
    generated once under the cache home) or ``"hf"`` (the gated hub dataset, downloaded to the cache).

    ``safe``: a folder of safe images (class name per image) or ``"hf"``; default ``<root>/safe/`` when it
    exists (for ``"hf"``: the hub's safe images). ``context_file``: default ``<root>/context_questions.json``
    when it exists."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("no dataset given: pass a folder in the benchmark layout, 'sample' or 'hf'")
    root = _resolve_spec(spec, want_safe=safe is None)
    problems = Problems()
    unsafe = read_unsafe_folder(root, problems)
    perception = read_perception_file(root, unsafe, problems)
    problems.raise_if_any(f"dataset {root} (run `unsafe-concepts data check {root}` for the full list)")
    if not unsafe:
        raise UserError(f"dataset {root}: {root / 'metadata.jsonl'} lists no images")
    synthetic = spec == "sample" or any(r.synthetic for r in unsafe)
    unsafe = splits.split_unsafe(unsafe)
    notes: list[str] = []
    if not perception and not (root / PERCEPTION_METADATA).is_file():
        perception = _shipped_perception(unsafe)  # the benchmark's images without the file: the shipped copy
    perception_source = "reference" if perception else "generated"
    if perception and len(perception) < len(unsafe):
        missing = [r for r in unsafe if r.id not in perception]
        notes.append(f"{len(missing)} image(s) have no row in perception_metadata.jsonl: seeded options used for them")
        perception = {**build_options(missing), **perception}
        perception_source = "reference+generated"
    elif not perception:
        perception = build_options(unsafe)  # custom images: perception_source "generated" says so in records

    safe_root = _safe_root(root, spec, safe)
    safe_records: list[ImageRecord] = []
    method = None
    if safe_root is not None:
        sp = Problems()
        pool, hub_index = read_safe_folder(safe_root, sp)
        sp.raise_if_any(f"safe images {safe_root} (run `unsafe-concepts data check {safe_root}`)")
        u = splits.counts(unsafe)
        safe_records, method = splits.split_safe(pool, u["train"], u["test"], hub_index=hub_index)
        s = splits.counts(safe_records)
        if (s["train"], s["test"]) != (u["train"], u["test"]):
            notes.append(f"not enough safe images for balance: safe train/test {s['train']}/{s['test']} "
                         f"vs unsafe {u['train']}/{u['test']} ({len(pool)} safe images in {safe_root})")

    ctx_path = Path(context_file).expanduser() if context_file else root / CONTEXT_FILE
    context_source = "given" if context_file else "folder"
    if not context_file and not ctx_path.is_file() and not synthetic:
        ctx_path, context_source = SHIPPED_CONTEXT, "reference"  # real data: the benchmark's own questions
    context = load_context_file(ctx_path) if (context_file or ctx_path.is_file()) else None
    for note in notes:
        log.warning(note)
    return Benchmark(
        root=root, unsafe=unsafe, safe=safe_records, perception=perception, context=context,
        synthetic=synthetic, spec=spec, safe_root=safe_root,
        safe_split_method=method, perception_source=perception_source,
        context_file=ctx_path if context is not None else None,
        context_source=context_source if context is not None else None, notes=notes,
    )


def _shipped_perception(unsafe: list[ImageRecord]) -> dict[str, tuple[str, str]]:
    """The shipped fixed option sets when ``unsafe`` are the benchmark's images (every id has a row
    there naming the same concept); {} otherwise (custom data gets generated options)."""
    shipped = Problems()
    options = read_perception_file(SHIPPED_PERCEPTION.parent, unsafe, shipped)
    # read_perception_file keeps a row only when its correct option names the record's concept
    return options if len(options) == len(unsafe) else {}


def _resolve_spec(spec: str, want_safe: bool) -> Path:
    if spec == "sample":
        from unsafe_concepts.data.sample import ensure_sample

        return ensure_sample()
    if spec == "hf":
        from unsafe_concepts.data.hub import ensure_hub_dataset

        return ensure_hub_dataset(with_safe=want_safe)
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset {spec!r}: not a folder, and not 'sample' or 'hf'")
    return root.resolve()


def _safe_root(root: Path, spec: str, safe: str | None) -> Path | None:
    if safe == "hf":
        from unsafe_concepts.data.hub import ensure_hub_safe

        return ensure_hub_safe()
    if safe:
        path = Path(safe).expanduser()
        if not path.is_dir():
            raise UserError(f"safe image folder {safe!r} does not exist")
        return path.resolve()
    default = root / SAFE_DIR
    return default if default.is_dir() else None
