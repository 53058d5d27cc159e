"""Files on disk, done one way everywhere: the JSONL reader, the atomic writer, the "build in a temp
folder then rename" helper and the folder lock. Nothing here unpickles anything: JSON only."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from unsafe_concepts.errors import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, for files written through a temporary name


@dataclass
class JSONLContent:
    """What ``read_jsonl`` found: the rows, and the lines it could not use (1-based number, raw bytes, why)."""

    rows: list[dict]
    bad: list[tuple[int, bytes, str]] = field(default_factory=list)
    torn_tail: bool = False  # the last line had no newline and did not parse: a write cut by a kill
    good_bytes: int = 0  # length of the prefix of complete lines
    numbers: list[int] = field(default_factory=list)  # the 1-based line number of each row in ``rows``
    lines: int = 0  # lines in the file

    def raise_if_bad(self, path: str | Path) -> None:
        """For input files (not run stores): the first broken line, torn last line included, as a UserError
        naming the file and the line."""
        if self.bad:
            number, _, why = self.bad[0]
            raise UserError(f"{path}:{number}: {why}")
        if self.torn_tail:
            raise UserError(f"{path}:{self.lines}: not JSON (the last line is cut off)")


def read_jsonl(path: str | Path, *, require_id: bool = False) -> JSONLContent:
    """Every row of a JSONL file that is a JSON object (and has an ``id`` if asked), in file order.

    A broken line anywhere is skipped and reported in ``bad`` (the caller decides what to say or where to
    set it aside); it never hides the valid rows after it. Non-UTF-8 bytes count as a broken line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JSONLContent([])
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a JSONL file") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    out = JSONLContent([])
    lines = data.splitlines(keepends=True)
    out.lines = len(lines)
    for number, line in enumerate(lines, start=1):
        complete = line.endswith(b"\n")
        if not line.strip():
            out.good_bytes += len(line) if complete else 0
            continue
        why = None
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            why = "not UTF-8"
        except json.JSONDecodeError as e:
            why = f"not JSON ({e.msg})"
        else:
            if not isinstance(row, dict):
                why = f"a JSON {type(row).__name__}, not an object"
            elif require_id and row.get("id") is None:
                why = "no 'id'"
        if why is None:
            out.rows.append(row)
            out.numbers.append(number)
        elif not complete and number == len(lines):
            out.torn_tail = True
            continue
        else:
            out.bad.append((number, line, why))
        if complete:
            out.good_bytes += len(line)
    return out


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of it (fsync + rename)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """``write_text_atomic`` for bytes (an image file, say)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Append rows and fsync: a kill loses at most the line being written (which ``read_jsonl`` skips)."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def build_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` in one rename,
    on failure it is removed. Readers never see a half-built folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private (0700); give it a plain mkdir's mode
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderInUse(UserError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run folder") -> Iterator[None]:
    """Hold ``<folder>/.lock`` (a ``filelock`` lock, released by the OS if the process dies) while working
    in the folder; a second process gets a clear error naming the holder's PID instead of waiting."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    lock_path = folder / ".lock"
    pid_path = folder / ".lock.pid"
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = pid_path.read_text().strip()
        except OSError:
            holder = "?"
        raise FolderInUse(f"{what} {folder} is in use by PID {holder}; wait for it to finish, "
                          "or use another --out") from None
    try:
        with contextlib.suppress(OSError):
            pid_path.write_text(str(os.getpid()))
        yield
    finally:
        with contextlib.suppress(OSError):
            pid_path.unlink()
        lock.release()


def explain_os_error(e: OSError, path: str | Path) -> UserError:
    """An OSError while writing -> one clear line naming the path and the cause."""
    reasons = {errno.EACCES: "permission denied (read-only?)", errno.EROFS: "read-only file system",
               errno.ENOSPC: "no space left on the device", errno.ENAMETOOLONG: "file name too long",
               errno.EPERM: "operation not permitted"}
    return UserError(f"cannot write {path}: {reasons.get(e.errno, e.strerror or str(e))}")
