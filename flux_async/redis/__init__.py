"""Many processes, one token: the token's limits, callbacks and orphans shared through Redis.

``pip install "flux-async[redis]"``, then in every process::

    coordinator = RedisCoordinator.from_url("redis://redis:6379/0")
    client = FluxClient(coordinator=coordinator)

Every process that uses the same token and the same Redis then shares the
submission and query rates (and the pause a 429 imposes), the ``max_concurrency``
slots (leases a live process renews: a dead one's come back within ``lease``
seconds, or move with its still-running tasks to the process that adopts them),
its poll rounds (a task is asked about once a round, by whichever process comes
first), routes each callback to the process that waits for its task, and adopts
the tasks of processes that died. When Redis cannot be reached the seams raise
``CoordinationError`` before anything is paid.
"""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'flux_async.redis needs redis-py: pip install "flux-async[redis]"'
    ) from exc

from .._core.errors import CoordinationError
from ._coordinator import Adopter, RedisCoordinator, namespace_for
from ._directory import CallbackJudge, Orphan, RedisDirectory
from ._rates import RedisRateGate
from ._slots import RedisSlots

__all__ = [
    "Adopter",
    "CallbackJudge",
    "CoordinationError",
    "Orphan",
    "RedisCoordinator",
    "RedisDirectory",
    "RedisRateGate",
    "RedisSlots",
    "namespace_for",
]
