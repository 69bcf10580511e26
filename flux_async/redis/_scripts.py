"""The Lua scripts that keep a fleet's shared state consistent.

Each script runs atomically inside Redis, so a check and the write it justifies
cannot be separated by another process (no two processes take the last slot, no
two adopt the same orphan). Every script reads the time from Redis (``TIME``),
never from the caller: processes whose clocks disagree still agree on leases and
rate turns. Redis 7 replicates a script's effects, not the script, so reading the
clock inside a writing script is safe.

Numbers cross the Lua boundary as strings where a fraction matters: Redis turns a
Lua number into an integer (truncating it) when it returns one.

The keys (all under one ``{namespace}`` hash tag, so a Redis Cluster keeps them on
one node; the scripts also read keys they are not passed, so a plain or Sentinel
Redis is what is supported):

- ``procs``     zset  process id -> its lease's expiry (ms, Redis clock)
- ``slots``     zset  slot id ("<process>|<n>", or "<process>|<task id>" for a slot
                      adopted with its task) -> that slot's lease expiry (ms)
- ``owners``    hash  task id -> the process that follows it
- ``requests``  hash  task id -> the submitted request (JSON), when known
- ``polled``    zset  task id -> when a shared poll round last claimed it (ms): the
                      tasks without a callback URL, asked about in shared rounds
- ``tasks:<process>`` set  the tasks that process submitted and still follows (it
                      holds a slot for each): what tells a dead process's slots
                      still in use at the service from slots it held for nothing
- ``rate:<kind>`` hash  the GCRA state of one kind of request (see RATE_ACQUIRE)
- ``hold``      string  present (with an expiry) while the fleet re-adds what Redis lost
"""

from __future__ import annotations

__all__ = [
    "DIR_FOLLOW",
    "DIR_RECOVER",
    "DIR_RESOLVE",
    "DIR_RESTORE",
    "ROUND_CLAIM",
    "RATE_ACQUIRE",
    "RATE_PENALIZE",
    "RATE_SUCCEEDED",
    "RENEW",
    "SLOT_RELEASE",
    "SLOT_TAKE",
]

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Take one slot if fewer than `capacity` live leases exist.
# KEYS: slots, procs, hold.  ARGV: slot id, capacity, lease (ms), process id, hold (ms),
# the prefix of the ``tasks:<process>`` keys.
# Returns {1, 0} when taken, else {0, ms until a slot may free}: a waiter sleeps at
# most that long, so a dead process's slot is noticed as soon as it lapses.
# {-1, 0}: this process's own lease is gone, so Redis lost its data (or gave up on
# this process): the caller renews at once (re-adding its slots) and asks again.
# Until every process has renewed, the slots Redis lost look free: for `hold` ms
# after a loss is first seen nobody takes one (renewals come every lease / 3).
# A lapsed slot of a dead process that still has submitted tasks recorded (it is
# listed in `procs` until someone recovers it) may be the slot of a task still
# generating at the service: it keeps counting until DIR_RECOVER hands it to the
# adopter of that task, or for one more lease (a fleet where nobody adopts).
SLOT_TAKE = _NOW_MS + """
local now = now_ms()
if not redis.call('ZSCORE', KEYS[2], ARGV[4]) then
  redis.call('SET', KEYS[3], now, 'PX', ARGV[5], 'NX')
  return {-1, 0}
end
local hold = redis.call('PTTL', KEYS[3])
if hold > 0 then
  return {0, hold}
end
local lease = tonumber(ARGV[3])
local soonest = now + lease
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES')
for i = 1, #lapsed, 2 do
  local member, expiry = lapsed[i], tonumber(lapsed[i + 1])
  local owner = string.match(member, '^(.-)|')
  if owner and expiry + lease > now and redis.call('ZSCORE', KEYS[2], owner)
      and redis.call('SCARD', ARGV[6] .. owner) > 0 then
    soonest = math.min(soonest, expiry + lease)
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  return {1, 0}
end
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES',
  'LIMIT', 0, 1)
if #first > 0 then
  soonest = math.min(soonest, tonumber(first[2]))
end
return {0, math.max(1, soonest - now)}
"""


# Give slots back and wake the fleet's waiters.
# KEYS: slots.  ARGV: bus channel, slot ids...
# Ids that are not there (never taken: a cancelled take; already lapsed) are no-ops.
SLOT_RELEASE = """
local removed = redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
if removed > 0 then
  redis.call('PUBLISH', ARGV[1], 'freed')
end
return removed
"""

# One process's heartbeat: extend its lease and every slot it holds, in one trip.
# KEYS: procs, slots, hold.  ARGV: process id, lease (ms), running (1/0), hold (ms),
# slot ids...
# Returns {known, lapsed}: known = 0 when this process's lease was missing or had
# lapsed (Redis lost its data, or this process stalled longer than a lease and was
# given up on); the slots are then re-added whatever the count, because they are
# really in use, and the caller re-writes its directory records. A process already
# running that finds its lease gone starts the hold (see SLOT_TAKE). lapsed = how
# many other processes' leases have lapsed (their tasks are orphans to recover).
RENEW = _NOW_MS + """
local now = now_ms()
local expiry = now + tonumber(ARGV[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local known = score and tonumber(score) > now
if not score and ARGV[3] == '1' then
  redis.call('SET', KEYS[3], now, 'PX', ARGV[4], 'NX')
end
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
if #ARGV > 4 then
  local args = {}
  for i = 5, #ARGV do
    args[#args + 1] = expiry
    args[#args + 1] = ARGV[i]
  end
  if known then
    -- XX: only extend what is there; a slot given back meanwhile stays given back.
    redis.call('ZADD', KEYS[2], 'XX', unpack(args))
  else
    redis.call('ZADD', KEYS[2], unpack(args))
  end
end
local lapsed = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. now)
return {known and 1 or 0, lapsed}
"""

# This process follows a task from now on.
# KEYS: owners, requests, procs, polled.  ARGV: task id, process id, has request (1/0),
# request, the prefix of the ``tasks:<process>`` keys, polled in shared rounds (1/0).
# The submitter always becomes the owner; a process that only waits on a task takes
# it over only when nobody live follows it. Returns 1 when this process is the owner.
DIR_FOLLOW = _NOW_MS + """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
local take = ARGV[3] == '1' or not owner or owner == ARGV[2]
if not take then
  local lease = redis.call('ZSCORE', KEYS[3], owner)
  take = not lease or tonumber(lease) <= now_ms()
end
if not take then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if owner and owner ~= ARGV[2] then
  redis.call('SREM', ARGV[5] .. owner, ARGV[1])
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('SADD', ARGV[5] .. ARGV[2], ARGV[1])
end
if ARGV[6] == '1' then
  -- As if asked about just now: a task just created has not ended, and it joins the
  -- next round that asks about the others, instead of costing a query of its own.
  redis.call('ZADD', KEYS[4], 'NX', now_ms(), ARGV[1])
end
return 1
"""

# A task ended: forget it, unless another process has adopted it since.
# KEYS: owners, requests, polled.  ARGV: task id, process id, the ``tasks:`` prefix.
DIR_RESOLVE = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner and owner ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', ARGV[3] .. ARGV[2], ARGV[1])
return 1
"""

# Re-write this process's records after Redis lost them.
# KEYS: owners, requests, polled.  ARGV: process id, the ``tasks:`` prefix, then
# triples (task id, request or '', polled in shared rounds 1/0).
# HSETNX: a task another process has adopted meanwhile stays with it.
DIR_RESTORE = """
local restored = 0
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) == 1 then
    restored = restored + 1
    if ARGV[i + 1] ~= '' then
      redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
      redis.call('SADD', ARGV[2] .. ARGV[1], ARGV[i])
    end
    if ARGV[i + 2] == '1' then
      redis.call('ZADD', KEYS[3], 'NX', 0, ARGV[i])
    end
  end
end
return restored
"""

# Adopt every task whose owner's lease has lapsed; forget the dead processes.
# KEYS: owners, requests, procs, slots.  ARGV: process id, lease (ms) or '' when
# this process keeps no slots, bus channel, the ``tasks:`` prefix.
# Returns a flat list: task id, request ('' when unknown), slot id ('' for none)...
# Atomic: two processes recovering at once never adopt the same task.
# A task the dead process submitted was generating under one of its slots, and
# still is at the service: that slot moves to the adopter under a new name, so the
# fleet never counts the task out while it runs. The dead process's other slots
# (a submission that never got its answer) are freed.
DIR_RECOVER = _NOW_MS + """
local now = now_ms()
local me = ARGV[1]
local adopted, submitted, dead = {}, {}, {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local task, owner = entries[i], entries[i + 1]
  if owner ~= me then
    if dead[owner] == nil then
      local lease = redis.call('ZSCORE', KEYS[3], owner)
      dead[owner] = not lease or tonumber(lease) <= now
    end
    if dead[owner] then
      redis.call('HSET', KEYS[1], task, me)
      local request = redis.call('HGET', KEYS[2], task) or ''
      adopted[#adopted + 1] = {task, request}
      if request ~= '' then
        submitted[owner] = submitted[owner] or {}
        table.insert(submitted[owner], #adopted)
        redis.call('SADD', ARGV[4] .. me, task)
      end
    end
  end
end
local slot_of = {}
local freed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  local owner = string.match(member, '^(.-)|')
  if owner and owner ~= me then
    if dead[owner] == nil then
      local lease = redis.call('ZSCORE', KEYS[3], owner)
      dead[owner] = lease ~= false and tonumber(lease) <= now
    end
    if dead[owner] then
      redis.call('ZREM', KEYS[4], member)
      local waiting = submitted[owner]
      if ARGV[2] ~= '' and waiting and #waiting > 0 then
        local index = table.remove(waiting)
        local slot = me .. '|' .. adopted[index][1]
        redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), slot)
        slot_of[index] = slot
      else
        freed = freed + 1
      end
    end
  end
end
if freed > 0 then
  redis.call('PUBLISH', ARGV[3], 'freed')
end
for owner, gone in pairs(dead) do
  if gone then
    redis.call('DEL', ARGV[4] .. owner)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local flat = {}
for index, pair in ipairs(adopted) do
  flat[#flat + 1] = pair[1]
  flat[#flat + 1] = pair[2]
  flat[#flat + 1] = slot_of[index] or ''
end
return flat
"""


# Claim the fleet's tasks that no shared poll round asked about for `min age` ms.
# KEYS: polled, owners.  ARGV: min age (ms), at most this many.
# Returns a flat list: task id, the process that follows it, ...
# Atomic: of the processes whose rounds come at once, one claims a task, the others
# find it asked about already. An id nobody follows any more is dropped.
ROUND_CLAIM = _NOW_MS + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[2]))
local claimed = {}
for _, task in ipairs(due) do
  local owner = redis.call('HGET', KEYS[2], task)
  if owner then
    redis.call('ZADD', KEYS[1], now, task)
    claimed[#claimed + 1] = task
    claimed[#claimed + 1] = owner
  else
    redis.call('ZREM', KEYS[1], task)
  end
end
return claimed
"""


# Reserve a start time for one request of a kind (the generic cell rate scheme, as
# flux_async's in-process RateLimiter does it, with the state in a hash):
#   tat      the steady-pace start time of the next request (s, Redis clock)
#   paused   no request starts before this (a 429's pause)
#   cur      the current rate (halved by a 429, climbing back linearly)
#   changed  when cur last changed
#   epoch    bumped by every counted 429: the ticket
#   strikes  consecutive 429s, for the backoff exponent
# KEYS: the kind's hash.  ARGV: rate (0: no limit), burst, recovery seconds.
# Returns {seconds to wait (string), ticket}.
RATE_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'tat', 'paused', 'cur', 'changed', 'epoch')
local tat, paused = tonumber(s[1]) or 0, tonumber(s[2]) or 0
local cur, changed = tonumber(s[3]) or rate, tonumber(s[4]) or 0
local epoch = tonumber(s[5]) or 0
local start = math.max(now, paused)
if rate > 0 then
  if cur > rate or cur <= 0 then cur = rate end
  -- Additive increase: the rate climbs back to full over ARGV[3] seconds.
  if cur < rate and now > changed then
    cur = math.min(rate, cur + rate * (now - changed) / tonumber(ARGV[3]))
    changed = now
  end
  -- A burst may run (burst - 1) turns ahead of the steady pace.
  start = math.max(start, tat - (burst - 1) / cur)
  tat = math.max(tat, start) + 1 / cur
  redis.call('HSET', KEYS[1], 'tat', string.format('%.6f', tat),
    'cur', string.format('%.9g', cur), 'changed', string.format('%.6f', changed))
  -- A kind nobody uses for a day is forgotten.
  redis.call('EXPIRE', KEYS[1], 86400)
end
return {string.format('%.6f', start - now), epoch}
"""

# A 429 answered the request of `ticket`: pause the kind fleet-wide, halve the rate.
# KEYS: the kind's hash.  ARGV: rate (0: none), burst, ticket, retry-after ('' when
# absent), backoff base, cap, jitter, a uniform random draw in [0, 1), max pause,
# min share, bus channel, kind.
# A ticket older than the current epoch is an echo of a 429 already counted: it may
# lengthen the pause but neither halves the rate nor grows the backoff again.
# Returns {pause seconds (string), epoch}.
RATE_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'paused', 'cur', 'changed', 'epoch', 'strikes')
local paused = tonumber(s[1]) or 0
local cur, changed = tonumber(s[2]) or rate, tonumber(s[3]) or 0
local epoch, strikes = tonumber(s[4]) or 0, tonumber(s[5]) or 0
local echo = tonumber(ARGV[3]) ~= epoch
local pause
if ARGV[4] ~= '' then
  pause = math.min(tonumber(ARGV[4]), tonumber(ARGV[9]))
elseif echo then
  pause = math.max(0, paused - now)
else
  -- The vendor's advice: base, 2 base, 4 base... capped, plus up to `jitter` of it.
  local step = math.min(tonumber(ARGV[6]), tonumber(ARGV[5]) * 2 ^ strikes)
  pause = step + tonumber(ARGV[8]) * step * tonumber(ARGV[7])
end
paused = math.max(paused, now + pause)
redis.call('HSET', KEYS[1], 'paused', string.format('%.6f', paused))
if not echo then
  strikes = strikes + 1
  epoch = epoch + 1
  local slack = 0
  if rate > 0 then
    if cur > rate or cur <= 0 then cur = rate end
    cur = math.max(rate * tonumber(ARGV[10]), cur / 2)
    changed = math.max(changed, now + pause)
    slack = (burst - 1) / cur
  end
  -- After the pause, requests resume at the steady pace: no burst into a service
  -- that just said "too many".
  redis.call('HSET', KEYS[1], 'strikes', strikes, 'epoch', epoch,
    'tat', string.format('%.6f', paused + slack),
    'cur', string.format('%.9g', cur), 'changed', string.format('%.6f', changed))
  redis.call('PUBLISH', ARGV[11], 'penalty ' .. ARGV[12] .. ' ' .. epoch)
end
redis.call('EXPIRE', KEYS[1], 86400)
return {string.format('%.6f', pause), epoch}
"""

# A request of this kind went through: the backoff exponent starts over.
# KEYS: the kind's hash.
RATE_SUCCEEDED = """
if redis.call('HEXISTS', KEYS[1], 'strikes') == 1 then
  redis.call('HSET', KEYS[1], 'strikes', 0)
end
return 0
"""
