"""The Python face of the tool, small on purpose::

    from unsafe_concepts import build_report, evaluate

    text = evaluate("smollm2-135m", "alignment_text_only", data="sample", out="runs/text", limit=12, judge="rule")
    print(text)                      # one line: task, model, answered, overall [interval], folder
    print(text.metrics["overall"])   # the numbers of metrics.json
    build_report([text.out], "runs/report")

``evaluate`` is the ``evaluate`` command (the same runner, the same run folders): several models or tasks
make a sweep, one folder per pair under ``out``. ``load_model`` and ``load_judge`` give the objects to
reuse across calls; ``task`` registers a new task (see ``unsafe_concepts.tasks``).
"""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts.tasks import Task, task  # noqa: F401  (re-exported)

__all__ = ["evaluate", "load_model", "load_judge", "build_report", "task", "Task"]


def evaluate(model: str | list[str], task: str | list[str], *, out: str | Path, data: str | None = None,
             limit: int | None = None, judge: str | None = None, backend=None, quiet: bool = True, **settings):
    """Ask ``task`` of ``model`` into the run folder ``out`` (resumed if it exists) and score it.

    ``settings``: any other ``RunConfig`` field (``max_new_tokens``, ``greedy``, ``scoring``, ``adapter``,
    ...). Returns a ``RunResult`` (or a ``SweepResult`` for several models or tasks)."""
    from unsafe_concepts.runs import RunConfig, run_task, sweep

    models = [model] if isinstance(model, str) else list(model)
    tasks = [task] if isinstance(task, str) else list(task)
    generation = RunConfig(model="", task="").generation
    for key in list(settings):
        if key in generation:
            generation[key] = settings.pop(key)
    if settings.pop("greedy", False):
        generation["do_sample"] = False
    config = RunConfig(model=models[0], task=tasks[0], data=data, limit=limit, judge=judge, generation=generation,
                       **settings)
    if len(models) == 1 and len(tasks) == 1:
        return run_task(config, out, backend=backend, quiet=quiet)
    return sweep(models, tasks, out, config, quiet=quiet, summary=not quiet,
                 backends={models[0]: backend} if backend is not None and len(models) == 1 else None)


def load_model(spec: str, **kwargs):
    """A model backend (``hf:...``, ``openai:...``, ``smollm2-135m``, ``tiny-vlm``), to pass as ``backend=``."""
    from unsafe_concepts.models.registry import load_model as _load

    return _load(spec, **kwargs)


def load_judge(name: str | None = None):
    """A response judge by name (default: the default judge)."""
    from unsafe_concepts.judges import load_judge as _load
    from unsafe_concepts.scorers import default_judge

    return _load(name or default_judge())


def build_report(run_dirs, out: str | Path):
    """Build the report (tables, plots, report.html) from run folders; returns the report object."""
    from unsafe_concepts.report.build import build_report as _build

    return _build([Path(d) for d in run_dirs], Path(out))
