"""The seam for watching the engine (traces, metrics): a handful of hooks, off by default.

The engine calls these hooks and knows nothing of what is behind them;
``flux_async.otel`` implements them with OpenTelemetry. Where each is called:

==================  =================================================================
``observe``         once per client (``parts``): may wrap the function every API POST
                    goes through (``post(path, body)``)
``submitting``      ``launch``, once a request holds its slot, in the caller's task:
                    the returned probe is entered around the paid submission (its
                    retries included) and told how it ``ended``: the ``Submission``,
                    the exception the caller got, or None when the caller had left
                    and the POST's answer refused the task (the POST runs in a task
                    the client owns, started from the caller's: it sees what the
                    caller's task held while the probe was entered)
``followed``        ``tracker``, each time a task enters FOLLOWED (a submission's
                    answer, ``wait(id)``, an adopted task)
``unfollowed``      ``tracker``, each time one leaves FOLLOWED; ``Followed.outcome``
                    is then the final ``Task``, the error that ended the wait, or
                    None (nobody waits any more: a deadline, a cancellation)
``polling``         ``poller``, around each round; its task runs the round's queries
==================  =================================================================

Off, the hooks are ``NO_TELEMETRY``: one shared object whose methods do nothing
and allocate nothing (``submitting`` and ``polling`` return the object itself),
so a client without telemetry pays a few empty calls per task. A probe's
``ended`` may be called more than once; the first call counts. ``Followed.observed``
is the implementation's own note on a task (None until it writes one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from .._core.protocol import Submission
from .followed import Followed

__all__ = ["NO_TELEMETRY", "Post", "Probe", "SubmissionProbe", "Telemetry"]

Post = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


class Probe(Protocol):
    """A context manager around some work of the engine (never swallows an exception)."""

    def __enter__(self) -> object: ...

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class SubmissionProbe(Probe, Protocol):
    """One paid submission: entered around it in the caller's task, then ``ended`` once."""

    def ended(self, outcome: Submission | BaseException | None) -> None: ...


@runtime_checkable
class Telemetry(Protocol):
    """The hooks; see the module docstring for where each is called."""

    def observe(self, post: Post, base_url: str) -> Post: ...

    def submitting(self, followed: Followed) -> SubmissionProbe: ...

    def followed(self, followed: Followed) -> None: ...

    def unfollowed(self, followed: Followed) -> None: ...

    def polling(self, due: Sequence[str]) -> Probe: ...


class _Off:
    """No telemetry: every hook does nothing, and the probes are this object itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_TELEMETRY"

    def observe(self, post: Post, base_url: str) -> Post:
        return post

    def submitting(self, followed: Followed) -> _Off:
        return self

    def followed(self, followed: Followed) -> None:
        pass

    def unfollowed(self, followed: Followed) -> None:
        pass

    def polling(self, due: Sequence[str]) -> _Off:
        return self

    def ended(self, outcome: Submission | BaseException | None) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass


#: The default: no telemetry at all.
NO_TELEMETRY: Telemetry = _Off()
