"""The download guard where connections are made: a session that cannot reach the user's network.

``_core.addresses`` decides which addresses a download may reach; this module
makes sure those are the only ones a download's connection is ever made to,
whatever a URL, its redirects or its DNS say. The check has to sit where the
connection is made: a check of the URL beforehand proves nothing, since the
name may resolve to another address a moment later (DNS rebinding), and a
redirect may point anywhere. Three places, each closing what the one before
cannot see:

1. Before a request, a URL whose host is an address (``http://127.0.0.1/``,
   ``http://[::1]/``) is checked as it is, and nothing is connected
   (``check_literal``, called by ``download`` for the URL and every redirect).
2. The connector's resolver (``GuardedResolver``) checks every address DNS
   answers for a name, and refuses the name if any of them is refused. aiohttp
   connects to exactly the addresses its resolver returned (no second lookup),
   so an answer that changes between check and connect cannot slip through.
3. ``GuardedConnector.connect`` checks the peer of the socket it hands out,
   before a byte of the request is written: whatever led there (an address
   form a resolver did not see, a pooled connection), a refused peer is closed.

A refusal raises ``AddressRefused`` (not an ``OSError``, so aiohttp passes it
through unwrapped); ``download`` turns it into ``BlockedAddressError`` with the
URL that led there.

The session also ignores proxy variables from the environment (``trust_env``
off, aiohttp's default): a proxy would resolve names itself, out of the guard's
sight. A session the caller lent the client is never used for guarded
downloads, for the same reason: its connector is not this one.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from .._core.addresses import DownloadGuard, literal_address

__all__ = [
    "AddressRefused",
    "GuardedConnector",
    "GuardedResolver",
    "GuardedSession",
    "check_literal",
    "default_port",
]


class AddressRefused(Exception):
    """A connection the guard refused: ``host`` led to ``address:port``, ``reason``."""

    def __init__(self, host: str, address: str, port: int, reason: str) -> None:
        super().__init__(f"{host} -> {address}:{port} is {reason}")
        self.host = host
        self.address = address
        self.port = port
        self.reason = reason


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def check_literal(guard: DownloadGuard, url: str) -> None:
    """Refuse ``url`` at once when its host is an address the guard refuses."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    address = literal_address(host)
    if address is None:
        return  # a name: the resolver and the connector decide
    port = parts.port or default_port(parts.scheme)
    why = guard.refusal(address, port)
    if why is not None:
        raise AddressRefused(str(address), str(address), port, why)


class GuardedResolver(AbstractResolver):
    """aiohttp's own resolver, whose answers pass the guard or refuse the name."""

    def __init__(self, guard: DownloadGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        # Every answer, not only the first: a name answering a public address and a
        # private one would otherwise reach the private one when the first refuses.
        for answer in answers:
            why = self._guard.refusal(answer["host"], answer["port"] or port)
            if why is not None:
                raise AddressRefused(host, answer["host"], answer["port"] or port, why)
        return answers

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` whose resolver is guarded and whose sockets' peers are checked."""

    def __init__(self, guard: DownloadGuard, resolver: AbstractResolver) -> None:
        super().__init__(resolver=resolver)
        self._guard = guard

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        transport = connection.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        address, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        why = self._guard.refusal(address, port)
        if why is not None:
            connection.close()  # not pooled: nothing more goes over it
            raise AddressRefused(req.url.raw_host or "", address, port, why)
        return connection


class GuardedSession:
    """The session guarded downloads go through, with its resolver; closed together."""

    def __init__(self, guard: DownloadGuard, inner: AbstractResolver | None = None) -> None:
        self._resolver = GuardedResolver(guard, inner)
        self.session = aiohttp.ClientSession(
            connector=GuardedConnector(guard, self._resolver), trust_env=False
        )

    async def close(self) -> None:
        await self.session.close()
        # The connector does not own a resolver it was given: closed here.
        await self._resolver.close()
