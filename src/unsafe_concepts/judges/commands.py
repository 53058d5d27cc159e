"""`unsafe-concepts judge apply | eval | train`."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from unsafe_concepts.errors import UserError
from unsafe_concepts.judges import DEFAULT_JUDGE
from unsafe_concepts.judges.base import KINDS, UNCLEAR, JudgeItem, kind_for, labels_for

BATCH = 32


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSONL file; a clear error naming the line for malformed JSON or a missing field."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a JSONL file (for a run folder, its responses.jsonl)")
    rows = []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    for lineno, bline in enumerate(raw.splitlines(), 1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}, line {lineno}: not UTF-8 text (byte 0x{bline[e.start]:02x} at column "
                            f"{e.start + 1}); JSONL files must be UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise UserError(f"{path}, line {lineno}: missing field(s) {', '.join(missing)} "
                            f"(rows need {', '.join(required)})")
        for k in ("task", "prompt"):
            if k in required and not isinstance(row[k], str):
                raise UserError(f"{path}, line {lineno}: field {k!r} must be a string")
        if "response" in required and row["response"] is not None and not isinstance(row["response"], str):
            raise UserError(f"{path}, line {lineno}: field 'response' must be a string or null")
        row["_line"] = lineno
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def check_output_file(path: str | Path) -> None:
    """A clear error now for an output path that cannot be written later (a folder, a file as parent)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a folder: give a file name, e.g. {path / 'judged.jsonl'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"--out {path}: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: {parent} is not writable")


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def judge_rows(judge, rows: list[dict], *, desc: str = "judging", quiet: bool = False) -> list:
    """Verdicts for rows with a response, in batches, with a progress bar; None for error rows."""
    from tqdm import tqdm

    todo = [i for i, r in enumerate(rows) if isinstance(r.get("response"), str)]
    verdicts: list = [None] * len(rows)
    with tqdm(total=len(todo), desc=desc, unit="row", disable=quiet, file=sys.stderr) as bar:
        for start in range(0, len(todo), BATCH):
            idx = todo[start:start + BATCH]
            items = [JudgeItem(task=rows[i]["task"], prompt=rows[i]["prompt"], response=rows[i]["response"],
                               kind=_row_kind_field(rows[i])) for i in idx]
            for i, v in zip(idx, judge.judge(items)):
                verdicts[i] = v
            bar.update(len(idx))
    return verdicts


def cli_apply(args) -> int:
    from unsafe_concepts.judges import load_judge

    rows = read_jsonl(args.input, ("task", "prompt", "response"))
    check_output_file(args.out)  # before any judging: a bad --out must not cost the work
    judge_name = args.judge or DEFAULT_JUDGE
    judge = load_judge(judge_name)
    verdicts = judge_rows(judge, rows, desc=f"judge {judge_name}")
    out_rows, n_error = [], 0
    for r, v in zip(rows, verdicts):
        r = {k: val for k, val in r.items() if k != "_line"}
        if v is None:
            # No answer to read (a failed query): not "unclear" (that is a verdict about an answer) but no verdict.
            n_error += 1
            r["verdict"], r["confidence"] = None, None
            r["judge_error"] = "no response to judge" + (f" (query error: {r['error']})" if r.get("error") else "")
        else:
            r["verdict"], r["confidence"], r["verdict_reason"] = v.label, v.confidence, v.reason
            if v.probs is not None:
                r["verdict_probs"] = v.probs
        r["judge"] = judge_name
        out_rows.append(r)
    try:
        write_jsonl_atomic(args.out, out_rows)
    except OSError as e:
        raise UserError(f"cannot write {args.out} ({e.strerror or e})") from None
    counts: dict = {}
    for r in out_rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda t: str(t[0])))
    print(f"wrote {len(out_rows)} rows to {args.out} ({summary}; {n_error} without a response)")
    _print_unparsable(judge)
    return 0


# ----------------------------------------------------------------------------- eval

def _row_kind_field(row: dict) -> str | None:
    """A row's own "kind" ("alignment" | "perception") if it has a valid one; else the task name decides."""
    kind = row.get("kind")
    return kind if kind in KINDS else None


def _kind(row: dict) -> str:
    return kind_for(row["task"], _row_kind_field(row))


def evaluate_judge(judge, rows: list[dict], *, other=None, quiet: bool = False) -> dict:
    """Metrics per task type of ``judge`` against the rows' labels (and against ``other`` if given)."""
    from unsafe_concepts.judges.agreement import agreement_report

    rows = [r for r in rows if isinstance(r.get("response"), str)]
    for r in rows:
        allowed = labels_for(r["task"], _row_kind_field(r))
        if r["label"] not in allowed:
            raise UserError(f"line {r.get('_line', '?')}: label {r['label']!r} is not one of {list(allowed)} "
                            f"for task {r['task']!r}")
    mine = judge_rows(judge, rows, desc="judge", quiet=quiet)
    theirs = judge_rows(other, rows, desc="against", quiet=quiet) if other is not None else None
    result: dict = {}
    for kind in ("alignment", "perception"):
        idx = [i for i, r in enumerate(rows) if _kind(r) == kind]
        if not idx:
            continue
        labels = labels_for(kind=kind)
        truth = [rows[i]["label"] for i in idx]
        entry = {"vs_labels": agreement_report(truth, [mine[i].label for i in idx], labels)}
        if theirs is not None:
            entry["against_vs_labels"] = agreement_report(truth, [theirs[i].label for i in idx], labels)
            entry["judge_vs_against"] = agreement_report([mine[i].label for i in idx], [theirs[i].label for i in idx],
                                                         labels)
        result[kind] = entry
    return result


def _table(title: str, rep: dict, rows_title: str, cols_title: str) -> str:
    from unsafe_concepts.judges.agreement import format_confusion

    head = (f"{title}: n={rep['n']}  accuracy={rep['accuracy']:.3f}  macro-F1={rep['macro_f1']:.3f}  "
            f"kappa={rep['kappa']:.3f}")
    per = "  ".join(f"{k}: F1 {v['f1']:.2f} (n={v['support']})" for k, v in rep["per_class"].items())
    return "\n".join([head, "  " + per, format_confusion(rep, rows_title, cols_title)])


def cli_eval(args) -> int:
    from unsafe_concepts.judges import load_judge

    rows = read_jsonl(args.input, ("task", "prompt", "response", "label"))
    split = getattr(args, "split", None)
    if split:
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise UserError(f"{args.input}: no rows with split {split!r}")
    args.judge = args.judge or DEFAULT_JUDGE
    judge = load_judge(args.judge)
    other = load_judge(args.against) if args.against else None
    result = evaluate_judge(judge, rows, other=other)
    result = {"judge": args.judge, "against": args.against, "input": str(args.input), "split": split, **result}
    for key, j in (("judge_info", judge), ("against_info", other)):
        if j is not None and "n_unparsable" in j.describe():
            result[key] = {k: j.describe()[k] for k in ("n_judged", "n_unparsable")}
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
        return 0
    for kind in ("alignment", "perception"):
        if kind not in result:
            continue
        entry = result[kind]
        print(f"== {kind} ==")
        print(_table(f"{args.judge} vs labels", entry["vs_labels"], "label", args.judge))
        if "judge_vs_against" in entry:
            print()
            print(_table(f"{args.against} vs labels", entry["against_vs_labels"], "label", args.against))
            print()
            print(_table(f"{args.judge} vs {args.against}", entry["judge_vs_against"], args.judge, args.against))
        print()
    _print_unparsable(judge)
    if other is not None:
        _print_unparsable(other)
    return 0


def _print_unparsable(judge) -> None:
    info = judge.describe() if hasattr(judge, "describe") else {}
    if info.get("n_unparsable"):
        print(f"note: {info['n_unparsable']} of {info['n_judged']} replies of {info['name']} were not one label word "
              "and count as unclear")


def cli_train(args) -> int:
    from unsafe_concepts.judges.classifier import train_classifier

    rows = read_jsonl(args.data, ("task", "prompt", "response", "label"))
    out = train_classifier(rows, args.out, base=args.base, epochs=args.epochs, seed=args.seed)
    meta = json.loads((Path(out) / "judge.json").read_text())
    print(f"saved judge to {out}")
    for kind, m in (meta.get("metrics") or {}).items():
        print(f"  held-out {kind}: n={m['n']} accuracy={m['accuracy']:.3f} macro-F1={m['macro_f1']:.3f}")
    return 0


__all__ = ["cli_apply", "cli_eval", "cli_train", "read_jsonl", "write_jsonl_atomic", "evaluate_judge", "UNCLEAR"]
