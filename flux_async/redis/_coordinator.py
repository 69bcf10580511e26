"""``RedisCoordinator``: one token's limits, callbacks and orphans, shared through Redis.

One coordinator per process (per event loop). ``start`` connects, subscribes to
the fleet's bus and to this process's own channel, registers this process's lease
and starts the background work: the renewal loop (every ``lease / 3``: one round
trip extends this process's lease and all its slots; it re-writes what Redis lost
and adopts orphans when an ``adopter`` is set), the listener (slot freed, 429
counted, callbacks routed here and their replies) and the chores (slots given
back, strikes reset) that synchronous methods leave behind them.

Every Redis call is bounded by ``timeout`` and fails as ``CoordinationError``.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import itertools
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._core.errors import ConfigurationError, CoordinationError
from .._core.limits import Backoff
from .._core.settings import API_KEY_ENV, Credential, check_api_key
from .._engine.coordination import Coordinator, Served
from ._bus import Subscription
from ._directory import Orphan, RedisDirectory
from ._keys import RedisJournal
from ._names import (
    NAMESPACE_LABEL,
    check_namespace,
    check_seconds,
    namespace_for,
    namespace_of,
    new_process_id,
    tag_for,
)
from ._rates import Kind, RedisRateGate
from ._scripts import RENEW
from ._slots import RedisSlots

__all__ = ["Adopter", "RedisCoordinator", "namespace_for"]

log = logging.getLogger("flux_async.redis")

#: Takes the tasks adopted from dead processes, to follow them; may be async.
Adopter = Callable[[list[Orphan]], Awaitable[None] | None]

# Typed from redis-py 6, untyped in 5: called through a typed name, so mypy --strict
# passes on every version claimed.
_no_backoff: Callable[[], AbstractBackoff] = NoBackoff


class RedisCoordinator:
    """Shares one token's limits across every process using the same Redis.

    ``redis`` is a ``redis.asyncio.Redis`` the caller owns (it is not closed here);
    ``from_url`` builds one that ``close`` closes. The namespace (the Redis key
    prefix) is ``namespace`` if given, else a keyed hash of the API key: of
    ``api_key`` if given, else of the key of the first ``FluxClient`` that starts
    it (a coordinator needs no key of its own), else, started without a client,
    of ``$ACEDATACLOUD_API_TOKEN``. Two tokens never share limits: a client whose
    key is not the coordinator's is refused (``ConfigurationError``), and neither
    the token nor anything it could be recovered from is written to Redis.

    ``lease``: a process that stops renewing (killed, frozen) loses its slots and
    its tasks after this long (the slots of its tasks still generating go with
    them to the process that adopts them). ``timeout``: the longest any Redis call may take
    before ``CoordinationError``. ``route_timeout``: how long a routed callback
    waits for the owner's judgement. ``adopter``: given the tasks of dead processes
    (see ``recover``) as the renewal loop finds them.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        api_key: str | None = None,
        namespace: str | None = None,
        lease: float = 30.0,
        timeout: float = 2.0,
        route_timeout: float = 2.0,
        adopter: Adopter | None = None,
    ) -> None:
        if not isinstance(redis, Redis):
            raise ConfigurationError(
                f"must be a redis.asyncio.Redis, got {type(redis).__name__}", field="redis"
            )
        # The digest of the key this coordinator serves (None: not known yet).
        self._key_digest: str | None = None
        if api_key is not None:
            digest = Credential(check_api_key(api_key)).digest(NAMESPACE_LABEL)
            self._key_digest = digest
            namespace = namespace if namespace is not None else namespace_of(digest)
        self.namespace: str | None = None if namespace is None else check_namespace(namespace)
        self.lease = check_seconds("lease", lease)
        self.timeout = check_seconds("timeout", timeout)
        self.route_timeout = check_seconds("route_timeout", route_timeout)
        self.adopter = adopter
        self._redis = redis
        self._owns_redis = False
        self.process_id, self._pid = new_process_id(), os.getpid()
        self._slot_numbers = itertools.count(1)
        self._scripts: dict[str, Any] = {}
        self._slots: RedisSlots | None = None
        self._gates: dict[str, RedisRateGate] = {}
        self._directory = RedisDirectory(self)
        self._journal = RedisJournal(self)
        self._start_lock = anyio.Lock()
        self._renewing = anyio.Lock()
        self._running = False
        self._closed = False
        self._subscription: Subscription | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._chores_in: MemoryObjectSendStream[Callable[[], Awaitable[None]]] | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        namespace: str | None = None,
        lease: float = 30.0,
        timeout: float = 2.0,
        route_timeout: float = 2.0,
        adopter: Adopter | None = None,
    ) -> RedisCoordinator:
        """A coordinator over its own connection pool to ``url`` (``redis://host:port/db``)."""
        wait = check_seconds("timeout", timeout)
        redis = Redis.from_url(
            url,
            socket_connect_timeout=wait,
            socket_timeout=wait,
            # redis-py's default retries with backoff for seconds; here a failure
            # is reported at once (the caller's timeout bounds the whole call).
            # The asyncio Retry: redis-py 8 warns when given the blocking one.
            retry=Retry(_no_backoff(), 1),
        )
        # Nothing is connected until first use: a refused argument leaves nothing open.
        coordinator = cls(
            redis, api_key=api_key, namespace=namespace, lease=lease, timeout=timeout,
            route_timeout=route_timeout, adopter=adopter,
        )
        coordinator._owns_redis = True
        return coordinator

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._running else "idle"
        shown = "(the first client's key)" if self.namespace is None else self.namespace[:8]
        return (f"<RedisCoordinator namespace={shown}... "
                f"process={self.process_id} lease={self.lease:g}s {state}>")

    # -- the seams -------------------------------------------------------------------

    def slots(self, capacity: int) -> RedisSlots:
        """The fleet's generation slots (one pool per coordinator)."""
        if self._slots is None:
            self._slots = RedisSlots(self, capacity)
        elif self._slots.capacity != capacity:
            raise ConfigurationError(
                f"this coordinator already shares {self._slots.capacity} slots",
                field="max_concurrency",
            )
        return self._slots

    def rate_gate(
        self, kind: Kind, rate: float | None, burst: int, backoff: Backoff
    ) -> RedisRateGate:
        """The fleet's gate for ``kind`` (one per kind per coordinator)."""
        gate = self._gates.get(kind)
        if gate is None:
            gate = self._gates[kind] = RedisRateGate(self, kind, rate, burst, backoff)
        return gate

    @property
    def directory(self) -> RedisDirectory:
        return self._directory

    @property
    def journal(self) -> RedisJournal:
        """The fleet's idempotency keys: a key used in two processes pays once."""
        return self._journal

    async def start(self, client: Served | None = None) -> None:
        """Connect, subscribe and start the renewal loop (once; later calls return).

        With a ``client``, callbacks other processes route here are judged by
        ``client.receive_callback``, and (unless an ``adopter`` was given) the
        tasks of dead processes are followed by ``client.adopt``.
        ``CoordinationError`` if Redis does not answer; ``ConfigurationError`` for a
        client of another API key, or when no key is known at all.
        """
        self._serve(client)
        if client is not None and self._directory.judge is None:
            receive = client.receive_callback
            self._directory.judge = lambda token, body: receive(token, body).status
        if client is not None and self.adopter is None:
            # The dead processes' tasks are followed by this client: their outcomes
            # go to its on_recovered hook.
            adopt = client.adopt
            self.adopter = lambda orphans: adopt([orphan.task_id for orphan in orphans])
        if self._running:
            return
        async with self._start_lock:
            if self._closed:
                raise CoordinationError("the coordinator is closed")
            if self._running:
                return
            if self._pid != os.getpid():
                # Built before a fork (gunicorn --preload): each worker is its own process.
                self.process_id, self._pid = new_process_id(), os.getpid()
            subscription = Subscription(
                self._redis, (self.bus_channel, self.own_channel), self._bounded,
                self._deliver, self._resumed,
            )
            await subscription.open()
            try:
                await self._renew()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await subscription.close()
                raise
            self._subscription = subscription
            send, receive_chores = anyio.create_memory_object_stream[
                Callable[[], Awaitable[None]]
            ](math.inf)
            self._chores_in = send
            self._runner = asyncio.get_running_loop().create_task(
                self._background(receive_chores), name="flux_async.redis"
            )
            self._running = True

    def _serve(self, client: Served | None) -> None:
        """Take the namespace from ``client``'s key (or the environment's), or refuse it."""
        if client is not None:
            digest = client.key_digest(NAMESPACE_LABEL)
            if self._key_digest is None:
                self._key_digest = digest
            elif not hmac.compare_digest(digest, self._key_digest):
                raise ConfigurationError(
                    "this coordinator serves another API key: give each key its own "
                    "coordinator (two keys never share limits)", field="coordinator")
            if self.namespace is None:
                self.namespace = namespace_of(digest)
        if self.namespace is None:
            key = os.environ.get(API_KEY_ENV)
            if not key:
                raise ConfigurationError(
                    "no API key for the coordinator: pass RedisCoordinator(api_key=...), "
                    f"start it through a FluxClient(api_key=...), or set ${API_KEY_ENV}",
                    field="api_key")
            self._key_digest = Credential(check_api_key(key, source=f"${API_KEY_ENV}")).digest(
                NAMESPACE_LABEL)
            self.namespace = namespace_of(self._key_digest)

    async def recover(self) -> list[Orphan]:
        """Adopt the tasks of processes whose lease lapsed; follow them, never re-submit.

        Each orphan goes to exactly one caller, however many processes recover at once.
        """
        return await self._directory.recover()

    async def close(self) -> None:
        """Stop the background work, give back this process's slots and drop its lease.

        Tasks this process still follows stay recorded under a lease that has lapsed:
        the next process that recovers (or renews, with an ``adopter``) adopts them,
        with the slots of those it submitted (they still run at the service).
        """
        if self._closed:
            return
        self._closed = True
        if self._chores_in is not None:
            self._chores_in.close()
        if self._runner is not None:
            self._runner.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(self._runner, return_exceptions=True)
        try:
            with anyio.CancelScope(shield=True):
                if self._running:
                    if self._slots is not None:
                        await self._slots.release_all(keep=self._directory.submitted)
                    if self._directory.following:
                        # Lapsed at once: the next renewal anywhere adopts these tasks.
                        await self.command("ZADD", self.key("procs"), 0, self.process_id)
                    else:
                        await self.command("ZREM", self.key("procs"), self.process_id)
        except CoordinationError as exc:
            log.warning("closing without Redis (%s): this process's leases lapse on their "
                        "own within %g s", exc, self.lease)
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                if self._subscription is not None:
                    await self._subscription.close()
                if self._owns_redis:
                    await self._redis.aclose()

    async def __aenter__(self) -> RedisCoordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what the seams share ----------------------------------------------------------

    @property
    def lease_ms(self) -> int:
        return max(1, round(self.lease * 1000))

    @property
    def hold_ms(self) -> int:
        """After Redis lost its data: no slot is taken until every process renewed."""
        return max(1, round(self.lease * 1000 / 3 * 1.2))

    async def renew(self) -> None:
        """Renew now (a slot waiter found this process's lease gone)."""
        async with self._renewing:
            await self._renew()

    @property
    def slot_pool(self) -> RedisSlots | None:
        """The shared slots, once a client asked for them (``slots``)."""
        return self._slots

    @property
    def bus_channel(self) -> str:
        """Every process of the namespace listens here (slots freed, 429s counted)."""
        return self.key("bus")

    @property
    def own_channel(self) -> str:
        return self.channel_of(self.process_id)

    @property
    def tag(self) -> str:
        """This process's name in callback tokens and its channel."""
        return tag_for(self.process_id)

    def channel_of(self, process_id: str) -> str:
        """The channel one process listens on (callbacks routed to it, replies)."""
        return self.channel_of_tag(tag_for(process_id))

    def channel_of_tag(self, tag: str) -> str:
        return self.key(f"to:{tag}")

    def key(self, name: str) -> str:
        if self.namespace is None:  # a bug: nothing reaches Redis before start()
            raise CoordinationError("the coordinator has not been started")
        return f"flux:{{{self.namespace}}}:{name}"

    def new_slot_id(self) -> str:
        return f"{self.process_id}|{next(self._slot_numbers)}"

    async def call(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of ``_scripts`` (loaded again by redis-py if Redis lost it)."""
        loaded = self._scripts.get(script)
        if loaded is None:
            loaded = self._scripts[script] = self._redis.register_script(script)
        return await self._bounded(lambda: loaded(keys=list(keys), args=list(args)))

    async def command(self, *args: Any) -> Any:
        return await self._bounded(lambda: self._redis.execute_command(*args))  # type: ignore[no-untyped-call]

    async def _bounded(self, run: Callable[[], Awaitable[Any]]) -> Any:
        try:
            with anyio.fail_after(self.timeout):
                try:
                    return await run()
                except RedisConnectionError:
                    # A pooled connection that died with a restarted Redis fails on
                    # its first use (redis-py does not retry taking it from the pool).
                    # Every script here is safe to run twice: one more try.
                    return await run()
        except (TimeoutError, RedisTimeoutError) as exc:
            # Ours or the socket's (both are ``timeout`` long): the same failure.
            raise CoordinationError(
                f"Redis did not answer within {self.timeout:g} s") from exc
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"Redis failed: {exc}") from exc

    def chore(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Queue background work for a synchronous method; False when not running."""
        if self._chores_in is None or self._closed:
            return False
        try:
            self._chores_in.send_nowait(work)
        except anyio.ClosedResourceError:
            return False
        return True

    # -- background work -----------------------------------------------------------------

    async def _renew(self) -> None:
        """One heartbeat: extend the leases; repair what Redis lost; adopt orphans."""
        held = sorted(self._slots.held) if self._slots is not None else []
        known, lapsed = await self.call(
            RENEW, [self.key("procs"), self.key("slots"), self.key("hold")],
            [self.process_id, self.lease_ms, int(self._running), self.hold_ms, *held],
        )
        lost = not int(known)
        if lost and self._running:
            log.warning("Redis had lost this process's lease: slots and tasks re-added")
        await self._directory.sync(lost=lost and self._running)
        adopter = self.adopter
        if int(lapsed) and adopter is not None:
            orphans = await self.recover()
            if orphans:
                outcome = adopter(orphans)
                if inspect.isawaitable(outcome):
                    await outcome

    async def _background(self, chores: MemoryObjectReceiveStream[Any]) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                group.start_soon(self._renew_loop)
                assert self._subscription is not None
                group.start_soon(self._subscription.run)
                group.start_soon(self._chore_loop, chores)
        except Exception:
            log.exception("the Redis coordinator's background work failed")

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                await self.renew()
            except CoordinationError as exc:
                log.warning("could not renew this process's lease: %s", exc)
            except Exception:
                log.exception("renewing the lease failed")

    async def _chore_loop(self, chores: MemoryObjectReceiveStream[Any]) -> None:
        async with chores:
            async for work in chores:
                try:
                    await work()
                except CoordinationError as exc:
                    log.warning("background Redis work failed: %s", exc)
                except Exception:
                    log.exception("background Redis work failed")

    def _deliver(self, channel: str, data: str) -> None:
        """A message from the subscription: wake waiters, or answer a routed callback."""
        if channel == self.bus_channel:
            word, *rest = data.split() or [""]
            if word == "freed" and self._slots is not None:
                self._slots.wake()
            elif word == "penalty" and len(rest) == 2 and rest[1].isdigit():
                gate = self._gates.get(rest[0])
                if gate is not None:
                    gate.on_penalty(int(rest[1]))
        elif channel == self.own_channel:
            try:
                parsed = json.loads(data)
            except ValueError:
                return
            work = self._directory.on_message(parsed) if isinstance(parsed, dict) else None
            if work is not None and self._group is not None:
                self._group.start_soon(self._guarded, work)

    def _resumed(self) -> None:
        """The subscription is back: "freed" messages may have been missed."""
        if self._slots is not None:
            self._slots.wake()

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except CoordinationError as exc:
            log.warning("answering a routed callback failed: %s", exc)


if TYPE_CHECKING:
    # mypy proves the Redis classes fit the seams the client talks to.
    def _fits_the_seams(coordinator: RedisCoordinator) -> Coordinator:
        return coordinator
