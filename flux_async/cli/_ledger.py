"""The manifest of a batch job: one JSONL file in the output directory, a ledger.

Every change of a line's state is appended as one JSON record and flushed before
the job goes on, so a crash or a kill loses at most the record being written.
The last record of a line wins. A record torn by a kill (the last line of the file,
not valid JSON) is ignored on load, and the file is rewritten whole (compacted:
one record per input line) when a run starts and when it ends, through a temporary
file and a rename, so the manifest on disk is always valid JSONL.

A record::

    {"line": 3, "status": "done", "key": "9f2c...", "request": {...},
     "task_id": "2db0...", "files": ["00003-a-white-cat-0.png"],
     "error": null, "reason": null, "updated_at": "2025-01-01T12:00:00Z"}

``status`` is ``submitted`` (the task id is known, the result not yet),
``done``, ``failed`` (``reason`` says why, ``error`` in words) or ``invalid``
(the input line itself is malformed). Lines never submitted have no record.
``files`` are relative to the output directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs

__all__ = ["MANIFEST_NAME", "Ledger", "LedgerBusyError", "Record"]

MANIFEST_NAME = "manifest.jsonl"

# fsync at most this often: a flush already survives the death of the process (the
# data is in the kernel); fsync only adds safety against power loss, and one per
# record would make a 10,000-line job wait on the disk 20,000 times.
_FSYNC_EVERY = 1.0


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


class LedgerBusyError(Exception):
    """Another process holds the manifest (a second run on the same directory)."""


class Ledger:
    """The records of one output directory; ``open()`` it, ``write()`` records, ``close()``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / MANIFEST_NAME
        self.records: dict[int, Record] = {}
        self.torn = 0  # unreadable lines met on load
        self._file: IO[str] | None = None
        self._lock: IO[bytes] | None = None
        self._synced = 0.0

    # --- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, load what an earlier run recorded, and compact it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.directory / ".manifest.lock")
        try:
            self.records = dict(self._load())
            self.compact()
            self._file = self.path.open("a", encoding="utf-8")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Compact and release the directory; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self.compact()
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the lock
            self._lock = None

    def __enter__(self) -> Ledger:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------

    def _load(self) -> Iterator[tuple[int, Record]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        for raw in text.splitlines():
            if not raw.strip():
                continue
            try:
                record = Record.from_json(json.loads(raw))
            except ValueError:
                record = None
            if record is None:
                # Normally only the last line, torn by a kill mid-write. Anything
                # else unreadable is dropped too: its line will simply run again.
                self.torn += 1
                continue
            yield record.line, record

    def get(self, line: int) -> Record | None:
        return self.records.get(line)

    def __iter__(self) -> Iterator[Record]:
        return iter(sorted(self.records.values(), key=lambda r: r.line))

    # --- writing ---------------------------------------------------------------------

    def write(self, record: Record) -> None:
        """Record a line's new state, durably enough to survive a kill right after."""
        record.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.records[record.line] = record
        if self._file is None:
            raise RuntimeError("the ledger is not open")
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        now = time.monotonic()
        if now - self._synced >= _FSYNC_EVERY:
            os.fsync(self._file.fileno())
            self._synced = now

    def compact(self) -> None:
        """Rewrite the manifest with one record per line, atomically."""
        if not self.records and not self.path.exists():
            return
        _atomic_write(self.path, (r.to_json() + "\n" for r in self))


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


def _lock(path: Path) -> IO[bytes]:
    """Hold an exclusive advisory lock on ``path`` while the returned file is open.

    Two runs appending to one manifest would interleave their records; the second
    run is refused instead. Where ``fcntl`` is missing (Windows) there is no lock.
    """
    handle = path.open("ab")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise LedgerBusyError(
            f"another flux-async batch is already writing to {path.parent}"
        ) from None
    return handle
