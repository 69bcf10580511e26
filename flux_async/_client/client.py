"""``FluxClient``: the session users hold; lifecycle, wiring and thin public methods.

The work is in the engine's parts, assembled by ``_engine.parts``:

- ``coordination``: where the slots and the two rate gates come from (in this
  process by default, or a shared coordinator's);
- ``launch``: a request's slot, callback token and paid submission
  (``submission``), handed to
- ``tracker``: every followed task from slot to release, its waiters and
  their deadlines, the one settle path;
- ``poller`` and ``queries``: asking the service about followed tasks;
- ``map``: many requests; ``lifecycle``: the client's state and its background
  tasks.

From the layers below: ``_core.callbacks`` (what a posted callback means) and
``_edge.link`` (the session and the POSTs, over ``_edge.http``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterable,
    Mapping,
)
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import attrs

from .._core.callbacks import CallbackBook, CallbackVerdict, body_bytes, judge
from .._core.errors import ClientClosedError, ConfigurationError, CoordinationError, ValidationError
from .._core.limits import Backoff, deadline_after
from .._core.models import (
    EditRequest,
    GenerateRequest,
    ImageRequest,
    ImageResult,
    Outcome,
    Task,
    check_http_url,
)
from .._core.protocol import DEFAULT_BASE_URL, task_of
from .._core.settings import (
    API_KEY_ENV,
    BASE_URL_ENV,
    USE_CLIENT_DEFAULT,
    ClientSettings,
    Credential,
    UseClientDefault,
    check_api_key,
    check_task_id,
    check_task_ids,
    resolve_timeout,
)
from .._edge import http
from .._edge.link import Link
from .._edge.uploads import ImageSource, Uploader, upload_url_for
from .._engine.coordination import Coordinator, LocalCoordinator
from .._engine.journal import Journal
from .._engine.lifecycle import ClientState, Lifecycle, hold, release
from .._engine.map import MapEvent, Requests, check_requests, outcomes
from .._engine.parts import Parts
from .._engine.poller import DEFAULT_NOT_FOUND_GRACE
from .._engine.recovery import RecoveredHook, Recovering
from .._engine.telemetry import NO_TELEMETRY, Telemetry
from .._engine.tracker import task_outcome
from .files import FileMethods, edit_request
from .journaled import follow_opened, journal_for, note_held, recover_by_callback

__all__ = ["ClientState", "FluxClient"]

log = logging.getLogger("flux_async")



class FluxClient(FileMethods):
    """An async client of the Flux image API; use it as ``async with FluxClient() as c``.

    ``api_key`` falls back to ``$ACEDATACLOUD_API_TOKEN`` and ``base_url`` to
    ``$FLUX_ASYNC_BASE_URL``, then to ``https://api.acedata.cloud``. The other
    settings (keyword-only, defaults the vendor's documented limits) are the
    fields of ``ClientSettings``, where each is described; every one is checked
    here, before anything is sent (``ConfigurationError`` naming it), and
    ``client.settings`` is the resulting frozen value. Besides them:

    - ``session``: an ``aiohttp.ClientSession`` to use; the client leaves it open.
      Downloads use it only with ``download_guard=False``: the guard needs a
      connector of its own, which checks every address it connects to.
    - ``coordinator``: where the token's limits are kept (slots, both rates and
      their 429 pause, who follows which task). None: in this process. A shared
      one (``flux_async.redis.RedisCoordinator``) keeps them across processes;
      when it cannot be consulted, calls raise ``CoordinationError`` before
      anything is paid. It is started at first use and closed by ``aclose()``
      of the last running client using it. Give every process of a fleet the
      same ``callback_secret``, so any of them recognises the fleet's tokens.
    - ``on_recovered``: called with a ``Recovered`` (task id, result or error)
      for each task this client adopted from elsewhere (``adopt``; a shared
      coordinator adopts the tasks of processes that died; a journal hands over
      those its earlier process did not see end) when it ends, and for each
      submission of unknown fate a journal held (no task id, a
      ``SubmissionUncertainError``, its key).
    - ``journal``: where paid submissions are remembered across processes: a path
      (an SQLite file, created if missing; several clients and processes may
      share one) or a ``Journal``. Before each paid POST its intent is recorded,
      then its task id (before anyone is handed it), then its outcome. A client
      opening a journal follows the tasks an ended process left running and
      reports the submissions it left of unknown fate; nothing is sent again.
      None: a shared coordinator's (a ``RedisCoordinator`` keeps keys in Redis: a
      key used in two processes pays once), else idempotency keys are kept in
      memory, for this process only.
      ``JournalError`` if it cannot be opened or written, before anything is paid.
    - ``telemetry``: traces and metrics of the client's work:
      ``flux_async.otel.OpenTelemetry()`` (extra ``otel``) reports each paid
      submission, each followed task and each poll round to OpenTelemetry (see
      the observability guide). None: nothing is reported, and nothing of it is
      imported or spent.

    Every request may carry an ``idempotency_key`` (``generate``, ``edit``,
    ``submit``, and the request models for ``map``): calls with one key share
    one submission and one result, within ``key_retention``; the same key with
    another request raises ``IdempotencyConflictError`` before anything is sent.

    Cancellation never loses a paid task: a submission's POST runs in a task the
    client owns, so whatever cancels the caller (an anyio scope, ``task.cancel()``,
    ``asyncio.wait_for``) the POST gets its answer; the task it created is then
    followed in the background (it keeps its slot until it resolves, and
    ``wait(id)`` returns its result), and a WARNING record names it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_concurrency: int = 10,
        submit_rate: float | None = 5.0,
        submit_burst: int | None = None,
        query_rate: float | None = 30.0,
        poll_interval: float = 1.0,
        busy_poll_interval: float = 0.2,
        batch_size: int = 50,
        timeout: float | None = 600.0,
        request_timeout: float = 60.0,
        max_retries: int = 5,
        retry_backoff: float = 1.0,
        resend_uncertain: bool = False,
        callback_url: str | None = None,
        callback_poll_interval: float = 30.0,
        callback_secret: str | None = None,
        upload_url: str | None = None,
        session: http.Session | None = None,
        not_found_grace: float = DEFAULT_NOT_FOUND_GRACE,
        coordinator: Coordinator | None = None,
        on_recovered: RecoveredHook | None = None,
        download_guard: bool = True,
        download_allow: Iterable[str] = (),
        journal: str | os.PathLike[str] | Journal | None = None,
        key_retention: float = 86400.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        source = "api_key" if api_key is not None else f"${API_KEY_ENV}"
        api_key = check_api_key(
            api_key if api_key is not None else os.environ.get(API_KEY_ENV), source=source
        )
        if on_recovered is not None and not callable(on_recovered):
            raise ConfigurationError(
                f"must be callable, got {on_recovered!r:.80}", field="on_recovered")
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise ConfigurationError(
                f"must be a flux_async.otel.OpenTelemetry, got {telemetry!r:.80}",
                field="telemetry")
        self.settings = s = ClientSettings(
            base_url=base_url if base_url is not None else (
                os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL),
            max_concurrency=max_concurrency, submit_rate=submit_rate,
            submit_burst=submit_burst, query_rate=query_rate, poll_interval=poll_interval,
            busy_poll_interval=busy_poll_interval, batch_size=batch_size, timeout=timeout,
            request_timeout=request_timeout, max_retries=max_retries,
            retry_backoff=retry_backoff, resend_uncertain=resend_uncertain,
            callback_url=callback_url, callback_poll_interval=callback_poll_interval,
            callback_secret=callback_secret, upload_url=upload_url,
            not_found_grace=not_found_grace, download_guard=download_guard,
            download_allow=download_allow, key_retention=key_retention,
        )
        self.base_url, self.max_concurrency, self.timeout = s.base_url, s.max_concurrency, s.timeout
        self.max_retries, self.resend_uncertain = s.max_retries, s.resend_uncertain
        self.callback_url = s.callback_url
        self.callback_poll_interval = s.callback_poll_interval
        self.upload_url = upload_url_for(s.upload_url, self.base_url)
        self._life = Lifecycle()
        self._credential = Credential(api_key)
        # The key lives only inside the link's headers and the credential, which
        # nothing prints.
        self._link = Link(self.base_url, api_key, session, request_timeout=s.request_timeout,
                          guard=s.guard)
        # Holds the callback secret; its repr hides it.
        self._callbacks = CallbackBook(s.callback_secret)
        self._backoff = backoff = Backoff(base=s.retry_backoff, cap=max(16.0, s.retry_backoff))
        self._uploader = Uploader(self.upload_url, attempts=s.max_retries, backoff=backoff,
                                  request_timeout=s.request_timeout)
        coordinator = coordinator if coordinator is not None else LocalCoordinator()
        self._parts = parts = Parts(
            s, coordinator, self._link.post, self._life.spawn, self._callbacks, backoff,
            journal_for(journal, coordinator.journal), self._uploader.digest_of,
            NO_TELEMETRY if telemetry is None else telemetry)
        self._tracker, self._poller = parts.tracker, parts.poller
        self._on_recovered = on_recovered

    def __repr__(self) -> str:
        return f"<FluxClient {self.base_url} max_concurrency={self.max_concurrency}>"

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> FluxClient:
        await self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._life.closed

    @property
    def in_flight(self) -> int:
        """Generation slots in use: submitted (or submitting) and not yet resolved."""
        return self._parts.slots.in_use

    async def _start(self) -> None:
        if self._life.state is not ClientState.RUNNING:  # no checkpoint once running
            await self._life.start(self._first_use)

    async def _first_use(self) -> None:
        parts = self._parts
        # The journal first: if it cannot be opened, nothing else has started.
        opened = await parts.journal.open(self.settings.key_retention)
        try:
            await parts.coordinator.start(self)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await parts.journal.close()
            raise
        hold(parts.coordinator, self)
        self._link.open()
        follow_opened(opened, self._tracker, parts.slots, self._on_recovered, self._life.spawn)

    async def aclose(self) -> None:
        """Stop background work, fail pending waits, close the session.

        Paid submissions already on the wire are let finish first (each bounded by
        the request timeout), so none is cut with its task id unknown. Waits end
        with ``TaskClosedError`` (a ``ClientClosedError`` naming the task); the ids
        of submitted tasks still running are logged (WARNING for tasks adopted
        after their caller left, INFO for the others, whose ids their callers have).
        """
        if not self._life.begin_closing():
            return
        submitter = self._parts.submitter
        submitter.closing = True
        with anyio.CancelScope(shield=True):
            if submitter.on_wire:
                with anyio.move_on_after(self.settings.request_timeout + 5.0):
                    await submitter.drained()
            adopted, others = self._tracker.close(
                ClientClosedError("the FluxClient was closed while waiting"))
            for level, ids in ((logging.WARNING, adopted), (logging.INFO, others)):
                if ids:
                    log.log(level, "FluxClient closed with %d submitted task(s) still "
                            "running; they may still finish and be billed, wait on them "
                            "with another client: %s", len(ids), ", ".join(ids))
            await self._life.stop()
            # Every write is queued by now (the background tasks are done): flushed here.
            await self._parts.journal.close()
            await self._link.close()
            await release(self._parts.coordinator, self)

    # --- requests ------------------------------------------------------------------

    async def _run(self, request: ImageRequest, timeout: float | None) -> ImageResult:
        deadline = deadline_after(timeout)
        await self._start()
        submission, followed = await self._parts.launcher.launch(
            request, deadline=deadline, timeout=timeout, callback_url=self.callback_url)
        if followed is None:
            assert submission.result is not None
            return submission.result
        return await self._tracker.wait(followed, deadline, timeout)

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        size: str | None = None,
        count: int | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        idempotency_key: str | None = None,
    ) -> ImageResult:
        """Generate images from ``prompt`` and wait for them.

        Raises ``TaskFailedError`` if the service fails the task, ``TaskTimeoutError``
        when ``timeout`` (default: the client's) passes first. ``idempotency_key``:
        every call with this key gets this one generation's result (paid once; see
        the class docstring).
        """
        timeout = resolve_timeout(timeout, self.timeout)
        request = GenerateRequest(prompt, model=model, size=size, count=count,
                                  idempotency_key=idempotency_key)
        return await self._run(request, timeout)

    async def edit(
        self,
        prompt: str,
        *,
        image: str | ImageSource | None = None,
        image_url: str | ImageSource | None = None,
        model: str | None = None,
        size: str | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        idempotency_key: str | None = None,
    ) -> ImageResult:
        """Edit ``image`` as ``prompt`` says, and wait for the result.

        ``image`` is an http(s) URL (passed on), a local file's path (``str`` or
        ``os.PathLike``) or the image's bytes (both uploaded first, see
        ``upload``). ``image_url`` is the same argument under its older name.
        ``timeout`` counts from the submission, after any upload. With an
        ``idempotency_key``, an image this client uploaded is known by its bytes
        (each upload of it gets a new URL): the same key with the same image is
        the same request.
        """
        timeout = resolve_timeout(timeout, self.timeout)
        request = await edit_request(prompt, image, image_url, model, size, self._upload,
                                     idempotency_key)
        return await self._run(request, timeout)

    async def submit(self, request: ImageRequest, *, callback_url: str | None = None,
                     idempotency_key: str | None = None) -> Task:
        """Submit and return as soon as the service gives a task id.

        The task keeps a concurrency slot until it resolves; the client follows it
        in the background so ``wait()`` on it later is immediate once it has. With
        a journal the id is recorded before it is returned. ``idempotency_key``
        (or the request's own): a key already used returns that task (finished, if
        it ended) instead of submitting again.
        """
        if not isinstance(request, (GenerateRequest, EditRequest)):
            raise ValidationError(
                "request", f"must be a GenerateRequest or an EditRequest, got {request!r:.80}"
            )
        if idempotency_key is not None and idempotency_key != request.idempotency_key:
            if request.idempotency_key is not None:
                raise ValidationError("idempotency_key", "the request has another key already")
            request = attrs.evolve(request, idempotency_key=idempotency_key)
        if callback_url is not None:
            check_http_url("callback_url", callback_url)
        await self._start()
        submission, _ = await self._parts.launcher.launch(
            request, deadline=None, timeout=None,
            callback_url=callback_url or self.callback_url, kept=True,
        )
        return task_of(submission)

    async def wait(
        self, task: Task | str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> ImageResult:
        """Wait for a task (or task id) to resolve, polling it with every other pending one.

        ``TaskTimeoutError`` leaves the task running: ``wait()`` on it again later.
        """
        task_id = task.id if isinstance(task, Task) else task
        if not isinstance(task_id, str) or not task_id.strip():
            raise ValidationError(
                "task", f"must be a Task or a non-empty task id, got {task!r:.80}"
            )
        timeout = resolve_timeout(timeout, self.timeout)
        known = task if isinstance(task, Task) and task.status.finished else None
        known = known or self._tracker.finished(task_id)
        if known is not None:
            result, error = task_outcome(known)
            if error is not None:
                raise error
            assert result is not None
            return result
        deadline = deadline_after(timeout)
        await self._start()
        return await self._tracker.wait(self._tracker.follow(task_id), deadline, timeout)

    async def adopt(self, task_ids: Iterable[str]) -> None:
        """Follow tasks submitted elsewhere (a process that died) until they end.

        Nothing is submitted again. Each outcome goes to ``on_recovered`` (or a
        WARNING record without one); ``wait(id)`` on them works as on any task.
        A shared coordinator calls this with the tasks of processes that died; a
        task that was generating under a slot of the dead process keeps that slot
        here until it ends.
        """
        ids = check_task_ids(task_ids)
        await self._start()
        slots = self._parts.slots
        for task_id in ids:
            followed = self._tracker.adopt(task_id, slot=slots.adopted(task_id))
            self._tracker.watch(followed, Recovering(task_id, self._on_recovered, self._life.spawn))

    def key_digest(self, label: bytes) -> str:
        """HMAC-SHA256 of ``label`` under the API key, in hex: names the key, never shows it.

        A shared coordinator derives its namespace from it, so it needs no key of
        its own and refuses clients of another key.
        """
        return self._credential.digest(label)

    async def release_key(self, key: str) -> bool:
        """Free ``key``: the next call with it submits anew (and pays again).

        For a submission of unknown fate this is the caller's decision to risk a
        second payment: its entry is kept without the key, so a callback that
        later names its task still settles it (reported to ``on_recovered``).
        Returns whether the journal held the key.
        """
        if not isinstance(key, str) or not key:
            raise ValidationError("key", f"must be a non-empty string, got {key!r:.80}")
        await self._start()
        return await self._parts.journal.release(key)

    async def get_task(self, task_id: str) -> Task:
        """One task as the service reports it now (``retrieve``)."""
        check_task_id("task_id", task_id)
        await self._start()
        task = await self._parts.queries.get_task(task_id)
        self._tracker.resolve(task)
        return task

    async def get_tasks(self, task_ids: Iterable[str]) -> list[Task]:
        """Many tasks, ``batch_size`` per request (``retrieve_batch``), in the order asked.

        Ids the service does not know are left out, as the service leaves them out.
        """
        given = check_task_ids(task_ids)
        await self._start()
        tasks = await self._parts.queries.get_tasks(given)
        for task in tasks:
            self._tracker.resolve(task)
        return tasks

    def receive_callback(
        self, token: str | None, body: bytes | str | Mapping[str, Any]
    ) -> CallbackVerdict:
        """Apply a callback the service POSTed; answer it with ``verdict.status``.

        ``token`` is the ``flux_token`` query parameter of the URL it was posted
        to, ``body`` the raw body (or its parsed JSON). A success posted with the
        token issued for that task's submission resolves its wait at once; a
        failure, or a post for a task followed through ``wait(id)`` alone, makes
        the client query that task at once and the service's answer decides (200,
        ``kind == "confirming"``). The rules, in order, are in ``CallbackVerdict``'s
        module; the short form: bad token (or another task's) 403, not a result
        400, contradicts the submission 409, duplicate 200, unknown task 404 with
        ``kind == "unclaimed"``. This process's judgement only: receivers call
        ``handle_callback``, which also hands unclaimed posts on.
        """
        return judge(self._callbacks, self._tracker, token, body)

    async def handle_callback(
        self, token: str | None, body: bytes | str | Mapping[str, Any]
    ) -> CallbackVerdict:
        """``receive_callback``, then a post nobody here follows goes to the process that does.

        With a shared coordinator, an authentic callback for a task another process
        follows is routed to it and answered with its verdict's status (``kind ==
        "routed"``); 503 when that process could not be reached (the service sends
        the callback again). An authentic callback for a journaled submission whose
        answer never came (its process died with the POST on the wire) settles
        that submission: its task is followed from then on (``kind ==
        "recovered"``). ``flux_async.web`` and ``flux_async.asgi`` call this;
        call it from any other framework the same way (cap the body size first).
        """
        verdict = self.receive_callback(token, body)
        if verdict.kind == "held" and verdict.task is not None:
            await note_held(self._parts.journal, self._callbacks, token, verdict.task)
        if verdict.kind != "unclaimed" or verdict.task is None:
            return verdict
        if self.closed:
            return verdict
        await self._start()  # the journal is read: a callback may come before any call
        recovered = await recover_by_callback(
            self._parts.journal, self._callbacks, self._tracker, token, verdict.task,
            self._on_recovered, self._life.spawn)
        if recovered is not None:
            return recovered
        if self._parts.directory is None:
            return verdict
        try:
            status = await self._parts.directory.route_callback(token, body_bytes(body))
        except CoordinationError as exc:
            return CallbackVerdict(503, "routed", f"the process following the task could "
                                   f"not be reached: {exc}", verdict.task)
        if status is None:
            return verdict
        return CallbackVerdict(status, "routed", "handed to the process following the task",
                               verdict.task)

    async def map(
        self,
        requests: Requests,
        *,
        ordered: bool = False,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        on_event: Callable[[MapEvent], None] | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Run many requests, yielding an ``Outcome`` per request as each resolves.

        ``requests`` is read lazily; at most ``max_concurrency`` are outstanding.
        One failure never stops the rest: it is that request's ``Outcome.error``.
        ``ordered=True`` yields in input order. ``on_event`` is called at each
        submission and resolution with a ``MapEvent`` carrying the counts so far.
        Leaving the loop early cancels what is still running (a submission on the
        wire is let answer, and its task followed in the background: logged). If
        the input or a hook raises, or the client closes, that error is raised here
        itself (not in an ``ExceptionGroup``) once the outcomes already delivered
        have been yielded.
        """
        check_requests(requests, on_event)
        timeout = resolve_timeout(timeout, self.timeout)
        await self._start()
        run = outcomes(self._parts.launcher, self._tracker, self._life.spawn, requests,
                       size=self.max_concurrency, timeout=timeout,
                       callback_url=self.callback_url, ordered=ordered, on_event=on_event)
        async with contextlib.aclosing(run):
            async for outcome in run:
                yield outcome
