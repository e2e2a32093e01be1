"""Limits, reservations and usage in Redis, shared by every worker and replica.

Each check is one Lua script, so it is atomic across processes: two gateways can never both take a
key's last request of the minute or the last dollar of its budget. Windows and expiries use Redis's
own clock (``TIME``), so replicas whose clocks differ share one window; the budget's day and month
are named by the gateway (UTC). The rules are those of ``memory.py``: money is what settled calls
spent plus what live reservations hold, and a reservation never settled (its replica died) lapses.

Layout, per key id K (a single Redis or Sentinel; the scripts touch a key's own keys):
  vg:k:{K}:rq     ZSET lease -> time        requests admitted in the last 60 s (rpm)
  vg:k:{K}:live   ZSET lease -> expiry      requests in flight (max_concurrent; a dead replica's expire)
  vg:k:{K}:tk     ZSET res -> time          token entries in the last 60 s (tpm) ...
  vg:k:{K}:tkv    HASH res -> tokens        ... their sizes (reserved, then real) ...
  vg:k:{K}:tks    STRING                    ... and their sum
  vg:k:{K}:res    ZSET res -> expiry        live reservations ...
  vg:k:{K}:resv   HASH res -> USD           ... what each holds ...
  vg:k:{K}:rsum   STRING                    ... and their sum
  vg:k:{K}:d:DAY  STRING                    USD spent that UTC day (settled calls)
  vg:k:{K}:m:MON  STRING                    ... that month
  vg:k:{K}:u:DAY  HASH model\\tfield -> n    usage by model that day (requests, prompt, completion, cost)
  vg:usage:keys   SET                       the key ids with usage
"""

from __future__ import annotations

import asyncio

import structlog
from redis.exceptions import NoScriptError

from app.services.limits.model import WINDOW_S, Limits, Periods, Verdict, days_between
from app.services.state.connection import Health, StoreUnavailable, guarded

log = structlog.get_logger("vgate.limits")

USAGE_TTL_S = 400 * 86400  # a year and a month of daily usage
USAGE_BATCH = 1000
LEAVE_TRIES = 8  # a lease given back while Redis is away: tried again over about a minute
SPEND_TTL_S = {"d": 3 * 86400, "m": 40 * 86400}

# Shared by the scripts: KEYS[1..10] = rq, live, tk, tkv, res, resv, spend day, spend month, tks, rsum.
# Drops what left the window, leases past expiry and reservations past their hold, keeping the sums.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local function drop(zset, hash, total, upto, float)
  local gone = redis.call('ZRANGEBYSCORE', zset, '-inf', upto)
  if #gone == 0 then return end
  local sum = 0
  for i = 1, #gone, 1000 do
    local part = {unpack(gone, i, math.min(i + 999, #gone))}
    for _, v in ipairs(redis.call('HMGET', hash, unpack(part))) do sum = sum + (tonumber(v) or 0) end
    redis.call('HDEL', hash, unpack(part))
  end
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', upto)
  if redis.call('HLEN', hash) == 0 then redis.call('DEL', total)
  elseif float then redis.call('INCRBYFLOAT', total, -sum)
  else redis.call('DECRBY', total, sum) end
end
drop(KEYS[5], KEYS[6], KEYS[10], now, true)
drop(KEYS[3], KEYS[4], KEYS[9], now - window, false)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local function positive(k)
  local v = tonumber(redis.call('GET', k) or '0')
  if v < 0 then return 0 end
  return v
end
local used = positive(KEYS[9])
local reserved = positive(KEYS[10])
local sd, sm = positive(KEYS[7]) + reserved, positive(KEYS[8]) + reserved
local function tokens_free_in(tpm, want)
  local left = used
  local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    left = left - tonumber(redis.call('HGET', KEYS[4], entries[i]) or '0')
    if left <= 0 or (left + want <= tpm and (want > 0 or left < tpm)) then
      return tonumber(entries[i + 1]) + window - now
    end
  end
  return window
end
local function num(s) if s == '' then return nil end return tonumber(s) end
local function keep(k, ms) redis.call('PEXPIRE', k, math.ceil(ms)) end
"""

# ARGV: window, lease, lease_s, rpm, tpm, max_concurrent, budget_day, budget_month, day_reset_s,
# month_reset_s ('' = no such limit).
_ADMIT = _PRELUDE + """
local lease, lease_s = ARGV[2], tonumber(ARGV[3])
local rpm, tpm, maxc, bday, bmon = num(ARGV[4]), num(ARGV[5]), num(ARGV[6]), num(ARGV[7]), num(ARGV[8])
local nreq = redis.call('ZCARD', KEYS[1])
local limit, retry = '', 0
if maxc and redis.call('ZCARD', KEYS[2]) >= maxc then limit, retry = 'max_concurrent', 1
elseif rpm and nreq >= rpm then
  limit = 'rpm'
  retry = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now
elseif tpm and used >= tpm then limit, retry = 'tpm', tokens_free_in(tpm, 0)
elseif bday and sd >= bday then limit, retry = 'budget_usd_daily', tonumber(ARGV[9])
elseif bmon and sm >= bmon then limit, retry = 'budget_usd_monthly', tonumber(ARGV[10])
end
if limit == '' then
  if maxc then
    redis.call('ZADD', KEYS[2], now + lease_s, lease)
    keep(KEYS[2], lease_s * 1000)
  end
  if rpm then
    redis.call('ZADD', KEYS[1], now, lease)
    keep(KEYS[1], window * 1000)
    nreq = nreq + 1
  end
end
local reset = 0
if nreq > 0 then reset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now end
return {limit, tostring(retry), nreq, tostring(reset), used, tostring(sd), tostring(sm)}
"""

# ARGV: window, res, tokens, cost, hold_s, tpm, budget_day, budget_month, day_reset_s, month_reset_s
_RESERVE = _PRELUDE + """
local res, tokens, cost, hold = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tpm, bday, bmon = num(ARGV[6]), num(ARGV[7]), num(ARGV[8])
local limit, retry = '', 0
if tpm and used > 0 and used + tokens > tpm then limit, retry = 'tpm', tokens_free_in(tpm, tokens)
elseif bday and sd + cost > bday then limit, retry = 'budget_usd_daily', tonumber(ARGV[9])
elseif bmon and sm + cost > bmon then limit, retry = 'budget_usd_monthly', tonumber(ARGV[10])
end
if limit == '' then
  if tpm then
    redis.call('ZADD', KEYS[3], now, res)
    redis.call('HSET', KEYS[4], res, tokens)
    redis.call('INCRBY', KEYS[9], tokens)
    for i = 3, 9, 6 do keep(KEYS[i], window * 1000) end
    keep(KEYS[4], window * 1000)
    used = used + tokens
  end
  redis.call('ZADD', KEYS[5], now + hold, res)
  redis.call('HSET', KEYS[6], res, ARGV[4])
  redis.call('INCRBYFLOAT', KEYS[10], cost)
  keep(KEYS[5], hold * 1000)
  keep(KEYS[6], hold * 1000)
  keep(KEYS[10], hold * 1000)
  sd, sm = sd + cost, sm + cost
end
return {limit, tostring(retry), 0, '0', used, tostring(sd), tostring(sm)}
"""

# KEYS[11] usage hash, KEYS[12] the usage index. ARGV: window, res ('' = none), model, prompt,
# completion, cost, count_tokens (1/0), key id, day ttl, month ttl, served (1/0)
_SETTLE = _PRELUDE + """
local res, model = ARGV[2], ARGV[3]
local prompt, completion, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if res ~= '' then
  local held = redis.call('HGET', KEYS[6], res)
  if held then
    redis.call('HDEL', KEYS[6], res)
    redis.call('ZREM', KEYS[5], res)
    if redis.call('HLEN', KEYS[6]) == 0 then redis.call('DEL', KEYS[10])
    else redis.call('INCRBYFLOAT', KEYS[10], -tonumber(held)) end
  end
end
if cost > 0 then
  redis.call('INCRBYFLOAT', KEYS[7], cost)
  redis.call('INCRBYFLOAT', KEYS[8], cost)
  redis.call('EXPIRE', KEYS[7], tonumber(ARGV[9]))
  redis.call('EXPIRE', KEYS[8], tonumber(ARGV[10]))
end
local total = prompt + completion
local was = nil
if res ~= '' then was = redis.call('HGET', KEYS[4], res) end
if was then
  redis.call('HSET', KEYS[4], res, total)
  redis.call('INCRBY', KEYS[9], total - tonumber(was))
elseif ARGV[7] == '1' and total > 0 then
  local id = res
  if id == '' then id = 'u' .. tostring(now) .. ':' .. tostring(math.random(1000000)) end
  redis.call('ZADD', KEYS[3], now, id)
  redis.call('HSET', KEYS[4], id, total)
  redis.call('INCRBY', KEYS[9], total)
  for i = 3, 9, 6 do keep(KEYS[i], window * 1000) end
  keep(KEYS[4], window * 1000)
end
if ARGV[11] == '1' then
  redis.call('HINCRBY', KEYS[11], model .. '\\trequests', 1)
  redis.call('HINCRBY', KEYS[11], model .. '\\tprompt', prompt)
  redis.call('HINCRBY', KEYS[11], model .. '\\tcompletion', completion)
  redis.call('HINCRBYFLOAT', KEYS[11], model .. '\\tcost', cost)
  redis.call('EXPIRE', KEYS[11], %d)
  redis.call('SADD', KEYS[12], ARGV[8])
end
return 1
""" % USAGE_TTL_S


def _keys(key: str, periods: Periods) -> list[str]:
    p = f"vg:k:{{{key}}}:"
    return [p + "rq", p + "live", p + "tk", p + "tkv", p + "res", p + "resv", f"{p}d:{periods.day}",
            f"{p}m:{periods.month}", p + "tks", p + "rsum"]


def _arg(v) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def _verdict(raw) -> Verdict:
    limit, retry, nreq, reset, used, sd, sm = raw
    limit = limit.decode() if isinstance(limit, bytes) else limit
    return Verdict(limit=limit or None, retry_after_s=float(retry), requests_used=int(nreq),
                   requests_reset_s=float(reset), tokens_used=int(float(used)), spent_day=float(sd),
                   spent_month=float(sm))


class RedisLimitStore:
    """Keys' limits, reservations and usage in Redis, each check one atomic Lua script (shared by replicas)."""
    def __init__(self, redis, health: Health | None = None) -> None:
        self.redis = redis
        self.health = health
        self._admit = redis.register_script(_ADMIT)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._queued: list[tuple] = []  # settlements waiting for the next pipeline ...
        self._leaving: list[tuple[str, str, int]] = []  # ... and leases to give back (key, lease, tries)
        self._flushing: asyncio.Task | None = None

    def record(self, *settlement) -> None:
        """``settle`` in the background: settlements (and leases given back) that arrive together go
        to Redis in one pipeline (one round trip and one task for many calls, not one each)."""
        self._queued.append(settlement)
        self._schedule()

    def leave_soon(self, key: str, lease: str, tries: int = 0) -> None:
        """``leave`` in the background, with the next settlements; retried while Redis is away (else
        the lease would hold a max_concurrent slot until it expires)."""
        self._leaving.append((key, lease, tries))
        self._schedule()

    def _schedule(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._queued or self._leaving:
                batch, self._queued = self._queued, []
                leaving, self._leaving = self._leaving, []
                try:
                    await guarded(self._settle_batch(batch, leaving), "limits_settle", self.health)
                except StoreUnavailable:
                    for s in batch:
                        log.warning("usage_not_recorded", key_id=s[0], model=s[2], prompt_tokens=s[3],
                                    completion_tokens=s[4], cost_usd=s[5])
                    retry = [(k, lease, n + 1) for k, lease, n in leaving if n + 1 < LEAVE_TRIES]
                    if retry:
                        asyncio.get_running_loop().call_later(
                            2 ** retry[0][2] / 4, lambda r=retry: [self.leave_soon(*x) for x in r])
        finally:
            self._flushing = None

    async def _settle_batch(self, batch: list[tuple], leaving: list[tuple[str, str, int]]) -> None:
        """EVALSHA each in one pipeline (redis-py's script objects would add a SCRIPT EXISTS round
        trip to every pipeline), after the leases' ZREMs; a Redis that lost its scripts (restarted)
        gets the script again."""
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for key, lease, _ in leaving:
                pipe.zrem(f"vg:k:{{{key}}}:live", lease)
            for s in batch:
                keys, args = self._settle_call(*s)
                pipe.evalsha(self._settle.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            leaving = []  # given back, whatever happens next
            results = results[len(results) - len(batch):]
            lost = [s for s, r in zip(batch, results, strict=True) if isinstance(r, NoScriptError)]
            failed = next((r for r in results if isinstance(r, Exception) and not isinstance(r, NoScriptError)),
                          None)
            if failed is not None:
                raise failed
            if not lost:
                return
            if attempt == 0:
                await self.redis.script_load(_SETTLE)
                batch = lost
        raise NoScriptError("the settle script could not be loaded")

    async def drain(self) -> None:
        """Every settlement recorded so far has reached Redis (or been given up)."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def admit(self, key: str, limits: Limits, lease: str, lease_s: float, periods: Periods) -> Verdict:
        """Admit a request of the key (rpm, max_concurrent, budgets) and take a concurrency lease, or say which limit
        refuses."""
        raw = await guarded(self._admit(keys=_keys(key, periods), args=[
            WINDOW_S, lease, lease_s, _arg(limits.rpm), _arg(limits.tpm), _arg(limits.max_concurrent),
            _arg(limits.budget_usd_daily), _arg(limits.budget_usd_monthly), periods.day_reset_s,
            periods.month_reset_s]), "limits_admit", self.health)
        return _verdict(raw)

    async def leave(self, key: str, lease: str) -> None:
        """Give back a request's concurrency lease."""
        await guarded(self.redis.zrem(f"vg:k:{{{key}}}:live", lease), "limits_leave", self.health)

    async def reserve(self, key: str, limits: Limits, res: str, tokens: int, cost: float, hold_s: float,
                      periods: Periods) -> Verdict:
        """Reserve a call's estimated tokens and cost against tpm and the budgets, or say which limit refuses."""
        raw = await guarded(self._reserve(keys=_keys(key, periods), args=[
            WINDOW_S, res, tokens, repr(float(cost)), hold_s, _arg(limits.tpm), _arg(limits.budget_usd_daily),
            _arg(limits.budget_usd_monthly), periods.day_reset_s, periods.month_reset_s]), "limits_reserve",
            self.health)
        return _verdict(raw)

    async def settle(self, key: str, res: str | None, model: str, prompt: int, completion: int, cost: float,
                     count_tokens: bool, served: bool, periods: Periods) -> None:
        """Replace a call's reservation with its real usage, and add it to the usage report."""
        keys, args = self._settle_call(key, res, model, prompt, completion, cost, count_tokens, served, periods)
        await guarded(self._settle(keys=keys, args=args), "limits_settle", self.health)

    @staticmethod
    def _settle_call(key: str, res: str | None, model: str, prompt: int, completion: int, cost: float,
                     count_tokens: bool, served: bool, periods: Periods) -> tuple[list, list]:
        keys = [*_keys(key, periods), f"vg:k:{{{key}}}:u:{periods.day}", "vg:usage:keys"]
        return keys, [WINDOW_S, res or "", model, prompt, completion, repr(float(cost)), "1" if count_tokens else "0",
                      key, SPEND_TTL_S["d"], SPEND_TTL_S["m"], "1" if served else "0"]

    async def usage(self, since: str, until: str, key: str | None, model: str | None) -> list[dict]:
        """Usage rows by UTC day, key and model, filtered by the range, key and model given."""
        if key is not None:
            keys = [key]
        else:
            keys = sorted(k.decode() for k in await guarded(self.redis.smembers("vg:usage:keys"), "usage",
                                                             self.health))
        days = days_between(since, until)
        pairs = [(d, k) for d in days for k in keys]
        results = []
        for i in range(0, len(pairs), USAGE_BATCH):  # bounded pipelines, however many keys and days
            pipe = self.redis.pipeline(transaction=False)
            for d, k in pairs[i:i + USAGE_BATCH]:
                pipe.hgetall(f"vg:k:{{{k}}}:u:{d}")
            results += await guarded(pipe.execute(), "usage", self.health)
        rows = []
        for (d, k), fields in zip(pairs, results, strict=True):
            by_model: dict[str, dict] = {}
            for f, v in fields.items():
                m, _, what = f.decode().rpartition("\t")
                by_model.setdefault(m, {})[what] = v.decode()
            for m in sorted(by_model):
                if model is not None and m != model:
                    continue
                row = by_model[m]
                rows.append({"day": d, "key": k, "model": m, "requests": int(row.get("requests", 0)),
                             "prompt_tokens": int(row.get("prompt", 0)),
                             "completion_tokens": int(row.get("completion", 0)),
                             "cost_usd": float(row.get("cost", 0.0))})
        return rows

    async def ping(self) -> bool:
        """Whether Redis answers (a failure raises StoreUnavailable)."""
        await guarded(self.redis.ping(), "ping", self.health)
        return True
