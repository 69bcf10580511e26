"""Ctrl-C (SIGINT) and SIGTERM as a clean stop instead of a traceback.

The signals are caught by the event loop, not raised as ``KeyboardInterrupt``
wherever the program happens to be, so no write is torn: the manifest stays
valid and downloads are cancelled through their own clean-up (which removes
temporary files). Each command runs inside ``stop.scope()``:

* A plain command is cancelled at the first signal.
* ``batch`` asks for a graceful stop first (``requested`` is set): it stops
  feeding new prompts and waits, briefly, for submissions already on the wire to
  return their task ids, so that a resumed run waits on those tasks instead of
  paying for them again. A second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import anyio

__all__ = ["Stop"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """Turns SIGINT/SIGTERM into cancellation of the running command."""

    def __init__(self, *, graceful: bool = False) -> None:
        self.graceful = graceful
        self.signum: int | None = None
        self.requested = anyio.Event()
        self._scopes: list[anyio.CancelScope] = []
        self._installed: list[signal.Signals] = []

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as shells report a process killed by it (130, 143)."""
        return 128 + (self.signum or signal.SIGINT)

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            # Windows has no add_signal_handler: Ctrl-C then raises
            # KeyboardInterrupt, which the entry point turns into status 130.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._fire, sig)
                self._installed.append(sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def _fire(self, sig: signal.Signals) -> None:
        first = self.signum is None
        if first:
            self.signum = int(sig)
            self.requested.set()
        if not (first and self.graceful):
            self.cancel()

    def cancel(self) -> None:
        """Cancel every running ``scope()`` now."""
        for scope in self._scopes:
            scope.cancel()

    @contextlib.contextmanager
    def scope(self) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            try:
                if self.interrupted and not self.graceful:
                    scope.cancel()
                yield scope
            finally:
                self._scopes.remove(scope)
