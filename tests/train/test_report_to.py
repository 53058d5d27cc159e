"""Training curves to TensorBoard / W&B through the usual ``report_to`` (off by default)."""
import dataclasses

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common
from unsafe_concepts.train.sft import SFTConfig


def test_off_by_default_and_unknown_names_refused():
    assert common.trackers(None) == [] and common.trackers("none") == []
    assert SFTConfig().report_to == "none"
    with pytest.raises(UserError, match="unknown tracker 'tensorbord'"):
        common.trackers("tensorbord")
    with pytest.raises(UserError, match="unknown tracker"):
        dataclasses.replace(SFTConfig(), report_to="mlflow").validate()


def test_trl_trainers_get_report_to(tmp_path):
    from trl import SFTConfig as TRLSFTConfig

    from unsafe_concepts.train import trl_runner

    config = dataclasses.replace(SFTConfig(), out_dir=str(tmp_path), report_to="tensorboard")
    args = trl_runner.trl_args(config, TRLSFTConfig)
    assert args.report_to == ["tensorboard"]
    assert trl_runner.trl_args(dataclasses.replace(config, report_to="none"), TRLSFTConfig).report_to in ([], "none")


def test_ppo_logger_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tracking] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = common.TrainLogger(tmp_path, report_to="tensorboard")
    logger.log(1, reward=0.25, loss=1.5, note="text is kept in log.jsonl only")
    logger.log(2, reward=0.75, loss=1.0)
    events = EventAccumulator(str(tmp_path / "runs"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"reward", "loss"}
    assert [(e.step, e.value) for e in events.Scalars("reward")] == [(1, 0.25), (2, 0.75)]
    assert len(logger.rows()) == 2  # log.jsonl is still written
