"""The manifest of a batch job: one JSONL file in the output directory, a ledger.

Every change of a line's state is appended as one JSON record and flushed before
the job goes on, so a crash or a kill loses at most the record being written.
The file is rewritten whole (compacted) when a run starts and when it ends,
through a temporary file and a rename, so the manifest on disk is always valid JSONL.

A record::

    {"line": 3, "status": "done", "key": "9f2c...", "request": {...},
     "task_id": "2db0...", "files": ["00003-a-white-cat-0.png"],
     "error": null, "reason": null, "updated_at": "2025-01-01T12:00:00Z"}

``status`` is ``submitted`` (the task id is known, the result not yet),
``done``, ``failed`` (``reason`` says why, ``error`` in words) or ``invalid``
(the input line itself is malformed). Lines never submitted have no record.
``files`` are relative to the output directory. ``key`` fingerprints the request.

The rule that protects money: **the ledger never forgets a task id.** The last
record of a line is its current state; an earlier record of the same line for
another request (``key``) that holds a task id is kept beside it, on disk and
in memory, whatever runs later (compaction writes it too). Within one request,
a task id that may still yield images (:func:`is_open`) is only replaced once a
record says it will not. Unreadable lines (a record torn by a kill or a full
disk) are copied to ``manifest-unreadable.txt`` before any compaction, and a
task id is salvaged from a torn record when its text is complete.

A write that fails (a full disk) does not stop the job or lose the record: it
stays in memory (:attr:`Ledger.unsaved`), appending stops, and the compaction at
the end tries to write everything again; the caller reports what is not on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from filelock import FileLock

__all__ = [
    "MANIFEST_NAME",
    "RESOLVED_FAILURES",
    "UNREADABLE_NAME",
    "Ledger",
    "LedgerBusyError",
    "Record",
    "is_open",
]

MANIFEST_NAME = "manifest.jsonl"
UNREADABLE_NAME = "manifest-unreadable.txt"
LOCK_NAME = ".manifest.lock"

# Failure reasons after which a task id can yield nothing more: the task itself
# failed, the service does not know it, or its images are gone. Any other failed
# record with a task id (a timeout, a download or network error, a full disk, a
# refused token) is waited on again by task id for free.
RESOLVED_FAILURES = frozenset({"task_failed", "not_found", "images_gone"})

# fsync at most this often: a flush already survives the death of the process (the
# data is in the kernel); fsync only adds safety against power loss, and one per
# record would make a 10,000-line job wait on the disk 20,000 times.
_FSYNC_EVERY = 1.0
# Salvaging a torn record tries to close it at its last few commas; longer or
# deeper text than any record of ours is not worth trying.
_SALVAGE_TRIES = 64
_SALVAGE_MAX_CHARS = 1 << 20


@attrs.define
class Record:
    """The state of one input line, as the manifest stores it."""

    line: int
    status: str
    key: str | None = None
    request: dict[str, Any] | None = None
    task_id: str | None = None
    files: list[str] = attrs.field(factory=list)
    error: str | None = None
    reason: str | None = None
    updated_at: str | None = None

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Any) -> Record | None:
        """A record from a parsed JSON value, or None if it is not one of ours."""
        if not isinstance(data, dict):
            return None
        line, status = data.get("line"), data.get("status")
        if isinstance(line, bool) or not isinstance(line, int) or not isinstance(status, str):
            return None
        files = data.get("files")
        request = data.get("request")
        return cls(
            line=line,
            status=status,
            key=_text(data.get("key")),
            request=request if isinstance(request, dict) else None,
            task_id=_text(data.get("task_id")),
            files=[f for f in files if isinstance(f, str)] if isinstance(files, list) else [],
            error=_text(data.get("error")),
            reason=_text(data.get("reason")),
            updated_at=_text(data.get("updated_at")),
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def is_open(record: Record) -> bool:
    """Whether the record's task may still yield images that nothing else records."""
    if not record.task_id:
        return False
    return record.status == "submitted" or (
        record.status == "failed" and record.reason not in RESOLVED_FAILURES
    )


def _parse(raw: str) -> Record | None:
    try:
        return Record.from_json(json.loads(raw))
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None


def _salvage(raw: str) -> Record | None:
    """A record with a task id from the complete beginning of a torn one, if any.

    The writer puts ``task_id`` before ``files``, ``error`` and ``reason``, so a
    record cut after its task id still names line, request and task: closing the
    text at one of its last commas gives a record worth keeping.
    """
    if len(raw) > _SALVAGE_MAX_CHARS or not raw.startswith("{"):
        return None
    end = len(raw)
    for _ in range(_SALVAGE_TRIES):
        end = raw.rfind(",", 0, end)
        if end < 0:
            return None
        record = _parse(raw[:end] + "}")
        if record is not None and record.task_id:
            return record
    return None


class LedgerBusyError(Exception):
    """Another process holds the manifest (a second run on the same directory)."""


class LedgerError(Exception):
    """A write would forget a task id that may still yield images (a bug, never normal)."""


class Ledger:
    """The records of one output directory; ``open()`` it, ``write()`` records, ``close()``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / MANIFEST_NAME
        self.records: dict[int, Record] = {}  # each line's current (last) record
        # Earlier records of a line, for another request, that hold a task id.
        self.kept: dict[int, dict[str | None, Record]] = {}  # line -> key -> record
        self.torn = 0  # unreadable lines met on load
        self.salvaged = 0  # of which a task id was recovered
        self.unsaved: dict[tuple[int, str | None], Record] = {}  # not on disk yet
        self.write_error: OSError | None = None  # the first failed write
        self._file: IO[str] | None = None
        self._lock: FileLock | None = None
        self._synced = 0.0

    # --- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, load what an earlier run recorded, and compact it."""
        try:
            # filelock (the ``cli`` extra): an OS lock on Unix and Windows alike,
            # released by the OS if the process dies, so a killed run never leaves
            # the directory locked.
            from filelock import FileLock, Timeout
        except ImportError:
            raise ImportError(
                "flux-async batch needs the filelock package: pip install 'flux-async[cli]'"
            ) from None
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.directory / LOCK_NAME, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise LedgerBusyError(
                f"another flux-async batch is already writing to {self.directory}; "
                "wait for it to finish, or use another --out"
            ) from None
        self._lock = lock
        try:
            unreadable = self._load()
            if unreadable:
                # Kept before the compaction below rewrites the manifest without them.
                with (self.directory / UNREADABLE_NAME).open("a", encoding="utf-8") as out:
                    out.writelines(raw + "\n" for raw in unreadable)
            self.compact()
            self._file = self.path.open("a", encoding="utf-8")
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Compact and release the directory; safe to call twice.

        A compaction that fails (a full disk) leaves the file as it was and is
        reported through :attr:`unsaved`; the records are never dropped for it.
        """
        try:
            if self._file is not None or self.unsaved:
                if self._file is not None:
                    with contextlib.suppress(OSError):
                        self._file.close()
                    self._file = None
                with contextlib.suppress(OSError):
                    self.compact()
        finally:
            self._release()

    def _release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Ledger:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------

    def _load(self) -> list[str]:
        """Read the manifest into memory; returns the lines that are not records."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        unreadable = []
        for raw in text.splitlines():
            if not raw.strip():
                continue
            record = _parse(raw)
            if record is None:
                # Normally only the last line, torn by a kill mid-write.
                self.torn += 1
                unreadable.append(raw)
                record = _salvage(raw)
                if record is None:
                    continue
                self.salvaged += 1
            self._put(record, strict=False)
        return unreadable

    def get(self, line: int) -> Record | None:
        """The current (last written) record of ``line``."""
        return self.records.get(line)

    def find(self, line: int, key: str | None) -> Record | None:
        """The record of ``line`` for the request fingerprinted ``key``, current or kept."""
        current = self.records.get(line)
        if current is not None and current.key == key:
            return current
        return self.kept.get(line, {}).get(key)

    def others(self, line: int, key: str | None) -> list[Record]:
        """Records of ``line`` for other requests than ``key`` that hold a task id."""
        found = [r for k, r in self.kept.get(line, {}).items() if k != key]
        current = self.records.get(line)
        if current is not None and current.key != key and current.task_id:
            found.append(current)
        return found

    def __iter__(self) -> Iterator[Record]:
        """The current record of every line, by line number."""
        return iter(sorted(self.records.values(), key=lambda r: r.line))

    def all_records(self) -> list[Record]:
        """Every record the manifest holds: per line, the kept ones, then the current one."""
        out = sorted((r for kept in self.kept.values() for r in kept.values()),
                     key=lambda r: (r.line, r.updated_at or ""))
        out += self.records.values()
        out.sort(key=lambda r: r.line)  # stable: a line's current record stays last
        return out

    def open_task_ids(self) -> set[str]:
        """Task ids that may still yield images, in any record."""
        return {r.task_id for r in self.all_records() if r.task_id and is_open(r)}

    # --- writing ---------------------------------------------------------------------

    def _put(self, record: Record, *, strict: bool) -> None:
        old = self.records.get(record.line)
        if old is not None and old.key != record.key:
            if old.task_id:
                self.kept.setdefault(old.line, {})[old.key] = old
            old = self.kept.get(record.line, {}).get(record.key)
        if strict and old is not None and is_open(old) and old.task_id != record.task_id:
            raise LedgerError(
                f"line {record.line}: task {old.task_id} may still yield images; "
                "record its outcome before giving the line another task"
            )
        kept = self.kept.get(record.line)
        if kept is not None and kept.pop(record.key, None) is not None and not kept:
            del self.kept[record.line]
        self.records[record.line] = record

    def write(self, record: Record) -> None:
        """Record a line's new state, durably enough to survive a kill right after.

        Never raises for a failed write: see :attr:`write_error` and :attr:`unsaved`.
        """
        record.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._put(record, strict=True)
        slot = (record.line, record.key)
        if self._file is None:
            if self._lock is None:
                raise RuntimeError("the ledger is not open")
            self.unsaved[slot] = record  # appending stopped after a failed write
            return
        try:
            self._file.write(record.to_json() + "\n")
            self._file.flush()
            now = time.monotonic()
            if now - self._synced >= _FSYNC_EVERY:
                os.fsync(self._file.fileno())
                self._synced = now
        except OSError as exc:
            # A full disk, typically. Appending more could tear records in the
            # middle of the file: stop appending and keep records in memory.
            self.write_error = self.write_error or exc
            self.unsaved[slot] = record
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def compact(self) -> None:
        """Rewrite the manifest with every record worth keeping, atomically."""
        records = self.all_records()
        if not records and not self.path.exists():
            return
        _atomic_write(self.path, (r.to_json() + "\n" for r in records))
        self.unsaved.clear()


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("w", encoding="utf-8") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
