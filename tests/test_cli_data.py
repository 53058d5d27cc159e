"""`unsafe-concepts data ...`: splits, check, sample (typographic), all through the real CLI entry."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsafe_concepts.cli import main

sys.path.insert(0, str(Path(__file__).parent / "data"))
from _data_helpers import make_dataset  # noqa: E402


def test_data_splits_prints_unsafe_and_safe_counts(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", {"Arson": 10, "Torture": 5}, safe=40)
    assert main(["data", "splits", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("unsafe ", "safe  "))}
    assert lines["unsafe"] == ["12", "3", "15"] and lines["safe"] == ["12", "3", "15"]
    assert "seeded-shuffle" in out


def test_data_splits_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "splits", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset") and "Traceback" not in err


def test_data_check_on_a_missing_path(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_data_sample_typographic_writes_a_checkable_dataset(tmp_path, capsys):
    out = tmp_path / "typo"
    assert main(["data", "sample", "--out", str(out), "--typographic"]) == 0
    assert "typographic" in capsys.readouterr().out
    assert "IS written" in (out / "README.txt").read_text()
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 375 and all(r["synthetic"] and r["kind"] == "typographic placeholder" for r in rows)
    pixels = np.asarray(Image.open(out / rows[0]["image_filename"]).convert("RGB"))
    assert (pixels.reshape(-1, 3) == 0).all(axis=1).any()  # black text drawn on the placeholder
    assert main(["data", "check", str(out)]) == 0
    assert "total" in capsys.readouterr().out
    # a second run refuses to overwrite
    assert main(["data", "sample", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
