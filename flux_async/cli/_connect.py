"""The client a command runs with: against the service, or a local server in-process.

``--local`` starts :class:`flux_async.testing.LocalFluxServer` inside this process
and points the client at it with the server's own token, so nothing needs a key
or the network. The server lives exactly as long as the command: a later run
starts a fresh one, which knows none of the earlier run's tasks (a resumed
``batch --local`` submits those lines again, at no cost since nothing is paid).

Its downloads may reach that server, and only it, on the loopback: the
client's download guard refuses loopback addresses unless told.
``--download-allow`` and ``$FLUX_ASYNC_DOWNLOAD_ALLOW`` tell it more addresses
(a ``flux-async serve`` elsewhere, a mirror on a private network).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from flux_async import ConfigurationError, FluxClient
from flux_async._core.addresses import allowed

from ._args import API_KEY_ENV, BASE_URL_ENV, DOWNLOAD_ALLOW_ENV, base_url_problem

__all__ = ["check_key", "connect", "download_allow", "service_name"]


def check_key(args: argparse.Namespace) -> None:
    """Fail early, before reading input or starting anything, when no key is set
    or the environment holds something that cannot work (the options are checked
    by the parser)."""
    for entry in download_allow(args):
        if isinstance(refused := allowed(entry), str):
            source = "--download-allow" if entry in args.download_allow else (
                f"${DOWNLOAD_ALLOW_ENV}")
            raise ConfigurationError(f"{source}: {refused}")
    if args.local:
        return
    key = args.api_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise ConfigurationError(
            f"no API key: set ${API_KEY_ENV} (or pass --api-key), "
            "or add --local to try it against the bundled local server"
        )
    if args.api_key is None and any(c.isspace() or not c.isprintable() for c in key):
        # Typically a trailing newline from a file; the key itself is never shown.
        raise ConfigurationError(f"${API_KEY_ENV} contains spaces or control characters")
    if args.base_url is None and os.environ.get(BASE_URL_ENV) is not None:
        problem = base_url_problem(os.environ[BASE_URL_ENV])
        if problem:
            raise ConfigurationError(f"${BASE_URL_ENV}: {problem}")


def service_name(args: argparse.Namespace) -> str:
    """Where requests go, for messages (never includes the key)."""
    if args.local:
        return "the local server"
    return str(args.base_url or os.environ.get(BASE_URL_ENV) or "https://api.acedata.cloud")


def download_allow(args: argparse.Namespace) -> list[str]:
    """The addresses downloads may reach besides public ones: options, then environment."""
    from_env = os.environ.get(DOWNLOAD_ALLOW_ENV, "")
    return [*args.download_allow, *(e.strip() for e in from_env.split(",") if e.strip())]


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "download_allow": download_allow(args),
        "timeout": args.timeout,
        "poll_interval": args.poll_interval,
        # Polling faster than the interval while callers queue for a slot only
        # makes sense when the interval is long; never poll slower than asked.
        "busy_poll_interval": min(0.25, args.poll_interval),
    }
    if getattr(args, "concurrency", None) is not None:
        settings["max_concurrency"] = args.concurrency
    if hasattr(args, "rate"):
        settings["submit_rate"] = args.rate
    return settings


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace, **extra: Any) -> AsyncIterator[FluxClient]:
    """An open client for ``args``; with ``--local``, its server runs meanwhile.

    ``extra``: more client settings (a batch's journal and recovery hook).
    """
    settings = {**_settings(args), **extra}
    if not args.local:
        async with FluxClient(args.api_key, base_url=args.base_url, **settings) as client:
            yield client
        return
    # Imported here: the local server is only needed with --local.
    from flux_async.testing import LocalFluxServer, ServerSettings

    server_settings = ServerSettings(generation_time=args.local_generation_time)
    async with LocalFluxServer(server_settings) as server:
        # Its images are on the loopback: this server, and only it, is allowed.
        settings["download_allow"] = [*settings["download_allow"], server.url]
        async with FluxClient(server.token, base_url=server.url, **settings) as client:
            yield client
