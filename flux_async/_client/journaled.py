"""The client's side of the journal: which one it gets, and what it does with its records.

``journal_for`` turns ``FluxClient(journal=...)`` into a ``Journal``;
``follow_opened`` follows what a journal handed over when it was opened;
``recover_by_callback`` settles, from a callback, a submission whose answer never
came (its entry has no task id: the callback's token names it by its nonce).
"""

from __future__ import annotations

import logging
import os

from .._core.callbacks import CallbackBook, CallbackVerdict
from .._core.errors import ConfigurationError
from .._core.journal import Opened
from .._core.models import Task, TaskStatus
from .._edge.sqlite import SQLiteJournal
from .._engine.coordination import SlotPool
from .._engine.journal import Journal, MemoryJournal
from .._engine.recovery import RecoveredHook, Recovering, Spawn, report_unknown
from .._engine.tracker import Tracker

__all__ = ["follow_opened", "journal_for", "note_held", "recover_by_callback"]

log = logging.getLogger("flux_async")

_SEAM = ("open", "close", "claim", "lookup", "sending", "answered", "unsent", "uncertain",
         "dropped", "ended", "by_nonce", "matched", "noted", "release")


def journal_for(journal: str | os.PathLike[str] | Journal | None,
                shared: Journal | None = None) -> Journal:
    """The journal ``FluxClient(journal=...)`` asks for.

    None: the coordinator's (``shared``: a fleet's keys in Redis), else keys in
    memory only.
    """
    if journal is None:
        return shared if shared is not None else MemoryJournal()
    if isinstance(journal, (str, os.PathLike)):
        if not os.fspath(journal):
            raise ConfigurationError("must be a path or a Journal, got ''", field="journal")
        return SQLiteJournal(journal)
    if all(callable(getattr(journal, name, None)) for name in _SEAM):
        return journal
    raise ConfigurationError(f"must be a path or a Journal, got {type(journal).__name__}",
                             field="journal")


def follow_opened(opened: Opened, tracker: Tracker, slots: SlotPool,
                  hook: RecoveredHook | None, spawn: Spawn) -> None:
    """Follow what the journal's ended handles left running; report the unknown."""
    for entry in opened.running:
        assert entry.task_id is not None
        # It still runs at the service: it holds a generation slot if one is free.
        followed = tracker.adopt(entry.task_id, slot=slots.take_nowait())
        followed.entry = entry.entry_id
        tracker.watch(followed, Recovering(entry.task_id, hook, spawn, key=entry.key))
    for entry in opened.unknown:
        report_unknown(entry.key, entry.request, entry.created_at, hook, spawn)
    if opened.running:
        # Without a hook, each outcome is a WARNING record too (``Recovering``).
        log.log(logging.INFO if hook is not None else logging.WARNING,
                "following %d task(s) an earlier process paid for and did not see end: "
                "%s", len(opened.running),
                ", ".join(str(entry.task_id) for entry in opened.running))


async def note_held(journal: Journal, book: CallbackBook, token: str | None,
                    task: Task) -> None:
    """A callback came before its submission's answer: its task id is made durable first.

    Answered 200, it is not sent again; were this process to die before the
    answer, the id would be known to nobody. With it noted, the next client on
    the journal follows that task instead of reporting a submission of unknown fate.
    """
    nonce = book.verify(token)
    if nonce is None or not journal.durable:
        return
    entry = await journal.by_nonce(nonce)
    if entry is not None and entry.task_id is None:
        await journal.noted(entry.entry_id, task.id)


async def recover_by_callback(journal: Journal, book: CallbackBook, tracker: Tracker,
                              token: str | None, task: Task, hook: RecoveredHook | None,
                              spawn: Spawn) -> CallbackVerdict | None:
    """Settle a submission of unknown fate that this authentic callback names, if one.

    The token's nonce was recorded with the submission before its POST: it names
    the entry, whatever process sent it. The images must be for the submitted
    prompt. A success settles the task at once (as for a callback of a task
    followed here); a failure is confirmed with the service first.
    """
    nonce = book.verify(token)
    if nonce is None:
        return None
    entry = await journal.by_nonce(nonce)
    if entry is None or entry.task_id is not None:
        return None
    prompt = entry.request.get("prompt")
    if task.result is not None and any(
            isinstance(image.prompt, str) and image.prompt != prompt
            for image in task.result.images):
        return CallbackVerdict(409, "rejected", "the images are for another prompt than the "
                               "submission this token was issued for", task)
    if not await journal.matched(entry.entry_id, task.id):
        return None  # a live handle is still sending it: it follows the task itself
    followed = tracker.adopt(task.id, slot=False)
    followed.entry = entry.entry_id
    tracker.watch(followed, Recovering(task.id, hook, spawn, key=entry.key))
    if task.status is TaskStatus.SUCCEEDED:
        tracker.resolve(task)
    else:
        tracker.confirm(task.id)
    log.warning("a callback named task %s of a submission whose answer never came%s: "
                "followed", task.id, "" if entry.key is None else f" (key {entry.key!r})")
    return CallbackVerdict(200, "recovered", "the submission of unknown fate this token was "
                           "issued for is settled by it", task)
