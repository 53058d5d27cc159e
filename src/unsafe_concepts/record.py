"""The run record (``run.json``), typed and versioned: what was asked (task, version), of which model
(identity, weights fingerprint), on which data (fingerprint, or hub id and revision), scored by what.
The format is documented in docs/evaluation-runs.md; readers check ``format_version``."""
from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

FORMAT_VERSION = 2

# What must not change between a run and its resumption: the model's identity, as its backend
# describes it (keys absent on either side are not compared).
MODEL_IDENTITY_KEYS = ("backend", "source", "revision", "architecture", "model_type", "adapter", "model",
                       "weights_fingerprint")
# Files that say what a local dataset folder holds; images are fingerprinted by name and size only.
_METADATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")
_MAX_HASHED_BYTES = 64 << 20


@dataclass
class RunRecord:
    task: dict
    data: dict
    model: dict
    config: dict
    environment: dict
    created: str
    scorer: dict | None = None
    scoring: str = "generate"
    suite: str | None = None
    synthetic: bool = False
    model_info: dict = field(default_factory=dict)
    judge: dict | None = None
    status: dict = field(default_factory=dict)
    resumed: str | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def __repr__(self) -> str:
        return (f"RunRecord({self.task.get('name')} v{self.task.get('version')} | {self.config.get('model')} | "
                f"data {self.data.get('spec')}{' (synthetic)' if self.synthetic else ''} | "
                f"scorer {(self.scorer or {}).get('name')})")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def redact_url(url: str | None) -> str | None:
    """A URL fit for a record: no user:password, no query string or fragment (where keys tend to hide)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # not a URL we can parse: keep nothing of it
        return "<unparsable url>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_arg(arg: str) -> str:
    """One argv item for a record: URLs redacted, also in the ``--flag=value`` form."""
    if "://" not in arg:
        return arg
    if arg.startswith("-") and "=" in arg:
        flag, _, value = arg.partition("=")
        return f"{flag}={redact_url(value)}"
    return redact_url(arg)


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict:
    """Versions and the code's commit, so a run folder describes how it was made."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("unsafe-concepts", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "httpx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"versions": versions, "git_commit": git_commit(), "platform": platform.platform(),
            "argv": [redact_arg(a) for a in sys.argv]}


def fingerprint_path(path: str | Path) -> str | None:
    """``sha256:...`` of a file, or of a folder's metadata files (content) and every file's name and size.
    Cheap on a benchmark folder (images are listed, not read); None when the path does not exist."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            h.update(f.read(_MAX_HASHED_BYTES))
        h.update(str(path.stat().st_size).encode())
        return "sha256:" + h.hexdigest()
    if not path.is_dir():
        return None
    budget = _MAX_HASHED_BYTES
    for p in sorted(x for x in path.rglob("*") if x.is_file() and not x.name.startswith(".")):
        rel = p.relative_to(path).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
        if p.suffix.lower() in _METADATA_SUFFIXES and size <= budget:
            h.update(p.read_bytes())
            budget -= size
    return "sha256:" + h.hexdigest()


def describe_data(spec: str | None, loaded=None, n_items: int | None = None) -> dict:
    """What the data of a run are: the spec as given, where it resolved to, a fingerprint, synthetic or not."""
    out: dict = {"spec": spec, "n_items": n_items}
    described = loaded.describe() if hasattr(loaded, "describe") else None
    synthetic = bool(getattr(loaded, "synthetic", False)) or spec == "sample"
    if spec == "sample":
        out["source"] = "sample"
    elif spec in ("heldout-text", "general-check"):
        out["source"] = "resource"
    elif spec and (spec == "hf" or spec.startswith("hf:")):
        out["source"] = "hub"
        out["hub_id"] = spec[3:] or None
    else:
        out["source"] = "local"
    root = getattr(loaded, "root", None)
    path = root if root is not None else (Path(spec) if spec and out["source"] == "local" else None)
    if path is not None:
        out["path"] = str(Path(path).resolve())
        if out["source"] in ("local", "sample"):
            out["fingerprint"] = fingerprint_path(path)
    if out["source"] == "hub":
        out["revision"] = (described or {}).get("revision")
    if described:
        out["details"] = described
    out["synthetic"] = synthetic
    return out


def model_identity(described: dict) -> dict:
    """The backend's self-description plus a cheap fingerprint of the weights it loaded (and adapter)."""
    identity = dict(described)
    parts = []
    for key in ("source", "adapter"):
        value = described.get(key)
        if value and Path(str(value)).is_dir():
            parts.append(_weights_fingerprint(Path(str(value))))
    if parts and all(parts):
        identity["weights_fingerprint"] = "sha256:" + hashlib.sha256("|".join(parts).encode()).hexdigest()
    return identity


def _weights_fingerprint(folder: Path) -> str | None:
    """Names, sizes and the first and last MiB of every weights file, and the config files' content."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        return None
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}\0{size}\n".encode())
        with open(p, "rb") as f:
            if p.suffix in (".json", ".txt", ".model") and size < (8 << 20):
                h.update(f.read())
            elif p.suffix in (".safetensors", ".bin", ".gguf"):
                h.update(f.read(1 << 20))
                if size > (2 << 20):
                    f.seek(-(1 << 20), 2)
                    h.update(f.read())
    return h.hexdigest()


def identity_differences(old: dict, new: dict) -> dict:
    """Keys of MODEL_IDENTITY_KEYS whose values differ where both sides have them."""
    return {k: (old[k], new[k]) for k in MODEL_IDENTITY_KEYS
            if old.get(k) is not None and new.get(k) is not None and old[k] != new[k]}
