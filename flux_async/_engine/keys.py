"""Idempotency keys: a keyed request is claimed, joined, or answered from the journal.

``Keys.launch`` runs one keyed request. Within one client, the first caller with
a key is its *leader*: it claims the key in the journal and launches the request;
callers that come meanwhile with the same key wait for the leader's task id and
then wait on that task (one submission, one result). When the leader ends
without a task (cancelled or timed out while queued, or refused), a waiting
caller claims the key again: the journal decides what that means.

A key the journal already holds answers by its entry (``_core.journal``):

=========  ========================================================================
RUNNING    the caller waits on that task (nothing is sent)
SUCCEEDED  its result, at once; FAILED: its error, at once
UNKNOWN    ``SubmissionUncertainError`` naming the key, at once: a task may exist,
           nothing is re-sent (``FluxClient.release_key`` frees the key)
QUEUED,    another handle (a client, a process) works on it: its entry is read
SENDING    again every ``POLL`` seconds until it has a task id, an end, or is gone
=========  ========================================================================

The same key with another request is ``IdempotencyConflictError``, before
anything is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio

from .._core.errors import SubmissionUncertainError, TaskTimeoutError
from .._core.journal import Entry, EntryState, check_same_request, new_entry_id, outcome_of_body
from .._core.limits import remaining
from .._core.models import ImageRequest
from .._core.protocol import Submission
from .followed import Followed, Watch, task_outcome
from .journal import Intent, Journal
from .primitives import Done
from .tracker import Tracker

__all__ = ["POLL", "Keys"]

#: Seconds between reads of an entry another handle is still submitting.
POLL: Final = 0.2

Launched = tuple[Submission, Followed | None]
Submit = Callable[[Intent], Awaitable[Launched]]


class _Leader:
    """The caller of this client that works on a key now."""

    __slots__ = ("done", "fingerprint", "task_id")

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.done = Done()
        self.task_id: str | None = None


class Keys:
    """The idempotency keys of one client; see the module docstring."""

    def __init__(self, journal: Journal, tracker: Tracker) -> None:
        self._journal = journal
        self._tracker = tracker
        self._leaders: dict[str, _Leader] = {}

    async def launch(self, request: ImageRequest, key: str, fingerprint: str,
                     fields: Mapping[str, Any], submit: Submit,
                     *, deadline: float | None, timeout: float | None, kept: bool,
                     watch: Watch | None,
                     on_submitted: Callable[[str], None] | None) -> Launched:
        """Launch ``request`` under ``key`` (``submit`` sends it), or join what holds it.

        ``fields``: the request's wire fields, recorded with its entry.
        """
        while True:
            leader = self._leaders.get(key)
            if leader is not None:
                check_same_request(key, leader.fingerprint, fingerprint)
                await _within(leader.done.wait(), deadline, timeout)
                if leader.task_id is not None:
                    return self._join(leader.task_id, None, kept=kept, watch=watch,
                                      on_submitted=on_submitted)
                continue  # the leader sent nothing that holds the key: claim it anew
            leader = self._leaders[key] = _Leader(fingerprint)
            try:
                entry = Entry(entry_id=new_entry_id(), fingerprint=fingerprint,
                              request=fields, state=EntryState.QUEUED,
                              key=key)
                held = await self._journal.claim(entry)
                if held is None:
                    submission, followed = await submit(Intent(self._journal, entry))
                    leader.task_id = submission.task_id
                    return submission, followed
                check_same_request(key, held.fingerprint, fingerprint)
                held = await self._settled(held, deadline, timeout)
                if held is None:
                    continue  # its handle ended before sending: the key is free
                return self._answer(request, held, kept=kept, watch=watch,
                                    on_submitted=on_submitted)
            finally:
                leader.done.set()
                if self._leaders.get(key) is leader:
                    del self._leaders[key]

    async def _settled(self, held: Entry, deadline: float | None,
                       timeout: float | None) -> Entry | None:
        """``held`` once another handle has sent it (or gave it up: None)."""
        assert held.key is not None
        while held.state in (EntryState.QUEUED, EntryState.SENDING):
            await _within(anyio.sleep(POLL), deadline, timeout)
            again = await self._journal.lookup(held.key)
            if again is None or again.entry_id != held.entry_id:
                return None
            held = again
        return held

    def _answer(self, request: ImageRequest, held: Entry, *, kept: bool,
                watch: Watch | None, on_submitted: Callable[[str], None] | None) -> Launched:
        """What a key the journal holds answers (see the module docstring)."""
        if held.state is EntryState.UNKNOWN or held.task_id is None:
            raise SubmissionUncertainError(
                f"idempotency key {held.key!r}: its submission may or may not have created a "
                "task (it was sent and no answer was recorded); it is not sent again. A "
                "callback naming the task settles it; FluxClient.release_key frees the key "
                "(a new submission may then pay twice)", request=request,
                idempotency_key=held.key)
        if held.state.ended:
            assert held.outcome is not None
            result, error = outcome_of_body(held.outcome)
            if error is not None:
                raise error
            assert result is not None
            if on_submitted is not None:
                on_submitted(held.task_id)
            if watch is not None:
                watch.notify(result, None)
            return Submission(held.task_id, result.trace_id, result), None
        return self._join(held.task_id, held.entry_id, kept=kept, watch=watch,
                          on_submitted=on_submitted)

    def _join(self, task_id: str, entry_id: str | None, *, kept: bool, watch: Watch | None,
              on_submitted: Callable[[str], None] | None) -> Launched:
        """Wait on ``task_id`` with whoever else does (nothing is sent)."""
        tracker = self._tracker
        known = tracker.finished(task_id)
        if known is not None:
            result, error = task_outcome(known)
            if error is not None:
                raise error
            assert result is not None
            if on_submitted is not None:
                on_submitted(task_id)
            if watch is not None:
                watch.notify(result, None)
            return Submission(task_id, known.trace_id, result), None
        followed = tracker.follow(task_id)
        if followed.entry is None:
            followed.entry = entry_id
        followed.kept = followed.kept or kept or (entry_id is not None and self._journal.durable)
        if watch is not None:
            tracker.watch(followed, watch)
        if on_submitted is not None:
            on_submitted(task_id)
        return Submission(task_id, None), followed


async def _within(waiting: Awaitable[None], deadline: float | None,
                  timeout: float | None) -> None:
    with anyio.move_on_after(remaining(deadline)) as scope:
        await waiting
    if scope.cancelled_caught:
        raise TaskTimeoutError(None, timeout)
