"""unsafe-concepts: measure and close the modality gap of VLMs on unsafe concepts."""
import os as _os

# Idle OpenMP threads sleep instead of spinning. With spinning (the libgomp default) torch on a
# shared or oversubscribed CPU slows down up to ~9x (measured: SmolLM2 generation, 2 threads, busy
# 2-core machine: 25.5 s vs 2.8 s). Must be set before torch is imported; a user's value wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# The Python API (unsafe_concepts/api.py), imported on first use so that `import unsafe_concepts` stays light.
# (`build_report`, not `report`: unsafe_concepts.report is the report's package.)
__all__ = ["evaluate", "load_model", "load_judge", "build_report", "task", "Task", "__version__"]


def __getattr__(name: str):
    if name in ("evaluate", "load_model", "load_judge", "build_report", "task", "Task"):
        from unsafe_concepts import api

        return getattr(api, name)
    raise AttributeError(f"module 'unsafe_concepts' has no attribute {name!r}")
