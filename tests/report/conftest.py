"""Session fixtures: the synthetic run folders of report_fixtures.py and one report built from them."""
from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import BROKEN, GOOD, make_runs


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    return make_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def built_report(run_dirs, tmp_path_factory):
    from unsafe_concepts.report import build_report

    out = tmp_path_factory.mktemp("report")
    return build_report([run_dirs[k] for k in GOOD + BROKEN], out)
