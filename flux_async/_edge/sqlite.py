"""``SQLiteJournal``: the task journal in one SQLite file, written by one thread per handle.

Why the standard library's ``sqlite3`` in a thread of our own, not an async
wrapper: every write must be durable before the client goes on (an intent before
its POST, a task id before anyone is handed it), so what matters is how many
writes share one fsync, not how a single one is awaited. One writer thread per
journal handle takes every queued operation, runs them in one transaction and
commits once (group commit): a thousand submissions a second cost tens of
fsyncs, not thousands. Wrappers that run each statement in a thread pool (as
aiosqlite does) would commit each on its own.

The file: WAL mode (readers never block the writer), ``synchronous=FULL`` (a
commit survives a power cut, not only a crash), ``application_id`` and
``user_version`` naming the format, so a file that is not a journal, or one
from a newer flux_async, is refused with ``JournalError`` before anything is
paid. Several handles (clients, processes) may share one file: SQLite's lock
serialises their transactions and the ``key`` column is unique, so two claims
of one key can never both win.

Which handle works on an entry: each handle holds an exclusive ``flock`` on a
file of its own beside the journal (``<journal>.owners/<owner>.lock``); the
operating system drops it when the process dies, however it dies. Handles that
open the file at once take turns (``<journal>.owners/.init``) to make it a journal. An entry
whose owner's lock can be taken belongs to a handle that ended: it is taken
over (``_core.journal``'s table says how). POSIX only (``fcntl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio.to_thread

from .._core.errors import JournalError
from .._core.journal import KEEPS_KEY, Entry, EntryState, Opened

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["SCHEMA_VERSION", "SQLiteJournal"]

log = logging.getLogger("flux_async")

#: The format this module writes and reads (``PRAGMA user_version``).
SCHEMA_VERSION: Final = 1
# "FLXJ": marks the file as a flux_async journal (``PRAGMA application_id``).
_APPLICATION_ID: Final = 0x464C584A
# Most operations one transaction takes (the rest wait for the next commit).
_BATCH: Final = 1024
# How long a transaction waits for another handle's lock before failing.
_BUSY_SECONDS: Final = 30.0
# How often a long-lived handle forgets ended entries past the retention (opening
# a journal does it too), so a journal stays the size of its retention.
_PURGE_EVERY: Final = 3600.0
# Lock files of ended handles older than this are removed when a journal opens.
_SWEEP_AGE: Final = 60.0
# Least time between two commits. Each commit is an fsync (a few ms, and about a
# quarter of a millisecond of CPU); what queues meanwhile shares the next one. At
# most 250 fsyncs a second, whatever the rate of submissions; a lone write waits
# for none of this (the gap since the last commit has passed).
_COMMIT_GAP: Final = 0.004

# Rows live in their primary key's tree (WITHOUT ROWID: one b-tree, not two). No
# index on the state: it changes with every write, and only opening a journal
# looks for the open entries (one scan).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id TEXT PRIMARY KEY,
    key TEXT UNIQUE,
    fingerprint TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    nonce TEXT,
    outcome TEXT,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_nonce ON entries (nonce) WHERE nonce IS NOT NULL;
"""
_COLUMNS = ("entry_id, key, fingerprint, request, state, task_id, nonce, outcome, owner, "
            "created_at")
_STOP = object()

Op = Callable[[sqlite3.Connection], Any]
_T = TypeVar("_T")

# The writes every submission makes, as plain statements: consecutive ones of a
# kind in a batch run as one ``executemany`` (one statement prepared, rows bound in C).
_INSERT = (f"INSERT INTO entries ({_COLUMNS}, updated_at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)")
_SENDING = "UPDATE entries SET state = 'sending', nonce = ?, updated_at = ? WHERE entry_id = ?"
_RUNNING = ("UPDATE entries SET state = 'running', task_id = ?, updated_at = ? "
            "WHERE entry_id = ?")
_ENDED = ("UPDATE entries SET state = ?, task_id = ?, outcome = ?, updated_at = ? "
          "WHERE entry_id = ?")
_STATE = "UPDATE entries SET state = ?, updated_at = ? WHERE entry_id = ?"
_DROP = "DELETE FROM entries WHERE entry_id = ? AND task_id IS NULL"


class _Call:
    """One queued operation: a function of the connection, or a statement and its row."""

    __slots__ = ("future", "op", "params", "sql")

    def __init__(self, op: Op | None, future: asyncio.Future[Any] | None,
                 sql: str = "", params: tuple[Any, ...] = ()) -> None:
        self.op = op
        self.future = future
        self.sql = sql
        self.params = params


def _entry(row: tuple[Any, ...]) -> Entry:
    (entry_id, key, fingerprint, request, state, task_id, nonce, outcome, owner,
     created_at) = row
    return Entry(entry_id=entry_id, key=key, fingerprint=fingerprint,
                 request=json.loads(request), state=EntryState(state), task_id=task_id,
                 nonce=nonce, outcome=None if outcome is None else json.loads(outcome),
                 owner=owner, created_at=created_at)


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SQLiteJournal:
    """A durable journal in the SQLite file at ``path`` (created with its folder if missing)."""

    durable = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.owner = secrets.token_hex(8)
        self._retention = 86400.0
        self._queue: queue.SimpleQueue[_Call | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd: int | None = None
        self._closed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<SQLiteJournal {str(self.path)!r} owner={self.owner}>"

    # --- the writer thread -----------------------------------------------------------

    def _error(self, what: str, exc: BaseException) -> JournalError:
        return JournalError(f"the journal {str(self.path)!r} {what}: {exc}", path=str(self.path))

    async def _call(self, op: Op) -> Any:
        if self._thread is None or self._loop is None:
            raise JournalError("the journal is not open", path=str(self.path))
        future = self._loop.create_future()
        self._queue.put(_Call(op, future))
        return await future

    async def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        """One statement, durable when this returns."""
        if self._thread is None or self._loop is None:
            raise JournalError("the journal is not open", path=str(self.path))
        future = self._loop.create_future()
        self._queue.put(_Call(None, future, sql, params))
        await future

    def _post(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue a statement nobody waits for (an error is logged)."""
        if self._thread is not None:
            self._queue.put(_Call(None, None, sql, params))

    def _run(self, connection: sqlite3.Connection) -> None:
        committed = 0.0
        purged = time.monotonic()
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            wait = committed + _COMMIT_GAP - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # this thread's own: what queues meanwhile joins in
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._queue.put(_STOP)  # after this batch
                    break
                batch.append(more)
            calls: list[_Call] = batch  # type: ignore[assignment]
            results: list[Any] = []
            try:
                connection.execute("BEGIN IMMEDIATE")
                self._apply(connection, calls, results)
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                failure = self._error("could not be written", exc)
                results = [failure] * len(calls)
            committed = time.monotonic()
            if committed - purged > _PURGE_EVERY:
                purged = committed
                self._queue.put(_Call(self._purge, None))
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._deliver, calls, results)
            except RuntimeError:  # the loop is gone (never closed): nobody waits any more
                return

    @staticmethod
    def _apply(connection: sqlite3.Connection, calls: list[_Call], results: list[Any]) -> None:
        """Run ``calls`` in order (in the open transaction), appending each one's result."""
        i = 0
        while i < len(calls):
            call = calls[i]
            if call.op is None:
                j = i + 1
                while j < len(calls) and calls[j].op is None and calls[j].sql == call.sql:
                    j += 1
                connection.executemany(call.sql, [c.params for c in calls[i:j]])
                results.extend([None] * (j - i))
                i = j
                continue
            try:
                results.append(call.op(connection))
            except sqlite3.Error:
                raise
            except Exception as exc:  # a bug in one operation fails that one only
                results.append(exc)
            i += 1

    def _deliver(self, calls: list[_Call], results: list[Any]) -> None:
        lost = 0  # changes nobody waits for that could not be written: said once
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                if call.future is None:
                    lost += 1
                    if lost == 1:
                        log.error("the journal could not record a change: %s", result)
                    continue
                if not call.future.done():
                    call.future.set_exception(result)
            elif call.future is not None and not call.future.done():
                call.future.set_result(result)

    def _main(self, started: asyncio.Future[Opened], loop: asyncio.AbstractEventLoop) -> None:
        try:
            connection = self._connect()
            opened = _patiently(lambda: self._take_over_all(connection))
        except BaseException as exc:  # reported to open(), which raises it
            self._unlock()
            error = exc if isinstance(exc, JournalError) else self._error("cannot be opened", exc)
            loop.call_soon_threadsafe(_settle, started, None, error)
            return
        loop.call_soon_threadsafe(_settle, started, opened, None)
        try:
            self._run(connection)
        finally:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
            self._unlock()
            assert self._closed is not None
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, self._closed, None, None)

    # --- opening ---------------------------------------------------------------------

    async def open(self, retention: float) -> Opened:
        """Open the file, lock this handle's owner file, take over what ended handles left."""
        if fcntl is None:  # pragma: no cover - not POSIX
            raise JournalError("the SQLite journal needs a POSIX system (fcntl)")
        self._retention = retention
        self._loop = loop = asyncio.get_running_loop()
        started: asyncio.Future[Opened] = loop.create_future()
        self._closed = loop.create_future()
        self._thread = threading.Thread(target=self._main, args=(started, loop),
                                        name=f"flux_async journal {self.owner}", daemon=True)
        self._thread.start()
        try:
            return await started
        except BaseException:
            thread, self._thread = self._thread, None
            await anyio.to_thread.run_sync(thread.join)  # it ends as soon as it reported
            raise

    def _owners(self) -> Path:
        return self.path.with_name(self.path.name + ".owners")

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._owners().mkdir(exist_ok=True)
            self._lock()
            connection = sqlite3.connect(self.path, timeout=_BUSY_SECONDS,
                                         isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise self._error("cannot be opened", exc) from exc
        try:
            # One handle at a time makes the file a journal (WAL mode, the schema):
            # SQLite may refuse a second one at once ("database is locked") instead
            # of waiting, while the first switches the file's journal mode.
            with self._initializing():
                _patiently(lambda: self._prepare(connection))
        except BaseException:
            connection.close()
            raise
        return connection

    @contextlib.contextmanager
    def _initializing(self) -> Iterator[None]:
        assert fcntl is not None
        fd = os.open(self._owners() / ".init", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # this thread's own wait: the loop goes on
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _prepare(self, connection: sqlite3.Connection) -> None:
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise self._error("is not readable as a journal", exc) from exc
        if application_id not in (0, _APPLICATION_ID) or (
                application_id == 0 and tables - {"entries"}):
            raise JournalError(f"{str(self.path)!r} is an SQLite file of something else, not a "
                               "flux_async journal", path=str(self.path))
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {str(self.path)!r} was written by a newer flux_async (format "
                f"{version}; this one reads up to {SCHEMA_VERSION}): upgrade flux_async",
                path=str(self.path))
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)
            connection.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise self._error("cannot be written", exc) from exc

    # --- who works on what -------------------------------------------------------------

    def _lock(self) -> None:
        assert fcntl is not None
        path = self._owners() / f"{self.owner}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._owners() / f"{self.owner}.lock")
        with contextlib.suppress(OSError):
            os.close(fd)  # closing drops the lock

    def _ended(self, owner: str) -> bool:
        """Whether the handle ``owner`` is gone (its lock can be taken, or has no file)."""
        if owner == self.owner:
            return False
        assert fcntl is not None
        path = self._owners() / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return True

    def _sweep(self) -> None:
        """Remove the lock files of handles that ended with nothing open (a killed
        process leaves one each). Only old ones: a handle creates its file a moment
        before it locks it, and a file removed in that moment would hide a live handle."""
        limit = time.time() - _SWEEP_AGE
        with contextlib.suppress(OSError):
            for path in self._owners().glob("*.lock"):
                with contextlib.suppress(OSError):
                    if path.stem != self.owner and path.stat().st_mtime < limit:
                        self._ended(path.stem)

    def _take_over(self, connection: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]
                   ) -> list[Entry]:
        """The entries of ``rows`` as they stand once those of ended handles are taken over.

        In the open transaction. An ended handle's QUEUED entry is deleted (nothing
        was sent) and left out; its SENDING one becomes UNKNOWN; RUNNING and UNKNOWN
        ones are owned here from now on. Live handles' entries are left as they are.
        """
        taken = []
        now = time.time()
        for row in rows:
            entry = _entry(row)
            if entry.owner == self.owner or not self._ended(entry.owner):
                taken.append(entry)
                continue
            if entry.state is EntryState.QUEUED:
                connection.execute("DELETE FROM entries WHERE entry_id = ?", (entry.entry_id,))
                continue
            state = entry.state
            if state is EntryState.SENDING:
                # A callback may have named its task before the answer came (``noted``).
                state = EntryState.UNKNOWN if entry.task_id is None else EntryState.RUNNING
            connection.execute(
                "UPDATE entries SET state = ?, owner = ?, updated_at = ? WHERE entry_id = ?",
                (state.value, self.owner, now, entry.entry_id))
            taken.append(Entry(entry_id=entry.entry_id, key=entry.key,
                               fingerprint=entry.fingerprint, request=entry.request,
                               state=state, task_id=entry.task_id, nonce=entry.nonce,
                               outcome=entry.outcome, owner=self.owner,
                               created_at=entry.created_at))
        return taken

    def _purge(self, connection: sqlite3.Connection) -> None:
        """Forget ended entries past the retention; open (and unknown) ones never are."""
        connection.execute(
            "DELETE FROM entries WHERE state IN ('succeeded', 'failed') AND updated_at < ?",
            (time.time() - self._retention,))

    def _take_over_all(self, connection: sqlite3.Connection) -> Opened:
        try:
            connection.execute("BEGIN IMMEDIATE")
            self._purge(connection)
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE owner != ? AND state IN "
                "('queued', 'sending', 'running', 'unknown')", (self.owner,)).fetchall()
            taken = [e for e in self._take_over(connection, rows) if e.owner == self.owner]
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise self._error("cannot be written", exc) from exc
        self._sweep()
        return Opened(
            running=tuple(e for e in taken if e.state is EntryState.RUNNING),
            unknown=tuple(e for e in taken if e.state is EntryState.UNKNOWN),
        )

    # --- the seam ------------------------------------------------------------------------

    async def close(self) -> None:
        """Write what is queued, close the file, release this handle's lock."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        assert self._closed is not None
        await asyncio.shield(self._closed)
        thread, self._thread = self._thread, None
        await anyio.to_thread.run_sync(thread.join)  # it ends as soon as it reported

    def _held(self, connection: sqlite3.Connection, key: str) -> Entry | None:
        row = connection.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ?",
                                 (key,)).fetchone()
        if row is None:
            return None
        entry = _entry(row)
        if entry.state not in KEEPS_KEY and entry.created_at < time.time() - self._retention:
            connection.execute("UPDATE entries SET key = NULL WHERE entry_id = ?",
                               (entry.entry_id,))
            return None  # retention passed: the key is free again
        taken = self._take_over(connection, [row])
        return taken[0] if taken else None

    async def claim(self, entry: Entry) -> Entry | None:
        request, now = _dumps(entry.request), time.time()

        def op(connection: sqlite3.Connection) -> Entry | None:
            if entry.key is not None:
                held = self._held(connection, entry.key)
                if held is not None:
                    return held
            connection.execute(_INSERT, (
                entry.entry_id, entry.key, entry.fingerprint, request, entry.state.value,
                entry.task_id, entry.nonce, self.owner, now, now))
            return None

        result: Entry | None = await self._call(op)
        return result

    async def lookup(self, key: str) -> Entry | None:
        result: Entry | None = await self._call(lambda connection: self._held(connection, key))
        return result

    async def sending(self, entry: Entry, nonce: str | None) -> None:
        now = time.time()
        if entry.key is None:
            await self._write(_INSERT, (
                entry.entry_id, None, entry.fingerprint, _dumps(entry.request), "sending",
                None, nonce, self.owner, now, now))
        else:
            await self._write(_SENDING, (nonce, now, entry.entry_id))

    async def answered(self, entry: Entry, task_id: str,
                       outcome: Mapping[str, Any] | None) -> None:
        if outcome is None:
            await self._write(_RUNNING, (task_id, time.time(), entry.entry_id))
            return
        state = EntryState.SUCCEEDED if outcome.get("success") else EntryState.FAILED
        await self._write(_ENDED, (state.value, task_id, _dumps(outcome), time.time(),
                                   entry.entry_id))

    def unsent(self, entry: Entry) -> None:
        self._post(_STATE, (EntryState.QUEUED.value, time.time(), entry.entry_id))

    def uncertain(self, entry: Entry) -> None:
        self._post(_STATE, (EntryState.UNKNOWN.value, time.time(), entry.entry_id))

    def dropped(self, entry: Entry) -> None:
        self._post(_DROP, (entry.entry_id,))

    def ended(self, entry_id: str, outcome: Mapping[str, Any], *, ok: bool) -> None:
        state = EntryState.SUCCEEDED if ok else EntryState.FAILED
        self._post(_ENDED, (state.value, outcome.get("task_id"), _dumps(outcome), time.time(),
                            entry_id))

    async def by_nonce(self, nonce: str) -> Entry | None:
        def op(connection: sqlite3.Connection) -> Entry | None:
            row = connection.execute(f"SELECT {_COLUMNS} FROM entries WHERE nonce = ?",
                                     (nonce,)).fetchone()
            return None if row is None else _entry(row)

        result: Entry | None = await self._call(op)
        return result

    async def matched(self, entry_id: str, task_id: str) -> bool:
        def op(connection: sqlite3.Connection) -> bool:
            row = connection.execute(f"SELECT {_COLUMNS} FROM entries WHERE entry_id = ?",
                                     (entry_id,)).fetchone()
            taken = self._take_over(connection, [] if row is None else [row])
            if not taken or taken[0].task_id is not None:
                return False
            connection.execute(
                "UPDATE entries SET state = 'running', task_id = ?, updated_at = ? "
                "WHERE entry_id = ?", (task_id, time.time(), entry_id))
            # A live handle still sending it records the same id with its answer and
            # follows the task itself; here it is followed only when owned here.
            return taken[0].owner == self.owner

        result: bool = await self._call(op)
        return result

    async def noted(self, entry_id: str, task_id: str) -> None:
        await self._call(lambda connection: connection.execute(
            "UPDATE entries SET task_id = ?, updated_at = ? WHERE entry_id = ? "
            "AND state = 'sending' AND task_id IS NULL", (task_id, time.time(), entry_id)))

    async def release(self, key: str) -> bool:
        def op(connection: sqlite3.Connection) -> bool:
            changed = connection.execute(
                "UPDATE entries SET key = NULL, updated_at = ? WHERE key = ?",
                (time.time(), key)).rowcount
            return bool(changed)

        result: bool = await self._call(op)
        return result


def _patiently(step: Callable[[], _T]) -> _T:
    """``step()``, tried again a few times when SQLite says "locked" at once.

    SQLite waits for another connection's lock (``timeout``), except in a few cases
    where it refuses at once instead (a file whose journal mode is being changed,
    WAL recovery): those pass in milliseconds.
    """
    for attempt in range(6):
        try:
            return step()
        except JournalError as exc:
            cause = exc.__cause__
            if attempt == 5 or not isinstance(cause, sqlite3.OperationalError) or (
                    "locked" not in str(cause) and "busy" not in str(cause)):
                raise
        time.sleep(0.02 * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
