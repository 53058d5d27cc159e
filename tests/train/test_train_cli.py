"""The train command refuses bad input before it writes anything, and never unpickles a checkpoint."""
from __future__ import annotations

import json
import pickle

import pytest

from unsafe_concepts.cli import main


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err
    return err


def test_corrupt_run_record_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.json").write_text('{"method": "ppo", "config": {"seed": 0', encoding="utf-8")  # cut mid-write
    before = _snapshot(out)
    assert main(["train", "sft", "--model", "smollm2-135m", "--modality", "text", "--out", str(out)]) == 2
    assert "train.json is damaged" in _one_line_error(capsys)
    assert _snapshot(out) == before


def test_resume_with_another_seed_is_refused_and_changes_no_file(tmp_path, capsys):
    # A folder as a finished run leaves it (hand-written record; its checkpoint folder is what binds it).
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    record = {"method": "sft", "config": {"model": "smollm2-135m", "modality": "text", "data": "sample", "seed": 0,
                                          "lora_r": 128, "lora_alpha": 256}, "started": "2026-01-01T00:00:00+00:00"}
    (out / "train.json").write_text(json.dumps(record), encoding="utf-8")
    before = _snapshot(out)
    assert main(["train", "sft", "--model", "smollm2-135m", "--modality", "text", "--seed", "1", "--out", str(out)]) == 2
    assert "seed=0" in _one_line_error(capsys)
    assert _snapshot(out) == before


def test_image_modality_on_a_text_model_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    for method in ("ppo", "sft"):
        assert main(["train", method, "--model", "smollm2-135m", "--modality", "image", "--out", str(out)]) == 2
        assert "text-only model" in _one_line_error(capsys)
        assert not out.exists()


class _Payload:
    """Unpickling this object would create the file ``marker`` (what a planted checkpoint could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_old_pickled_checkpoint_is_refused_not_loaded(tmp_path, capsys):
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "config": {}}), encoding="utf-8")
    marker = tmp_path / "code-ran"
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps(_Payload(marker)))
    code = main(["train", "ppo", "--model", "smollm2-135m", "--modality", "text", "--out", str(out)])
    assert code == 2
    assert "older version" in _one_line_error(capsys)
    assert not marker.exists()
    assert not (out / "train.json").exists()


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_damaged_checkpoint_state_is_a_clear_error(tmp_path, capsys, text):
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(text, encoding="utf-8")
    assert main(["train", "ppo", "--model", "smollm2-135m", "--modality", "text", "--out", str(out)]) == 2
    assert "state.json" in _one_line_error(capsys)
