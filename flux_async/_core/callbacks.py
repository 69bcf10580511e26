"""Callbacks without a web framework: the tokens on callback URLs, and what a post means.

The service cannot sign its callbacks, so the URL is the only credential. Every
callback URL this client hands out carries ``flux_token=<nonce>.<mac>``: a fresh
random nonce per submission and an HMAC-SHA256 of it under the client's
``callback_secret``. Why per submission and derived rather than one per-client
secret:

* A URL that leaks (a proxy's access log, the vendor's task list) opens one task,
  not all of them: a callback settles a task only under the token issued for that
  task's own submission. Any other valid token is at most a hint: the client then
  asks the service about that task at once (a free query), and the service's
  answer decides.
* The tokens need no storage to check: after a restart a client given the same
  ``callback_secret`` still recognises its tokens, so late callbacks can reach the
  ``on_unclaimed`` hook instead of being refused.
* The nonce names the submission before its task id exists, which is what lets a
  callback that outruns the submission's own answer be kept for it (below). In a
  fleet sharing a coordinator the nonce also starts with the issuing process's
  tag (``<tag>~<random>``, covered by the MAC), so a callback that lands on
  another process before the fleet's directory knows its task is handed to the
  process that submitted it (``tag_of``).

What ``judge`` decides, in order (the first that applies answers):

1. token missing or wrong (constant-time check) -> 403; nothing else is looked at.
2. body not JSON (or nested too deeply to read), or not a final result's shape
   (``success`` bool; ``data`` a list of images, or an ``error`` object) -> 400.
3. the task was submitted by this client and is followed: a submission without a
   callback URL -> 409; a token issued for another submission -> 403; images
   with another prompt than submitted -> 409; a failure -> 200 ``confirming``
   (the task is queried at once, and only the service's answer can fail the
   wait: a leaked token cannot fail a running task); a success -> the wait
   resolves, 200 ``resolved``.
4. the task is followed through ``wait(id)`` alone (e.g. after a restart: no
   token is bound to it in this process) -> 200 ``confirming``: the post is only
   a hint, the task is queried at once and the service's answer decides.
5. the task already resolved here: same outcome -> 200 ``duplicate``; another
   outcome -> 409. Either way nothing changes.
6. the token's submission is still waiting for its answer (a very fast task) ->
   kept until the answer comes, up to ``MAX_HELD`` task ids per submission ->
   200 ``held``. When the answer comes only the post for the task id it names is
   used (a success settles the task; a failure, or two posts that disagree, make
   the client query the task); posts for other ids change nothing.
7. anything else -> 404 ``unclaimed`` (a receiver hands it to its hook instead).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any, Literal, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs

from .errors import ConfigurationError, ProtocolError
from .models import ImageRequest, Task, TaskStatus
from .protocol import read_result_body

__all__ = [
    "MAX_CALLBACK_BYTES",
    "MAX_HELD",
    "TOKEN_PARAM",
    "CallbackBook",
    "CallbackVerdict",
    "Claim",
    "Lookups",
    "adopt_early",
    "body_bytes",
    "judge",
    "tag_of",
]

TOKEN_PARAM = "flux_token"
#: A callback body is a few KB; this is the default cap of a receiver.
MAX_CALLBACK_BYTES = 256 * 1024
_MAX_TOKEN = 128
_TAG_END = "~"  # not in token_urlsafe's alphabet, nor in the MAC's "."
#: Posts of distinct task ids kept per submission awaiting its answer.
MAX_HELD = 4

CallbackKind = Literal[
    "resolved", "confirming", "held", "duplicate", "unclaimed", "routed", "recovered",
    "rejected"
]
Held = Mapping[str, Task | None]


class Claim(Protocol):
    """What this client knows of a task it follows (``tracker.Followed``)."""

    @property
    def task_id(self) -> str: ...
    @property
    def request(self) -> ImageRequest | None: ...  # None: only waited on
    @property
    def nonce(self) -> str | None: ...  # the token's nonce issued with its submission


class Lookups(Protocol):
    """The client's followed tasks, as a judgement reads and settles them (``Tracker``)."""

    def find(self, task_id: str) -> Claim | None: ...
    def finished(self, task_id: str) -> Task | None: ...  # ended here recently
    def confirm(self, task_id: str) -> bool: ...  # ask the service about it at once
    def resolve(self, task: Task) -> bool: ...


@attrs.frozen
class CallbackVerdict:
    """What a posted callback did, and the HTTP status to answer it with.

    ``kind``: ``resolved`` (settled a task this client follows), ``confirming``
    (taken as a hint only, answered 200: a failure, or a token not bound to the
    task; the client queries the task at once and the service's answer decides),
    ``held`` (came before its submission's answer; used when that comes, if it
    names the same task), ``duplicate``
    (already settled the same way), ``unclaimed`` (authentic, but this client
    does not follow the task: 404 unless a hook takes it), ``routed`` (another
    process of a shared coordinator follows it: its status; 503 if it could not
    be reached), ``recovered`` (it named the task of a journaled submission whose
    answer never came: that task is followed from now on), ``rejected`` (4xx,
    changed nothing). ``task`` is the posted result when it could be read.
    """

    status: int
    kind: CallbackKind
    reason: str
    task: Task | None = None

    @property
    def accepted(self) -> bool:
        return self.status < 400


class CallbackBook:
    """Issues and checks callback tokens; keeps callbacks that beat their submission."""

    def __init__(self, secret: str | None = None) -> None:
        if secret is not None and len(secret) < 16:
            raise ConfigurationError("callback_secret must be at least 16 characters")
        self._key = (secret if secret is not None else secrets.token_urlsafe(32)).encode()
        # nonce -> task id -> the callback that came before the submission's answer
        # (None: posts that disagree). Up to MAX_HELD ids per submission in flight;
        # submissions in flight are bounded by the client's max_concurrency.
        self._in_flight: dict[str, dict[str, Task | None]] = {}

    def __repr__(self) -> str:
        return "<CallbackBook>"  # never the key

    def _mac(self, nonce: str) -> bytes:
        digest = hmac.new(self._key, nonce.encode(), hashlib.sha256).digest()[:24]
        return base64.urlsafe_b64encode(digest)

    def issue(self, url: str, *, tag: str = "") -> tuple[str, str]:
        """A new nonce and ``url`` with its token; ``settle(nonce)`` must follow.

        ``tag`` (a shared coordinator's name for this process) starts the nonce.
        """
        nonce = secrets.token_urlsafe(12)
        if tag:
            nonce = f"{tag}{_TAG_END}{nonce}"
        self._in_flight[nonce] = {}
        token = f"{nonce}.{self._mac(nonce).decode()}"
        parts = urlsplit(url)
        query = "&".join(q for q in (parts.query, urlencode({TOKEN_PARAM: token})) if q)
        return nonce, urlunsplit(parts._replace(query=query))

    def verify(self, token: str | None) -> str | None:
        """The token's nonce if this client issued it, else None (constant time)."""
        if not token or len(token) > _MAX_TOKEN or not token.isascii():
            return None
        nonce, _, mac = token.partition(".")
        ok = hmac.compare_digest(mac.encode(), self._mac(nonce))
        return nonce if ok and nonce else None

    def hold(self, nonce: str, task: Task) -> bool:
        """Keep a callback for a submission still waiting for its answer.

        Nothing held is trusted yet: which post counts is decided by the task id
        the answer names. A first post cannot displace a later one for another id.
        """
        held = self._in_flight.get(nonce)
        if held is None:
            return False
        if task.id in held:
            known = held[task.id]
            if known is not None and not _same(known, task):
                held[task.id] = None  # two stories for one task: the service will decide
            return True
        if len(held) >= MAX_HELD:
            return False
        held[task.id] = task
        return True

    def settle(self, nonce: str | None) -> Held:
        """The submission of ``nonce`` got its answer: stop holding, return what came."""
        return {} if nonce is None else self._in_flight.pop(nonce, {})


def body_bytes(body: bytes | str | Mapping[str, Any]) -> bytes:
    """A callback's body as the bytes a routed callback carries."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(dict(body), separators=(",", ":")).encode()


def _reject(status: int, reason: str, task: Task | None = None) -> CallbackVerdict:
    return CallbackVerdict(status, "rejected", reason, task)


def _read(body: bytes | str | Mapping[str, Any]) -> Task | str:
    """The posted result, or why it is not one."""
    if isinstance(body, Mapping):
        payload: Any = body
    else:
        try:
            payload = json.loads(body)
        except RecursionError:  # thousands of nested brackets: JSON, but no result's shape
            return "the body is nested too deeply"
        except ValueError:
            return "the body is not JSON"
    if not isinstance(payload, Mapping):
        return "the body is not a JSON object"
    success = payload.get("success")
    if not isinstance(success, bool):
        return "success must be true or false"
    try:
        if success:
            data = payload.get("data")
            if not isinstance(data, list) or not data:
                return "a successful result needs a non-empty data list"
        elif not isinstance(payload.get("error"), Mapping):
            return "a failed result needs an error object"
        task = read_result_body(payload)
    except ProtocolError as exc:
        return str(exc)
    if task.status is TaskStatus.PENDING:  # e.g. a status word saying "processing"
        return "not a final result"
    return task


def _conflict(request: ImageRequest | None, task: Task) -> str | None:
    """How ``task`` contradicts what was submitted, if it does."""
    if request is None or task.result is None:
        return None
    for image in task.result.images:
        if isinstance(image.prompt, str) and image.prompt != request.prompt:
            return "the images are for another prompt than the one submitted"
    return None


def _same(known: Task, task: Task) -> bool:
    if known.status is not task.status:
        return False
    if known.result is not None and task.result is not None:
        return known.result.urls == task.result.urls
    known_code = known.error.code if known.error else None
    return known_code == (task.error.code if task.error else None)


def tag_of(token: str | None) -> str:
    """The issuing process's tag in a callback token ('' when it names none).

    Read it only from a token ``CallbackBook.verify`` accepted: the MAC covers it.
    """
    nonce = (token or "").partition(".")[0]
    tag, found, _ = nonce.partition(_TAG_END)
    return tag if found else ""


def judge(
    book: CallbackBook, tasks: Lookups, token: str | None, body: bytes | str | Mapping[str, Any]
) -> CallbackVerdict:
    """Apply one posted callback; see the module docstring for the rules."""
    nonce = book.verify(token)
    if nonce is None:
        return _reject(403, "missing or wrong callback token")
    task = _read(body)
    if isinstance(task, str):
        return _reject(400, task)
    claim = tasks.find(task.id)
    if claim is not None:
        if claim.request is None:
            # Followed through wait(id): no token is bound to this task here.
            tasks.confirm(task.id)
            return CallbackVerdict(200, "confirming", "no token is bound to this task here; "
                                   "asking the service", task)
        if claim.nonce is None:
            return _reject(409, "the task was not submitted with a callback URL", task)
        if not hmac.compare_digest(claim.nonce.encode(), nonce.encode()):
            return _reject(403, "the token was issued for another task", task)
        conflict = _conflict(claim.request, task)
        if conflict is not None:
            return _reject(409, conflict, task)
        if task.status is not TaskStatus.SUCCEEDED:
            tasks.confirm(task.id)
            return CallbackVerdict(200, "confirming", "a failure is confirmed with the "
                                   "service before it fails the wait", task)
        tasks.resolve(task)
        return CallbackVerdict(200, "resolved", "the task's wait is resolved", task)
    known = tasks.finished(task.id)
    if known is not None:
        if _same(known, task):
            return CallbackVerdict(200, "duplicate", "already resolved the same way", task)
        return _reject(409, "contradicts the result already received", task)
    if book.hold(nonce, task):
        return CallbackVerdict(200, "held", "kept for a submission awaiting its answer", task)
    return CallbackVerdict(404, "unclaimed", "no task of this client has that id", task)


def adopt_early(tasks: Lookups, claim: Claim, early: Held) -> None:
    """Use the callbacks that arrived before the submission's answer, if one is for its task.

    Posts for other task ids change nothing. A success for this task settles it;
    a failure, a contradiction or two disagreeing posts make the client ask the
    service about it at once.
    """
    if claim.task_id not in early:
        return
    task = early[claim.task_id]
    if (
        task is not None
        and task.status is TaskStatus.SUCCEEDED
        and _conflict(claim.request, task) is None
    ):
        tasks.resolve(task)
    else:
        tasks.confirm(claim.task_id)
