"""How agent runs are laid out in Redis, and what both their writer and their followers use of it.

Layout (``{<run_id>}`` is a hash tag: a run's keys share one cluster slot):

- ``vg:run:{<run_id>}:events``: a stream, one entry per event, entry id ``0-<event id>`` (events are
  numbered 1, 2, 3, ..., so ``Last-Event-ID: n`` is the stream id ``0-n``), fields ``event`` and
  ``data`` (its JSON, as the SSE stream writes it: ``event_json``);
- ``vg:run:{<run_id>}:meta``: a hash: ``owner`` (the API key id that started it, empty without
  keys), ``replica`` (the one running it), ``session_id``, ``model`` (empty while unknown),
  ``finished`` (``0`` or ``1``: once ``1`` the stream takes no more entries), ``at`` (Redis's clock,
  ms, at the last append), ``lost`` (``1``: ended by a follower, ``run_lost``, not by its writer);
- ``vg:run:{<run_id>}:followers``: a sorted set of the replicas whose clients follow the run, each
  scored by when that presence ends (Redis's clock, ms): the replica that runs the run does not
  cancel it for want of clients while one is there. The key expires with its last presence;
- ``vg:replica:<replica>``: present while that replica is alive (renewed every few seconds).
"""

from __future__ import annotations

import json

from app.services.agent.runs import AgentEvent

BATCH = 256  # stream entries per write, and per read

NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: events, meta, the replica's key. ARGV: the error event's data, TTL (ms), silence (ms; -1: the
# run's own writer seals it, whatever its replica). Ends a run's log once, unless it is finished (or
# gone): a follower only when the replica is gone AND nothing was appended for ``silence`` ms (a
# replica slow to renew its key is not taken for dead while it writes). The error is appended unless
# the log already ends with its last event; then ``finished`` is 1: the writer's appends are refused.
SEAL = NOW_MS + """
local meta = redis.call('HMGET', KEYS[2], 'finished', 'at')
if meta[1] ~= '0' then return 0 end
local silence = tonumber(ARGV[3])
if silence >= 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
  if now - tonumber(meta[2] or '0') < silence then return 0 end
end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq, last = 0, nil
if #top > 0 then
  seq = tonumber(string.match(top[1][1], '-(%d+)$'))
  last = top[1][2][2]
end
if last ~= 'final' and last ~= 'error' then
  redis.call('XADD', KEYS[1], '0-' .. (seq + 1), 'event', 'error', 'data', ARGV[1])
end
redis.call('HSET', KEYS[2], 'finished', '1', 'lost', silence >= 0 and '1' or '0')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""


def _lost(message: str) -> str:
    return json.dumps({"status": 503, "type": "run_lost", "retryable": True, "message": message})


RUN_LOST = _lost("the gateway replica running this run stopped (or lost the shared store) before it finished; "
                 "send it again")  # sealed by a follower
LOG_LOST = _lost("this run's last events never reached the shared store (it was unreachable) and are lost; "
                 "send it again if you need them")  # sealed late by the run's own writer


def run_keys(run_id: str) -> tuple[str, str, str]:
    """The run's stream, meta hash and followers set."""
    base = f"vg:run:{{{run_id}}}"
    return f"{base}:events", f"{base}:meta", f"{base}:followers"


def replica_key(replica: str) -> str:
    """The key present while ``replica`` is alive."""
    return f"vg:replica:{replica}"


def stream_entries(reply) -> dict[bytes, list]:
    """An XREAD's entries by stream: RESP2 ``[[key, entries], ...]``, RESP3 ``{key: [entries]}``."""
    if not reply:
        return {}
    if isinstance(reply, dict):
        return {key: value[0] if value and isinstance(value[0], list) else value for key, value in reply.items()}
    return {key: entries for key, entries in reply}


def entry_seq(entry_id: bytes) -> int:
    """An entry's event id: ``0-<id>``."""
    return int(entry_id.split(b"-", 1)[1])


def entry_event(entry: tuple[bytes, dict[bytes, bytes]]) -> AgentEvent:
    """A stream entry as the event it holds."""
    entry_id, fields = entry
    return AgentEvent(id=entry_seq(entry_id), event=fields[b"event"].decode(), data=json.loads(fields[b"data"]))
