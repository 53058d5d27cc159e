"""Evaluation runs: the resumable run store and the `evaluate` command.

A run folder holds
- ``responses.jsonl``: one row per query, appended and flushed as each batch completes;
- ``run.json``: the full configuration, package versions, git commit, seed, the model spec
  (never a secret), what the model is (``model_info``) and the judge used;
- ``metrics.json``: written once the responses are judged.

Running the same command again resumes: finished rows are skipped, rows that failed are asked
again, nothing is duplicated, also after the process was killed mid-write. Asking for a
different configuration on an existing folder is refused, so results are never silently mixed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from unsafe_concepts import prompts as protocol_prompts
from unsafe_concepts.errors import UserError

RESPONSES, RUN_JSON, METRICS = "responses.jsonl", "run.json", "metrics.json"

# Settings that change what the rows mean. Batch size, concurrency, device and the judge do not:
# they may differ between a run and its resumption. ``--limit`` may grow (the seeded selection of a
# larger limit contains the smaller one), never shrink.
IDENTITY_KEYS = ("model", "adapter", "task", "data", "safe_data", "context_file", "split", "prompts", "generation",
                 "text_only")


@dataclass
class RunConfig:
    model: str
    task: str
    data: str
    generation: dict
    adapter: str | None = None
    safe_data: str | None = None
    context_file: str | None = None
    split: str = "all"
    limit: int | None = None
    prompts: list[int] = field(default_factory=lambda: list(range(len(protocol_prompts.ALIGNMENT_PROMPTS))))
    batch_size: int = 8
    judge: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name; the key itself is never recorded
    dtype: str | None = None
    device: str | None = None
    concurrency: int = 8
    text_only: bool = False

    def identity(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in IDENTITY_KEYS}


def redact_url(url: str | None) -> str | None:
    """A URL fit for a record: no user:password, no query string (where keys tend to hide)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --- the store -------------------------------------------------------------------------------


class RunStore:
    """The files of one run folder, with crash-safe appends."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.responses = self.dir / RESPONSES
        self.run_json = self.dir / RUN_JSON
        self.metrics = self.dir / METRICS

    # run.json
    def read_record(self) -> dict | None:
        if not self.run_json.exists():
            return None
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{self.run_json} is not valid JSON ({e}); move the folder aside or fix the file") from None

    def write_record(self, record: dict) -> None:
        _atomic_write(self.run_json, json.dumps(record, indent=2, ensure_ascii=False) + "\n")

    def open(self, config: RunConfig) -> dict:
        """Create the folder, or check that an existing one was made with the same configuration."""
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"--out {self.dir} exists and is not a folder")
        self.dir.mkdir(parents=True, exist_ok=True)
        record = self.read_record()
        if record is None:
            if self.responses.exists() and self.responses.stat().st_size:
                raise UserError(f"{self.dir} has {RESPONSES} but no {RUN_JSON}: it is not a run folder of this tool; "
                                "choose another --out")
            record = {"config": _recorded(config), "created": _now(), "environment": environment()}
        else:
            defaults = {f.name: f.default for f in fields(RunConfig)}  # keys added since the run was made
            old = {k: record.get("config", {}).get(k, defaults.get(k)) for k in IDENTITY_KEYS}
            new = config.identity()
            diff = {k: (old[k], new[k]) for k in IDENTITY_KEYS if _norm(old[k]) != _norm(new[k])}
            old_limit = record["config"].get("limit")
            if old_limit is None and config.limit is not None or (config.limit or 0) < (old_limit or 0):
                diff["limit"] = (old_limit, config.limit)
            if diff:
                lines = "\n".join(f"  {k}: run has {a!r}, you asked {b!r}" for k, (a, b) in diff.items())
                raise UserError(f"{self.dir} holds a run with a different configuration:\n{lines}\n"
                                "Use another --out, or repeat the original settings to resume.")
            # Settings that may change on resumption are updated; the rest stays as first recorded.
            record["config"].update({k: v for k, v in _recorded(config).items() if k not in IDENTITY_KEYS})
            record["resumed"] = _now()
            record["environment"] = environment()
        self.write_record(record)
        return record

    # responses.jsonl
    def read_rows(self) -> list[dict]:
        """Every complete row. A torn last line (killed mid-write) is dropped, and the file cut
        back to its last complete line so that appends start clean."""
        if not self.responses.exists():
            return []
        data = self.responses.read_bytes()
        rows, good_end = [], 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_end += len(line)
        if good_end != len(data):
            with open(self.responses, "r+b") as f:
                f.truncate(good_end)
        return rows

    def append(self, rows: list[dict]) -> None:
        with open(self.responses, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, rows: list[dict]) -> None:
        _atomic_write(self.responses, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def finished_rows(self) -> list[dict]:
        """Rows to keep on resumption: answered rows, last copy of each id. Failed rows are
        dropped (and asked again); the file is compacted when anything was dropped."""
        rows = self.read_rows()
        by_id: dict[str, dict] = {}
        for row in rows:
            by_id[row["id"]] = row
        kept = [r for r in by_id.values() if r.get("error") is None]
        if len(kept) != len(rows):
            self.rewrite(kept)
        return kept


def _recorded(config: RunConfig) -> dict:
    """The configuration as recorded in run.json: the server URL without credentials."""
    d = asdict(config)
    d["base_url"] = redact_url(d["base_url"])
    return d


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _norm(v):
    return json.loads(json.dumps(v))  # tuples vs lists, etc.


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict:
    """Versions and the code's commit, so a run folder describes how it was made."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("unsafe-concepts", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "httpx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"versions": versions, "git_commit": git_commit(), "platform": platform.platform(),
            "argv": [_redact_arg(a) for a in sys.argv]}


def _redact_arg(arg: str) -> str:
    return redact_url(arg) if "://" in arg else arg


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# --- evaluation ------------------------------------------------------------------------------


def select(samples: list, limit: int | None, seed: int) -> list:
    """The first ``limit`` samples after a seeded shuffle (all of them, in order, without a limit)."""
    if limit is None or limit >= len(samples):
        return samples
    if limit <= 0:
        raise UserError("--limit must be a positive number")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    return [samples[i] for i in sorted(order[:limit])]


def evaluate(config: RunConfig, out_dir: str | Path, *, backend=None, judge=None, quiet: bool = False) -> dict:
    """Ask every sample of the task that the run folder does not have yet; judge; write metrics.

    ``backend``/``judge`` may be passed in (already loaded) to share them across runs."""
    from tqdm import tqdm

    from unsafe_concepts.models.base import GenerationConfig, Query
    from unsafe_concepts.tasks import BLANK, TaskOptions, get_task

    task = get_task(config.task)
    store = RunStore(out_dir)
    record = store.open(config)
    gen = GenerationConfig(**config.generation)

    data = task.load_data(config.data, config.safe_data, config.context_file)
    opts = TaskOptions(prompt_indices=tuple(config.prompts), split=config.split)
    samples = select(task.build(data, opts), config.limit, gen.seed)
    if not samples:
        raise UserError(f"task {task.name} has no items on --data {config.data} (split {config.split})")
    wanted = {s.id for s in samples}
    done = [r for r in store.finished_rows() if r["id"] in wanted]
    done_ids = {r["id"] for r in done}
    todo = [s for s in samples if s.id not in done_ids]

    if todo:
        if backend is None:
            from unsafe_concepts.models.registry import load_model

            backend = load_model(config.model, adapter=config.adapter, base_url=config.base_url,
                                 api_key_env=config.api_key_env, dtype=config.dtype, device=config.device,
                                 concurrency=config.concurrency, text_only=config.text_only)
        if task.modality == "image" and not backend.supports_images:
            raise UserError(f"model {config.model} is text only; task {task.name} shows images. "
                            "Use a VLM (e.g. tiny-vlm, hf:<VLM>) or a text task (alignment_text_only, ...)")
        record["model_info"] = backend.describe()
        store.write_record(record)
        blank = None
        if any(s.image == BLANK for s in todo) and backend.supports_images:
            from unsafe_concepts.data import blank_image

            blank = blank_image()
        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"{task.name}", unit="q",
                   disable=quiet, dynamic_ncols=True)
        # A server backend keeps `concurrency` requests in flight only if it is handed that many at once.
        step = max(config.batch_size, getattr(backend, "concurrency", 1))
        for start in range(0, len(todo), step):
            batch = todo[start:start + step]
            queries = [Query(id=s.id, prompt=s.prompt, image=blank if s.image == BLANK else s.image) for s in batch]
            generations = backend.generate(queries, gen)
            rows = []
            for s, g in zip(batch, generations):
                row = {"task": task.name, **s.row(), "response": g.text, "error": g.error,
                       "latency_s": round(g.latency_s, 4), "n_tokens": g.n_tokens}
                rows.append(row)
            store.append(rows)
            bar.update(len(batch))
        bar.close()

    rows = [r for r in store.read_rows() if r["id"] in wanted]
    n_error = sum(r.get("error") is not None for r in rows)
    record["status"] = {"n_samples": len(samples), "n_rows": len(rows), "n_error": n_error, "updated": _now()}
    store.write_record(record)
    if config.judge:
        judge_run(out_dir, config.judge, judge=judge, quiet=quiet)
    return record


def judge_run(out_dir: str | Path, judge_name: str, *, judge=None, quiet: bool = False) -> dict:
    """Add verdicts to a run's rows (only rows not yet judged by this judge) and write metrics.json."""
    from unsafe_concepts import metrics
    from unsafe_concepts.judges import load_judge
    from unsafe_concepts.judges.base import JudgeItem
    from unsafe_concepts.tasks import get_task

    store = RunStore(out_dir)
    record = store.read_record()
    if record is None:
        raise UserError(f"{out_dir} is not a run folder (no {RUN_JSON})")
    rows = store.read_rows()
    if not rows:
        raise UserError(f"{out_dir} has no responses to judge yet")
    pending = [r for r in rows if r.get("error") is None and r.get("judge") != judge_name]
    if pending:
        judge = judge or load_judge(judge_name)
        verdicts = judge.judge([JudgeItem(task=r["task"], prompt=r["prompt"], response=r["response"] or "")
                                for r in pending])
        for r, v in zip(pending, verdicts):
            r["verdict"], r["confidence"], r["judge"] = v.label, v.confidence, judge_name
        record["judge"] = {"name": judge_name, **(judge.describe() if hasattr(judge, "describe") else {})}
    for r in rows:
        if r.get("error") is not None:
            r["verdict"], r["judge"] = None, None
    store.rewrite(rows)
    task_name = record["config"]["task"]
    task = get_task(task_name)
    summary = metrics.summarize(rows, task_name, after_training=task.after_training)
    summary = {"task": task_name, "model": record["config"]["model"], "adapter": record["config"].get("adapter"),
               "judge": judge_name, "untrained_vision": bool(record.get("model_info", {}).get("untrained_vision")),
               **{k: v for k, v in summary.items() if k != "task"}}
    _atomic_write(store.metrics, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    record["config"]["judge"] = judge_name
    store.write_record(record)
    return summary


# --- CLI ---------------------------------------------------------------------------------------


def parse_prompts(text: str | None) -> list[int]:
    if not text:
        return list(range(len(protocol_prompts.ALIGNMENT_PROMPTS)))
    try:
        indices = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--prompts takes comma-separated indices 0-4, got {text!r}") from None
    return list(protocol_prompts.check_prompt_indices(indices))


def config_from_args(args) -> RunConfig:
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                  "do_sample": not args.greedy, "seed": args.seed}
    config = RunConfig(model=args.model, task=args.task, data=args.data, generation=generation, adapter=args.adapter,
                       safe_data=args.safe_data, context_file=args.context_file, split=args.split, limit=args.limit,
                       prompts=parse_prompts(args.prompts), batch_size=args.batch_size, judge=args.judge,
                       base_url=args.base_url, api_key_env=args.api_key_env, dtype=args.dtype, device=args.device,
                       concurrency=args.concurrency, text_only=args.text_only)
    return config


def cli_evaluate(args) -> int:
    from unsafe_concepts.tasks import get_task

    get_task(args.task)  # fail fast on a typo, before any model loads
    config = config_from_args(args)
    t0 = time.time()
    record = evaluate(config, args.out)
    status = record.get("status", {})
    print(f"{status.get('n_rows', 0)}/{status.get('n_samples', 0)} responses in {args.out}/{RESPONSES} "
          f"({status.get('n_error', 0)} errors; run the same command again to retry them) in {time.time() - t0:.1f}s")
    if args.judge:
        summary = json.loads((Path(args.out) / METRICS).read_text())
        overall = summary.get("overall") or {}
        print(f"judged with {args.judge}: overall {_fmt(overall.get('value'))} "
              f"[{_fmt(overall.get('ci_low'))}, {_fmt(overall.get('ci_high'))}], "
              f"unclear {summary.get('n_unclear')}/{summary.get('n')} -> {args.out}/{METRICS}")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
