"""``FluxClient``: the session users hold.

It owns (or borrows) one aiohttp session, one poller, two rate limiters
(submissions and task queries) and a semaphore of ``max_concurrency``
generation slots. A slot is taken before a submission and given back when the
task resolves, fails to submit, or stops being followed, so no more than
``max_concurrency`` generations are ever in flight through one client.

Background work (the poller's rounds, ``map`` runs, paid POSTs on the wire)
lives in one anyio task group hosted by a supervisor task the client starts on
first use; ``aclose()`` lets paid POSTs answer, then cancels the group and
waits for it, so nothing outlives the client. Hosting the group
in its own task lets a web app open the client in one task and close it in
another, as aiohttp's ``cleanup_ctx`` may.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pathlib
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any

import aiohttp
import anyio

from ._callbacks import CallbackBook, CallbackVerdict, adopt_early, judge
from ._download import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_IMAGE_BYTES,
    DownloadTarget,
    Fetcher,
    download_images,
    fetch_bytes,
)
from ._errors import (
    ClientClosedError,
    ConfigurationError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    ValidationError,
    for_task,
)
from ._limits import Backoff, RateLimiter, deadline_after, remaining
from ._map import Deliver, MapEvent, Requests, run_map
from ._models import (
    EditRequest,
    GenerateRequest,
    Image,
    ImageRequest,
    ImageResult,
    Outcome,
    Task,
    TaskStatus,
    check_http_url,
)
from ._poller import DEFAULT_NOT_FOUND_GRACE, Entry, Poller
from ._protocol import (
    DEFAULT_BASE_URL,
    TASKS_PATH,
    Submission,
    decode_answer,
    read_batch,
    read_task,
    request_headers,
    retrieve_batch_body,
    retrieve_body,
)
from ._settings import (
    USE_CLIENT_DEFAULT,
    ClientSettings,
    UseClientDefault,
    check_api_key,
    resolve_timeout,
)
from ._submission import Handover, Submitter
from ._transport import Transport
from ._upload import ImageSource, is_remote, upload_url_for
from ._uploader import Uploader

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "FluxClient"]

log = logging.getLogger("flux_async")

API_KEY_ENV = "ACEDATACLOUD_API_TOKEN"
BASE_URL_ENV = "FLUX_ASYNC_BASE_URL"


class FluxClient:
    """An async client of the Flux image API; use it as ``async with FluxClient() as c``.

    ``api_key`` falls back to ``$ACEDATACLOUD_API_TOKEN`` and ``base_url`` to
    ``$FLUX_ASYNC_BASE_URL``, then to ``https://api.acedata.cloud``.

    Settings (all keyword-only; defaults are the vendor's documented limits):

    - ``max_concurrency`` (10): generations in flight at once.
    - ``submit_rate`` (5/s) and ``query_rate`` (30/s): requests per second to
      ``/flux/images`` and ``/flux/tasks``; ``None`` for no limit. Queries may
      come in bursts of up to a second's worth (a poll round at once);
      submissions in bursts of ``submit_burst`` (default 60% of a second's worth,
      3 at 5/s), so slots that free together are refilled together. A 429 pauses
      and slows every request of that kind, then the rate recovers.
    - ``poll_interval`` (1 s): time between poll rounds; ``busy_poll_interval``
      (0.2 s) while every slot is taken, since then a finished task noticed
      sooner is a slot freed sooner.
    - ``batch_size`` (50): ids per ``retrieve_batch`` request, at most 50 (the
      vendor's recommendation).
    - ``timeout`` (600 s): default deadline of ``generate``/``edit``/``wait``;
      ``None`` for none. ``request_timeout`` (60 s): one HTTP request.
    - ``max_retries`` (5): attempts at a submission that provably reached nobody
      (connect errors), and at a ``get_task`` query; ``retry_backoff`` (1 s) is
      the first delay between them, doubling up to 16 s, with jitter. A 429 is
      re-sent while the deadline allows (at most 30 times), after the pause the
      service asked for (``Retry-After``) or the same backoff.
    - ``resend_uncertain`` (False): also re-send submissions whose fate is unknown
      (a reset or timeout after sending, a 5xx). Risk: the service may have
      created the first task too, and charges for both.
    - ``callback_url``: put on every submission; the poller then checks those
      tasks only every ``callback_poll_interval`` (30 s), as a fallback for lost
      callbacks. Mount ``flux_async.web``'s receiver at that URL: a callback then
      resolves its wait at once. Every callback URL handed out carries a token
      (``flux_token=``) derived from ``callback_secret`` (random per client unless
      given; give a stable one so callbacks arriving after a restart still
      authenticate). See ``receive_callback``.
    - ``upload_url``: where ``upload()`` (and ``edit`` with a local image) POSTs
      files; default ``{base_url}/files/upload``, which for the default base URL
      is the vendor's documented ``https://api.acedata.cloud/files/upload``.
    - ``session``: an ``aiohttp.ClientSession`` to use; the client leaves it open.
    - ``not_found_grace`` (300 s): a task id the service gave (or one passed to
      ``wait``) is not declared lost before this long after it became known,
      since new tasks may take a while to appear on ``/flux/tasks``; meanwhile it
      costs only its place in the batch queries. Then a 404 ends its wait with
      ``TaskNotFoundError``.

    Every setting is checked here, before anything is sent: a wrong type, NaN,
    a zero or negative interval, a ``batch_size`` over 50, a ``base_url`` that
    is not an absolute http(s) URL, a key with whitespace in it raise
    ``ConfigurationError`` naming the setting. ``client.settings`` is the
    resulting frozen ``ClientSettings``.

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
        session: aiohttp.ClientSession | None = None,
        not_found_grace: float = DEFAULT_NOT_FOUND_GRACE,
    ) -> None:
        source = "api_key" if api_key is not None else f"${API_KEY_ENV}"
        api_key = check_api_key(
            api_key if api_key is not None else os.environ.get(API_KEY_ENV), source=source
        )
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError(
                f"must be an aiohttp.ClientSession, got {type(session).__name__}",
                field="session",
            )
        self.settings = settings = ClientSettings(
            base_url=base_url if base_url is not None else (
                os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL),
            max_concurrency=max_concurrency, submit_rate=submit_rate,
            submit_burst=submit_burst, query_rate=query_rate, poll_interval=poll_interval,
            busy_poll_interval=busy_poll_interval, batch_size=batch_size, timeout=timeout,
            request_timeout=request_timeout, max_retries=max_retries,
            retry_backoff=retry_backoff, resend_uncertain=resend_uncertain,
            callback_url=callback_url, callback_poll_interval=callback_poll_interval,
            callback_secret=callback_secret, upload_url=upload_url,
            not_found_grace=not_found_grace,
        )
        self.base_url = settings.base_url
        self.max_concurrency = settings.max_concurrency
        self.timeout = settings.timeout
        self.max_retries = settings.max_retries
        self.resend_uncertain = settings.resend_uncertain
        self.callback_url = settings.callback_url
        self.callback_poll_interval = settings.callback_poll_interval
        # Holds the callback secret; its repr hides it, like the key's headers.
        self._callbacks = CallbackBook(settings.callback_secret)
        # The key lives only inside these headers, which nothing prints.
        self._headers = request_headers(api_key)
        self._request_timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout, sock_connect=min(10.0, settings.request_timeout)
        )
        self._session = session
        self._owns_session = session is None
        self._transport: Transport | None = None
        self._slots = anyio.Semaphore(settings.max_concurrency)
        backoff = settings.retry_backoff
        self._backoff = Backoff(base=backoff, cap=max(16.0, backoff))
        self.upload_url = upload_url_for(settings.upload_url, self.base_url)
        self._uploader = Uploader(
            self.upload_url, attempts=settings.max_retries,
            backoff=self._backoff, request_timeout=settings.request_timeout,
        )
        self.submit_limiter = RateLimiter(
            settings.submit_rate, burst=settings.effective_submit_burst, backoff=self._backoff
        )
        self._submitter = Submitter(
            self._post, self.submit_limiter, self._backoff, spawn=self._spawn,
            max_retries=settings.max_retries, resend_uncertain=settings.resend_uncertain,
        )
        self.query_limiter = RateLimiter(
            settings.query_rate, burst=settings.query_burst, backoff=self._backoff
        )
        self._poller = Poller(
            fetch_batch=self._fetch_batch,
            fetch_one=self._fetch_one,
            limiter=self.query_limiter,
            spawn=self._spawn,
            interval=settings.poll_interval,
            busy_interval=settings.busy_poll_interval,
            # Every slot taken: a finished task noticed sooner is a slot freed sooner.
            is_busy=lambda: self._slots.value == 0,
            chunk_size=settings.batch_size,
            not_found_grace=settings.not_found_grace,
        )
        self._group: anyio.abc.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._started: anyio.Event | None = None
        self._stopping: anyio.Event | None = None
        self._closed = False
        # Tasks followed in the background because their caller left mid-POST.
        self._adopted: set[str] = set()

    def __repr__(self) -> str:
        return f"<FluxClient {self.base_url} max_concurrency={self.max_concurrency}>"

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> FluxClient:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        """Generation slots in use: submitted (or submitting) and not yet resolved."""
        return self.max_concurrency - int(self._slots.value)

    async def _start(self) -> None:
        if self._closed:
            raise ClientClosedError("this FluxClient is closed")
        if self._group is not None:
            return  # running: no checkpoint on this per-request path
        if self._started is None:
            self._started = anyio.Event()
            self._stopping = anyio.Event()
            if self._session is None:
                self._session = aiohttp.ClientSession()
            self._transport = Transport(
                self._session, self.base_url, self._headers, timeout=self._request_timeout
            )
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        await self._started.wait()

    async def _supervise(self) -> None:
        assert self._started is not None
        assert self._stopping is not None
        async with anyio.create_task_group() as group:
            self._group = group
            self._started.set()
            await self._stopping.wait()
            group.cancel_scope.cancel()
        self._group = None

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._group is None:
            raise ClientClosedError("this FluxClient is closed")
        self._group.start_soon(fn)

    async def aclose(self) -> None:
        """Stop background work, fail pending waits, close the session.

        Paid submissions already on the wire are let finish first (each bounded by
        the request timeout), so none is cut with its task id unknown. Waits end
        with ``TaskClosedError`` (a ``ClientClosedError`` naming the task); the ids
        of submitted tasks still running are logged (WARNING).
        """
        if self._closed:
            return
        self._closed = True
        self._submitter.closing = True
        with anyio.CancelScope(shield=True):
            if self._submitter.on_wire:
                with anyio.move_on_after((self._request_timeout.total or 60.0) + 5.0):
                    await self._submitter.drained()
            closed = ClientClosedError("the FluxClient was closed while waiting")
            running = self._poller.close(closed)
            # Tasks adopted after their caller left were named only in a log record
            # so far: name them again, loudly. The others' ids are with their callers
            # (submit() returned it; a waiter gets TaskClosedError naming it).
            orphans = [t for t in running if t in self._adopted]
            others = [t for t in running if t not in self._adopted]
            self._adopted.clear()
            for level, ids in ((logging.WARNING, orphans), (logging.INFO, others)):
                if ids:
                    log.log(level, "FluxClient closed with %d submitted task(s) still "
                            "running; they may still finish and be billed, wait on them "
                            "with another client: %s", len(ids), ", ".join(ids))
            if self._stopping is not None:
                self._stopping.set()
            if self._supervisor is not None:
                await self._supervisor
            if self._owns_session and self._session is not None:
                await self._session.close()

    # --- requests ----------------------------------------------------------------

    async def _post(self, path: str, payload: Mapping[str, Any]) -> Any:
        if self._transport is None:
            await self._start()
        assert self._transport is not None
        reply = await self._transport.post(path, payload)
        return decode_answer(reply.status, reply.headers, reply.body, now=time.time())

    async def _fetch_batch(self, task_ids: Sequence[str]) -> list[Mapping[str, Any]]:
        return read_batch(await self._post(TASKS_PATH, retrieve_batch_body(task_ids)))

    async def _fetch_one(self, task_id: str) -> Mapping[str, Any]:
        data = await self._post(TASKS_PATH, retrieve_body(task_id))
        if not isinstance(data, Mapping):
            raise ProtocolError("a retrieve answer is not a JSON object")
        return data

    async def _launch(
        self,
        request: ImageRequest,
        *,
        deadline: float | None,
        timeout: float | None,
        callback_url: str | None,
        background: bool,
        on_submitted: Callable[[str], None] | None = None,
    ) -> tuple[Submission, Entry | None]:
        """Take a slot, submit, and hand the slot to the poller's entry for the task."""
        await self._start()
        if self._slots.value > 0:
            self._slots.acquire_nowait()  # a free slot needs no wait, scope or checkpoint
        else:
            with anyio.move_on_after(remaining(deadline)) as scope:
                await self._slots.acquire()
            if scope.cancelled_caught:
                raise TaskTimeoutError(None, timeout)
        if self._slots.value == 0:
            self._poller.wake()  # saturated: rounds now come every busy_poll_interval
        nonce = None
        if callback_url is not None:
            nonce, callback_url = self._callbacks.issue(callback_url)
        callbacks = callback_url is not None

        def adopt(submission: Submission) -> None:
            self._adopt(submission, request, nonce, callbacks, on_submitted)

        def drop() -> None:
            self._slots.release()
            self._callbacks.settle(nonce)

        handover = Handover(adopt, drop)
        try:
            submission = await self._submitter.submit(
                request, callback_url, deadline=deadline, timeout=timeout, handover=handover
            )
        except BaseException:
            if not handover.left:  # else the slot and the nonce went with the handover
                drop()
            raise
        # From here to the return nothing awaits: no cancellation can come between
        # the answer and the entry that follows its task.
        entry = self._track(submission, request, nonce, callbacks, background=background)
        if on_submitted is not None:
            on_submitted(submission.task_id)
        return submission, entry

    def _track(
        self, submission: Submission, request: ImageRequest, nonce: str | None,
        callbacks: bool, *, background: bool,
    ) -> Entry | None:
        """Hand the submission's slot to an entry following its task (None: done already)."""
        # A very fast task's callback may have come before this answer: it was held.
        early = self._callbacks.settle(nonce)
        if self._poller.closed and submission.result is None:  # answered as the client closed
            self._slots.release()
            log.warning("task %s was created as the client closed; nobody follows it: "
                        "wait on it with another client", submission.task_id)
            raise for_task(ClientClosedError("the FluxClient was closed while submitting"),
                           submission.task_id)
        if submission.result is not None:
            self._slots.release()
            self._poller.resolve(_task_of(submission))
            return None
        entry = self._poller.entry(submission.task_id)
        entry.release = self._slots.release
        entry.background = background
        entry.request, entry.callback_nonce = request, nonce
        if callbacks:
            entry.recheck = self.callback_poll_interval
            entry.not_before = anyio.current_time() + self.callback_poll_interval
        adopt_early(self._poller, entry, early)
        return entry

    def _adopt(
        self, submission: Submission, request: ImageRequest, nonce: str | None,
        callbacks: bool, on_submitted: Callable[[str], None] | None,
    ) -> None:
        """A submission answered after its caller had left: follow its task anyway."""
        task_id = submission.task_id
        try:
            entry = self._track(submission, request, nonce, callbacks, background=True)
        except ClientClosedError:
            pass  # logged, naming the task
        else:
            if entry is not None:
                self._adopted.add(task_id)
                entry.on_settle = [*(entry.on_settle or ()),
                                   lambda done: self._adopted.discard(done.task_id)]
            log.warning("the caller left while its submission was on the wire; task %s was "
                        "created and is followed in the background: await client.wait(%r)",
                        task_id, task_id)
        if on_submitted is not None:
            try:
                on_submitted(task_id)
            except Exception:
                log.exception("the submission hook failed for task %s", task_id)

    async def _await(self, entry: Entry, deadline: float | None, timeout: float | None) -> Task:
        entry.waiters += 1
        try:
            with anyio.fail_after(remaining(deadline)):
                await entry.done.wait()
        except TimeoutError:
            raise TaskTimeoutError(entry.task_id, timeout) from None
        except anyio.get_cancelled_exc_class():
            if entry.request is not None:
                # Paid for: say which task, so it can be found (a task that resolved
                # just before the cancellation landed is in the recent results).
                state = "had just resolved" if entry.done.is_set() else "may still finish"
                log.warning("wait cancelled; task %s %s: client.wait(%r)",
                            entry.task_id, state, entry.task_id)
            raise
        finally:
            self._poller.leave(entry)
        if entry.error is not None:
            raise entry.error
        assert entry.task is not None
        return entry.task

    async def _run(
        self,
        request: ImageRequest,
        timeout: float | None,
        on_submitted: Callable[[str], None] | None = None,
    ) -> ImageResult:
        deadline = deadline_after(timeout)
        callback_url = self.callback_url
        submission, entry = await self._launch(
            request, deadline=deadline, timeout=timeout, callback_url=callback_url,
            background=False, on_submitted=on_submitted,
        )
        if entry is None:
            assert submission.result is not None
            return submission.result
        return _result_of(await self._await(entry, deadline, timeout))

    # --- public API ----------------------------------------------------------------

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        size: str | None = None,
        count: int | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> ImageResult:
        """Generate images from ``prompt`` and wait for them.

        Raises ``TaskFailedError`` if the service fails the task, ``TaskTimeoutError``
        when ``timeout`` (default: the client's) passes first.
        """
        timeout = resolve_timeout(timeout, self.timeout)
        request = GenerateRequest(prompt, model=model, size=size, count=count)
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
    ) -> ImageResult:
        """Edit ``image`` as ``prompt`` says, and wait for the result.

        ``image`` is an http(s) URL (passed on), a local file's path (``str`` or
        ``os.PathLike``) or the image's bytes (both uploaded first, see
        ``upload``). ``image_url`` is the same argument under its older name.
        ``timeout`` counts from the submission, after any upload.
        """
        timeout = resolve_timeout(timeout, self.timeout)
        return await self._run(await self._edit_request(prompt, image, image_url, model, size),
                               timeout)

    async def submit(self, request: ImageRequest, *, callback_url: str | None = None) -> Task:
        """Submit and return as soon as the service gives a task id.

        The task keeps a concurrency slot until it resolves; the client follows it
        in the background so ``wait()`` on it later is immediate once it has.
        """
        if not isinstance(request, (GenerateRequest, EditRequest)):
            raise ValidationError(
                "request", f"must be a GenerateRequest or an EditRequest, got {request!r:.80}"
            )
        if callback_url is not None:
            check_http_url("callback_url", callback_url)
        submission, _ = await self._launch(
            request, deadline=None, timeout=None,
            callback_url=callback_url or self.callback_url, background=True,
        )
        return _task_of(submission)

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
        known = known or self._poller.recent.get(task_id)
        if known is not None:
            return _result_of(known)
        deadline = deadline_after(timeout)
        await self._start()
        entry = self._poller.entry(task_id)
        return _result_of(await self._await(entry, deadline, timeout))

    async def get_task(self, task_id: str) -> Task:
        """One task as the service reports it now (``retrieve``)."""
        _check_task_id("task_id", task_id)
        task = read_task(await self._query(functools.partial(self._fetch_one, task_id)))
        self._poller.resolve(task)
        return task

    async def get_tasks(self, task_ids: Iterable[str]) -> list[Task]:
        """Many tasks, ``batch_size`` per request (``retrieve_batch``), in the order asked.

        Ids the service does not know are left out, as the service leaves them out.
        """
        if isinstance(task_ids, (str, bytes)) or not isinstance(task_ids, Iterable):
            raise ValidationError(
                "task_ids", f"must be an iterable of task ids, got {task_ids!r:.80}"
            )
        given = list(task_ids)
        for task_id in given:
            _check_task_id("task_ids", task_id)
        ids = list(dict.fromkeys(given))
        size = self._poller.chunk_size
        found: dict[str, Task] = {}
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            if self._poller.batch_supported:
                items = await self._query(functools.partial(self._fetch_batch, chunk))
            else:
                items = [await self._query(functools.partial(self._fetch_one, i)) for i in chunk]
            for item in items:
                task = read_task(item)
                found[task.id] = task
                self._poller.resolve(task)
        return [found[i] for i in ids if i in found]

    def receive_callback(
        self, token: str | None, body: bytes | str | Mapping[str, Any]
    ) -> CallbackVerdict:
        """Apply a callback the service POSTed; answer it with ``verdict.status``.

        ``token`` is the ``flux_token`` query parameter of the URL it was posted
        to, ``body`` the raw body (or its parsed JSON). A success posted with the
        token issued for that task's submission resolves its wait at once; a
        failure, or a post for a task followed through ``wait(id)`` alone, makes
        the client query that task at once and the service's answer decides (200,
        ``kind == "confirming"``). ``flux_async.web`` does this for aiohttp; call it
        from any other framework the same way (cap the body size first). The
        rules, in order, are in ``CallbackVerdict``'s module; the short form: bad
        token (or another task's) 403, not a result 400, contradicts the
        submission 409, duplicate 200, unknown task 404 with ``kind == "unclaimed"``.
        """
        return judge(self._callbacks, self._poller, token, body)

    async def _fetcher(self) -> Fetcher:
        await self._start()
        assert self._session is not None
        read = self._request_timeout.total or 60.0
        # No total: a large image on a slow link may take long; a stalled read may not.
        timeout = aiohttp.ClientTimeout(sock_connect=min(10.0, read), sock_read=read)
        return Fetcher(self._session, timeout, self.max_retries, self._backoff)

    async def download(
        self,
        target: DownloadTarget,
        directory: str | os.PathLike[str],
        *,
        prefix: str | None = None,
        concurrency: int = 4,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        overwrite: bool = False,
        timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> list[pathlib.Path]:
        """Save images to files under ``directory`` (created if missing); return the paths.

        ``target`` is an ``ImageResult``, an ``Image`` or Images. Files are named
        ``{prefix or task id or URL stem}-{index}{ext}``, reduced to safe
        characters, ``ext`` from the content type. ``concurrency`` downloads run at
        once; each is streamed to a temporary file and renamed when complete, so a
        failed or cancelled download leaves nothing. Raises ``NotAnImageError``
        (not ``image/*``), ``ImageTooLargeError`` (over ``max_bytes``), another
        ``DownloadError`` (an HTTP error, or failures that outlasted the retries),
        ``FileExistsError`` unless ``overwrite``. The first failure cancels the rest;
        files already complete stay. ``timeout`` bounds each image, retries
        included (``DownloadTimeoutError``; ``None``: no bound).
        """
        return await download_images(
            await self._fetcher(), target, directory, prefix=prefix,
            concurrency=concurrency, max_bytes=max_bytes, overwrite=overwrite,
            timeout=timeout,
        )

    async def fetch_image(
        self,
        image: Image | str,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> bytes:
        """An image's bytes in memory; the same checks, retries and deadline as ``download``."""
        url = image.url if isinstance(image, Image) else image
        return await fetch_bytes(await self._fetcher(), url, max_bytes, timeout=timeout)

    async def _query(self, fetch: Callable[[], Awaitable[Any]]) -> Any:
        """A free task query, retried with backoff on failures that may pass."""
        for attempt in range(1, self.max_retries + 1):
            ticket = await self.query_limiter.acquire()
            try:
                return await fetch()
            except RateLimitError as exc:
                self.query_limiter.penalize(exc.retry_after, anyio.current_time(), ticket)
                if attempt == self.max_retries:
                    raise
            except (TransportError, ServerError):
                if attempt == self.max_retries:
                    raise
                await anyio.sleep(self._backoff.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

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
        if isinstance(requests, (str, bytes, GenerateRequest, EditRequest)) or not isinstance(
            requests, (Iterable, AsyncIterable)
        ):
            raise ValidationError(
                "requests", f"must be an iterable of requests, got {requests!r:.80}"
            )
        if on_event is not None and not callable(on_event):
            raise ValidationError("on_event", f"must be callable, got {on_event!r:.80}")
        timeout = resolve_timeout(timeout, self.timeout)
        await self._start()
        size = self.max_concurrency
        send, receive = anyio.create_memory_object_stream[Outcome](size)
        # Not fast_acquire: the checkpoint in each acquire lets every submission
        # start as it is spawned, instead of thousands queueing at the connector.
        window = anyio.Semaphore(size)
        failure: list[BaseException] = []
        completed: list[bool] = []
        finished = anyio.Event()
        scope = anyio.CancelScope()

        async def follow(
            request: ImageRequest, on_submitted: Callable[[str], None], deliver: Deliver
        ) -> Callable[[], None] | None:
            return await self._follow(request, timeout, on_submitted, deliver)

        async def runner() -> None:
            with scope:
                try:
                    await run_map(follow, requests, send, window, size, ordered=ordered,
                                  on_event=on_event, on_failure=failure.append)
                    completed.append(True)
                except Exception as exc:  # a bug: re-raised to the consumer
                    failure.append(exc)
                finally:
                    send.close()
                    finished.set()

        self._spawn(runner)
        try:
            async with receive:
                async for outcome in receive:
                    window.release()  # taken: one more request may start
                    yield outcome
        finally:
            scope.cancel()
            with anyio.CancelScope(shield=True):
                await finished.wait()
        if failure:
            raise failure[0]
        if not completed and self._closed:
            raise ClientClosedError("the FluxClient was closed during map")

    async def _follow(
        self,
        request: ImageRequest,
        timeout: float | None,
        on_submitted: Callable[[str], None],
        deliver: Deliver,
    ) -> Callable[[], None] | None:
        """Submit, then call ``deliver`` once when the task resolves or its deadline passes.

        ``_run`` without a coroutine parked per pending task: the poller's settle
        callback and one timer do the waiting. Returns how to stop following
        (None when already delivered). Raises what the submission raises.
        """
        deadline = deadline_after(timeout)
        submission, entry = await self._launch(
            request, deadline=deadline, timeout=timeout, callback_url=self.callback_url,
            background=False, on_submitted=on_submitted,
        )
        if entry is None:
            deliver(submission.result, None)
            return None
        poller = self._poller
        entry.waiters += 1
        timer: asyncio.TimerHandle | None = None

        def settled(done: Entry) -> None:
            if timer is not None:
                timer.cancel()
            poller.leave(done)
            if done.error is not None:
                deliver(None, done.error)
                return
            assert done.task is not None
            try:
                result = _result_of(done.task)
            except TaskFailedError as exc:
                deliver(None, exc)
            else:
                deliver(result, None)

        def stop(expired: bool = False) -> None:
            if entry.on_settle is None or settled not in entry.on_settle:
                return  # settled already
            entry.on_settle.remove(settled)
            if timer is not None:
                timer.cancel()
            poller.leave(entry)
            if expired:
                deliver(None, TaskTimeoutError(entry.task_id, timeout))
            elif entry.request is not None:
                log.warning("map cancelled; task %s may still finish: client.wait(%r)",
                            entry.task_id, entry.task_id)

        entry.on_settle = [*(entry.on_settle or ()), settled]
        if deadline is not None:
            timer = asyncio.get_running_loop().call_at(deadline, stop, True)
        return stop

    # --- uploads -------------------------------------------------------------------

    async def upload(self, image: ImageSource) -> str:
        """Upload a local image; return the URL the service hosts it at (valid 7 days).

        ``image`` is a path (``str`` or ``os.PathLike``) or the image's bytes. It
        is read and checked before anything is sent: a missing, unreadable or
        empty file, a directory, more than 25 MB, or content that is not a PNG,
        JPEG, WebP or GIF image raise ``ValidationError`` (field ``image``).
        Uploads are not billed: a connect error, a broken connection, a 5xx or a
        429 is tried again (``max_retries`` in all); the answer's errors raise
        the same ``APIError`` subclasses as every other call.
        """
        return await self._upload(image, "image")

    async def _upload(self, image: ImageSource, field: str) -> str:
        if is_remote(image):
            raise ValidationError(field, "is already a URL: nothing to upload")
        await self._start()
        assert self._transport is not None
        return await self._uploader.upload(self._transport, image, field=field)

    async def _edit_request(
        self,
        prompt: str,
        image: str | ImageSource | None,
        image_url: str | ImageSource | None,
        model: str | None,
        size: str | None,
    ) -> EditRequest:
        """The ``EditRequest`` of ``edit``; a local image is uploaded once all else is valid."""
        if image is not None and image_url is not None:
            raise ValidationError("image", "give image or image_url, not both")
        field, source = ("image", image) if image is not None else ("image_url", image_url)
        if source is None:
            raise ValidationError("image", "required: an http(s) URL, a file path or bytes")
        if isinstance(source, str) and is_remote(source):
            return EditRequest(prompt, image_url=source, model=model, size=size)
        # The edit's own checks, before an upload is spent on a bad request (the URL
        # is a stand-in: the real one exists only after the upload).
        EditRequest(prompt, image_url="https://upload.invalid/", model=model, size=size)
        url = await self._upload(source, field)
        return EditRequest(prompt, image_url=url, model=model, size=size)



def _check_task_id(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, f"a task id is a non-empty string, got {value!r:.80}")


def _task_of(submission: Submission) -> Task:
    if submission.result is not None:
        return Task(submission.task_id, TaskStatus.SUCCEEDED, trace_id=submission.trace_id,
                    result=submission.result, raw=submission.result.raw)
    return Task(submission.task_id, TaskStatus.PENDING, trace_id=submission.trace_id)


def _result_of(task: Task) -> ImageResult:
    if task.result is not None:
        return task.result
    error = task.error
    raise TaskFailedError(
        task.id,
        code=error.code if error else None,
        message=error.message if error else "the task failed",
        trace_id=task.trace_id,
    )
