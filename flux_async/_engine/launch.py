"""Launching a request: a slot, a callback token, the paid submission, then the tracker.

``Launcher.launch`` walks one request through the first stages of
``tracker``'s table: QUEUED (waiting for a generation slot), SENDING (the
paid POST, re-sent only as ``submission`` allows) and then FOLLOWED or DONE.
Nothing awaits between the submission's answer and the tracker taking the task
over, so no cancellation can come between them and lose a paid task id. A caller
that leaves while the POST is out hands the submission over: its task is then
adopted (followed in the background, logged) when the answer comes.

With a shared coordinator, a task id reaches the caller (``submit()``'s return,
``map``'s submitted event) only once the fleet's directory holds it: whatever the
caller does with the id next, a crash of this process cannot orphan that task
unrecorded. Callback tokens then name this process, so a callback that lands on
another process before that record still finds its way here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from .._core.callbacks import CallbackBook, adopt_early
from .._core.errors import ClientClosedError, TaskTimeoutError, for_task
from .._core.journal import Entry, EntryState, new_entry_id
from .._core.journal import fingerprint as fingerprint_of
from .._core.limits import remaining
from .._core.models import EditRequest, ImageRequest
from .._core.protocol import Submission, task_of
from .._core.wire import unstructure_request
from .coordination import SlotPool, TaskDirectory
from .followed import Watch
from .journal import Intent, Journal
from .keys import Keys, Launched
from .submission import Handover, Submitter
from .telemetry import NO_TELEMETRY, Telemetry
from .tracker import Event, Followed, Tracker

__all__ = ["Launcher"]

log = logging.getLogger("flux_async")


class Launcher:
    """Takes requests from their slot to the tracker; see the module docstring."""

    def __init__(self, tracker: Tracker, slots: SlotPool, submitter: Submitter,
                 book: CallbackBook, journal: Journal, *, callback_poll_interval: float,
                 digest_of: Callable[[str], str | None] = lambda url: None,
                 waiting: Callable[[], None], directory: TaskDirectory | None = None,
                 recorded: Callable[[str], Awaitable[None]] | None = None,
                 telemetry: Telemetry = NO_TELEMETRY) -> None:
        self._tracker = tracker
        self._telemetry = telemetry
        self._journal = journal
        self._keys = Keys(journal, tracker)
        self._digest_of = digest_of  # an uploaded image's digest, by the URL it got
        self._slots = slots
        self._submitter = submitter
        self._book = book
        self._recheck = callback_poll_interval
        self._waiting = waiting  # a caller started waiting for a slot
        self._directory = directory  # a shared one: tokens name this process
        self._recorded = recorded  # waits for a task's record in the shared directory

    async def launch(
        self,
        request: ImageRequest,
        *,
        deadline: float | None,
        timeout: float | None,
        callback_url: str | None,
        kept: bool = False,
        watch: Watch | None = None,
        on_submitted: Callable[[str], None] | None = None,
    ) -> Launched:
        """Submit ``request`` and hand its task to the tracker (None: it ended already).

        ``watch`` waits for the task from the answer on; ``kept`` tasks are
        followed with no watcher. Raises what the slot, the rate gate or the
        submission raises; nothing is held then. A keyed request may instead
        join what its key holds (``keys``).
        """
        key = request.idempotency_key
        journal = self._journal
        if key is None and not journal.durable:
            return await self._send(request, None, deadline=deadline, timeout=timeout,
                                    callback_url=callback_url, kept=kept, watch=watch,
                                    on_submitted=on_submitted)

        async def send(intent: Intent) -> Launched:
            return await self._send(request, intent, deadline=deadline, timeout=timeout,
                                    callback_url=callback_url, kept=kept, watch=watch,
                                    on_submitted=on_submitted)

        if key is None:  # recorded only to survive the process: no fingerprint needed
            entry = Entry(entry_id=new_entry_id(), fingerprint="",
                          request=unstructure_request(request), state=EntryState.SENDING)
            return await send(Intent(journal, entry))
        # An image this client uploaded is known by its bytes: each upload of the
        # same file gets a new URL, and it is the same request all the same.
        digest = self._digest_of(request.image_url) if isinstance(request, EditRequest) else None
        fields = unstructure_request(request)
        return await self._keys.launch(
            request, key, fingerprint_of(fields, image_digest=digest), fields, send,
            deadline=deadline, timeout=timeout, kept=kept, watch=watch,
            on_submitted=on_submitted)

    async def _send(
        self,
        request: ImageRequest,
        intent: Intent | None,
        *,
        deadline: float | None,
        timeout: float | None,
        callback_url: str | None,
        kept: bool,
        watch: Watch | None,
        on_submitted: Callable[[str], None] | None,
    ) -> Launched:
        tracker = self._tracker
        followed = tracker.new(Event.QUEUE, request=request)
        if intent is not None:
            followed.entry = intent.entry.entry_id
            # Recorded tasks are followed to their end, so their outcome is recorded.
            kept = kept or self._journal.durable
        try:
            await self._take_slot(deadline, timeout)
        except BaseException:
            tracker.move(followed, Event.GIVE_UP)
            if intent is not None:
                intent.given_up()
            raise
        tracker.move(followed, Event.SLOT)
        if callback_url is not None:
            tag = "" if self._directory is None else self._directory.tag
            followed.nonce, callback_url = self._book.issue(callback_url, tag=tag)
            followed.callbacks = True
            if intent is not None:
                intent.nonce = followed.nonce
        # Entered around the submission, in this (the caller's) task; told how it ended.
        probe = self._telemetry.submitting(followed)

        def adopt(submission: Submission) -> None:
            probe.ended(submission)
            self._adopt(followed, submission, on_submitted)

        def drop() -> None:
            probe.ended(None)
            self._book.settle(followed.nonce)
            tracker.move(followed, Event.REFUSE)
            if intent is not None:
                intent.given_up()

        handover = Handover(adopt, drop)
        try:
            with probe:
                submission = await self._submitter.submit(
                    request, callback_url, deadline=deadline, timeout=timeout,
                    handover=handover, intent=intent,
                )
        except BaseException as exc:
            if not handover.left:  # else the slot and the nonce went with the handover
                probe.ended(exc)
                drop()
            raise
        probe.ended(submission)
        # From the answer to the tracker nothing awaits.
        followed_now = self._answered(followed, submission, kept=kept, watch=watch)
        task_id = submission.task_id
        if followed_now and self._recorded is not None and (kept or on_submitted):
            # The task is followed already: a cancellation here loses nothing but
            # the caller's sight of its id, so the id is handed on all the same.
            try:
                await self._recorded(task_id)
            except BaseException:
                if on_submitted is None:
                    followed.adopted = True
                    log.warning("the caller left before submit() returned; task %s was "
                                "created and is followed in the background: await "
                                "client.wait(%r)", task_id, task_id)
                raise
            finally:
                if on_submitted is not None:
                    on_submitted(task_id)
        elif on_submitted is not None:
            on_submitted(task_id)
        return submission, followed if followed_now else None

    async def _take_slot(self, deadline: float | None, timeout: float | None) -> None:
        if self._slots.take_nowait():
            return  # a free slot needs no wait, scope or checkpoint
        self._waiting()
        with anyio.move_on_after(remaining(deadline)) as scope:
            await self._slots.take()
        if scope.cancelled_caught:
            raise TaskTimeoutError(None, timeout)

    def _answered(self, followed: Followed, submission: Submission, *, kept: bool,
                  watch: Watch | None) -> bool:
        tracker = self._tracker
        # A very fast task's callback may have come before this answer: it was held.
        early = self._book.settle(followed.nonce)
        if tracker.closed and submission.result is None:  # answered as the client closed
            followed.task_id = submission.task_id
            tracker.move(followed, Event.GIVE_UP)
            log.warning("task %s was created as the client closed; nobody follows it: "
                        "wait on it with another client", submission.task_id)
            raise for_task(ClientClosedError("the FluxClient was closed while submitting"),
                           submission.task_id)
        if followed.callbacks:
            followed.not_before = tracker.now() + self._recheck
        if not tracker.answered(followed, task_of(submission), kept=kept, watch=watch):
            return False
        adopt_early(tracker, followed, early)
        return True

    def _adopt(self, followed: Followed, submission: Submission,
               on_submitted: Callable[[str], None] | None) -> None:
        """A submission answered after its caller had left: follow its task anyway."""
        task_id = submission.task_id
        try:
            if self._answered(followed, submission, kept=True, watch=None):
                followed.adopted = True
        except ClientClosedError:
            pass  # logged, naming the task
        else:
            log.warning("the caller left while its submission was on the wire; task %s was "
                        "created and is followed in the background: await client.wait(%r)",
                        task_id, task_id)
        if on_submitted is not None:
            try:
                on_submitted(task_id)
            except Exception:
                log.exception("the submission hook failed for task %s", task_id)
