"""The fleet's idempotency keys, in Redis: a key used in two processes pays once.

``RedisJournal`` is the journal a ``RedisCoordinator`` gives its clients (unless
they are given one): it records keyed requests only (``durable`` is False); the
fleet's task directory already keeps every followed task of every process, and
adopts those of processes that die.

In Redis, under the coordinator's namespace, each for ``key_retention``:

- ``key:<key>``      string  the id of the entry that holds the key
- ``entry:<id>``     hash    the entry (``_core.journal.Entry``'s fields)
- ``nonce:<nonce>``  string  the id of the entry whose callback token has it

Claims run in one script, so of two processes claiming a key one wins. An entry
whose owner's lease lapsed is taken over as ``_core.journal`` says (QUEUED: gone;
SENDING: UNKNOWN, or RUNNING if a callback named its task; RUNNING: owned here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .._core.journal import Entry, EntryState, Opened
from ._scripts import _NOW_MS
from ._shared import Shared

__all__ = ["RedisJournal"]

# An unknown submission keeps its key past the retention: only the caller frees it.
_KEEP = """
local function keep(e)
  redis.call('PERSIST', e)
  local key = redis.call('HGET', e, 'key')
  if key and key ~= '' then
    local prefix = string.sub(e, 1, #e - #redis.call('HGET', e, 'entry_id') - 6)
    redis.call('PERSIST', prefix .. 'key:' .. key)
  end
end
"""

_LIVE_TAKE_OVER = _KEEP + """
local function take_over(e, me, procs, now)
  local f = redis.call('HMGET', e, 'state', 'owner', 'task_id')
  local state, owner, task = f[1], f[2], f[3]
  if not state then return nil end
  if (state == 'queued' or state == 'sending' or state == 'running') and owner ~= me then
    local lease = redis.call('ZSCORE', procs, owner)
    if not lease or tonumber(lease) < now then
      if state == 'queued' then
        redis.call('DEL', e)
        return nil
      end
      if state == 'sending' then
        if task and task ~= '' then state = 'running' else state = 'unknown' end
      end
      redis.call('HSET', e, 'state', state, 'owner', me)
      if state == 'unknown' then keep(e) end
    end
  end
  return state
end
"""

# KEYS: procs.  ARGV: prefix, key, me, retention (ms), create (1/0), entry id,
# fingerprint, request, state, created_at.  Returns the holding entry, or nil.
KEY_CLAIM = _NOW_MS + _LIVE_TAKE_OVER + """
local prefix, me, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
local kk = prefix .. 'key:' .. ARGV[2]
local id = redis.call('GET', kk)
if id then
  local e = prefix .. 'entry:' .. id
  if take_over(e, me, KEYS[1], now_ms()) then return redis.call('HGETALL', e) end
  redis.call('DEL', kk)
end
if ARGV[5] ~= '1' then return nil end
local e = prefix .. 'entry:' .. ARGV[6]
redis.call('HSET', e, 'entry_id', ARGV[6], 'key', ARGV[2], 'fingerprint', ARGV[7],
           'request', ARGV[8], 'state', ARGV[9], 'owner', me, 'created_at', ARGV[10],
           'task_id', '', 'nonce', '', 'outcome', '')
redis.call('PEXPIRE', e, ttl)
redis.call('SET', kk, ARGV[6], 'PX', ttl)
return nil
"""

# ARGV: prefix, entry id, retention (ms), nonce ('' for none), then field, value pairs.
KEY_SET = _KEEP + """
local e = ARGV[1] .. 'entry:' .. ARGV[2]
if redis.call('EXISTS', e) == 0 then return 0 end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', e, unpack(fields))
if redis.call('HGET', e, 'state') == 'unknown' then keep(e) end
if ARGV[4] ~= '' then
  redis.call('SET', ARGV[1] .. 'nonce:' .. ARGV[4], ARGV[2], 'PX', ARGV[3])
end
return 1
"""

# ARGV: prefix, entry id.  Nothing will be sent for it: gone, and its key free.
KEY_DROP = """
local e = ARGV[1] .. 'entry:' .. ARGV[2]
local f = redis.call('HMGET', e, 'task_id', 'key')
if f[1] and f[1] ~= '' then return 0 end
if f[2] and f[2] ~= '' then
  local kk = ARGV[1] .. 'key:' .. f[2]
  if redis.call('GET', kk) == ARGV[2] then redis.call('DEL', kk) end
end
redis.call('DEL', e)
return 1
"""

# KEYS: procs.  ARGV: prefix, entry id, task id, me, only while sending (1/0).
# A callback named the entry's task: record it if the entry has none. Returns 1
# when the entry is then owned here (to be followed here), 0 otherwise.
KEY_MATCHED = _NOW_MS + _LIVE_TAKE_OVER + """
local e = ARGV[1] .. 'entry:' .. ARGV[2]
local state = take_over(e, ARGV[4], KEYS[1], now_ms())
if not state then return 0 end
local f = redis.call('HMGET', e, 'task_id', 'owner')
if f[1] and f[1] ~= '' then return 0 end
if ARGV[5] == '1' then
  if state ~= 'sending' then return 0 end
  redis.call('HSET', e, 'task_id', ARGV[3])
  return 0
end
redis.call('HSET', e, 'task_id', ARGV[3], 'state', 'running')
if f[2] == ARGV[4] then return 1 end
return 0
"""


def _entry(flat: Sequence[bytes | str]) -> Entry | None:
    fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    if not fields.get("entry_id"):
        return None
    outcome = fields.get("outcome") or ""
    return Entry(entry_id=fields["entry_id"], key=fields.get("key") or None,
                 fingerprint=fields.get("fingerprint", ""),
                 request=json.loads(fields.get("request") or "{}"),
                 state=EntryState(fields.get("state", "unknown")),
                 task_id=fields.get("task_id") or None, nonce=fields.get("nonce") or None,
                 outcome=json.loads(outcome) if outcome else None,
                 owner=fields.get("owner", ""),
                 created_at=float(fields.get("created_at") or 0.0))


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), separators=(",", ":"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisJournal:
    """Idempotency keys shared by a fleet; see the module docstring."""

    durable = False

    def __init__(self, coordinator: Shared) -> None:
        self._coord = coordinator
        self._retention_ms = 86_400_000

    def __repr__(self) -> str:
        return "<RedisJournal>"

    @property
    def _prefix(self) -> str:
        return self._coord.key("")

    async def open(self, retention: float) -> Opened:
        self._retention_ms = max(1, round(retention * 1000))
        return Opened()  # the fleet's directory adopts the tasks of processes that died

    async def close(self) -> None:
        return None

    async def _claim(self, key: str, entry: Entry | None) -> Entry | None:
        coord = self._coord
        await coord.start()
        args: list[Any] = [self._prefix, key, coord.process_id, self._retention_ms,
                           "1" if entry is not None else "0"]
        if entry is not None:
            args += [entry.entry_id, entry.fingerprint, _dumps(entry.request),
                     entry.state.value, repr(time.time())]
        flat = await coord.call(KEY_CLAIM, [coord.key("procs")], args)
        return None if not flat else _entry(flat)

    async def claim(self, entry: Entry) -> Entry | None:
        if entry.key is None:
            return None  # unkeyed: the directory records it once it has a task id
        return await self._claim(entry.key, entry)

    async def lookup(self, key: str) -> Entry | None:
        return await self._claim(key, None)

    async def _set(self, entry_id: str, fields: Mapping[str, str], *,
                   indexed_nonce: str | None = None) -> None:
        coord = self._coord
        await coord.start()
        pairs = [item for name, value in fields.items() for item in (name, value)]
        await coord.call(KEY_SET, [], [self._prefix, entry_id, self._retention_ms,
                                       indexed_nonce or "", *pairs])

    def _later(self, entry_id: str, fields: Mapping[str, str]) -> None:
        async def write() -> None:
            await self._set(entry_id, fields)

        self._coord.chore(write)

    async def sending(self, entry: Entry, nonce: str | None) -> None:
        if entry.key is not None:
            await self._set(entry.entry_id, {"state": "sending", "nonce": nonce or ""},
                            indexed_nonce=nonce)

    async def answered(self, entry: Entry, task_id: str,
                       outcome: Mapping[str, Any] | None) -> None:
        if entry.key is None:
            return
        if outcome is None:
            await self._set(entry.entry_id, {"state": "running", "task_id": task_id})
            return
        state = EntryState.SUCCEEDED if outcome.get("success") else EntryState.FAILED
        await self._set(entry.entry_id, {"state": state.value, "task_id": task_id,
                                         "outcome": _dumps(outcome)})

    def unsent(self, entry: Entry) -> None:
        if entry.key is not None:
            self._later(entry.entry_id, {"state": "queued"})

    def uncertain(self, entry: Entry) -> None:
        if entry.key is not None:
            self._later(entry.entry_id, {"state": "unknown"})

    def dropped(self, entry: Entry) -> None:
        if entry.key is None:
            return
        coord = self._coord

        async def drop() -> None:
            await coord.call(KEY_DROP, [], [self._prefix, entry.entry_id])

        coord.chore(drop)

    def ended(self, entry_id: str, outcome: Mapping[str, Any], *, ok: bool) -> None:
        state = EntryState.SUCCEEDED if ok else EntryState.FAILED
        self._later(entry_id, {"state": state.value, "outcome": _dumps(outcome)})

    async def by_nonce(self, nonce: str) -> Entry | None:
        coord = self._coord
        await coord.start()
        entry_id = await coord.command("GET", coord.key(f"nonce:{nonce}"))
        if entry_id is None:
            return None
        flat = await coord.command("HGETALL", coord.key(f"entry:{_text(entry_id)}"))
        return _entry(_pairs(flat))

    async def _matched(self, entry_id: str, task_id: str, *, sending_only: bool) -> bool:
        coord = self._coord
        await coord.start()
        owned = await coord.call(KEY_MATCHED, [coord.key("procs")],
                                 [self._prefix, entry_id, task_id, coord.process_id,
                                  "1" if sending_only else "0"])
        return bool(int(owned))

    async def matched(self, entry_id: str, task_id: str) -> bool:
        return await self._matched(entry_id, task_id, sending_only=False)

    async def noted(self, entry_id: str, task_id: str) -> None:
        await self._matched(entry_id, task_id, sending_only=True)

    async def release(self, key: str) -> bool:
        coord = self._coord
        await coord.start()
        return bool(int(await coord.command("DEL", coord.key(f"key:{key}"))))


def _pairs(flat: Any) -> list[bytes | str]:
    """HGETALL's answer as a flat list (a dict with some client settings)."""
    if isinstance(flat, dict):
        return [item for pair in flat.items() for item in pair]
    return list(flat or [])
