"""Fixtures of the evaluation-set tests (built by tests/evalsets/builders.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import builders  # noqa: E402


@pytest.fixture
def mme_tsv(tmp_path):
    return builders.build_mme_tsv(tmp_path)


@pytest.fixture
def llava_folder(tmp_path):
    return builders.build_llava_folder(tmp_path)


@pytest.fixture
def smid_folder(tmp_path):
    return builders.build_smid_folder(tmp_path)


@pytest.fixture
def nsfw_folder(tmp_path):
    return builders.build_nsfw_folder(tmp_path)
