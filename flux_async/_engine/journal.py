"""The journal seam, its in-memory default, and how a launch talks to it (``Intent``).

A journal keeps, for each paid submission, the intent (before the POST), the
task id (before anyone is handed it) and the outcome (the states are drawn in
``_core.journal``). ``FluxClient(journal=...)`` takes a path (an SQLite file:
``_edge.sqlite``) or any ``Journal``; a shared coordinator may bring its own
(``flux_async.redis``: the fleet's Redis, for keys). The default,
``MemoryJournal``, keeps keyed requests only, for the life of the process: a
client without a journal pays nothing for it on unkeyed requests.

Rules every journal keeps:

- ``claim`` is atomic: of two callers (tasks, clients, processes) claiming one
  key, one gets None (go ahead) and the other the entry that holds the key.
- Awaited writes (``claim``, ``sending``, ``answered``) return once the record is
  durable; the others (``unsent``, ``uncertain``, ``dropped``, ``ended``) are
  queued and never raise: losing one to a crash leaves an entry in an earlier
  state, which recovery treats safely (a task is followed again, a submission
  is reported as of unknown fate).
- Failures are ``JournalError``, raised before anything is paid.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any, Protocol

from .._core.journal import KEEPS_KEY, Entry, EntryState, Opened, outcome_body
from .._core.protocol import Submission, task_of

__all__ = ["Intent", "Journal", "MemoryJournal"]


class Journal(Protocol):
    """Where paid submissions and idempotency keys are remembered."""

    @property
    def durable(self) -> bool:
        """Whether every paid submission is recorded (False: keyed requests only)."""
        ...

    async def open(self, retention: float) -> Opened:
        """Open (or create) the journal; take over what handles that ended left behind.

        ``retention``: seconds an ended (or unknown) entry keeps its key.
        """
        ...

    async def close(self) -> None: ...

    async def claim(self, entry: Entry) -> Entry | None:
        """Record ``entry`` (QUEUED, or SENDING), or return the entry holding its key.

        The returned entry is as recovery leaves it: one whose handle ended is
        taken over first (RUNNING: followed here; SENDING: UNKNOWN; QUEUED: gone,
        and ``entry`` is recorded instead).
        """
        ...

    async def lookup(self, key: str) -> Entry | None:
        """The entry holding ``key`` now (taken over as in ``claim``), if any."""
        ...

    async def sending(self, entry: Entry, nonce: str | None) -> None:
        """The paid POST of ``entry`` is about to go out (an unkeyed entry is inserted)."""
        ...

    async def answered(self, entry: Entry, task_id: str,
                       outcome: Mapping[str, Any] | None) -> None:
        """The service gave ``task_id`` (and, with ``outcome``, the result at once)."""
        ...

    def unsent(self, entry: Entry) -> None:
        """The POST provably created nothing (and may be sent again)."""
        ...

    def uncertain(self, entry: Entry) -> None:
        """The POST may have created a task, and no answer said which."""
        ...

    def dropped(self, entry: Entry) -> None:
        """Nothing will be sent for ``entry`` (refused, given up): its key is free."""
        ...

    def ended(self, entry_id: str, outcome: Mapping[str, Any], *, ok: bool) -> None:
        """The task ended (``outcome``: its final body)."""
        ...

    async def by_nonce(self, nonce: str) -> Entry | None:
        """The entry whose callback token carries ``nonce``."""
        ...

    async def matched(self, entry_id: str, task_id: str) -> bool:
        """A callback named the task of an entry that had no task id: record it.

        True when the entry changed (it is then RUNNING and followed by the caller).
        """
        ...

    async def noted(self, entry_id: str, task_id: str) -> None:
        """A callback named the task of a submission still awaiting its answer.

        Kept (the answer's id wins when it comes), so that a process dying before
        the answer leaves a task to follow, not a submission of unknown fate.
        """
        ...

    async def release(self, key: str) -> bool:
        """Free ``key`` (the caller's decision, e.g. to pay again for an unknown fate)."""
        ...


class _Kept:
    """One key's entry: its fields as they change (an ``Entry`` is built when read)."""

    __slots__ = ("at", "base", "nonce", "outcome", "state", "task_id")

    def __init__(self, entry: Entry) -> None:
        self.base = entry
        self.at = time.time()
        self.state = entry.state
        self.task_id = entry.task_id
        self.nonce = entry.nonce
        self.outcome = entry.outcome

    def entry(self) -> Entry:
        base = self.base
        return Entry(entry_id=base.entry_id, fingerprint=base.fingerprint,
                     request=base.request, state=self.state, key=base.key,
                     task_id=self.task_id, nonce=self.nonce, outcome=self.outcome,
                     owner=base.owner, created_at=self.at)


class MemoryJournal:
    """Keys for the life of one process: a double click or a retried request pays once.

    Nothing survives the process; unkeyed requests are not recorded at all.
    """

    durable = False

    def __init__(self) -> None:
        self._retention = 86400.0
        self._by_key: collections.OrderedDict[str, _Kept] = collections.OrderedDict()
        self._by_id: dict[str, _Kept] = {}
        self._by_nonce: dict[str, _Kept] = {}

    def __repr__(self) -> str:
        return f"<MemoryJournal keys={len(self._by_key)}>"

    async def open(self, retention: float) -> Opened:
        self._retention = retention
        return Opened()

    async def close(self) -> None:
        return None

    def _expire(self) -> None:
        limit = time.time() - self._retention
        old = []
        for key, kept in self._by_key.items():  # oldest first
            if kept.at >= limit:
                break
            if kept.state not in KEEPS_KEY:
                old.append(key)
        for key in old:
            self._forget(key)

    def _forget(self, key: str) -> None:
        kept = self._by_key.pop(key, None)
        if kept is not None:
            self._by_id.pop(kept.base.entry_id, None)
            if kept.nonce is not None:
                self._by_nonce.pop(kept.nonce, None)

    def _set(self, entry_id: str, state: EntryState, task_id: str | None = None,
             outcome: Mapping[str, Any] | None = None) -> None:
        kept = self._by_id.get(entry_id)
        if kept is not None:
            kept.state = state
            if task_id is not None:
                kept.task_id = task_id
            if outcome is not None:
                kept.outcome = outcome

    async def claim(self, entry: Entry) -> Entry | None:
        if entry.key is None:
            return None
        self._expire()
        kept = self._by_key.get(entry.key)
        if kept is not None:
            return kept.entry()
        self._by_key[entry.key] = self._by_id[entry.entry_id] = _Kept(entry)
        return None

    async def lookup(self, key: str) -> Entry | None:
        self._expire()
        kept = self._by_key.get(key)
        return None if kept is None else kept.entry()

    async def sending(self, entry: Entry, nonce: str | None) -> None:
        kept = self._by_id.get(entry.entry_id)
        if kept is not None:
            kept.state, kept.nonce = EntryState.SENDING, nonce
            if nonce is not None:
                self._by_nonce[nonce] = kept

    async def answered(self, entry: Entry, task_id: str,
                       outcome: Mapping[str, Any] | None) -> None:
        if outcome is None:
            self._set(entry.entry_id, EntryState.RUNNING, task_id)
        else:
            ok = bool(outcome.get("success"))
            self._set(entry.entry_id, EntryState.SUCCEEDED if ok else EntryState.FAILED,
                      task_id, outcome)

    def unsent(self, entry: Entry) -> None:
        self._set(entry.entry_id, EntryState.QUEUED)

    def uncertain(self, entry: Entry) -> None:
        self._set(entry.entry_id, EntryState.UNKNOWN)

    def dropped(self, entry: Entry) -> None:
        kept = self._by_id.get(entry.entry_id)
        if kept is not None and kept.base.key is not None:
            self._forget(kept.base.key)

    def ended(self, entry_id: str, outcome: Mapping[str, Any], *, ok: bool) -> None:
        self._set(entry_id, EntryState.SUCCEEDED if ok else EntryState.FAILED, None, outcome)

    async def by_nonce(self, nonce: str) -> Entry | None:
        kept = self._by_nonce.get(nonce)
        return None if kept is None else kept.entry()

    async def matched(self, entry_id: str, task_id: str) -> bool:
        kept = self._by_id.get(entry_id)
        if kept is None or kept.task_id is not None:
            return False
        self._set(entry_id, EntryState.RUNNING, task_id)
        return True

    async def noted(self, entry_id: str, task_id: str) -> None:
        return None  # nothing outlives this process: the answer will tell

    async def release(self, key: str) -> bool:
        found = key in self._by_key
        self._forget(key)
        return found


class Intent:
    """One launch's entry, and the journal writes its submission makes.

    Made by the launcher for a keyed request (claimed QUEUED already) or, with a
    durable journal, for any request (inserted SENDING right before its POST).
    The submitter calls ``sending`` before each POST, ``answered`` as soon as the
    answer is read (in the task that owns the POST, so its caller's cancellation
    cannot cut it), and ``failed`` with the failure's verdict.
    """

    __slots__ = ("entry", "journal", "nonce", "sent")

    def __init__(self, journal: Journal, entry: Entry) -> None:
        self.journal = journal
        self.entry = entry
        self.nonce: str | None = None  # the callback token's, once issued
        self.sent = False

    async def sending(self) -> None:
        await self.journal.sending(self.entry, self.nonce)
        self.sent = True

    async def answered(self, submission: Submission) -> None:
        outcome = None if submission.result is None else outcome_body(task_of(submission))
        await self.journal.answered(self.entry, submission.task_id, outcome)

    def failed(self, *, may_exist: bool) -> None:
        """The POST failed: a task ``may_exist`` (UNKNOWN), or it provably created none."""
        if may_exist:
            self.journal.uncertain(self.entry)
            return
        self.sent = False
        if self.entry.key is not None:
            self.journal.unsent(self.entry)  # the key stays claimed: it may be sent again
        else:
            self.journal.dropped(self.entry)

    def given_up(self) -> None:
        """The launch ended without a task: free the key, unless a task may exist."""
        if not self.sent:
            self.journal.dropped(self.entry)
