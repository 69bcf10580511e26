"""RedisCoordinator against a real redis-server, from one process: the seams' rules."""

from __future__ import annotations

import statistics
import time

import anyio
import pytest
from redis.asyncio import Redis

from flux_async import ConfigurationError, FluxError
from flux_async._core.limits import Backoff
from flux_async.redis import CoordinationError, Orphan, RedisCoordinator, namespace_for

from ..conftest import eventually
from ._workers import TOKEN
from .conftest import RedisServer, until

pytestmark = pytest.mark.anyio


async def no_slots_taken(coordinator: RedisCoordinator) -> bool:
    return not await coordinator.command("ZCARD", coordinator.key("slots"))


async def strikes_reset(coordinator: RedisCoordinator) -> bool:
    strikes = await coordinator.command("HGET", coordinator.key("rate:query"), "strikes")
    return bool(strikes == b"0")


def test_the_namespace_is_a_keyed_hash_of_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://127.0.0.1:1/0"  # never connected to: nothing here does I/O
    one = RedisCoordinator.from_url(url, api_key="token-one")
    assert one.namespace == namespace_for("token-one")
    assert one.namespace != RedisCoordinator.from_url(url, api_key="token-two").namespace
    assert "token-one" not in one.namespace
    assert "token-one" not in repr(one)
    assert RedisCoordinator.from_url(url, namespace="shared").namespace == "shared"
    # Without a key: the first client's (or, started alone, the environment's) at start.
    assert RedisCoordinator.from_url(url).namespace is None
    with pytest.raises(ConfigurationError, match="namespace"):
        RedisCoordinator.from_url(url, namespace="a{b}")
    with pytest.raises(ConfigurationError, match="lease"):
        RedisCoordinator.from_url(url, api_key="k", lease=0)
    with pytest.raises(ConfigurationError, match="redis"):
        RedisCoordinator("redis://nope", api_key="k")  # type: ignore[arg-type]
    assert issubclass(CoordinationError, FluxError)


async def test_the_token_never_reaches_redis(coordinator: RedisCoordinator) -> None:
    slots = coordinator.slots(2)
    await slots.take()
    gate = coordinator.rate_gate("submit", 5.0, 1, Backoff())
    await gate.penalize(None, 0.0, await gate.acquire())
    await coordinator.directory.followed("t-1", {"prompt": "p"})
    dump = []
    for key in await coordinator.command("KEYS", "*"):
        dump.append(key)
        dump.append(await coordinator.command("DUMP", key))
    assert dump
    assert not any(TOKEN.encode() in item for item in dump)
    assert all(coordinator.namespace.encode() in key for key in dump[::2])


async def test_a_caller_owned_client_is_not_closed(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        async with RedisCoordinator(redis, namespace="ns", lease=1.0) as coordinator:
            await coordinator.slots(1).take()
        assert await redis.ping()
        assert await redis.zcard("flux:{ns}:slots") == 0  # closing gave the slot back
    finally:
        await redis.aclose()


async def test_slots_are_never_exceeded_and_waiters_wake(coordinator: RedisCoordinator) -> None:
    slots = coordinator.slots(3)
    assert not slots.take_nowait()  # a shared slot always needs a round trip
    in_use = peak = 0

    async def job() -> None:
        nonlocal in_use, peak
        await slots.take()
        in_use += 1
        peak = max(peak, in_use)
        await anyio.sleep(0.02)
        in_use -= 1
        slots.give_back()

    async with anyio.create_task_group() as group:
        for _ in range(12):
            group.start_soon(job)
        await eventually(lambda: slots.in_use == 3)
        assert slots.waiting == 9
    assert peak == 3
    # Releases run in the background; the set empties as they land.
    await until(lambda: no_slots_taken(coordinator))
    assert slots.in_use == 0
    assert slots.waiting == 0


async def test_a_cancelled_take_keeps_no_slot(coordinator: RedisCoordinator) -> None:
    slots = coordinator.slots(1)
    await slots.take()
    with anyio.move_on_after(0.2):
        await slots.take()  # full: waits, then gives up
    assert slots.in_use == 1
    assert slots.waiting == 0
    slots.give_back()
    slots.give_back()  # one too many: a warning, never an exception
    await until(lambda: no_slots_taken(coordinator))


async def test_echoes_of_one_429_count_once(coordinator: RedisCoordinator) -> None:
    gate = coordinator.rate_gate("query", 10.0, 1, Backoff(base=0.2, cap=1.0, jitter=0.0))
    assert gate.acquire_nowait(0.0) is None
    ticket = await gate.acquire()
    first = await gate.penalize(None, 0.0, ticket)
    echo = await gate.penalize(None, 0.0, ticket)  # the same overload, seen again
    assert first == pytest.approx(0.2)
    assert echo <= first
    state = await coordinator.command("HGETALL", coordinator.key("rate:query"))
    assert float(state[b"cur"]) == pytest.approx(5.0)  # halved once, not twice
    assert state[b"epoch"] == b"1"
    assert state[b"strikes"] == b"1"
    began = time.monotonic()
    second = await gate.acquire()
    assert time.monotonic() - began >= first - 0.05  # the pause held this caller back
    assert second == 1
    assert await gate.penalize(None, 0.0, second) == pytest.approx(0.4)  # backoff grows
    gate.succeeded()
    await until(lambda: strikes_reset(coordinator))


async def test_retry_after_is_honoured_and_no_rate_still_pauses(
    coordinator: RedisCoordinator,
) -> None:
    gate = coordinator.rate_gate("submit", None, 1, Backoff())
    ticket = await gate.acquire()
    assert await gate.penalize(0.3, 0.0, ticket) == pytest.approx(0.3)
    began = time.monotonic()
    await gate.acquire()
    assert time.monotonic() - began >= 0.25


async def test_resolving_forgets_a_task_but_not_one_adopted_elsewhere(
    redis_url: str, coordinator: RedisCoordinator
) -> None:
    directory = coordinator.directory
    await directory.followed("t-1", {"prompt": "one"})
    await directory.followed("t-2", None)
    owners = coordinator.key("owners")
    assert set(await coordinator.command("HKEYS", owners)) == {b"t-1", b"t-2"}
    await directory.resolved("t-1")
    assert await coordinator.command("HKEYS", owners) == [b"t-2"]
    # Another process adopted t-2 meanwhile: this one's late resolve leaves it alone.
    await coordinator.command("HSET", owners, "t-2", "someone-else")
    await directory.resolved("t-2")
    assert await coordinator.command("HKEYS", owners) == [b"t-2"]


async def test_a_closed_process_hands_its_tasks_to_the_adopter(
    redis_url: str, coordinator: RedisCoordinator
) -> None:
    adopted: list[Orphan] = []
    done = anyio.Event()

    def adopter(orphans: list[Orphan]) -> None:
        adopted.extend(orphans)
        done.set()

    coordinator.adopter = adopter
    leaving = RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0)
    async with leaving:
        await leaving.directory.followed("paid-1", {"prompt": "keep me"})
    with anyio.fail_after(3):  # the next renewal (every lease / 3) adopts it
        await done.wait()
    assert adopted == [Orphan("paid-1", {"prompt": "keep me"})]
    assert "paid-1" in coordinator.directory.following
    assert await coordinator.recover() == []  # adopted once only


async def test_a_routed_callback_nobody_answers_is_a_coordination_error(
    redis_url: str, coordinator: RedisCoordinator
) -> None:
    never = anyio.Event()

    async def stuck(token: str | None, body: bytes) -> int:
        await never.wait()
        return 200

    owner = RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0, route_timeout=0.3)
    async with owner:
        owner.directory.judge = stuck
        await owner.directory.followed("t-9", None)
        asker = RedisCoordinator.from_url(redis_url, api_key=TOKEN, route_timeout=0.3)
        async with asker:
            began = time.monotonic()
            with pytest.raises(CoordinationError, match="did not answer"):
                await asker.directory.route_callback("tok", b'{"task_id": "t-9"}')
            assert time.monotonic() - began < 1.0
        never.set()


async def test_redis_down_is_a_prompt_coordination_error(
    redis_server: RedisServer, coordinator: RedisCoordinator
) -> None:
    slots = coordinator.slots(2)
    gate = coordinator.rate_gate("submit", 5.0, 1, Backoff())
    await slots.take()
    redis_server.stop()
    for attempt in (slots.take, gate.acquire, coordinator.recover,
                    lambda: gate.penalize(None, 0.0, 0),
                    lambda: coordinator.directory.route_callback(None, b'{"task_id": "x"}')):
        began = time.monotonic()
        with pytest.raises(CoordinationError):
            await attempt()
        assert time.monotonic() - began <= coordinator.timeout + 0.5
    # A task followed while Redis is down is kept, and written once it is back.
    await coordinator.directory.followed("paid-in-outage", {"prompt": "p"})
    redis_server.start()  # empty: as after a restart without persistence
    await slots.take()  # work resumes
    await until(lambda: coordinator.command(
        "HEXISTS", coordinator.key("owners"), "paid-in-outage"))


async def test_a_hanging_redis_is_a_coordination_error_within_the_timeout(
    redis_server: RedisServer, coordinator: RedisCoordinator
) -> None:
    gate = coordinator.rate_gate("submit", 5.0, 1, Backoff())
    redis_server.freeze()
    try:
        began = time.monotonic()
        with pytest.raises(CoordinationError, match=r"did not answer within 0\.5 s"):
            await gate.acquire()
        assert time.monotonic() - began <= coordinator.timeout + 0.3
    finally:
        redis_server.thaw()
    await gate.acquire()


async def test_start_without_redis_is_a_coordination_error(tmp_path: object) -> None:
    coordinator = RedisCoordinator.from_url("redis://127.0.0.1:1/0", api_key=TOKEN, timeout=0.5)
    with pytest.raises(CoordinationError):
        await coordinator.start()
    await coordinator.close()


async def test_a_redis_restarted_empty_gets_leases_and_records_back(
    redis_server: RedisServer, coordinator: RedisCoordinator
) -> None:
    slots = coordinator.slots(5)
    await slots.take()
    await slots.take()
    await coordinator.directory.followed("t-a", {"prompt": "a"})
    await coordinator.directory.followed("t-b", None)
    redis_server.restart_empty()
    began = time.monotonic()

    async def restored() -> bool:
        try:
            return bool(
                await coordinator.command("ZCARD", coordinator.key("slots")) == 2
                and await coordinator.command("HLEN", coordinator.key("owners")) == 2
                and await coordinator.command("HGET", coordinator.key("requests"), "t-a")
                == b'{"prompt":"a"}'
            )
        except CoordinationError:
            return False

    await until(restored)
    print(f"\nrestored {time.monotonic() - began:.2f} s after the restart "
          f"(renewal every {coordinator.lease / 3:.2f} s)")
    # The subscription came back too: a callback routed here is answered.
    coordinator.directory.judge = lambda token, body: 200
    async with RedisCoordinator.from_url(redis_server.url, api_key=TOKEN) as other:
        await until(lambda: other.directory.route_callback(None, b'{"task_id": "t-a"}'))


async def test_a_slot_given_back_wakes_another_process_at_once(
    redis_url: str, coordinator: RedisCoordinator
) -> None:
    holder = coordinator.slots(1)
    waiter_side = RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0)
    async with waiter_side:
        waiter = waiter_side.slots(1)
        latencies = []
        for _ in range(20):
            await holder.take()
            got = anyio.Event()

            async def wait_for_it() -> None:
                await waiter.take()
                got.set()  # noqa: B023 - awaited within this iteration

            async with anyio.create_task_group() as group:
                group.start_soon(wait_for_it)
                await eventually(lambda: waiter.waiting == 1)
                await anyio.wait_all_tasks_blocked()  # the waiter has asked and is waiting
                freed = time.perf_counter()
                holder.give_back()
                await got.wait()
                latencies.append(time.perf_counter() - freed)
            waiter.give_back()
            await until(lambda: no_slots_taken(coordinator))
        p50 = statistics.median(latencies)
        print(f"\nslot hand-off between coordinators: p50 {p50 * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms")
        # Woken by the "freed" message, not by the once-a-second look.
        assert p50 < waiter.MAX_WAIT / 2


async def test_after_redis_lost_its_data_no_process_takes_a_slot_held_elsewhere(
    redis_server: RedisServer, coordinator: RedisCoordinator
) -> None:
    holder = coordinator.slots(2)
    await holder.take()
    await holder.take()
    other = RedisCoordinator.from_url(redis_server.url, api_key=TOKEN, lease=1.0)
    async with other:
        waiter = other.slots(2)
        redis_server.restart_empty()
        # Redis now says no slot is taken, but the holder still has two: the waiter
        # must not get one before the holder re-adds them (within lease / 3).
        with anyio.move_on_after(coordinator.lease * 1.2):
            await waiter.take()
        assert waiter.in_use == 0
        assert await coordinator.command("ZCARD", coordinator.key("slots")) == 2
        holder.give_back()
        with anyio.fail_after(2):
            await waiter.take()
        assert waiter.in_use == 1


async def test_keys_of_a_process_that_ended_are_taken_over_as_the_journal_says(
    redis_url: str, coordinator: RedisCoordinator
) -> None:
    from flux_async._core.journal import Entry, EntryState, new_entry_id

    def entry(key: str) -> Entry:
        return Entry(entry_id=new_entry_id(), fingerprint=f"fp-{key}",
                     request={"action": "generate", "prompt": key}, state=EntryState.QUEUED,
                     key=key)

    leaving = RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0)
    async with leaving:
        journal = leaving.journal
        await journal.open(60.0)
        queued, sending, running = entry("queued"), entry("sending"), entry("running")
        for each in (queued, sending, running):
            assert await journal.claim(each) is None
        await journal.sending(sending, "nonce-1")
        await journal.sending(running, None)
        await journal.answered(running, "task-9", None)
        # While its process lives, a claim of the key gets the entry as it is.
        held = await coordinator.journal.claim(entry("sending"))
        assert held is not None
        assert (held.state, held.owner) == (EntryState.SENDING, leaving.process_id)
    # It closed: its lease is gone, and what it left is taken over by the next look.
    mine = coordinator.process_id
    assert await coordinator.journal.lookup("queued") is None  # nothing was sent: free
    unknown = await coordinator.journal.lookup("sending")
    assert unknown is not None
    assert (unknown.state, unknown.owner) == (EntryState.UNKNOWN, mine)
    assert (await coordinator.journal.by_nonce("nonce-1")) == unknown
    # Of unknown fate, it keeps its key past the retention: only the caller frees it.
    assert await coordinator.command("PTTL", coordinator.key("key:sending")) == -1
    assert await coordinator.command("PTTL", coordinator.key("key:running")) > 0
    adopted = await coordinator.journal.lookup("running")
    assert adopted is not None
    assert (adopted.state, adopted.task_id, adopted.owner) == (EntryState.RUNNING, "task-9", mine)
    # A callback naming the unknown submission's task settles it, followed here.
    assert await coordinator.journal.matched(unknown.entry_id, "task-10")
    settled = await coordinator.journal.lookup("sending")
    assert settled is not None
    assert (settled.state, settled.task_id) == (EntryState.RUNNING, "task-10")
    assert await coordinator.journal.release("sending")
    assert await coordinator.journal.lookup("sending") is None
