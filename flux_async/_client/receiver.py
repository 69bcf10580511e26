"""The framework-neutral half of a callback receiver.

``flux_async.web`` (aiohttp) and ``flux_async.asgi`` (its plain ASGI
``CallbackApp``, and the Starlette/FastAPI route) are thin adapters over
``Receiver.receive``: each finds the client, the token, the declared
length and the body's chunks in its own request type, and turns the ``Answer`` into
its own response type. Everything a receiver decides beyond the client's own
judgement (``FluxClient.handle_callback``: this process's, then the process
following the task when a shared coordinator routes it) is here, once: the body cap, the
``on_unclaimed`` hook, the counts, the logs and the JSON answer.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from .._core.callbacks import MAX_CALLBACK_BYTES
from .._core.models import Task

if TYPE_CHECKING:
    from .client import FluxClient

__all__ = ["CONTENT_TYPE", "Answer", "Receiver", "UnclaimedHook", "parse_content_length"]

log = logging.getLogger("flux_async")

#: The media type of every ``Answer.text``.
CONTENT_TYPE = "application/json"

#: Takes an authentic callback for a task this client does not follow; may be async.
UnclaimedHook = Callable[[Task], Awaitable[None] | None]


@attrs.frozen
class Answer:
    """The HTTP answer to one posted callback: ``status`` and a small JSON body."""

    status: int
    kind: str
    reason: str

    @property
    def text(self) -> str:
        return json.dumps({"ok": self.status < 400, "result": self.kind, "reason": self.reason})


def parse_content_length(value: str | None) -> int | None:
    """A ``Content-Length`` header's value, or None when absent or not a number.

    None is safe: the body is then capped while it is read.
    """
    if value is None or not value.isascii() or not value.strip().isdigit():
        return None
    return int(value)


class Receiver:
    """Receives callbacks for ``client`` (or the client the adapter finds per request).

    ``counts`` tallies what posts did (``resolved``, ``held``, ``duplicate``,
    ``unclaimed``, ``rejected``, ``hook_failed``) for metrics and tests.
    """

    def __init__(
        self,
        client: FluxClient | None = None,
        *,
        on_unclaimed: UnclaimedHook | None = None,
        max_body: int = MAX_CALLBACK_BYTES,
    ) -> None:
        if max_body < 1:
            raise ValueError("max_body must be positive")
        self.client = client
        self.on_unclaimed = on_unclaimed
        self.max_body = max_body
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} max_body={self.max_body} counts={dict(self.counts)}>"

    async def receive(
        self,
        client: FluxClient | None,
        token: str | None,
        length: int | None,
        chunks: AsyncIterable[bytes],
    ) -> Answer:
        """Judge one post: ``length`` its declared size, ``chunks`` its body as it comes."""
        if client is None:
            return Answer(503, "rejected", "no FluxClient is attached to this app yet")
        body = await self._read(length, chunks)
        if body is None:
            self.counts["rejected"] += 1
            return Answer(413, "rejected", f"the body is over {self.max_body} bytes")
        verdict = await client.handle_callback(token, body)
        if verdict.kind == "unclaimed" and self.on_unclaimed is not None:
            assert verdict.task is not None
            try:
                outcome = self.on_unclaimed(verdict.task)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("the on_unclaimed hook failed for task %s", verdict.task.id)
                self.counts["hook_failed"] += 1
                # 500, not 4xx: the post was fine, so the service may send it again.
                return Answer(500, "unclaimed", "the hook failed")
            self.counts["unclaimed"] += 1
            return Answer(200, "unclaimed", "handed to the on_unclaimed hook")
        self.counts[verdict.kind] += 1
        if not verdict.accepted:
            log.info("callback refused (%d): %s", verdict.status, verdict.reason)
        return Answer(verdict.status, verdict.kind, verdict.reason)

    async def _read(self, length: int | None, chunks: AsyncIterable[bytes]) -> bytes | None:
        """The body, or None when it is over the cap (read no further than the cap)."""
        if length is not None and length > self.max_body:
            return None
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > self.max_body:
                return None
        return bytes(body)
