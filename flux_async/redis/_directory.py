"""Which process follows which task: routed callbacks and the recovery of orphans.

Every followed task is a field of the ``owners`` hash (task id -> process id) and,
when this process submitted it, of ``requests`` (task id -> the request as JSON),
until it resolves. A task is alive as long as its owner's lease is: the renewal
loop extends one lease per process, however many tasks it follows.

Callbacks: the service POSTs a task's result to whichever process the load
balancer picks. ``route_callback`` looks the owner up and publishes the callback on
the owner's channel (when the directory does not know the task yet, the process
named by the callback token's tag: the one that submitted it); the owner judges it
with its own client and publishes the HTTP status back on the asker's channel. A
reply that does not come within ``route_timeout`` is a ``CoordinationError`` (the
receiver answers 5xx and the service sends the callback again); an owner nobody
listens for is ``None``.

Recovery: ``recover`` adopts, in one script, every task whose owner's lease has
lapsed. Nothing is submitted again: the adopter follows the task ids it was given.

``followed`` and ``resolved`` never lose a record to a Redis outage: the record is
kept in memory first, and the renewal loop writes what could not be written (and
writes everything again when Redis comes back empty).
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import attrs

from .._core.callbacks import tag_of
from .._core.errors import CoordinationError
from ._rounds import RedisRounds
from ._scripts import DIR_FOLLOW, DIR_RECOVER, DIR_RESOLVE, DIR_RESTORE
from ._shared import Shared

__all__ = ["CallbackJudge", "Orphan", "RedisDirectory"]

log = logging.getLogger("flux_async.redis")

#: Judges a callback routed to this process: (token, body) -> the HTTP status; may be async.
CallbackJudge = Callable[[str | None, bytes], Awaitable[int] | int]


@attrs.frozen
class Orphan:
    """A task adopted from a process whose lease lapsed: follow it, never re-submit it.

    ``request`` is the submitted request's fields, None when the dead process only
    waited on the task. ``slot``: the generation slot taken over with it (the task
    still runs at the service), None when none was.
    """

    task_id: str
    request: Mapping[str, Any] | None
    slot: str | None = None


@attrs.define
class _Reply:
    done: anyio.Event = attrs.field(factory=anyio.Event)
    status: int | None = None


def task_id_of(body: bytes) -> str | None:
    """The ``task_id`` a callback body names, or None when it names none."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    task_id = parsed.get("task_id") if isinstance(parsed, dict) else None
    return task_id if isinstance(task_id, str) and task_id else None


class RedisDirectory:
    """The fleet's task directory, seen from one process."""

    def __init__(self, coordinator: Shared) -> None:
        self._coord = coordinator
        #: The fleet's shared poll rounds (the tasks recorded with ``poll=True``).
        self.rounds = RedisRounds(coordinator)
        #: Judges callbacks other processes route here; ``start(client)`` sets it.
        self.judge: CallbackJudge | None = None
        # task id -> its request as JSON ('' when only waited on): what this process
        # follows, the truth the renewal loop writes back after a Redis data loss.
        self._records: dict[str, str] = {}
        self._polled: set[str] = set()  # those asked about in the fleet's shared rounds
        self._unsynced: set[str] = set()
        self._replies: dict[str, _Reply] = {}

    def __repr__(self) -> str:
        return f"<RedisDirectory following={len(self._records)}>"

    @property
    def tag(self) -> str:
        """This process's tag in callback tokens."""
        return self._coord.tag

    @property
    def following(self) -> frozenset[str]:
        """The task ids this process follows."""
        return frozenset(self._records)

    @property
    def submitted(self) -> int:
        """How many of them this process submitted (each holds a slot)."""
        return sum(1 for encoded in self._records.values() if encoded)

    async def followed(self, task_id: str, request: Mapping[str, Any] | None, *,
                       poll: bool = True) -> bool:
        """Record that this process follows ``task_id``. Never raises for Redis trouble.

        ``poll``: asked about in the fleet's shared rounds (False: a callback tells).
        Returns whether the shared rounds ask about it now (False also when Redis
        could not be told, or another live process follows the task).
        """
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("task_id must be a non-empty string")
        if request is not None:
            encoded = json.dumps(dict(request), separators=(",", ":"))
        else:  # an adopted task keeps the request recovery gave it
            encoded = self._records.get(task_id, "")
        self._records[task_id] = encoded
        if poll:
            self._polled.add(task_id)
        try:
            await self._coord.start()
            owner = await self._write(task_id)
        except CoordinationError as exc:
            self._unsynced.add(task_id)
            log.warning("task %s is not recorded in Redis yet (%s): retried", task_id, exc)
            return False
        return poll and owner

    async def resolved(self, task_id: str) -> None:
        """``task_id`` ended here: forget it. Never raises for Redis trouble."""
        if self._records.pop(task_id, None) is None:
            return
        self._polled.discard(task_id)
        try:
            await self._coord.start()
            await self._write(task_id)
        except CoordinationError:
            self._unsynced.add(task_id)

    async def _write(self, task_id: str) -> bool:
        """Make Redis agree with this process about ``task_id``; whether it owns it."""
        coord = self._coord
        encoded = self._records.get(task_id)
        keys = [coord.key("owners"), coord.key("requests")]
        if encoded is None:
            await coord.call(DIR_RESOLVE, [*keys, coord.key("polled")],
                             [task_id, coord.process_id, coord.key("tasks:")])
            owner = False
        else:
            owner = await coord.call(
                DIR_FOLLOW, [*keys, coord.key("procs"), coord.key("polled")],
                [task_id, coord.process_id, "1" if encoded else "0", encoded,
                 coord.key("tasks:"), "1" if task_id in self._polled else "0"],
            ) == 1
        self._unsynced.discard(task_id)
        return owner

    async def sync(self, *, lost: bool) -> None:
        """Write what could not be written; everything again when Redis ``lost`` it."""
        for task_id in list(self._unsynced):
            await self._write(task_id)
        if lost and self._records:
            coord = self._coord
            triples = [item for task_id, encoded in self._records.items()
                       for item in (task_id, encoded, "1" if task_id in self._polled else "0")]
            restored = await coord.call(
                DIR_RESTORE, [coord.key("owners"), coord.key("requests"), coord.key("polled")],
                [coord.process_id, coord.key("tasks:"), *triples],
            )
            if int(restored):
                log.warning("Redis had lost %d of this process's task records: restored",
                            int(restored))

    async def recover(self) -> list[Orphan]:
        """Adopt every task whose owner's lease lapsed (each goes to one process only).

        A submitted orphan comes with the slot its dead process held for it (when
        this process keeps slots): this process renews it and gives it back when
        the task ends (``FluxClient.adopt``).
        """
        coord = self._coord
        await coord.start()
        slots = coord.slot_pool
        flat = await coord.call(
            DIR_RECOVER,
            [coord.key("owners"), coord.key("requests"), coord.key("procs"),
             coord.key("slots")],
            [coord.process_id, "" if slots is None else coord.lease_ms, coord.bus_channel,
             coord.key("tasks:")],
        )
        orphans = []
        for raw_id, raw_request, raw_slot in zip(flat[::3], flat[1::3], flat[2::3],
                                                 strict=True):
            task_id, encoded, slot = _text(raw_id), _text(raw_request), _text(raw_slot)
            self._records[task_id] = encoded
            if slot and slots is not None:
                slots.hold_adopted(task_id, slot)
            orphans.append(Orphan(task_id, json.loads(encoded) if encoded else None,
                                  slot or None))
        if orphans:
            log.warning("adopted %d task(s) of processes that stopped renewing their lease",
                        len(orphans))
        return orphans

    async def route_callback(self, token: str | None, body: bytes) -> int | None:
        """Hand a callback to the process that follows its task; its HTTP status.

        None when no live process follows the task (or the body names none).
        """
        task_id = task_id_of(body)
        if task_id is None:
            return None
        coord = self._coord
        await coord.start()
        owner = await coord.command("HGET", coord.key("owners"), task_id)
        if owner is not None:
            if _text(owner) == coord.process_id:
                return None
            channel = coord.channel_of(_text(owner))
        else:
            # Not recorded yet (a callback can beat the record): the submitter's tag.
            tag = tag_of(token)
            if not tag or tag == coord.tag:
                return None
            channel = coord.channel_of_tag(tag)
        request_id = secrets.token_hex(8)
        reply = self._replies[request_id] = _Reply()
        try:
            message = json.dumps({
                "op": "callback", "id": request_id, "reply_to": coord.own_channel,
                "token": token, "body": base64.b64encode(body).decode("ascii"),
            })
            listeners = await coord.command("PUBLISH", channel, message)
            if not int(listeners):
                return None  # its process is gone; recovery will adopt the task
            with anyio.move_on_after(coord.route_timeout):
                await reply.done.wait()
            if not reply.done.is_set():
                raise CoordinationError(
                    f"the process following task {task_id} did not answer its callback "
                    f"within {coord.route_timeout:g} s"
                )
            return reply.status
        finally:
            del self._replies[request_id]

    def on_message(self, message: Mapping[str, Any]) -> Callable[[], Awaitable[None]] | None:
        """A message on this process's channel; the work it asks for, if any."""
        op = message.get("op")
        if op == "polled":
            self.rounds.on_message(message)
            return None
        if op == "reply":
            reply = self._replies.get(str(message.get("id")))
            status = message.get("status")
            if reply is not None:
                reply.status = status if isinstance(status, int) else None
                reply.done.set()
            return None
        if op == "callback":
            return lambda: self._answer(message)
        return None

    async def _answer(self, message: Mapping[str, Any]) -> None:
        """Judge a callback another process routed here and send it the status."""
        status: int | None = None
        token = message.get("token")
        try:
            body = base64.b64decode(str(message.get("body", "")), validate=True)
        except (binascii.Error, ValueError):
            body = None
        judge = self.judge
        if judge is not None and body is not None:
            try:
                outcome = judge(token if isinstance(token, str) else None, body)
                status = await outcome if inspect.isawaitable(outcome) else outcome
            except Exception:
                log.exception("judging a routed callback failed")
                status = 500
        reply = json.dumps({"op": "reply", "id": message.get("id"), "status": status})
        await self._coord.command("PUBLISH", str(message.get("reply_to")), reply)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
