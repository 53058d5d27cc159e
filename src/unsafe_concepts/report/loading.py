"""Read run folders (run.json + responses.jsonl) and score them; a broken folder becomes a message."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from unsafe_concepts import metrics
from unsafe_concepts.errors import UserError
from unsafe_concepts.io import read_jsonl

RESPONSES, RUN_JSON = "responses.jsonl", "run.json"
# The tasks on the UnsafeConcepts benchmark itself (the paper's tables); evaluation sets bring their own data.
TABLE_TASKS = {"perception", "alignment", "alignment_text_only", "alignment_context", "alignment_text_only_context",
               "unsafeconcepts_test", "unsafeconcepts_test_text"}


class RunProblem(UserError):
    """A run folder the report cannot use; the message names the folder and what to do."""


@dataclass
class RunData:
    """One run folder as the report sees it. Reads run.json of format version 2 (docs/evaluation-runs.md)
    and falls back to the version-1 keys (``config``, ``model_info``, ``judge``) when the new ones are absent."""

    path: Path
    record: dict = field(repr=False)
    rows: list[dict] = field(repr=False)
    summary: dict = field(repr=False)
    after_training: bool
    notes: list[str] = field(default_factory=list, repr=False)
    system: str = ""  # the row label in every table, set when runs are grouped
    metrics_file: dict = field(default_factory=dict, repr=False)  # metrics.json as written by the run, if any

    def __repr__(self) -> str:
        overall = (self.summary or {}).get("overall") or {}
        value = overall.get("value")
        return (f"RunData({self.path.name}: {self.model} / {self.task if self.record else '?'}, {len(self.rows)} rows, "
                f"overall {'n/a' if value is None else f'{value:.3f}'})")

    def _section(self, key: str) -> dict:
        value = self.record.get(key)
        return value if isinstance(value, dict) else {}

    @property
    def format_version(self) -> int:
        v = self.record.get("format_version")
        return v if isinstance(v, int) else 1

    @property
    def config(self) -> dict:
        return self._section("config")

    @property
    def task(self) -> str:
        return str(self._section("task").get("name") or self.config["task"])

    @property
    def task_kind(self) -> str | None:
        """The task's declared kind (``alignment``, ``perception``, ``mme``, ``llavabench``, ``yesno``)."""
        return self._section("task").get("kind") or self.metrics_file.get("task_kind")

    @property
    def metrics_kind(self) -> str | None:
        return self._section("task").get("metrics") or self.metrics_file.get("metrics_kind")

    @property
    def model(self) -> str:
        return str(self._section("model").get("spec") or self.config.get("model"))

    @property
    def adapter(self) -> str | None:
        model = self._section("model")
        return model.get("adapter") if "adapter" in model else self.config.get("adapter")

    @property
    def data(self) -> str:
        data = self._section("data")
        return str(data.get("spec") or self.config.get("data", "?"))

    @property
    def model_info(self) -> dict:
        identity = self._section("model").get("identity")
        return identity if isinstance(identity, dict) else self._section("model_info")

    @property
    def untrained_vision(self) -> bool:
        return bool(self.model_info.get("untrained_vision") or self.metrics_file.get("untrained_vision"))

    @property
    def synthetic(self) -> bool:
        """Numbers on the offline synthetic sample say nothing about a model. Version-1 folders did not
        record it: their ``--data sample`` is the synthetic sample."""
        if "synthetic" in self.record:
            return bool(self.record["synthetic"])
        data = self._section("data")
        if "synthetic" in data:
            return bool(data["synthetic"])
        if "synthetic" in self.metrics_file:
            return bool(self.metrics_file["synthetic"])
        return self.format_version < 2 and self.config.get("data") == "sample"

    @property
    def suite(self) -> str | None:
        return self.record.get("suite") or None

    @property
    def judge(self) -> str:
        scorer = self.record.get("scorer")
        if isinstance(scorer, dict) and scorer.get("name"):
            return str(scorer["name"])
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
    """Version-1 folders: registered tasks say it themselves; an unknown task counts as post-training
    when it has safe items."""
    from unsafe_concepts.tasks import TASKS

    if task in TASKS:
        return TASKS[task].after_training
    return any(r.get("label") == "safe" for r in rows)


def read_rows(path: Path, notes: list[str]) -> list[dict]:
    """The rows of responses.jsonl, last copy of each id (resumed runs may repeat one), read as the run
    store reads them (``io.read_jsonl``): a torn last line (a run killed mid-write) or a broken line
    elsewhere is skipped and named in a note; the valid rows after it are kept. The folder is not changed
    (the runner sets broken lines aside in ``responses.jsonl.corrupt`` when it next works on the folder)."""
    content = read_jsonl(path, require_id=True)
    if content.torn_tail:
        notes.append(f"last line of {path.name} is incomplete (run interrupted?) and was skipped")
    for number, _, why in content.bad:
        notes.append(f"line {number} of {path.name} skipped: {why}")
    by_id: dict[str, dict] = {}
    for row in content.rows:
        by_id[str(row["id"])] = row
    return list(by_id.values())


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunProblem(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise RunProblem(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise RunProblem(f"{path}: not a JSON object")
    return data


def load_run(run_dir: str | Path) -> RunData:
    """One scored run folder; RunProblem (naming the folder and what to do) when it cannot be used.

    The figures are recomputed from responses.jsonl by ``metrics.summarize_run``, the function that writes
    metrics.json, under the task's declared metrics kind (or, for folders of format version 1, the kind
    its name implies): so they agree with the rows the report shows and carry this version's intervals.
    Only the diversity of the answers (1 - Self-BLEU, seconds per run) is taken from metrics.json when
    that file describes the same rows."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunProblem(f"{path}: " + ("a file, not a run folder" if path.exists() else "no such run folder"))
    run_json, responses = path / RUN_JSON, path / RESPONSES
    if not run_json.exists():
        raise RunProblem(f"{path}: no {RUN_JSON}, so not a run folder of `unsafe-concepts evaluate`")
    record = _read_json(run_json)
    if record.get("kind") == "attack":  # FGSM/PGD folders have their own table (docs/adversarial.md)
        raise RunProblem(f"{path}: an adversarial-attack folder; compare attacks with "
                         f"`unsafe-concepts attack table {path} ...`")
    run = RunData(path=path, record=record, rows=[], summary={}, after_training=False)
    try:
        task, model = run.task, run.model
    except KeyError:
        task = model = None
    if not task or not model or model == "None":
        raise RunProblem(f"{run_json}: names no task or model (needs task.name and model.spec, or config.task "
                         "and config.model)")
    if not responses.exists():
        raise RunProblem(f"{path}: no {RESPONSES} yet (the run has not answered anything)")
    rows = read_rows(responses, run.notes)
    if not rows:
        why = "; ".join(n for n in run.notes if RESPONSES in n)
        raise RunProblem(f"{path}: {RESPONSES} has no readable row" + (f" ({why})" if why else " yet"))
    run.rows = rows
    metrics_path = path / "metrics.json"
    if metrics_path.exists():
        try:
            run.metrics_file = _read_json(metrics_path)
        except RunProblem as e:
            run.notes.append(f"{e}; figures recomputed from the rows")
    task_section = record.get("task") if isinstance(record.get("task"), dict) else {}
    run.after_training = (bool(task_section["after_training"]) if "after_training" in task_section
                          else after_training_for(task, rows))
    kind = run.metrics_kind or metrics.legacy_kind(task, run.after_training)
    if kind != "llavabench":  # LLaVA-Bench rows carry a review instead (summarize_run checks them)
        unjudged = [r for r in rows if not r.get("error") and r.get("verdict") is None]
        if unjudged:
            raise RunProblem(f"{path}: not judged yet ({len(unjudged)} of {len(rows)} answers have no verdict); "
                             "judge it first (run the same `unsafe-concepts evaluate` command again with --judge)")
    stored = run.metrics_file if run.metrics_file.get("n_rows") == len(rows) else {}
    try:
        if kind == "after_training" and "diversity" in stored:
            summary = metrics.summarize(rows, task, kind=kind, after_training=run.after_training)
            summary["diversity"] = stored["diversity"]
        else:
            summary = metrics.summarize_run(rows, task, kind=kind, after_training=run.after_training)
    except UserError as e:
        raise RunProblem(f"{path}: {e}") from None
    run.summary = summary
    return run


def assign_systems(runs: list[RunData]) -> list[str]:
    """Give every run the label of its model ("system"), unique per task; returns notes about clashes.

    The label is the model spec (+ adapter folder name), plus the data when the benchmark tasks of that
    model ran on different data (so that no gap pairs runs on two datasets; evaluation sets such as MME
    bring their own data and do not count), plus a warning for an untrained vision tower (so no table
    shows such numbers unlabelled)."""
    def base(run):
        return run.model + (f" + {Path(str(run.adapter)).name}" if run.adapter else "")

    benchmark_data: dict[str, set[str]] = {}
    for run in runs:
        if run.task in TABLE_TASKS:
            benchmark_data.setdefault(base(run), set()).add(run.data)
    notes = []
    seen: dict[tuple[str, str], RunData] = {}
    for run in runs:
        label = base(run)
        if run.task in TABLE_TASKS and len(benchmark_data.get(label, ())) > 1:
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
