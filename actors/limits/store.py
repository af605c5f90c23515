"""Per-key RPM/TPM windows and monthly budgets per key and per account, enforced in Redis by
reserve-then-settle, exact under concurrency across every replica (issue 19; docs/limits.md).

``reserve`` is one Lua script, so one round trip: it releases expired reservations, checks the
RPM window, the TPM window and both budgets (spent + held + this call <= budget), and only if
all pass records the request, its tokens and its worst-case cost. Redis runs a script alone,
so no two replicas can both see room that only one of them may take. ``settle`` (one script)
replaces the reservation by the real usage, once.

Clock: Redis's TIME, so every replica agrees on windows and on the month. The month ("YYYY-MM",
UTC) is part of the key names, which a script must be given up front: the caller guesses it from
its own clock and the script checks it against TIME; on a mismatch (only at a month boundary,
within the replicas' clock skew) it changes nothing and names the month, and the call is sent
again with it.

Money never passes through a Lua double: the sums are Redis's 64-bit integer commands
(HINCRBY) on decimal strings, and the script compares them in two 9-digit limbs, so budgets are
exact up to ``core.limits.MAX_MICRO`` (2^62 micro cost_units). Token counts and times are Lua
doubles, exact below 2^53 (``core.limits.MAX_RATE`` caps a limit at 2^50)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from actors.metering.record import current_month
from core.limits import MAX_MICRO, Limits, RateHeaders
from core.money import cost_units_text

PREFIX = "neuroapi:limits"
WINDOW_MS = 60_000  # RPM and TPM: a sliding minute
WINDOW_MARGIN_MS = 5_000  # a window's keys outlive their newest entry by this much
MONTH_TTL_S = 35 * 86400  # refreshed on every write: a month's counters outlive the month
DEFAULT_RESERVATION_TTL_S = 600 + 120  # the default request deadline (settings) + a margin

KINDS = ("key_budget", "account_budget", "tpm", "rpm")  # a tie in retry-after goes to the first


def requests_key(key_prefix: str) -> str:
    return f"{PREFIX}:key:{key_prefix}:requests"


def tokens_key(key_prefix: str) -> str:
    return f"{PREFIX}:key:{key_prefix}:tokens"


def tokens_sum_key(key_prefix: str) -> str:
    return f"{PREFIX}:key:{key_prefix}:tokens_sum"


def month_key(owner: str, month: str) -> str:
    """``owner`` is ``key:<prefix>`` or ``account:<id>``: a hash of ``spent`` and ``held``."""
    return f"{PREFIX}:{owner}:month:{month}"


def held_key(owner: str, month: str) -> str:
    """The outstanding reservations of ``owner`` in ``month``: members ``<id>|<cost>``, scored by
    their expiry (ms)."""
    return f"{PREFIX}:{owner}:held:{month}"


# Shared by the scripts: the clock, the month of a time, and money compared without doubles.
_PRELUDE = """
local function clock(arg)
  local now = tonumber(arg)
  if now and now > 0 then return now end  -- a test's clock; production passes 0
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- "YYYY-MM" (UTC) of a time in ms: Howard Hinnant's civil_from_days.
local function month_of(ms)
  local z = math.floor(ms / 86400000) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d', y, m)
end

-- A non-negative decimal string as (high, low) 9-digit limbs: exact in doubles up to 10^19.
local function limbs(s)
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end

-- a + b + c <= limit, exactly, on decimal strings (a negative one, never expected, reads as 0).
local function fits(a, b, c, limit)
  if string.sub(a, 1, 1) == '-' then a = '0' end
  if string.sub(b, 1, 1) == '-' then b = '0' end
  local ah, al = limbs(a)
  local bh, bl = limbs(b)
  local ch, cl = limbs(c)
  local lh, ll = limbs(limit)
  local lo = al + bl + cl
  local hi = ah + bh + ch + math.floor(lo / 1000000000)
  lo = lo % 1000000000
  return hi < lh or (hi == lh and lo <= ll)
end

local function amount(member)  -- the number after the last '|' of a member
  return string.match(member, '|(%d+)$') or '0'
end

local function field(hash, name)
  return redis.call('HGET', hash, name) or '0'
end

-- Drop the reservations of a held set that expired by ``now`` (their replica never settled).
local function release_expired(held, month_hash, now)
  local gone = redis.call('ZRANGEBYSCORE', held, '-inf', now)
  for _, member in ipairs(gone) do
    local cost = amount(member)
    if cost ~= '0' then redis.call('HINCRBY', month_hash, 'held', '-' .. cost) end
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', held, '-inf', now) end
  if redis.call('ZCARD', held) == 0 then redis.call('HDEL', month_hash, 'held') end
end
"""

_RESERVE = _PRELUDE + """
-- KEYS: 1 requests zset  2 tokens zset  3 tokens sum  4 key month hash  5 key held zset
--       6 account month hash  7 account held zset
-- ARGV: 1 now override (0 = TIME)  2 month expected  3 reservation id  4 tokens  5 cost (micro)
--       6 rpm  7 tpm  8 key budget  9 account budget ('' = none)  10 reservation ttl ms
--       11 window ms  12 window keys ttl ms  13 month keys ttl s  14 '1' = budgets tracked
local now = clock(ARGV[1])
local month = month_of(now)
if month ~= ARGV[2] then return {'month', month} end
local rid, tokens, cost = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local window = tonumber(ARGV[11])
local budgets = ARGV[14] == '1'
local tpm_set = ARGV[7] ~= ''
local failed = {}
local ttl = tonumber(ARGV[10])

-- 0. a client's retry of a reservation Redis already made (its reply was lost) counts nothing
-- twice: it is found by its id and answered as made, at its first time
local at = now
local mark
if budgets then
  mark = redis.call('ZSCORE', KEYS[5], rid .. '|' .. cost)
  if mark then at = tonumber(mark) - ttl end
elseif tpm_set then
  mark = redis.call('ZSCORE', KEYS[2], rid .. '|' .. ARGV[4])
  if mark then at = tonumber(mark) end
elseif ARGV[6] ~= '' then
  mark = redis.call('ZSCORE', KEYS[1], rid)
  if mark then at = tonumber(mark) end
end
local replay = mark and true or false

-- 1. reservations of calls that never settled (a replica died) are released at their expiry
if budgets then
  release_expired(KEYS[5], KEYS[4], now)
  release_expired(KEYS[7], KEYS[6], now)
end

-- 2. RPM: the requests of the last window (refused ones were never added)
local rpm = tonumber(ARGV[6])
local requests, requests_retry = 0, 0
if rpm then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  requests = redis.call('ZCARD', KEYS[1])
  if requests >= rpm and not replay then
    -- room once all but rpm - 1 of them have left the window (rpm may have been lowered)
    local entry = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
    requests_retry = tonumber(entry[2]) + window - now
    failed[#failed + 1] = 'rpm'
  end
end

-- 3. TPM: tokens of the last window (reserved until settled, then the real ones), kept as a
-- running sum so a check costs the entries leaving the window, not the whole window
local tpm = tonumber(ARGV[7])
local used, tokens_retry = 0, 0
if tpm then
  local cutoff = now - window
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  if #gone > 0 then
    local leaving = 0
    for _, member in ipairs(gone) do leaving = leaving + tonumber(amount(member)) end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
    redis.call('DECRBY', KEYS[3], string.format('%d', leaving))
  end
  if redis.call('ZCARD', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[3])
  else
    used = tonumber(redis.call('GET', KEYS[3]) or '0')
  end
  if used + tokens > tpm and not replay then
    failed[#failed + 1] = 'tpm'
    tokens_retry = -1  -- this call alone is over the limit: no wait makes it fit
    if tokens <= tpm then
      tokens_retry = window
      local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
      local freed = 0
      for i = 1, #entries, 2 do
        freed = freed + tonumber(amount(entries[i]))
        if used - freed + tokens <= tpm then
          tokens_retry = tonumber(entries[i + 1]) + window - now
          break
        end
      end
    end
  end
end

-- 4. budgets of this month: spent + held (outstanding reservations) + this call <= budget
local key_spent, key_held, account_spent, account_held = '0', '0', '0', '0'
if budgets then
  key_spent, key_held = field(KEYS[4], 'spent'), field(KEYS[4], 'held')
  account_spent, account_held = field(KEYS[6], 'spent'), field(KEYS[6], 'held')
  if ARGV[8] ~= '' and not replay and not fits(key_spent, key_held, cost, ARGV[8]) then
    failed[#failed + 1] = 'key_budget'
  end
  if ARGV[9] ~= '' and not replay and not fits(account_spent, account_held, cost, ARGV[9]) then
    failed[#failed + 1] = 'account_budget'
  end
end

-- 5. all fit: record the call; a refused call recorded nothing
if #failed == 0 and not replay then
  if rpm then
    redis.call('ZADD', KEYS[1], now, rid)
    redis.call('PEXPIRE', KEYS[1], ARGV[12])
    requests = requests + 1
  end
  if tpm then
    redis.call('ZADD', KEYS[2], now, rid .. '|' .. ARGV[4])
    redis.call('INCRBY', KEYS[3], ARGV[4])
    redis.call('PEXPIRE', KEYS[2], ARGV[12])
    redis.call('PEXPIRE', KEYS[3], ARGV[12])
    used = used + tokens
  end
  if budgets then
    local member = rid .. '|' .. cost
    local expiry = now + ttl
    redis.call('ZADD', KEYS[5], expiry, member)
    redis.call('ZADD', KEYS[7], expiry, member)
    redis.call('HINCRBY', KEYS[4], 'held', cost)
    redis.call('HINCRBY', KEYS[6], 'held', cost)
    for i = 4, 7 do redis.call('EXPIRE', KEYS[i], ARGV[13]) end
  end
end

-- until the windows hold nothing of the key (OpenAI's x-ratelimit-reset-*)
local function reset(zset)
  local newest = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if newest[2] then return math.max(tonumber(newest[2]) + window - now, 0) end
  return 0
end
local requests_reset, tokens_reset = 0, 0
if rpm then requests_reset = reset(KEYS[1]) end
if tpm then tokens_reset = reset(KEYS[2]) end
return {#failed == 0 and 'ok' or 'refused', at, table.concat(failed, ','),
        requests, requests_retry, requests_reset, used, tokens_retry, tokens_reset,
        key_spent, key_held, account_spent, account_held}
"""

_SETTLE = _PRELUDE + """
-- KEYS: 1 tokens zset  2 tokens sum  3 key month hash  4 key held zset  5 account month hash
--       6 account held zset
-- ARGV: 1 reservation id  2 reserved tokens  3 real tokens  4 reserved at (ms)
--       5 reserved cost  6 real cost  7 '1' = tokens tracked  8 '1' = budgets tracked
--       9 month keys ttl s  10 now override (0 = TIME)  11 the reservation's expiry (ms)
-- Past its expiry a reservation is released (maybe already reused by other calls), so a late
-- settle counts nothing: counting it could overshoot a budget.
if clock(ARGV[10]) >= tonumber(ARGV[11]) then return 0 end
local rid = ARGV[1]
local settled = 0
if ARGV[8] == '1' then
  -- the key's held entry is the reservation: gone = settled already
  local member = rid .. '|' .. ARGV[5]
  if redis.call('ZREM', KEYS[4], member) == 0 then return 0 end
  if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[3], 'held', '-' .. ARGV[5]) end
  if redis.call('ZCARD', KEYS[4]) == 0 then redis.call('HDEL', KEYS[3], 'held') end
  redis.call('HINCRBY', KEYS[3], 'spent', ARGV[6])
  -- the account's entry may already be released (expired, seen by another key's call)
  if redis.call('ZREM', KEYS[6], member) == 1 and ARGV[5] ~= '0' then
    redis.call('HINCRBY', KEYS[5], 'held', '-' .. ARGV[5])
  end
  if redis.call('ZCARD', KEYS[6]) == 0 then redis.call('HDEL', KEYS[5], 'held') end
  redis.call('HINCRBY', KEYS[5], 'spent', ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[9])
  redis.call('EXPIRE', KEYS[5], ARGV[9])
  settled = 1
end
if ARGV[7] == '1' then
  local ttl = redis.call('PTTL', KEYS[1])  -- removing the only entry deletes the key: keep its ttl
  if redis.call('ZREM', KEYS[1], rid .. '|' .. ARGV[2]) == 1 then
    -- still in the window: the entry keeps its time and now counts the real tokens
    redis.call('ZADD', KEYS[1], ARGV[4], rid .. '|' .. ARGV[3])
    local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
    if delta ~= 0 then redis.call('INCRBY', KEYS[2], string.format('%d', delta)) end
    if ttl > 0 then
      redis.call('PEXPIRE', KEYS[1], ttl)
      redis.call('PEXPIRE', KEYS[2], ttl)
    end
    settled = 1
  end
end
return settled
"""

_SPENT = _PRELUDE + """
-- KEYS: (month hash, held zset) pairs  ARGV: 1 now override  2 month expected
local now = clock(ARGV[1])
local month = month_of(now)
if month ~= ARGV[2] then return {'month', month} end
local out = {'ok', now}
for i = 1, #KEYS, 2 do
  release_expired(KEYS[i + 1], KEYS[i], now)
  out[#out + 1] = field(KEYS[i], 'spent')
  out[#out + 1] = field(KEYS[i], 'held')
end
return out
"""

_SEED = _PRELUDE + """
-- KEYS: month hashes  ARGV: 1 now override  2 month  3 '1' = month must be this one
--       4 spent (micro)  5 month keys ttl s
if ARGV[3] == '1' then
  local month = month_of(clock(ARGV[1]))
  if month ~= ARGV[2] then return {'month', month} end
end
local seed = ARGV[4]
for _, hash in ipairs(KEYS) do
  local spent = field(hash, 'spent')
  -- raise only: what this month's settled calls already counted is never lowered
  if #seed > #spent or (#seed == #spent and seed > spent) then
    redis.call('HSET', hash, 'spent', seed)
  end
  redis.call('EXPIRE', hash, ARGV[5])
end
return {'ok'}
"""


@dataclass(frozen=True, slots=True)
class Reserved:
    """A call's reservation: pass it to ``LimitStore.settle`` once the call has ended."""

    reservation_id: str
    key_prefix: str
    account_id: str
    month: str
    at_ms: int  # Redis's time of the reservation
    expires_at_ms: int  # released then if not settled; a settle from then on counts nothing
    tokens: int
    cost_micro: int
    tracks_tokens: bool
    tracks_budget: bool
    headers: RateHeaders


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was recorded. ``kind`` is the limit with the longest wait when several are over."""

    kind: str  # "rpm" | "tpm" | "key_budget" | "account_budget"
    retry_after_s: float | None  # None: this call alone is over the limit, waiting cannot help
    headers: RateHeaders
    kinds: tuple[str, ...]  # every limit the call was over
    budget_micro: int | None = None  # for a budget refusal: the budget, and what is left of it
    left_micro: int | None = None


@dataclass(frozen=True, slots=True)
class MonthSpend:
    month: str
    key_spent_micro: int
    key_reserved_micro: int  # outstanding reservations
    account_spent_micro: int
    account_reserved_micro: int

    def as_dict(self) -> dict[str, Any]:
        return {"month": self.month,
                "key": {"spent_micro": self.key_spent_micro, "reserved_micro": self.key_reserved_micro},
                "account": {"spent_micro": self.account_spent_micro,
                            "reserved_micro": self.account_reserved_micro}}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    return int(_text(value))


def next_month_ms(now_ms: int) -> int:
    """The start (ms, UTC) of the month after the one ``now_ms`` is in."""
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def _check_amount(name: str, value: int, high: int) -> None:
    if type(value) is not int or not 0 <= value <= high:
        raise ValueError(f"{name} must be a whole number from 0 to {high}")


class LimitStore:
    """``reservation_ttl_s``: how long a reservation holds budget if its call never settles (its
    replica died); above the longest call (the request deadline) with a margin, or a slow
    call's settle finds its reservation gone and counts nothing. ``clock`` (ms) is for tests:
    by default the scripts read Redis's TIME."""

    def __init__(self, redis: aioredis.Redis, *,
                 reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
                 clock: Callable[[], int] | None = None):
        if reservation_ttl_s <= 0:
            raise ValueError("reservation_ttl_s must be positive")
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._spent = redis.register_script(_SPENT)
        self._seed = redis.register_script(_SEED)

    def _now_arg(self) -> str:
        return str(self._clock()) if self._clock else "0"

    def _month_guess(self) -> str:
        return current_month(self._clock() if self._clock else int(time.time() * 1000))

    async def _in_month(self, run: Callable[[str], Awaitable[Any]]) -> tuple[str, list[Any]]:
        """Run a month-checked script with the month this replica's clock says; at a month
        boundary where Redis's clock disagrees, again with Redis's month."""
        month = self._month_guess()
        for _ in range(3):
            reply = await run(month)
            if _text(reply[0]) != "month":
                return month, reply
            month = _text(reply[1])
        raise RuntimeError("the month kept changing between calls")  # two boundaries in 3 calls

    async def reserve(self, key_prefix: str, account_id: str, limits: Limits, tokens: int,
                      cost_micro: int, request_id: str) -> Reserved | Refused:
        """Reserve a call's worst case (``tokens``: prompt estimate + max completion tokens;
        ``cost_micro``: their price) against every limit set in ``limits``, in one round trip.
        Call only when ``limits.counted()``. A connection error leaves it unknown whether the
        reservation was made; one that was made is released at its expiry."""
        if not key_prefix or not account_id:
            raise ValueError("a reservation needs the key prefix and its account id")
        _check_amount("tokens", tokens, 2**50)
        _check_amount("cost_micro", cost_micro, MAX_MICRO)
        rid = f"{request_id}.{secrets.token_hex(4)}"  # unique even if a request id repeats
        budgets = limits.budgeted()
        key_owner, account_owner = f"key:{key_prefix}", f"account:{account_id}"

        def run(month: str) -> Awaitable[Any]:
            keys = [requests_key(key_prefix), tokens_key(key_prefix), tokens_sum_key(key_prefix),
                    month_key(key_owner, month), held_key(key_owner, month),
                    month_key(account_owner, month), held_key(account_owner, month)]
            args = [self._now_arg(), month, rid, str(tokens), str(cost_micro),
                    _opt(limits.rpm), _opt(limits.tpm), _opt(limits.key_budget_micro),
                    _opt(limits.account_budget_micro), self._ttl_ms, WINDOW_MS,
                    WINDOW_MS + WINDOW_MARGIN_MS, MONTH_TTL_S, "1" if budgets else "0"]
            return self._reserve(keys=keys, args=args)

        month, reply = await self._in_month(run)
        (status, now_ms, failed, requests, requests_retry, requests_reset, used, tokens_retry,
         tokens_reset, key_spent, key_held, account_spent, account_held) = reply
        now_ms = _int(now_ms)
        headers = RateHeaders(
            request_limit=limits.rpm, requests_remaining=(limits.rpm or 0) - _int(requests),
            requests_reset_ms=_int(requests_reset),
            token_limit=limits.tpm, tokens_remaining=(limits.tpm or 0) - _int(used),
            tokens_reset_ms=_int(tokens_reset))
        if _text(status) == "ok":
            return Reserved(rid, key_prefix, account_id, month, now_ms, now_ms + self._ttl_ms, tokens,
                            cost_micro, limits.tpm is not None, budgets, headers)

        kinds = tuple(k for k in KINDS if k in _text(failed).split(","))
        waits: dict[str, float | None] = {
            "rpm": _int(requests_retry) / 1000,
            "tpm": None if _int(tokens_retry) < 0 else _int(tokens_retry) / 1000}
        budget_of = {"key_budget": (limits.key_budget_micro, _int(key_spent) + _int(key_held)),
                     "account_budget": (limits.account_budget_micro,
                                        _int(account_spent) + _int(account_held))}
        for kind in kinds:
            if kind in budget_of:  # a new month empties the counters; a call over the budget alone never fits
                too_big = cost_micro > (budget_of[kind][0] or 0)
                waits[kind] = None if too_big else (next_month_ms(now_ms) - now_ms) / 1000
        kind = kinds[0]
        for other in kinds[1:]:
            if waits[kind] is not None and (waits[other] is None or waits[other] > waits[kind]):
                kind = other
        budget = left = None
        if kind in budget_of:
            budget, committed = budget_of[kind]
            left = max((budget or 0) - committed, 0)
        return Refused(kind, waits[kind], headers, kinds, budget, left)

    async def settle(self, reserved: Reserved, tokens: int, cost_micro: int) -> bool:
        """Replace the reservation by the call's real usage and release the rest. True when this
        call counted it; False when there was nothing to count: settled already, or at/after its
        expiry (released: counting it then could overshoot a budget; the metering still has it)."""
        _check_amount("tokens", tokens, 2**50)
        _check_amount("cost_micro", cost_micro, MAX_MICRO)
        if not (reserved.tracks_tokens or reserved.tracks_budget):
            return False  # RPM only: the request itself was the whole count
        key_owner, account_owner = f"key:{reserved.key_prefix}", f"account:{reserved.account_id}"
        keys = [tokens_key(reserved.key_prefix), tokens_sum_key(reserved.key_prefix),
                month_key(key_owner, reserved.month), held_key(key_owner, reserved.month),
                month_key(account_owner, reserved.month), held_key(account_owner, reserved.month)]
        args = [reserved.reservation_id, str(reserved.tokens), str(tokens), reserved.at_ms,
                str(reserved.cost_micro), str(cost_micro),
                "1" if reserved.tracks_tokens else "0", "1" if reserved.tracks_budget else "0",
                MONTH_TTL_S, self._now_arg(), reserved.expires_at_ms]
        return bool(_int(await self._settle(keys=keys, args=args)))

    async def spent(self, key_prefix: str | None, account_id: str | None) -> MonthSpend:
        """This month's spend (settled) and outstanding reservations of a key and/or an account
        (0 for the one not asked, or never counted)."""
        owners = _owners(key_prefix, account_id)

        def run(month: str) -> Awaitable[Any]:
            keys = [k for owner in owners for k in (month_key(owner, month), held_key(owner, month))]
            return self._spent(keys=keys, args=[self._now_arg(), month])

        month, reply = await self._in_month(run)
        values = iter(_int(v) for v in reply[2:])
        found = {owner: (next(values), next(values)) for owner in owners}
        key = found.get(f"key:{key_prefix}", (0, 0))
        account = found.get(f"account:{account_id}", (0, 0))
        return MonthSpend(month, key[0], key[1], account[0], account[1])

    async def seed_month(self, key_prefix: str | None = None, account_id: str | None = None, *,
                         spent_micro: int, month: str | None = None) -> str:
        """Raise a month's counted spend to ``spent_micro`` (never lower it): for a budget set
        mid-month, from the usage counters. ``month`` None = this month by Redis's clock.
        Returns the month seeded."""
        _check_amount("spent_micro", spent_micro, MAX_MICRO)
        owners = _owners(key_prefix, account_id)

        def run(chosen: str) -> Awaitable[Any]:
            return self._seed(keys=[month_key(owner, chosen) for owner in owners],
                              args=[self._now_arg(), chosen, "0" if month else "1", str(spent_micro),
                                    MONTH_TTL_S])

        if month is not None:
            await run(month)
            return month
        seeded, _ = await self._in_month(run)
        return seeded


def _owners(key_prefix: str | None, account_id: str | None) -> list[str]:
    owners = [o for o in (key_prefix and f"key:{key_prefix}", account_id and f"account:{account_id}") if o]
    if not owners:
        raise ValueError("name a key prefix or an account id")
    return owners


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def budget_view(limits: Limits, spend: MonthSpend, key_prefix: str | None) -> dict[str, Any]:
    """What ``GET /v1/usage`` shows of a key's (or only an account's) budgets this month: each
    budget, what its calls spent, what calls in flight hold, and what is left (cost_units text)."""
    def one(budget: int | None, spent: int, held: int) -> dict[str, Any]:
        left = None if budget is None else cost_units_text(max(budget - spent - held, 0))
        return {"monthly_budget_cost_units": None if budget is None else cost_units_text(budget),
                "spent_cost_units": cost_units_text(spent), "reserved_cost_units": cost_units_text(held),
                "left_cost_units": left}
    view: dict[str, Any] = {"month": spend.month,
                            "account": one(limits.account_budget_micro, spend.account_spent_micro,
                                           spend.account_reserved_micro)}
    if key_prefix is not None:
        view["key"] = {"prefix": key_prefix, "rpm": limits.rpm, "tpm": limits.tpm,
                       "models": sorted(limits.models) if limits.models is not None else None,
                       **one(limits.key_budget_micro, spend.key_spent_micro, spend.key_reserved_micro)}
    return view
