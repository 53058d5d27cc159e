"""`unsafe-concepts import FILE --model NAME --task TASK --out DIR [--data D] [--judge J]`: answers made
elsewhere (the reference code's result files, or any tool's JSONL) turned into a run folder exactly as
``evaluate`` writes it (``responses.jsonl`` rows with the task's ground truth, a ``run.json`` record),
then scored by the ordinary scorer, so that published answers can be judged and reported.

Accepted files:
- the reference's format: a JSON list of ``{"idx", "prompt", "image_fname", "output"}``
  (``UnsafeConcepts_TEST_result.json``, ``SMID_result.json``, ``MME_result.json``, ...);
- JSONL (or a JSON list) of objects with ``prompt`` and ``response`` (or ``output``), optionally
  ``id``, ``image``, ``label``, ``concept``, ``category``, ``prompt_index``.

Ground truth comes from ``--data`` when given: the task's own samples are built from it (every prompt
of every image) and each imported answer is matched to its sample by id; the row then holds exactly
what ``evaluate`` would have written. Without ``--data``, the reference's UnsafeConcepts_TEST file
needs nothing more (the image path says safe/unsafe; concept and category come from the benchmark
metadata shipped with the package), SMID/NSFW rows are imported without labels (a note says so), and
MME / LLaVA-Bench require ``--data`` (their gold answers / reference answers are not in the file).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from unsafe_concepts import prompts
from unsafe_concepts.errors import UserError
from unsafe_concepts.io import read_jsonl

REFERENCE_KEYS = {"idx", "prompt", "image_fname", "output"}
IMPORTED_GENERATION = {"imported": True}  # what decoded these answers is not known: recorded as such


def read_answers(path: str | Path) -> tuple[str, list[dict]]:
    """(format, rows) of an answer file: "reference" or "jsonl"; rows keep their file order."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give the answer file (a .json list or a .jsonl file)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"answer file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        content = read_jsonl(path)
        content.raise_if_bad(path)  # names the line: not JSON, or not an object
        rows = content.rows
    if not rows:
        raise UserError(f"{path}: no answers in the file")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"{path}: entry {bad} is a {type(rows[bad]).__name__}, expected an object")
    fmt = "reference" if all(REFERENCE_KEYS <= set(r) for r in rows) else "jsonl"
    for i, r in enumerate(rows):
        answer = r.get("output") if fmt == "reference" else r.get("response", r.get("output"))
        if not isinstance(r.get("prompt"), str):
            raise UserError(f"{path}: entry {i} has no 'prompt' string")
        if answer is not None and not isinstance(answer, str):
            raise UserError(f"{path}: entry {i}: the answer must be a string, got {type(answer).__name__}")
        if answer is None and "response" not in r and "output" not in r:
            raise UserError(f"{path}: entry {i} has no 'response' (or 'output')")
    return fmt, rows


def _answer(row: dict, fmt: str) -> str | None:
    return row.get("output") if fmt == "reference" else row.get("response", row.get("output"))


def reference_record_id(image_fname: str) -> str:
    """The record id ``evaluate`` gives the image the reference calls ``image_fname``:
    ``data/images/906.png`` -> ``images/906.png``; ``data/imagenet_1k/875.png`` -> ``safe/images/875.png``
    (the layout ``data download --safe`` writes); ``data/SMID/images/1925.jpg`` -> ``1925`` (SMID, NSFW)."""
    parts = PurePosixPath(image_fname.replace("\\", "/")).parts
    name = parts[-1] if parts else image_fname
    if "imagenet_1k" in parts:
        return f"safe/images/{PurePosixPath(name).stem}.png"
    if len(parts) >= 2 and parts[-2] == "images" and (len(parts) < 3 or parts[-3] in ("data", ".")):
        return f"images/{PurePosixPath(name).stem}.png"
    return PurePosixPath(name).stem


def _prompt_index(prompt: str) -> int | None:
    text = prompt.strip()
    return next((k for k, p in enumerate(prompts.ALIGNMENT_PROMPTS) if p == text), None)


def _sample_id(row: dict, fmt: str, task_kind: str, position: int) -> str:
    if fmt == "reference":
        if task_kind in ("mme", "llavabench"):
            return str(row["idx"])
        k = _prompt_index(row["prompt"])
        rid = reference_record_id(row["image_fname"])
        return rid if k is None else f"{rid}#p{k}"
    if row.get("id") is not None:
        return str(row["id"])
    return f"row{position}"


def _rows_from_samples(rows: list[dict], fmt: str, task, samples: list, path: Path) -> list[dict]:
    """Each answer joined to the task's sample of the same id (the ground truth evaluate would write)."""
    by_id = {s.id: s for s in samples}
    out, missing, mismatched = [], [], []
    for i, r in enumerate(rows):
        sid = _sample_id(r, fmt, task.kind, i)
        sample = by_id.get(sid)
        if sample is None:
            missing.append(sid)
            continue
        if sample.prompt.strip() != r["prompt"].strip():
            mismatched.append(sid)
            continue
        out.append(_row(task, sample.row(), r, fmt))
    if missing or mismatched:
        what = []
        if missing:
            what.append(f"{len(missing)} answer(s) match no item of task {task.name} on --data "
                        f"(first: {', '.join(missing[:3])})")
        if mismatched:
            what.append(f"{len(mismatched)} answer(s) were asked another prompt than the task's "
                        f"(first: {', '.join(mismatched[:3])})")
        raise UserError(f"{path}: " + "; ".join(what))
    return out


def _row(task, truth: dict, r: dict, fmt: str) -> dict:
    answer = _answer(r, fmt)
    return {"task": task.name, **truth, "response": answer,
            "error": None if answer is not None else "no answer in the imported file",
            "latency_s": None, "n_tokens": None, "imported": True}


def _rows_without_data(rows: list[dict], fmt: str, task, notes: list[str]) -> list[dict]:
    if task.kind in ("mme", "llavabench"):
        raise UserError(f"task {task.name}: the answer file does not hold the gold answers; pass --data "
                        f"(the set's file or folder, as for evaluate)")
    concepts = _shipped_concepts()
    out, unlabelled = [], 0
    for i, r in enumerate(rows):
        sid = _sample_id(r, fmt, task.kind, i)
        k = _prompt_index(r["prompt"]) if fmt == "reference" else r.get("prompt_index")
        record_id = sid.split("#p")[0] if fmt == "reference" else r.get("image") or sid
        label, concept, category = r.get("label"), r.get("concept"), r.get("category")
        if fmt == "reference":
            if record_id.startswith("safe/"):
                label, category, concept = "safe", "Safe", f"ImageNet row {PurePosixPath(record_id).stem}"
            elif record_id in concepts:
                label, (concept, category) = "unsafe", concepts[record_id]
            else:
                label, category, concept = None, task.name.upper(), record_id
        if label not in ("safe", "unsafe", None):
            raise UserError(f"row {i}: label must be 'safe' or 'unsafe', got {label!r}")
        unlabelled += label is None
        truth = {"id": sid, "prompt_index": k, "prompt": r["prompt"], "image": r.get("image_fname") or r.get("image"),
                 "blank_image": False, "concept": concept or "", "category": category or "", "label": label,
                 "record_id": record_id}
        out.append(_row(task, truth, r, fmt))
    if unlabelled:
        notes.append(f"{unlabelled} of {len(rows)} answers have no ground-truth label (pass --data to join "
                     "them): verdicts can be judged, accuracy cannot be computed for them")
    return out


def _shipped_concepts() -> dict[str, tuple[str, str]]:
    from unsafe_concepts.data.reference_files import SHIPPED_PERCEPTION

    return {r["image_filename"]: (r["unsafe_concept"], r["category"]) for r in read_jsonl(SHIPPED_PERCEPTION).rows}


def import_answers(file: str | Path, *, model: str, task: str, out: str | Path, data: str | None = None,
                   safe_data: str | None = None, judge: str | None = None, quiet: bool = False):
    """Write run folder ``out`` from answer file ``file``; returns the runner's RunResult."""
    from unsafe_concepts.io import folder_lock
    from unsafe_concepts.record import RunRecord, describe_data, environment, now
    from unsafe_concepts.runs import RunConfig, RunResult, RunStore, _check_writable, _recorded, prepare, score_run
    from unsafe_concepts.tasks import get_task

    path = Path(file).expanduser()
    if not model or not model.strip():
        raise UserError("--model needs a name for the model whose answers these are")
    the_task = get_task(task)
    fmt, rows = read_answers(path)
    notes: list[str] = []
    config = RunConfig(model=model, task=the_task.name, data=data, safe_data=safe_data, pairing="all",
                       generation=dict(IMPORTED_GENERATION), judge=judge)
    loaded = None
    if data is not None or the_task.default_data is not None:
        # every prompt of every item, so that any answer the file holds finds its sample
        probe = RunConfig(model=model, task=the_task.name, data=data, safe_data=safe_data, pairing="all")
        _, loaded, samples = prepare(probe)
        imported = _rows_from_samples(rows, fmt, the_task, samples, path)
    else:
        imported = _rows_without_data(rows, fmt, the_task, notes)
    seen: dict[str, int] = {}
    for i, r in enumerate(imported):
        if r["id"] in seen:
            raise UserError(f"{path}: entries {seen[r['id']]} and {i} are both answers to {r['id']}")
        seen[r["id"]] = i

    out = Path(out).expanduser()
    store = RunStore(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty: import writes a new run folder")
    _check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        data_described = describe_data(data, loaded, len(imported)) if loaded is not None else \
            {"spec": None, "source": "imported", "n_items": len(imported), "synthetic": False}
        record = RunRecord(task=the_task.describe(), data=data_described,
                           model={"spec": model, "adapter": None, "imported": True}, config=_recorded(config),
                           environment=environment(), created=now(), synthetic=bool(data_described.get("synthetic")))
        record = record.to_dict()
        record["imported"] = {"file": str(path.resolve()), "format": fmt, "n_answers": len(rows),
                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "notes": notes}
        errors = sum(r["error"] is not None for r in imported)
        record["status"] = {"n_samples": len(imported), "n_rows": len(imported), "n_error": errors,
                            "errors": {"no answer in the imported file": errors} if errors else {}, "updated": now()}
        store.append(imported)
        store.write_record(record)
    for note in notes:
        print(f"note: {note}")
    result = RunResult(out, record, notes=notes)
    if (judge or "").lower() != "none":
        result.metrics = score_run(out, judge=judge, quiet=quiet)
        result.record = store.read_record()
    return result


def cli_import(args) -> int:
    from unsafe_concepts.runs import print_summary

    result = import_answers(args.file, model=args.model, task=args.task, out=args.out, data=args.data,
                            safe_data=args.safe_data, judge=args.judge)
    print(f"imported {result.record['status']['n_rows']} answers into {result.out}")
    print_summary(result, next_command=f"unsafe-concepts report {result.out} --out {result.out / 'report'}")
    return 0

