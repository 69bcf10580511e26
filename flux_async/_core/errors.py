"""Every exception flux_async raises.

No aiohttp, JSON or cattrs exception ever reaches a caller: the transport edge
translates them once, with ``raise ... from`` so the original stays on
``__cause__`` for debugging. The tree::

    FluxError
    ├── ConfigurationError          no API key, an impossible setting (also ValueError)
    ├── ValidationError             bad input, refused before any request (also ValueError)
    │   └── IdempotencyConflictError  a key already names another request
    ├── ClientClosedError           the client was closed
    ├── CoordinationError           the shared limits (a coordinator) could not be
    │                               consulted; raised before anything is paid
    ├── TransportError              no usable answer came back
    │   ├── ConnectError            never connected: nothing was sent
    │   │   └── (UnusableURLError)  a URL nothing can be sent to (not exported)
    │   ├── NetworkError            the connection broke after the request may have gone out
    │   │   └── (RedirectError)     a redirect gone wrong: a loop, a target that cannot
    │   │                           be used; never retried (not exported)
    │   ├── RequestTimeoutError     no answer in time (also TimeoutError)
    │   └── ProtocolError           an answer that is not the protocol (not JSON, truncated)
    ├── APIError                    the service answered an error: status, code, message, trace_id
    │   ├── BadRequestError         400
    │   ├── AuthenticationError     401, and the token codes whatever the status
    │   ├── InsufficientBalanceError  403 used_up: the balance is spent
    │   ├── ForbiddenError          403 forbidden (moderation, no access) and any other 403
    │   ├── NotFoundError           404
    │   ├── RateLimitError          429; limit says which ("concurrency" or "rate"),
    │   │                           retry_after when the service gave one
    │   └── ServerError             5xx, including gateway pages that are not JSON
    │       └── UpstreamTimeoutError  504 timeout: the model timed out, nothing billed
    ├── SubmissionUncertainError    a paid submission whose fate is unknown: not re-sent
    ├── JournalError                the task journal cannot be read or written: raised
    │                               before anything is paid
    ├── DownloadError               an image could not be fetched or saved: url, status
    │   ├── NotAnImageError         not an image: the content type is not image/*, or
    │   │                           the body is no PNG, JPEG, WebP or GIF by its bytes
    │   ├── ImageTooLargeError      the body is over max_bytes (nothing is kept)
    │   ├── DownloadTimeoutError    not whole within its deadline (also TimeoutError)
    │   ├── BlockedAddressError     the download guard refused an address: reason,
    │   │                           address, port (loopback, private, metadata...)
    │   └── DownloadRedirectError   a redirect out of http(s), a loop, too many hops
    │                               (also RedirectError, so a NetworkError)
    └── TaskError                   about one task, carries task_id
        ├── TaskFailedError         the service says the task failed: code, message
        ├── TaskTimeoutError        the deadline passed; the task may still finish
        │                           (also TimeoutError)
        └── (another error, as it ended the wait for one task; also that error's class)
            TaskNotFoundError (NotFoundError), TaskAuthenticationError,
            TaskInsufficientBalanceError, TaskForbiddenError, TaskClosedError
            (ClientClosedError), TaskProtocolError (ProtocolError)

Messages never contain the API key: nothing here is ever given it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BlockedAddressError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "CoordinationError",
    "DownloadError",
    "DownloadRedirectError",
    "FluxError",
    "ForbiddenError",
    "DownloadTimeoutError",
    "IdempotencyConflictError",
    "ImageTooLargeError",
    "InsufficientBalanceError",
    "JournalError",
    "NetworkError",
    "NotAnImageError",
    "NotFoundError",
    "RedirectError",
    "ProtocolError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServerError",
    "SubmissionUncertainError",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "TransportError",
    "UnusableURLError",
    "UpstreamTimeoutError",
    "ValidationError",
    "error_for_response",
]


class FluxError(Exception):
    """Base of every flux_async exception."""


class ConfigurationError(FluxError, ValueError):
    """The client cannot be built as asked (no API key anywhere, an impossible setting).

    ``field`` names the setting at fault when there is one; the message starts
    with it. A value that may be secret (the API key) is never quoted.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class ValidationError(FluxError, ValueError):
    """A request was refused before anything was sent; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class IdempotencyConflictError(ValidationError):
    """The idempotency key was already used for another request; nothing was sent.

    A key names one request (as a payment provider answers a reused key): use a
    new key for a new request, or ``FluxClient.release_key`` to free this one.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__("idempotency_key", f"{key!r} {message}")
        self.key = key


class JournalError(FluxError):
    """The task journal could not be opened, read or written.

    Raised before anything is paid: a submission never goes out when its intent
    could not be recorded, and a journal that is unreadable, from a newer version
    of flux_async or on a full disk is never silently replaced by "no journal".
    ``path`` names the journal when it is a file.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ClientClosedError(FluxError):
    """The client was used after ``aclose()`` (or after leaving ``async with``)."""


class CoordinationError(FluxError):
    """The shared limits could not be consulted (e.g. Redis down, slow or refusing).

    Raised before anything is paid: a submission never goes out when its slot or
    its rate turn could not be had. There is no silent fallback to per-process
    limits, which would let a fleet breach the token's.
    """


class TransportError(FluxError):
    """No usable answer: the connection, the timing or the bytes went wrong."""


class ConnectError(TransportError):
    """The connection was never established, so the service received nothing.

    This is the one transport failure after which re-sending a paid request is
    known to be safe.
    """


class NetworkError(TransportError):
    """The connection broke (reset, disconnect) after the request may have gone out."""


# Raised by the aiohttp edge, caught by the retry tables: not in the public surface.
class UnusableURLError(ConnectError):
    """The URL cannot be sent to (not http(s), malformed): nothing was sent, and
    sending again cannot help."""


class RedirectError(NetworkError):
    """A redirect went wrong (a loop, a target that cannot be used): the first
    request went out, and the same request would go the same way again."""


class RequestTimeoutError(TransportError, TimeoutError):
    """The service did not answer in time; it may have acted on the request."""


class ProtocolError(TransportError):
    """The service answered something that is not the protocol (not JSON, truncated...)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class APIError(FluxError):
    """The service answered an error.

    ``status`` is the HTTP status, ``code`` and ``message`` come from the error
    body (``code`` is ``None`` when the body was not the vendor's JSON, such as a
    gateway's HTML page), ``trace_id`` is what to quote to the vendor's support.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.trace_id = trace_id

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        text = f"{' '.join(parts)}: {self.message}"
        if self.trace_id:
            text += f" (trace_id={self.trace_id})"
        return text


class BadRequestError(APIError):
    """400: the service refused the parameters."""


class AuthenticationError(APIError):
    """401, or a token code (no_token, invalid_token, token_expired, token_mismatched)."""


class InsufficientBalanceError(APIError):
    """403 ``used_up``: the account's balance is spent. Top it up, then retry."""


class ForbiddenError(APIError):
    """403 ``forbidden``: the content was refused (moderation) or the token has no access.

    Not a balance problem, and not billed. Any other 403 whose code is not
    ``used_up`` lands here too: refusal is what the status says, and a spent
    balance is claimed only when the service says ``used_up``. Re-sending the same
    request will be refused the same way.
    """


class NotFoundError(APIError):
    """404: wrong path (``no_api``) or a task id the service does not know."""


RateLimit = Literal["concurrency", "rate"]

# The vendor answers a different code for each of its two limits.
_LIMIT_OF_CODE: Mapping[str, RateLimit] = {
    "rate_limited": "concurrency",  # too many generations in flight for this token
    "too_many_requests": "rate",  # too many requests per second
}


class RateLimitError(APIError):
    """429: a limit of the service was hit; nothing was created.

    ``limit`` says which, from the code: ``"concurrency"`` (``rate_limited``: too
    many generations in flight; wait for one to finish) or ``"rate"``
    (``too_many_requests``: too many requests per second; slow down); ``None``
    for a code the client does not know. ``retry_after`` is the delay the
    service asked for: the vendor documents no ``Retry-After``, so it is usually
    ``None`` and the client's own backoff decides.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str | None = None,
        trace_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, trace_id=trace_id)
        self.retry_after = retry_after
        self.limit: RateLimit | None = _LIMIT_OF_CODE.get(code or "")


class ServerError(APIError):
    """5xx: the service (or a gateway in front of it) failed."""


class UpstreamTimeoutError(ServerError):
    """504 ``timeout``: the upstream model timed out; the task did not complete.

    The vendor's statement, in its own error body: nothing completed and nothing
    is billed. A submission answered so is therefore re-sent like one that never
    connected (within ``max_retries``, after the backoff): the first attempt
    cannot be charged, so the re-send cannot pay twice. A 504 without the
    vendor's code (a gateway's HTML page) is not that statement: it stays a
    plain ``ServerError`` and the submission stays uncertain.
    """


class SubmissionUncertainError(FluxError):
    """A paid submission went out and no clear answer came back.

    The service may or may not have created (and will charge for) a task, so the
    client did not send it again. ``request`` is what was sent, ``trace_id`` the
    service's trace id if any answer carried one; the original failure is on
    ``__cause__``. Re-send it yourself only if a possible duplicate is acceptable,
    or set ``FluxClient(resend_uncertain=True)``. ``idempotency_key`` is the
    request's key, if it had one: the journal keeps the key tied to this
    submission (a call with it raises this again, and a late callback that names
    the task settles it) until ``FluxClient.release_key`` frees it.
    """

    def __init__(self, message: str, *, request: Any, trace_id: str | None = None,
                 idempotency_key: str | None = None) -> None:
        super().__init__(message)
        self.request = request
        self.trace_id = trace_id
        self.idempotency_key = idempotency_key


class DownloadError(FluxError):
    """An image could not be downloaded (or saved); nothing partial is left on disk.

    ``url`` is the image's URL; ``status`` the HTTP status when an answer came
    (``None`` for a connection failure, whose cause is on ``__cause__``). GETs
    are retried on 5xx, 429 and broken connections before this is raised.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class NotAnImageError(DownloadError):
    """The answer is not an image: its content type is not ``image/*`` (an HTML error
    page, JSON...), or its body is not a PNG, JPEG, WebP or GIF image by its first
    bytes whatever its label says (``by_content``: an HTML page sent as ``image/png``).

    ``content_type`` is the label the answer carried.
    """

    def __init__(
        self, url: str, content_type: str, *, status: int, by_content: bool = False
    ) -> None:
        label = content_type or "no content type"
        if by_content:
            text = f"{url} answered {label}, but its body is not a PNG, JPEG, WebP or GIF image"
        else:
            text = f"{url} answered {label}, not an image"
        super().__init__(text, url=url, status=status)
        self.content_type = content_type
        self.by_content = by_content


class ImageTooLargeError(DownloadError):
    """The body is larger than ``max_bytes`` (announced or while streaming)."""

    def __init__(self, url: str, max_bytes: int, *, status: int) -> None:
        super().__init__(f"{url} is larger than {max_bytes} bytes", url=url, status=status)
        self.max_bytes = max_bytes


class DownloadTimeoutError(DownloadError, TimeoutError):
    """An image did not arrive whole within its deadline; nothing of it is kept."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(f"downloading {url} timed out after {timeout:g} s", url=url)
        self.timeout = timeout


class BlockedAddressError(DownloadError):
    """The download guard refused to connect: the URL (or a redirect's target) leads
    to an address that is not on the public internet. Nothing was sent there.

    ``reason`` says what the address is: ``"loopback"``, ``"private"``,
    ``"link-local"``, ``"cloud metadata"``, ``"unspecified"``, ``"multicast"`` or
    ``"reserved"``. ``address`` and ``port`` are where the connection would have
    gone (after DNS); ``target`` the URL that led there (``url`` itself, or a
    redirect's). Not retried: the same URL leads to the same place. Allow an
    address you trust with ``FluxClient(download_allow=[...])``.
    """

    def __init__(
        self, url: str, *, target: str, host: str, address: str, port: int, reason: str
    ) -> None:
        where = "" if target == url else f" redirected to {target};"
        what = f"{'an' if reason[0] in 'aeiou' else 'a'} {reason} address"
        where += f" {address} is {what}" if host == address else (
            f" {host} resolves to {address}, {what}")
        entry = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        super().__init__(
            f"{url}:{where}: refused by the download guard "
            f"(download_allow=['{entry}'] would let it through)",
            url=url,
        )
        self.target = target
        self.host = host
        self.address = address
        self.port = port
        self.reason = reason


class DownloadRedirectError(DownloadError, RedirectError):
    """A download's redirect went wrong: to a URL that is not http(s) (``file:``...),
    in a loop or past the most hops followed, or without a ``Location``.

    Raised at once, never retried: the same URL is redirected the same way again.
    Also a ``RedirectError`` (a ``NetworkError``: the first request went out).
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        DownloadError.__init__(self, message, url=url, status=status)


class TaskError(FluxError):
    """Something about one task; ``task_id`` says which."""

    def __init__(self, message: str, *, task_id: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskFailedError(TaskError):
    """The service reports the task failed, with its own ``code`` and ``message``."""

    def __init__(
        self,
        task_id: str,
        *,
        code: str | None,
        message: str,
        trace_id: str | None = None,
    ) -> None:
        text = f"task {task_id} failed: {message}" + (f" ({code})" if code else "")
        super().__init__(text, task_id=task_id)
        self.code = code
        self.message = message
        self.trace_id = trace_id


class TaskTimeoutError(TaskError, TimeoutError):
    """The deadline passed before the task resolved.

    The task may still finish: ``await client.wait(err.task_id)`` picks it up
    again. ``task_id`` is ``None`` when the deadline passed before anything was
    submitted (nothing was spent).
    """

    def __init__(self, task_id: str | None, timeout: float | None) -> None:
        if task_id is None:
            text = f"deadline of {timeout}s passed before the request was submitted"
        else:
            text = f"task {task_id} did not resolve within {timeout}s; it may still finish"
        super().__init__(text, task_id=task_id)
        self.timeout = timeout



class _TaskBound(TaskError):
    """Another error, as it ended the wait for one task: one instance per task.

    It is also an instance of the original error's class (``except NotFoundError``
    still catches it) and copies its fields (``status``, ``code``, ``trace_id``...),
    adding ``task_id``. The shared original is on ``__cause__``.
    """

    def __init__(self, task_id: str, error: FluxError) -> None:
        Exception.__init__(self, *error.args)
        vars(self).update(vars(error))
        self.task_id = task_id
        self.__cause__ = error

    def __str__(self) -> str:
        return f"task {self.task_id}: {super().__str__()}"


class TaskNotFoundError(_TaskBound, NotFoundError):
    """The service still did not know a task once the not-found grace had passed.

    A task id the service gave is never declared lost sooner: new tasks may take
    a while to appear on ``/flux/tasks`` (``FluxClient(not_found_grace=...)``).
    """


class TaskAuthenticationError(_TaskBound, AuthenticationError):
    """The token was refused while following a task; the task may still finish."""


class TaskInsufficientBalanceError(_TaskBound, InsufficientBalanceError):
    """``used_up`` answered while following a task; the task may still finish."""


class TaskForbiddenError(_TaskBound, ForbiddenError):
    """403 ``forbidden`` answered while following a task (no access to it)."""


class TaskClosedError(_TaskBound, ClientClosedError):
    """The client closed while waiting for a task; it may still finish: ``wait`` on it."""


class TaskProtocolError(_TaskBound, ProtocolError):
    """The service's object for this task could not be read."""


# Which per-task class an error that ends a wait becomes, checked in order.
_BOUND: tuple[tuple[type[FluxError], type[_TaskBound]], ...] = (
    (NotFoundError, TaskNotFoundError),
    (AuthenticationError, TaskAuthenticationError),
    (InsufficientBalanceError, TaskInsufficientBalanceError),
    (ForbiddenError, TaskForbiddenError),
    (ClientClosedError, TaskClosedError),
    (ProtocolError, TaskProtocolError),
)


def for_task(error: FluxError, task_id: str) -> FluxError:
    """``error`` as it ends the wait for ``task_id``: a new instance naming the task.

    Errors about one task already (``TaskError``) are kept as they are.
    """
    if isinstance(error, TaskError):
        return error
    for cls, bound in _BOUND:
        if isinstance(error, cls):
            return bound(task_id, error)
    return error


__all__ += [
    "TaskAuthenticationError",
    "TaskClosedError",
    "TaskForbiddenError",
    "TaskInsufficientBalanceError",
    "TaskNotFoundError",
    "TaskProtocolError",
    "for_task",
]

# The code decides first: token codes mean "authentication" whatever status carries
# them (the vendor answers no_token and token_mismatched with 400), and an error
# body inside a 200 still names its kind. The status decides for unknown codes.
_CODE_CLASSES: Mapping[str, type[APIError]] = {
    "bad_request": BadRequestError,
    "api_not_implemented": BadRequestError,
    "disabled": BadRequestError,
    "no_api": NotFoundError,
    "not_found": NotFoundError,
    "api_error": ServerError,
    "no_token": AuthenticationError,
    "invalid_token": AuthenticationError,
    "token_expired": AuthenticationError,
    "token_mismatched": AuthenticationError,
    "used_up": InsufficientBalanceError,
    "forbidden": ForbiddenError,
    "too_many_requests": RateLimitError,
    "rate_limited": RateLimitError,
}

_STATUS_CLASSES: Mapping[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    429: RateLimitError,
}


def error_for_response(
    status: int,
    *,
    code: str | None,
    message: str,
    trace_id: str | None,
    retry_after: float | None = None,
) -> APIError:
    """The typed exception for an error answer: by code first, then by status."""
    if code == "timeout" and status == 504:
        # Only the pair is the vendor's "upstream timed out, not billed": a submission
        # is re-sent on it, so a ``timeout`` code under any other status is not enough.
        return UpstreamTimeoutError(message, status=status, code=code, trace_id=trace_id)
    cls = _CODE_CLASSES.get(code or "")
    if cls is None:
        cls = ServerError if status >= 500 else _STATUS_CLASSES.get(status, APIError)
    if cls is RateLimitError:
        return RateLimitError(
            message, status=status, code=code, trace_id=trace_id, retry_after=retry_after
        )
    return cls(message, status=status, code=code, trace_id=trace_id)
