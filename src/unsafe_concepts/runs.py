"""The one runner: a task asked of a model into a run folder, resumable, then scored. Every command that
evaluates (``evaluate``, ``gap``, ``posteval``, ``demo``, the Python API) goes through ``run_task``.

A run folder holds ``responses.jsonl`` (one row per query, appended and fsynced as answers arrive),
``run.json`` (the typed record, ``record.RunRecord``) and ``metrics.json`` (once scored); see
docs/evaluation-runs.md. Running the same command again resumes: finished rows are skipped, failed rows
are asked again, nothing is duplicated, also after a kill mid-write. A different configuration, or a
different model behind the same spec, is refused. Everything is validated before anything is written.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unsafe_concepts import prompts as protocol_prompts
from unsafe_concepts.errors import ModalityMismatch, UserError
from unsafe_concepts.io import (
    append_jsonl,
    explain_os_error,
    folder_lock,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)
from unsafe_concepts.record import (
    FORMAT_VERSION,
    RunRecord,
    describe_data,
    environment,
    identity_differences,
    model_identity,
    now,
    redact_url,
)

RESPONSES, RUN_JSON, METRICS, CORRUPT = "responses.jsonl", "run.json", "metrics.json", "responses.jsonl.corrupt"
SCORINGS = ("generate", "logprob")

# Settings that change what the rows mean. Batch size, concurrency, device and the judge do not:
# they may differ between a run and its resumption. ``--limit`` may grow (the selection of a larger
# limit contains the smaller one), never shrink.
IDENTITY_KEYS = ("model", "adapter", "task", "data", "safe_data", "context_file", "split", "prompts", "generation",
                 "text_only", "scoring", "pairing", "prompt_format")


@dataclass
class RunConfig:
    """Every setting of one run; the CLI flags of ``evaluate`` are checked against these defaults
    (tests/test_evaluate.py), so each default has this one source."""

    model: str
    task: str
    data: str | None = None
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 512, "temperature": 1.0, "top_p": 0.9,
                                                      "do_sample": True, "seed": 0})
    adapter: str | None = None
    safe_data: str | None = None
    context_file: str | None = None
    split: str = "all"
    limit: int | None = None
    prompts: list[int] = field(default_factory=lambda: list(range(len(protocol_prompts.ALIGNMENT_PROMPTS))))
    pairing: str = "reference"
    batch_size: int | None = None  # queries per model call; None: the backend's own (hf: up to 32 on a CPU)
    judge: str | None = None  # None: the default judge; "none": do not score
    llava_judge: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name; the key itself is never recorded
    dtype: str | None = None
    device: str | None = None
    concurrency: int = 64  # parallel requests for openai: models (a server batches them)
    timeout: float | None = None  # per request, openai: models; None: the backend's default
    device_map: str | None = None  # hf: models over several GPUs ("auto")
    text_only: bool = False
    trust_remote_code: bool = False  # hf: models that ship their own code (recorded, off by default)
    prompt_format: str | None = None  # hf: models: None/"auto" = the chat template; "llava-v1" (models/inputs.py)
    scoring: str = "generate"
    suite: str | None = None

    def identity(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in IDENTITY_KEYS}

    def validate(self) -> None:
        g = self.generation
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        if self.concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        if not isinstance(g.get("max_new_tokens"), int) or g["max_new_tokens"] < 1:
            raise UserError(f"--max-new-tokens must be at least 1, got {g.get('max_new_tokens')!r}")
        if g.get("temperature", 1.0) < 0:
            raise UserError(f"--temperature must be >= 0, got {g['temperature']}")
        if not 0 < g.get("top_p", 1.0) <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {g['top_p']}")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be a positive number")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or "") or re.match(r"(sk|hf|gsk|api)[-_]", self.api_key_env):
            # checked before anything is written: a key passed where its variable's name belongs never reaches run.json
            raise UserError("api_key_env expects the NAME of an environment variable holding the key (e.g. "
                            "OPENAI_API_KEY), not the key itself; the value given is not shown")
        if self.scoring not in SCORINGS:
            raise UserError(f"--scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        from unsafe_concepts.tasks import PAIRINGS

        if self.pairing not in PAIRINGS:
            raise UserError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}")
        protocol_prompts.check_prompt_indices(self.prompts)


def _recorded(config: RunConfig) -> dict:
    """The configuration as recorded in run.json: the server URL without credentials."""
    d = asdict(config)
    d["base_url"] = redact_url(d["base_url"])
    return d


# --- the store -------------------------------------------------------------------------------


class RunStore:
    """The files of one run folder: crash-safe appends, a corrupt line set aside, one row per id."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.responses = self.dir / RESPONSES
        self.run_json = self.dir / RUN_JSON
        self.metrics = self.dir / METRICS
        self.corrupt = self.dir / CORRUPT
        self.notes: list[str] = []

    # run.json
    def read_record(self) -> dict | None:
        if not self.run_json.exists():
            return None
        try:
            record = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.run_json} is not valid JSON ({e}); move the folder aside or fix the file") from None
        except OSError as e:
            raise UserError(f"cannot read {self.run_json}: {e.strerror}") from None
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise UserError(f"{self.run_json} has no 'config' object: not a run record of this tool; "
                            "use another --out")
        missing = [k for k in ("model", "task") if not record["config"].get(k)]
        if missing:
            raise UserError(f"{self.run_json}: config lacks {', '.join(missing)}; the record was edited or cut; "
                            "restore it or use another --out")
        return record

    def write_record(self, record: dict) -> None:
        try:
            write_json_atomic(self.run_json, record)
        except OSError as e:
            raise explain_os_error(e, self.run_json) from None

    def check_compatible(self, record: dict, config: RunConfig) -> None:
        """Refuse to resume a folder made with a different configuration; name every difference."""
        defaults = asdict(RunConfig(model="", task=""))  # keys added since the run was made
        old_config = record["config"]
        diff = {}
        for k in IDENTITY_KEYS:
            if k not in old_config and k in ("scoring", "pairing"):
                continue  # folders written before these settings existed
            old = old_config.get(k, defaults.get(k))
            new = config.identity()[k]
            if _norm(old) != _norm(new):
                diff[k] = (old, new)
        old_limit = old_config.get("limit")
        if old_limit is None and config.limit is not None or (config.limit or 0) < (old_limit or 0):
            diff["limit"] = (old_limit, config.limit)
        from unsafe_concepts.tasks import get_task

        old_version = (record.get("task") or {}).get("version", 1)  # folders of format 1 predate task versions
        if old_version != get_task(config.task).version:
            diff["task version"] = (old_version, get_task(config.task).version)
        made_by = (record.get("model") or {}).get("spec")
        if made_by is not None and made_by != old_config.get("model"):
            # the model that answered is recorded twice; a finished run is resumed without loading the
            # model, so an edited config.model would otherwise credit these rows to another model
            raise UserError(f"{self.run_json} is inconsistent: its rows were answered by {made_by!r} but its "
                            f"config names {old_config.get('model')!r}; the file was edited. Use another --out.")
        if diff:
            lines = "\n".join(f"  {k}: run has {a!r}, you asked {b!r}" for k, (a, b) in diff.items())
            raise UserError(f"{self.dir} holds a run with a different configuration:\n{lines}\n"
                            "Use another --out, or repeat the original settings to resume.")

    # responses.jsonl
    def read_rows(self) -> list[dict]:
        """Every valid row, the last copy of each id. A torn last line (killed mid-write) is cut off; a
        broken line elsewhere is moved to ``responses.jsonl.corrupt`` (and said), never lost with what follows."""
        content = read_jsonl(self.responses, require_id=True)
        if content.bad or content.torn_tail:
            if content.bad:
                try:
                    with open(self.corrupt, "ab") as f:
                        for _, line, _ in content.bad:
                            f.write(line if line.endswith(b"\n") else line + b"\n")
                except OSError as e:
                    raise explain_os_error(e, self.corrupt) from None
                where = ", ".join(f"line {n} ({why})" for n, _, why in content.bad[:5])
                self._note(f"{self.responses}: {len(content.bad)} unreadable line(s) set aside in {self.corrupt.name}: "
                           f"{where}; their queries are asked again")
            self.rewrite(content.rows)
        return _dedupe(content.rows)

    def _note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", file=sys.stderr)

    def append(self, rows: list[dict]) -> None:
        try:
            append_jsonl(self.responses, rows)
        except OSError as e:
            raise explain_os_error(e, self.responses) from None

    def rewrite(self, rows: list[dict]) -> None:
        try:
            write_jsonl_atomic(self.responses, rows)
        except OSError as e:
            raise explain_os_error(e, self.responses) from None

    def merge_shards(self) -> int:
        """Move the rows of a multi-process run's shard files (``responses.rank<R>.jsonl``) into
        ``responses.jsonl``, then remove the shards; returns how many rows moved."""
        moved = 0
        for shard in sorted(self.dir.glob("responses.rank*.jsonl")):
            content = read_jsonl(shard, require_id=True)
            if content.rows:
                self.append(content.rows)
                moved += len(content.rows)
            shard.unlink()
        return moved

    def finished_rows(self) -> list[dict]:
        """Rows to keep on resumption: answered rows, last copy of each id. Failed rows are dropped (and
        asked again); the file is compacted when anything was dropped."""
        on_disk = read_jsonl(self.responses, require_id=True).rows
        rows = self.read_rows()
        kept = [r for r in rows if r.get("error") is None]
        if len(kept) != len(on_disk):
            self.rewrite(kept)
        return kept


def _dedupe(rows: list[dict]) -> list[dict]:
    by_id: dict[str, dict] = {}
    for row in rows:
        by_id.pop(str(row["id"]), None)  # the last copy wins, in its position
        by_id[str(row["id"])] = row
    return list(by_id.values())


def _norm(v):
    return json.loads(json.dumps(v))  # tuples vs lists, etc.


# --- selection ---------------------------------------------------------------------------------


def select(samples: list, limit: int | None, seed: int) -> list:
    """``limit`` samples spread over concepts: concepts in a seeded order, then one sample of each in turn
    (its samples in a seeded order), so that small runs of different tasks on the same data ask the same
    concepts (the visual and the text-only run of ``--limit 12`` share their 12 concepts). The selection
    of a larger limit contains the smaller one. Returned in the task's order."""
    if limit is None or limit >= len(samples):
        return samples
    if limit <= 0:
        raise UserError("--limit must be a positive number")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(str(getattr(s, "concept", i)), []).append(i)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    rank: list[tuple[int, int, int]] = []
    for position, key in enumerate(order):
        members = groups[key][:]
        random.Random(f"{seed}:{key}").shuffle(members)
        rank += [(k, position, i) for k, i in enumerate(members)]
    chosen = sorted(i for _, _, i in sorted(rank)[:limit])
    return [samples[i] for i in chosen]


# --- the runner ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What ``run_task`` did: the folder, the record, the metrics (None when not scored)."""

    out: Path
    record: dict
    metrics: dict | None = None
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        s = self.record.get("status", {})
        overall = (self.metrics or {}).get("overall") or {}
        value = overall.get("value")
        score = "not scored" if self.metrics is None else (
            f"overall {value:.3f} [{_fmt(overall.get('ci_low'))}, {_fmt(overall.get('ci_high'))}], "
            f"unclear {_fmt(self.metrics.get('unclear_rate'))}" if value is not None else "overall n/a")
        return (f"RunResult({self.record['config']['task']} | {self.record['config']['model']} | "
                f"{s.get('n_rows', 0)}/{s.get('n_samples', 0)} answered, {s.get('n_error', 0)} failed | {score} | "
                f"{self.out})")


def prepare(config: RunConfig):
    """Everything that can be checked without a model: the settings, the task, its data and samples."""
    from unsafe_concepts.tasks import TaskOptions, get_task

    config.validate()
    task = get_task(config.task)
    if config.scoring == "logprob" and task.options is None:
        raise UserError(f"task {task.name} ({task.kind}) cannot be scored by log-probabilities; "
                        "use --scoring generate")
    data_spec = config.data or task.default_data
    if data_spec is None:
        raise UserError(f"task {task.name} needs --data (a folder, 'sample' for the offline synthetic sample, or 'hf')")
    loaded = task.load_data(data_spec, config.safe_data, config.context_file)
    opts = TaskOptions(prompt_indices=tuple(config.prompts), split=config.split, pairing=config.pairing)
    samples = select(task.build(loaded, opts), config.limit, config.generation.get("seed", 0))
    if not samples:
        raise UserError(f"task {task.name} has no items on --data {data_spec} (split {config.split})")
    return task, loaded, samples


def _check_writable(out: Path) -> None:
    """A clear message for an --out that cannot be written, before anything is done."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable (read-only?); choose another --out")


def run_task(config: RunConfig, out_dir: str | Path, *, backend=None, scorer=None, quiet: bool = False,
             summary: bool = False) -> RunResult:
    """Ask every sample of the task that the run folder does not have yet, score, write metrics.

    ``backend`` / ``scorer`` may be passed in (already loaded) to share them across runs. Nothing is
    written before the settings, the data, the existing record and the model have been checked.
    Started as several processes (torchrun, accelerate launch), the ranks share the queries and write
    one run folder (see ``Ranks``)."""
    ranks = Ranks.from_environment()
    task, loaded, samples = prepare(config)
    out = Path(out_dir)
    store = RunStore(out)
    state = {"created": False}

    def open_folder():
        existing = store.read_record() if out.is_dir() else None
        if existing is not None:
            store.check_compatible(existing, config)
        elif out.is_dir() and store.responses.exists() and store.responses.stat().st_size:
            raise UserError(f"{out} has {RESPONSES} but no {RUN_JSON}: it is not a run folder of this tool; "
                            "choose another --out")
        _check_writable(out)
        state["created"] = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise explain_os_error(e, out) from None

    ranks.from_main(open_folder)
    try:
        with (folder_lock(out) if ranks.is_main else contextlib.nullcontext()):
            return _run_locked(config, task, loaded, samples, store, backend, scorer, quiet, summary, ranks)
    except BaseException:
        if ranks.is_main and state["created"] and out.is_dir() and not any(
                p for p in out.iterdir() if not p.name.startswith(".lock")):
            for p in out.iterdir():
                p.unlink(missing_ok=True)
            out.rmdir()  # a refused command leaves nothing behind
        raise


class Ranks:
    """The processes of one evaluation. One process: rank 0 of 1, every method a no-op.

    Started with ``WORLD_SIZE`` > 1 (``torchrun --nproc_per_node N``, ``accelerate launch --num_processes
    N``; on CPU with ``ACCELERATE_USE_CPU=true``), the runner needs a working process group: each rank
    loads its own model copy (GPU ``LOCAL_RANK``) and asks every N-th query into its own shard file
    ``responses.rank<R>.jsonl``; rank 0 checks and writes the record, holds the folder's lock, merges the
    shards into ``responses.jsonl`` (also those a killed run left behind) and scores. Without a working
    process group the launch is refused: N independent processes would each ask every query."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "Ranks":
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            on_gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
            try:
                import datetime as _dt

                dist.init_process_group("nccl" if on_gpu else "gloo", timeout=_dt.timedelta(hours=2))
            except Exception as e:  # no rendezvous: MASTER_ADDR/RANK missing, peers not started, ...
                raise UserError(f"started as {world} processes (WORLD_SIZE={world}) but no working process group "
                                f"({type(e).__name__}: {e}); launch with `torchrun --nproc_per_node {world} ...` "
                                "(on CPU with ACCELERATE_USE_CPU=true) or `accelerate launch`, or unset WORLD_SIZE; "
                                "refused, as independent processes would each ask every query") from None
        if dist.get_world_size() != world:
            raise UserError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} processes")
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    def from_main(self, fn):
        """Run ``fn`` on rank 0 and hand its result (or its UserError) to every rank."""
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        payload = [None]
        if self.is_main:
            try:
                payload = [("ok", fn())]
            except UserError as e:
                payload = [("error", str(e))]
        dist.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "error":
            raise UserError(value if self.is_main else f"(rank {self.rank}, as rank 0 said) {value}")
        return value

    def all_agree(self, fn) -> None:
        """Run ``fn`` on every rank; if it fails on any, every rank stops with that message."""
        if self.world == 1:
            fn()  # one process: its error as raised (its type tells a sweep what to do with it)
            return
        error = None
        try:
            fn()
        except UserError as e:
            error = str(e)
        import torch.distributed as dist

        errors = [None] * self.world
        dist.all_gather_object(errors, error)
        first = next((e for e in errors if e), None)
        if first:
            raise UserError(first)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


class ShardStore:
    """Where one rank of a multi-process run appends its rows (merged into responses.jsonl by rank 0)."""

    def __init__(self, out_dir: Path, rank: int):
        self.rank = rank
        self.responses = Path(out_dir) / f"responses.rank{rank}.jsonl"

    def append(self, rows: list[dict]) -> None:
        try:
            append_jsonl(self.responses, [{**r, "rank": self.rank} for r in rows])
        except OSError as e:
            raise explain_os_error(e, self.responses) from None


def _run_locked(config, task, loaded, samples, store: RunStore, backend, scorer, quiet, summary,
                ranks: Ranks | None = None) -> RunResult:
    from unsafe_concepts.models.base import GenerationConfig

    ranks = ranks or Ranks()
    gen = GenerationConfig(**config.generation)
    wanted = {s.id for s in samples}

    data = describe_data(config.data or task.default_data, loaded, len(samples))

    def survey():
        store.merge_shards()  # rows a killed multi-process run left in its shard files
        existing = store.read_record()  # again, under the lock
        if existing is not None:
            store.check_compatible(existing, config)
            old = (existing.get("data") or {}).get("fingerprint")
            if old and data.get("fingerprint") and old != data["fingerprint"]:
                raise UserError(f"{store.dir}: the data at {data.get('path')} changed since this run was made "
                                f"(fingerprint {old[:19]}... now {data['fingerprint'][:19]}...: files added, removed "
                                "or edited); use another --out, or restore the data to resume")
        return existing, sorted(r["id"] for r in store.finished_rows() if r["id"] in wanted)

    existing, done_ids = ranks.from_main(survey)
    done_ids = set(done_ids)
    todo = [s for s in samples if s.id not in done_ids]
    record = RunRecord(task=task.describe(), data=data, model={"spec": config.model, "adapter": config.adapter},
                       config=_recorded(config), environment=environment(), created=now(),
                       scoring=config.scoring, suite=config.suite, synthetic=bool(data.get("synthetic"))).to_dict()
    if existing is not None:
        # settings that may change on resumption are updated; the rest stays as first recorded
        record = {**existing, "format_version": FORMAT_VERSION, "task": task.describe(), "data": data,
                  "scoring": config.scoring, "synthetic": bool(data.get("synthetic")),
                  "environment": environment(), "resumed": now()}
        record["config"] = {**existing["config"], **{k: v for k, v in _recorded(config).items()
                                                     if k not in IDENTITY_KEYS and k != "limit"},
                            "limit": config.limit}
        record.setdefault("model", {"spec": config.model, "adapter": config.adapter})

    if todo:
        def load_and_check():
            nonlocal backend
            if backend is None:
                if ranks.world > 1 and config.device is None and _cuda_count() > 1:
                    backend = load_backend(replace_config(config, device=f"cuda:{ranks.local_rank}"))
                else:
                    backend = load_backend(config)
            elif not hasattr(backend, "generate"):  # a loader: the model is loaded only when something is asked
                backend = backend()
            if task.modality == "image" and not backend.supports_images:
                raise ModalityMismatch(f"model {config.model} is text only; task {task.name} shows images. "
                                "Use a VLM (e.g. tiny-vlm, hf:<VLM>) or a text task (alignment_text_only, ...)")
            if config.scoring == "logprob" and not getattr(backend, "supports_logprobs", False):
                from unsafe_concepts.models.base import unsupported_logprobs

                raise unsupported_logprobs(f"model {config.model}")

        ranks.all_agree(load_and_check)
        identity = model_identity(backend.describe())
        old_identity = (existing or {}).get("model", {}).get("identity") or (existing or {}).get("model_info")

        def check_identity():
            diff = identity_differences(old_identity or {}, identity)
            if diff:
                lines = "\n".join(f"  {k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise UserError(f"{store.dir}: the model behind {config.model!r} is not the one this run was made "
                                f"with:\n{lines}\nUse another --out.")

        ranks.from_main(check_identity)
        record["model"] = {"spec": config.model, "adapter": config.adapter, "identity": identity}
        record["model_info"] = identity
    if ranks.world > 1:
        record["config"]["processes"] = ranks.world

    def write_first_record():
        store.write_record(record)  # the first write of a new run: everything above has been checked

    ranks.from_main(write_first_record)
    if todo:
        mine = todo[ranks.rank::ranks.world]
        sink = store if ranks.world == 1 else ShardStore(store.dir, ranks.rank)
        single = ranks.world == 1
        _ask(config, task, mine, sink, backend, gen, quiet or not ranks.is_main,
             total=len(samples) if single else len(mine), done=len(samples) - len(todo) if single else 0)
    ranks.barrier()
    if not ranks.is_main:
        ranks.barrier()  # rank 0 merges and scores; the run's result is in the folder
        return RunResult(store.dir, store.read_record() or record)
    try:
        return _finish(config, samples, wanted, store, record, scorer, quiet, summary)
    finally:
        ranks.barrier()


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _finish(config, samples, wanted, store, record, scorer, quiet, summary) -> RunResult:
    store.merge_shards()
    rows = [r for r in store.read_rows() if r["id"] in wanted]
    errors = Counter(r["error"] for r in rows if r.get("error") is not None)
    record["status"] = {"n_samples": len(samples), "n_rows": len(rows), "n_error": sum(errors.values()),
                        "errors": dict(errors.most_common(10)), "updated": now()}
    store.write_record(record)
    result = RunResult(store.dir, record, notes=store.notes)
    answered = [r for r in rows if r.get("error") is None]
    if rows and not answered:
        raise UserError(f"every query failed ({len(rows)}): " + _explain_errors(errors) +
                        f"\nNothing was lost; fix the cause and run the same command again ({store.dir}).")
    if config.scoring == "logprob" or (config.judge or "").lower() != "none":
        result.metrics = score_run(store.dir, scorer=scorer, config=config, quiet=quiet)
        result.record = store.read_record()
    if summary and not quiet:
        print_summary(result)
    return result


def load_backend(config: RunConfig):
    from unsafe_concepts.models.registry import load_model

    quiet_loading()
    return load_model(config.model, adapter=config.adapter, base_url=config.base_url, api_key_env=config.api_key_env,
                      dtype=config.dtype, device=config.device, concurrency=config.concurrency,
                      timeout=config.timeout, device_map=config.device_map,
                      text_only=config.text_only, trust_remote_code=config.trust_remote_code,
                      prompt_format=config.prompt_format, batch_size=config.batch_size)


def quiet_loading() -> None:
    """One progress bar per run: silence the loading bars of transformers and huggingface_hub."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


def _ask(config, task, todo, store, backend, gen, quiet, *, total: int, done: int) -> None:
    """Ask ``todo`` in batches, appending each batch's rows to ``store`` as soon as it is answered."""
    from tqdm.auto import tqdm

    from unsafe_concepts.models.base import Query
    from unsafe_concepts.scorers import verdict_from_probs
    from unsafe_concepts.tasks import BLANK

    blank = None
    if any(s.image == BLANK for s in todo) and backend.supports_images:
        from unsafe_concepts.data import blank_image

        blank = blank_image()
    bar = tqdm(total=total, initial=done, desc=task.name, unit="q", disable=quiet, dynamic_ncols=True, file=sys.stderr)
    correct = decided = 0
    lock, moved, size = threading.Lock(), [0], [0]  # queries reported finished in the current batch, its size

    def tick(n: int) -> None:
        with lock:  # never past the batch (a batch that failed is retried item by item and reports again)
            n = min(n, size[0] - moved[0])
            moved[0] += n
            bar.update(n)

    backend.progress = tick
    # A server backend keeps `concurrency` requests in flight only if it is handed that many at once.
    step = max(config.batch_size or getattr(backend, "batch_size", 8), getattr(backend, "concurrency", 1))
    try:
        for start in range(0, len(todo), step):
            batch = todo[start:start + step]
            size[0] = len(batch)
            queries, failed = [], {}
            for s in batch:
                image = blank if s.image == BLANK else s.image
                if callable(image):
                    try:
                        image = image()
                    except Exception as e:  # a bad image (corrupt, a decompression bomb, ...) fails its own row
                        failed[s.id] = f"image: {e}"
                        image = None
                queries.append(Query(id=s.id, prompt=s.prompt, image=image))
            rows = []
            if config.scoring == "logprob":
                results = backend.option_probs(queries, task.options)
                for s, q, res in zip(batch, queries, results):
                    verdict, confidence, reason = verdict_from_probs(task.kind, res.probs)
                    error = failed.get(s.id) or res.error
                    rows.append({"task": task.name, **s.row(), "response": None, "error": error,
                                 "latency_s": round(res.latency_s, 4), "n_tokens": 0, "scoring": "logprob",
                                 "option_probs": res.probs, "option_mass": res.mass,
                                 "verdict": None if error else verdict, "verdict_confidence": confidence,
                                 "verdict_reason": reason, "judge": "logprob"})
            else:
                generations = backend.generate(queries, gen)
                for s, g in zip(batch, generations):
                    error = failed.get(s.id) or g.error
                    rows.append({"task": task.name, **s.row(), "response": None if error else g.text, "error": error,
                                 "latency_s": round(g.latency_s, 4), "n_tokens": g.n_tokens})
            store.append(rows)
            if config.scoring == "logprob":
                from unsafe_concepts.metrics import outcome

                for r in rows:
                    if r["error"] is None and r["verdict"] not in ("unclear", None):
                        try:
                            o = outcome(r, task.name, kind=task.metrics)
                        except (UserError, TypeError):
                            continue
                        decided += o in ("correct", "wrong")
                        correct += o == "correct"
                if decided:
                    bar.set_postfix_str(f"acc {correct / decided:.3f}")
            with lock:  # what the backend did not report (failed items, answers cut at the token budget)
                bar.update(max(0, len(batch) - moved[0]))
                moved[0] = 0
    finally:
        backend.progress = None
        bar.close()


def _explain_errors(errors: Counter) -> str:
    lines = []
    for message, count in errors.most_common(5):
        hint = ""
        if re.search(r"\b401\b|unauthori[sz]ed|invalid api key", message, re.I):
            hint = "  <- a bad API key: check the variable named by --api-key-env"
        elif re.search(r"\b404\b", message):
            hint = "  <- the server does not know this model or URL: check --model and --base-url"
        elif re.search(r"connect|refused|timed? ?out", message, re.I):
            hint = "  <- the server could not be reached: check --base-url and that it is running"
        lines.append(f"\n  {count} x {message[:300]}{hint}")
    return "".join(lines)


def score_run(out_dir: str | Path, *, scorer=None, config: RunConfig | None = None, judge: str | None = None,
              quiet: bool = False) -> dict:
    """Score the rows not yet scored by this scorer and write metrics.json (the task decides the metrics)."""
    from unsafe_concepts import metrics
    from unsafe_concepts.scorers import LOGPROB, scorer_for
    from unsafe_concepts.tasks import get_task

    store = RunStore(out_dir)
    record = store.read_record()
    if record is None:
        raise UserError(f"{out_dir} is not a run folder (no {RUN_JSON})")
    cfg = record["config"]
    task = get_task(cfg["task"])
    rows = store.read_rows()
    if not rows:
        raise UserError(f"{out_dir} has no responses to score yet")
    if cfg.get("scoring") == "logprob":
        about = LOGPROB
    else:
        if scorer is None:
            judge_name = judge or (config.judge if config else None) or cfg.get("judge")
            if (judge_name or "").lower() == "none":
                judge_name = None
            scorer = scorer_for(task, judge=judge_name, llava_judge=(config.llava_judge if config else None)
                                or cfg.get("llava_judge"), api_key_env=cfg.get("api_key_env", "OPENAI_API_KEY"))
        about = scorer.describe()
        label = scorer.judge_name if hasattr(scorer, "judge_name") else scorer.name
        pending = [r for r in rows if r.get("error") is None and r.get("judge") != label]
        if pending:
            scorer.score(pending)
        record["judge"] = {"name": label, **{k: v for k, v in about.items() if k != "name"}}
        record["config"]["judge"] = label
    for r in rows:
        if r.get("error") is not None:
            r["verdict"], r["judge"] = None, None
    store.rewrite(rows)
    summary = metrics.summarize_run(rows, task.name, kind=task.metrics, after_training=task.after_training)
    model_identity_ = (record.get("model") or {}).get("identity") or record.get("model_info") or {}
    summary = {"format_version": FORMAT_VERSION, "task": task.name, "task_version": task.version,
               "task_kind": task.kind, "metrics_kind": task.metrics, "modality": task.modality,
               "model": cfg["model"], "adapter": cfg.get("adapter"), "judge": record.get("judge", {}).get("name")
               if cfg.get("scoring") != "logprob" else "logprob", "scorer": about,
               "scoring": cfg.get("scoring", "generate"), "synthetic": bool(record.get("synthetic")),
               "untrained_vision": bool(model_identity_.get("untrained_vision")),
               **{k: v for k, v in summary.items() if k != "task"}}
    record["scorer"] = about
    try:
        write_json_atomic(store.metrics, summary)
    except OSError as e:
        raise explain_os_error(e, store.metrics) from None
    store.write_record(record)
    return summary


def print_summary(result: RunResult, next_command: str | None = None) -> None:
    """The end-of-run table (the report's terminal summary), or one plain line where it cannot print."""
    if result.metrics is None:
        print(f"{result.record['status'].get('n_rows')} answers in {result.out / RESPONSES} (not scored)")
        return
    try:
        from unsafe_concepts.report.terminal import print_run_summary
    except ImportError:
        print(repr(result))
        return
    print_run_summary(result.metrics, task=result.metrics["task"], out_dir=result.out, next_command=next_command)


# --- sweeps ------------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def run_folder_name(model: str, task: str, adapter: str | None = None) -> str:
    name = slug(model.split("/")[-1] if model.startswith("hf:/") else model)
    if adapter:
        name += "+" + slug(Path(adapter).name)
    return f"{name}__{task}"


@dataclass
class SweepResult:
    results: list[RunResult]
    failures: list[tuple[str, str, str]]  # (model, task, message)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # pairs the model cannot answer at all

    @property
    def ok(self) -> bool:
        return not self.failures

    def __repr__(self) -> str:
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return f"SweepResult({len(self.results)} runs done, {len(self.failures)} failed{skipped})"


def sweep(models: list[str], tasks: list[str], out: str | Path, base: RunConfig, *, quiet: bool = False,
          summary: bool = True, backends: dict | None = None, flat: bool | None = None) -> SweepResult:
    """Every (model, task) pair into its own resumable run folder ``<out>/<model>__<task>`` (``<out>`` itself
    for a single pair unless ``flat`` is False). A failing pair is reported and the others still run."""
    from dataclasses import replace

    out = Path(out)
    single = len(models) == 1 and len(tasks) == 1 and flat is not False
    results, failures, skipped = [], [], []
    backends = backends if backends is not None else {}
    for model in models:
        for task in tasks:
            config = replace(base, model=model, task=task)
            folder = out if single else out / run_folder_name(model, task, config.adapter)
            def lazy(config=config, model=model):  # one model load per model, and only if it is asked anything
                if model not in backends:
                    backends[model] = load_backend(config)
                return backends[model]

            try:
                result = run_task(config, folder, backend=backends.get(model) or lazy, quiet=quiet, summary=summary)
                results.append(result)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one pair's refusal or crash must not stop the others
                if single:
                    raise
                if isinstance(e, ModalityMismatch):
                    skipped.append((model, task, str(e)))
                    print(f"skipped: {model} / {task}: {str(e).split('. ')[0]}", file=sys.stderr)
                    continue
                message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                failures.append((model, task, message))
                print(f"error: {model} / {task}: {message}", file=sys.stderr)
    return SweepResult(results, failures, skipped)


# --- CLI ---------------------------------------------------------------------------------------


def parse_prompts(text: str | None) -> list[int]:
    if not text:
        return list(range(len(protocol_prompts.ALIGNMENT_PROMPTS)))
    try:
        indices = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--prompts takes comma-separated indices 0-4, got {text!r}") from None
    return list(protocol_prompts.check_prompt_indices(indices))


def config_from_args(args, *, task: str | None = None, model: str | None = None) -> RunConfig:
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                  "do_sample": not args.greedy, "seed": args.seed}
    models = args.model if isinstance(args.model, list) else [args.model]
    return RunConfig(model=model or models[0], task=task or args.task, data=args.data, generation=generation,
                     adapter=args.adapter, safe_data=getattr(args, "safe_data", None),
                     context_file=getattr(args, "context_file", None), split=getattr(args, "split", "all"),
                     limit=args.limit, prompts=parse_prompts(getattr(args, "prompts", None)),
                     pairing=getattr(args, "pairing", None) or "reference", batch_size=args.batch_size,
                     judge=args.judge, llava_judge=getattr(args, "llava_judge", None), base_url=args.base_url,
                     api_key_env=args.api_key_env, dtype=args.dtype, device=args.device,
                     concurrency=args.concurrency, text_only=args.text_only,
                     trust_remote_code=getattr(args, "trust_remote_code", False),
                     prompt_format=getattr(args, "prompt_format", None),
                     timeout=getattr(args, "timeout", None), device_map=getattr(args, "device_map", None),
                     scoring=getattr(args, "scoring", None) or "generate")


def apply_config_file(args, parser_defaults: dict) -> None:
    """``--config FILE`` (JSON or YAML): its keys (flag names with _ or -) fill every flag not given."""
    path = getattr(args, "config", None)
    if not path:
        return
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None
    if text is None:
        raise UserError(f"--config {path}: no such file")
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml

            values = yaml.safe_load(text)
        except Exception as e:  # yaml missing or bad YAML
            raise UserError(f"--config {path}: neither JSON nor YAML ({e})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in parser_defaults:
            raise UserError(f"--config {path}: unknown setting {key!r}")
        if getattr(args, name) == parser_defaults[name]:
            if name in ("model",) and isinstance(value, str):
                value = [value]
            setattr(args, name, value)


def cli_evaluate(args) -> int:
    from unsafe_concepts.tasks import parse_task_list

    if getattr(args, "_defaults", None) is not None:
        apply_config_file(args, args._defaults)
    models = args.model if isinstance(args.model, list) else [args.model]
    missing = [flag for flag, value in (("--model", models and models[0]), ("--task", args.task), ("--out", args.out))
               if not value]
    if missing:
        raise UserError(f"evaluate needs {', '.join(missing)} (on the command line or in --config)")
    tasks = [t.name for t in parse_task_list(args.task)]  # a typo fails before any model loads
    _announce_data(args.data, tasks)
    base = config_from_args(args, model=models[0], task=tasks[0])
    base.validate()
    t0 = time.time()
    result = sweep(models, tasks, args.out, base)
    if len(models) * len(tasks) > 1:
        print(f"{len(result.results)} of {len(models) * len(tasks)} runs done in {time.time() - t0:.0f}s under "
              f"{args.out}" + (f"; {len(result.failures)} failed (above)" if result.failures else "")
              + (f"; {len(result.skipped)} skipped (the model cannot answer the task)" if result.skipped else ""))
        print(f"next: unsafe-concepts report {args.out}/* --out {args.out}/report")
    return 0 if result.ok else 1


GAP_TASKS = ("perception", "alignment", "alignment_text_only")


def cli_gap(args) -> int:
    """``unsafe-concepts gap``: the three runs of the modality gap for one model, the gap table, the report."""
    _announce_data(args.data, list(GAP_TASKS))
    base = config_from_args(args, model=args.model, task=GAP_TASKS[0])
    base.suite = "gap"
    base.validate()
    out = Path(args.out)
    backends: dict = {}
    for name in GAP_TASKS:
        prepare(replace_config(base, task=name))  # every refusal before the model loads
    backends[args.model] = load_backend(base)
    tasks = [t for t in GAP_TASKS if t != "perception" or backends[args.model].supports_images]
    result = sweep([args.model], tasks, out, base, summary=False, backends=backends, flat=False)
    by_task = {r.record["config"]["task"]: r for r in result.results}
    if "alignment" not in by_task or "alignment_text_only" not in by_task:
        missing = [t for t in ("alignment", "alignment_text_only") if t not in by_task]
        raise UserError(f"no gap: the {' and '.join(missing)} run failed (see above)")
    print_gap(by_task["alignment"].out, by_task["alignment_text_only"].out, by_task.get("perception"))
    report_dir = out / "report"
    try:
        from unsafe_concepts.report import build_report

        build_report([r.out for r in result.results], report_dir)
        print(f"report: {report_dir / 'report.html'}")
    except UserError as e:
        print(f"note: the report could not be built: {e}", file=sys.stderr)
    return 0 if result.ok else 1


def replace_config(config: RunConfig, **changes) -> RunConfig:
    from dataclasses import replace

    return replace(config, **changes)


def print_gap(visual_dir: Path, textual_dir: Path, perception: RunResult | None = None) -> dict:
    """The gap table in the terminal: per category visual, text-only, gap (with its interval) and n."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from unsafe_concepts import metrics

    visual, textual = RunStore(visual_dir).read_rows(), RunStore(textual_dir).read_rows()
    gap = metrics.modality_gap(visual, textual, visual_kind="alignment", textual_kind="alignment")
    table = Table(title=Text("modality gap (text-only minus visual alignment accuracy)"), title_justify="left",
                  show_edge=False)
    for name in ("category", "visual", "text-only", "gap", "95% interval", "n visual", "n text"):
        table.add_column(name, justify="left" if name == "category" else "right")
    rows = [(c, e) for c, e in gap["per_category"].items() if e["visual"]["n"] and e["textual"]["n"]]
    def side(stat):  # a side with answers but no decided one says so, instead of a bare n/a
        return "all unclear" if stat["value"] is None and stat["n"] else _fmt(stat["value"])

    for label, entry in rows + [("Overall", gap["overall"])]:
        v, t = entry["visual"], entry["textual"]
        interval = (f"[{_fmt(entry['ci_low'])}, {_fmt(entry['ci_high'])}]" if entry.get("ci_low") is not None else "")
        gap_cell = _fmt(entry["value"]) if entry["value"] is not None else "-"
        table.add_row(Text(str(label), style="bold" if label == "Overall" else ""), side(v), side(t), gap_cell,
                      interval, str(v["n"]), str(t["n"]))
    console = Console(highlight=False, width=max(100, Console().width))
    console.print(table)
    if any(e["value"] is None for _, e in rows):
        console.print(Text("-: no gap where one side's answers were all judged unclear (the measurement leaves "
                           "unclear answers out); longer answers (--max-new-tokens) or --scoring logprob decide them",
                           style="dim"))
    only = [c for c, e in gap["per_category"].items() if not (e["visual"]["n"] and e["textual"]["n"])]
    if only:
        console.print(Text(f"asked in one modality only (no gap): {', '.join(only)}", style="dim"))
    if perception is not None and perception.metrics:
        console.print(Text(f"perception accuracy: {_fmt(perception.metrics['overall']['value'])} "
                           f"(n {perception.metrics['n']})"))
    return gap


def _announce_data(data: str | None, tasks: list[str]) -> None:
    from unsafe_concepts.tasks import get_task

    if data is None and any(get_task(t).default_data is None for t in tasks):
        raise UserError("--data is required: a folder in the benchmark layout, 'hf' (the gated hub dataset), "
                        "or 'sample' (the offline SYNTHETIC sample: placeholder images, for trying the tool)")
    if data == "sample":
        print("note: --data sample is the offline SYNTHETIC sample (placeholder images): results show the tool "
              "working and say nothing about a model; run.json records synthetic: true", file=sys.stderr)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
