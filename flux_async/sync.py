"""A blocking client, for scripts, notebooks and sync web frameworks (Django, Flask).

>>> from flux_async.sync import FluxClient
>>> with FluxClient() as client:                 # key from $ACEDATACLOUD_API_TOKEN
...     result = client.generate("a white siamese cat")
...     paths = client.download(result, "out/")

The constructor and methods are ``flux_async.FluxClient``'s, without ``async``;
the models and exceptions are the same objects (an error is raised unchanged, not
wrapped). Underneath, one async client runs on an event loop in a background
thread; every call is a task on that loop, so:

* one client may be shared by any number of threads (a web app's request
  threads): their calls run concurrently and share ``max_concurrency`` and the
  rate limits;
* it works where a loop already runs in the calling thread (a Jupyter cell):
  the call blocks that loop while it waits, and needs nothing from it;
* Ctrl-C while a call waits cancels that call; ``close()`` (or leaving ``with``)
  fails calls still waiting in other threads with ``ClientClosedError`` and stops
  the thread. A client never closed is closed at interpreter exit, and one
  garbage-collected unclosed is closed with a ``ResourceWarning``.
* Each process has its own: a process forked from one holding a client (gunicorn
  ``--preload``, multiprocessing) starts its own loop and client on first use.
"""

from __future__ import annotations

import functools
import os
import pathlib
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from ._client.blocking import Loop, iterate_map
from ._client.client import FluxClient as AsyncFluxClient
from ._core.callbacks import CallbackVerdict
from ._core.models import Image, ImageRequest, ImageResult, Outcome, Task
from ._core.settings import USE_CLIENT_DEFAULT, ClientSettings, UseClientDefault
from ._edge.download import DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_MAX_IMAGE_BYTES, DownloadTarget
from ._edge.uploads import ImageSource
from ._engine.journal import Journal
from ._engine.map import MapEvent
from ._engine.telemetry import Telemetry

__all__ = ["FluxClient"]

_THREAD_NAME = "flux_async.sync"


class _Holder:
    """The current loop of a client; what its finalizer closes (it must not hold the client)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.lock = threading.Lock()


def _collected(holder: _Holder) -> None:
    holder.loop.close()
    warnings.warn(
        "a flux_async.sync.FluxClient was garbage-collected without close(); "
        "it is closed now (use `with FluxClient() as client:`)",
        ResourceWarning,
        stacklevel=2,
    )


class FluxClient:
    """A blocking client of the Flux image API; use it as ``with FluxClient() as client``.

    The settings are ``flux_async.FluxClient``'s (see its docstring), except
    ``session``: an aiohttp session belongs to one event loop, and this client's
    loop is private. Safe to share between threads. ``map`` returns a plain
    iterator; the input iterable and ``on_event`` run in the iterating thread.
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
        not_found_grace: float = 300.0,
        download_guard: bool = True,
        download_allow: Iterable[str] = (),
        journal: str | os.PathLike[str] | Journal | None = None,
        key_retention: float = 86400.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        # A closure, not stored arguments: no repr ever shows the key. Kept to build
        # the client again in a forked child.
        def make() -> AsyncFluxClient:
            return AsyncFluxClient(
                api_key, base_url=base_url, max_concurrency=max_concurrency,
                submit_rate=submit_rate, submit_burst=submit_burst, query_rate=query_rate,
                poll_interval=poll_interval, busy_poll_interval=busy_poll_interval,
                batch_size=batch_size, timeout=timeout, request_timeout=request_timeout,
                max_retries=max_retries, retry_backoff=retry_backoff,
                resend_uncertain=resend_uncertain, callback_url=callback_url,
                callback_poll_interval=callback_poll_interval,
                callback_secret=callback_secret, upload_url=upload_url,
                not_found_grace=not_found_grace, download_guard=download_guard,
                download_allow=download_allow, journal=journal,
                key_retention=key_retention, telemetry=telemetry,
            )

        self._make = make
        self._holder = _Holder(Loop(make, name=_THREAD_NAME))
        self._finalizer = weakref.finalize(self, _collected, self._holder)
        self._finalizer.atexit = False  # at exit, the loop closes quietly

    def __repr__(self) -> str:
        return (f"<flux_async.sync.FluxClient {self.base_url} "
                f"max_concurrency={self.max_concurrency}>")

    # --- plumbing ------------------------------------------------------------------

    @property
    def _loop(self) -> Loop:
        loop = self._holder.loop
        if loop.pid != os.getpid() and not loop.closed:
            # Forked: the parent's loop thread did not come along; start ours.
            with self._holder.lock:
                if self._holder.loop is loop:
                    loop.close()
                    self._holder.loop = Loop(self._make, name=_THREAD_NAME)
            loop = self._holder.loop
        return loop

    @property
    def _client(self) -> AsyncFluxClient:
        return self._holder.loop.client

    # --- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> FluxClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """See ``flux_async.FluxClient.aclose``; also stops the loop thread."""
        self._finalizer.detach()
        self._holder.loop.close()

    @property
    def closed(self) -> bool:
        return self._holder.loop.closed

    @property
    def in_flight(self) -> int:
        """See ``flux_async.FluxClient.in_flight``."""
        return self._client.in_flight

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def max_concurrency(self) -> int:
        return self._client.max_concurrency

    @property
    def timeout(self) -> float | None:
        return self._client.timeout

    @property
    def max_retries(self) -> int:
        return self._client.max_retries

    @property
    def resend_uncertain(self) -> bool:
        return self._client.resend_uncertain

    @property
    def callback_url(self) -> str | None:
        return self._client.callback_url

    @property
    def callback_poll_interval(self) -> float:
        return self._client.callback_poll_interval

    @property
    def upload_url(self) -> str:
        return self._client.upload_url

    @property
    def settings(self) -> ClientSettings:
        """The async client's frozen, validated settings (safe to read from any thread)."""
        return self._client.settings

    # --- the API -------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        size: str | None = None,
        count: int | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        idempotency_key: str | None = None,
    ) -> ImageResult:
        """See ``flux_async.FluxClient.generate``."""
        return self._loop.call(functools.partial(
            self._client.generate, prompt, model=model, size=size, count=count, timeout=timeout,
            idempotency_key=idempotency_key,
        ))

    def edit(
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
        """See ``flux_async.FluxClient.edit``."""
        return self._loop.call(functools.partial(
            self._client.edit, prompt, image=image, image_url=image_url, model=model,
            size=size, timeout=timeout, idempotency_key=idempotency_key,
        ))

    def upload(self, image: ImageSource) -> str:
        """See ``flux_async.FluxClient.upload``."""
        return self._loop.call(functools.partial(self._client.upload, image))

    def submit(self, request: ImageRequest, *, callback_url: str | None = None,
               idempotency_key: str | None = None) -> Task:
        """See ``flux_async.FluxClient.submit``."""
        return self._loop.call(functools.partial(
            self._client.submit, request, callback_url=callback_url,
            idempotency_key=idempotency_key,
        ))

    def release_key(self, key: str) -> bool:
        """See ``flux_async.FluxClient.release_key``."""
        return self._loop.call(functools.partial(self._client.release_key, key))

    def key_digest(self, label: bytes) -> str:
        """See ``flux_async.FluxClient.key_digest``."""
        return self._client.key_digest(label)

    def wait(
        self, task: Task | str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> ImageResult:
        """See ``flux_async.FluxClient.wait``."""
        return self._loop.call(functools.partial(self._client.wait, task, timeout=timeout))

    def get_task(self, task_id: str) -> Task:
        """See ``flux_async.FluxClient.get_task``."""
        return self._loop.call(functools.partial(self._client.get_task, task_id))

    def get_tasks(self, task_ids: Iterable[str]) -> list[Task]:
        """See ``flux_async.FluxClient.get_tasks``."""
        ids = list(task_ids)  # a user's iterable is read in the user's thread
        return self._loop.call(functools.partial(self._client.get_tasks, ids))

    def receive_callback(
        self, token: str | None, body: bytes | str | Mapping[str, Any]
    ) -> CallbackVerdict:
        """See ``flux_async.FluxClient.receive_callback`` (call it from any web framework)."""
        return self._loop.call_sync(functools.partial(self._client.receive_callback, token, body))

    def handle_callback(
        self, token: str | None, body: bytes | str | Mapping[str, Any]
    ) -> CallbackVerdict:
        """See ``flux_async.FluxClient.handle_callback``."""
        return self._loop.call(functools.partial(self._client.handle_callback, token, body))

    def adopt(self, task_ids: Iterable[str]) -> None:
        """See ``flux_async.FluxClient.adopt``."""
        ids = list(task_ids)  # a user's iterable is read in the user's thread
        self._loop.call(functools.partial(self._client.adopt, ids))

    def download(
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
        """See ``flux_async.FluxClient.download``."""
        if not isinstance(target, (ImageResult, Image)):
            target = list(target)  # a user's iterable is read in the user's thread
        return self._loop.call(functools.partial(
            self._client.download, target, directory, prefix=prefix,
            concurrency=concurrency, max_bytes=max_bytes, overwrite=overwrite,
            timeout=timeout,
        ))

    def fetch_image(
        self,
        image: Image | str,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> bytes:
        """See ``flux_async.FluxClient.fetch_image``."""
        return self._loop.call(functools.partial(
            self._client.fetch_image, image, max_bytes=max_bytes, timeout=timeout
        ))

    def map(
        self,
        requests: Iterable[ImageRequest],
        *,
        ordered: bool = False,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        on_event: Callable[[MapEvent], None] | None = None,
    ) -> Iterator[Outcome]:
        """See ``flux_async.FluxClient.map``; a plain iterator of ``Outcome``.

        ``requests`` is read lazily in the iterating thread (a Django queryset or a
        file is read where it was opened); ``on_event`` is called there too, while
        ``next()`` waits. Leave the loop early, or ``close()`` the iterator, to
        cancel what is still running.
        """
        loop = self._loop
        client = loop.client
        # A generator of this method's own: iterating keeps this client alive.
        yield from iterate_map(
            loop,
            lambda feed, hook: client.map(feed, ordered=ordered, timeout=timeout, on_event=hook),
            requests,
            on_event,
        )
