"""Fixtures of the data tests (helpers in _data_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from _data_helpers import make_dataset


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """Valid folder: 4 concepts (5, 10, 1, 4 images) and 30 safe images."""
    return make_dataset(tmp_path / "ds", {"Swastika": 5, "Arson": 10, "Graffiti": 1, "Torture": 4}, safe=30)
