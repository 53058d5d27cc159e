"""Read run folders (run.json + responses.jsonl) and score them; a broken folder becomes a message."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from unsafe_concepts import metrics
from unsafe_concepts.errors import UserError

RESPONSES, RUN_JSON = "responses.jsonl", "run.json"


class RunProblem(UserError):
    """A run folder the report cannot use; the message names the folder and what to do."""


@dataclass
class RunData:
    path: Path
    record: dict
    rows: list[dict]
    summary: dict
    after_training: bool
    notes: list[str] = field(default_factory=list)
    system: str = ""  # the row label in every table, set when runs are grouped

    @property
    def config(self) -> dict:
        return self.record.get("config") or {}

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def model(self) -> str:
        return str(self.config.get("model"))

    @property
    def adapter(self) -> str | None:
        return self.config.get("adapter")

    @property
    def data(self) -> str:
        return str(self.config.get("data", "?"))

    @property
    def model_info(self) -> dict:
        return self.record.get("model_info") or {}

    @property
    def untrained_vision(self) -> bool:
        return bool(self.model_info.get("untrained_vision"))

    @property
    def judge(self) -> str:
        judge = self.record.get("judge")
        if isinstance(judge, dict) and judge.get("name"):
            return str(judge["name"])
        if isinstance(judge, str):
            return judge
        if self.config.get("judge"):
            return str(self.config["judge"])
        names = sorted({str(r["judge"]) for r in self.rows if r.get("judge")})
        return ", ".join(names) or "unknown"


def after_training_for(task: str, rows: list[dict]) -> bool:
    """Registered tasks say it themselves; an unknown task counts as post-training when it has safe items."""
    from unsafe_concepts.tasks import TASKS

    if task in TASKS:
        return TASKS[task].after_training
    return any(r.get("label") == "safe" for r in rows)


def read_rows(path: Path, notes: list[str]) -> list[dict]:
    """The rows of responses.jsonl, last copy of each id (resumed runs may repeat one).

    A torn last line (a run killed mid-write) is skipped with a note; a broken line elsewhere is a problem."""
    lines = path.read_text(encoding="utf-8").splitlines()
    by_id: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                notes.append(f"last line of {path.name} is incomplete (run interrupted?) and was skipped")
                continue
            raise RunProblem(f"{path}: line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "id" not in row:
            raise RunProblem(f"{path}: line {number} is not a response row (no 'id')")
        by_id[str(row["id"])] = row
    return list(by_id.values())


def load_run(run_dir: str | Path, *, n_boot: int = 1000, seed: int = 0) -> RunData:
    """One judged run folder, scored with ``metrics.summarize``; RunProblem when it cannot be used."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunProblem(f"{path}: no such run folder")
    run_json, responses = path / RUN_JSON, path / RESPONSES
    if not run_json.exists():
        raise RunProblem(f"{path}: no {RUN_JSON}, so not a run folder of `unsafe-concepts evaluate`")
    try:
        record = json.loads(run_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunProblem(f"{run_json}: not valid JSON ({e})") from None
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict) or not config.get("task") or not config.get("model"):
        raise RunProblem(f"{run_json}: needs config.model and config.task")
    if not responses.exists():
        raise RunProblem(f"{path}: no {RESPONSES} yet (the run has not answered anything)")
    notes: list[str] = []
    rows = read_rows(responses, notes)
    if not rows:
        raise RunProblem(f"{path}: {RESPONSES} has no rows yet")
    task = config["task"]
    unjudged = [r for r in rows if not r.get("error") and r.get("verdict") is None]
    if unjudged:
        raise RunProblem(f"{path}: not judged yet ({len(unjudged)} of {len(rows)} answers have no verdict); "
                         "judge it first (run the same `unsafe-concepts evaluate` command again with --judge)")
    after = after_training_for(task, rows)
    try:
        summary = metrics.summarize(rows, task, after_training=after, n_boot=n_boot, seed=seed)
    except UserError as e:
        raise RunProblem(f"{path}: {e}") from None
    return RunData(path=path, record=record, rows=rows, summary=summary, after_training=after, notes=notes)


def assign_systems(runs: list[RunData]) -> list[str]:
    """Give every run the label of its model ("system"), unique per task; returns notes about clashes.

    The label is the model spec (+ adapter folder name), plus the data when runs on different data are
    mixed, plus a warning for an untrained vision tower (so no table shows such numbers unlabelled)."""
    notes = []
    several_data = len({r.data for r in runs}) > 1
    seen: dict[tuple[str, str], RunData] = {}
    for run in runs:
        label = run.model
        if run.adapter:
            label += f" + {Path(str(run.adapter)).name}"
        if several_data:
            label += f" @ {run.data}"
        if run.untrained_vision:
            label += " [untrained vision]"
        if (label, run.task) in seen:
            first = seen[(label, run.task)]
            notes.append(f"{run.path} repeats model {label} on task {run.task} (also in {first.path}); "
                         f"shown as a separate row")
            label += f" ({run.path.name})"
        seen[(label, run.task)] = run
        run.system = label
    return notes
