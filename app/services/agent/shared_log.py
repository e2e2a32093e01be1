"""The writer of one run's shared log: copies the events of a run of this replica into its Redis
stream (the layout is in ``shared_keys``) as they are published, without ever making the run wait."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from app.services.agent.runs import AgentRun, event_json
from app.services.agent.shared_keys import BATCH, LOG_LOST, NOW_MS, replica_key, run_keys
from app.services.state.connection import StoreUnavailable

if TYPE_CHECKING:
    from app.services.agent.shared_runs import SharedRuns

log = structlog.get_logger("vgate.agent")

# KEYS: events, meta, the replica's key. ARGV: the stream's last event id as the writer expects it, the
# keys' TTL (ms), finished (0 or 1), owner, replica, session_id, model, the replica key's TTL (ms),
# then (event id, event, data) for each event to append. Appends only where the writer left off and
# never to a finished log (its last event written, or sealed by a follower: ``run_lost``).
# Returns {1, last id} (written), {0, the stream's last id} (not where the writer left off: it
# resumes from there), or {-1, 1 if sealed by a follower}.
APPEND = NOW_MS + """
local meta = redis.call('HMGET', KEYS[2], 'finished', 'lost')
if meta[1] == '1' then return {-1, meta[2] == '1' and 1 or 0} end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq = 0
if #top > 0 then seq = tonumber(string.match(top[1][1], '-(%d+)$')) end
if seq ~= tonumber(ARGV[1]) then return {0, seq} end
for i = 9, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'event', ARGV[i + 1], 'data', ARGV[i + 2])
  seq = tonumber(ARGV[i])
end
redis.call('HSET', KEYS[2], 'owner', ARGV[4], 'replica', ARGV[5], 'session_id', ARGV[6], 'model', ARGV[7],
           'finished', ARGV[3], 'at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[8])
return {1, seq}
"""


class RunLogWriter:
    """Copies one run's events into its stream in publish order: ``publish()`` only wakes this
    writer (``AgentRun.listener``), whose one task writes all that has accumulated since its last
    write in one script call (the run's own list of events is the queue).

    Each write says where the stream should end before it (``APPEND``), so the log stays whole
    without gap or duplicate through a write whose reply was lost and through Redis losing the
    run's keys (a restart without persistence, FLUSHALL, eviction): the writer then writes again from
    where the stream really ends, the whole log if it is gone. A failed write is retried with a
    growing pause. The writer stops once the log is finished: by itself, or by a follower that took
    this replica for gone (it then writes nothing more and logs ``agent_run_log_sealed``).

    Once the run is no longer kept here (dropped from the run store, or finished
    ``agent_resume_ttl_s`` ago) while its log is not finished in Redis (unreachable), the writer
    lets go of the run and its events (``release``) and only keeps trying to seal the log
    (``run_lost``), so that nobody follows it for the hour its keys live: until that is done or its
    keys have expired, and at most ``SharedRuns.MAX_SEALS`` such writers at once."""

    MAX_PAUSE_S = 2.0

    def __init__(self, shared: SharedRuns, run: AgentRun) -> None:
        self.shared = shared
        self.run: AgentRun | None = run  # None once released: only the seal is left to write
        self.run_id = run.run_id
        self.written = 0  # events[:written] are in the stream
        self.meta_written = False
        self.done = False  # the log is finished: nothing more to write
        self.wrote_at = time.monotonic()  # when Redis last took a write (the keys outlive it their TTL)
        self._wake = asyncio.Event()
        run.listener = self._wake.set
        self.task = asyncio.get_running_loop().create_task(self._drain(), name=f"{run.run_id}:log")

    def release(self) -> None:
        """Let go of the run (and its events): from now on only seal its log."""
        if self.run is not None:
            self.run.listener = None
            self.run = None
            self._wake.set()

    def _pending(self) -> bool:
        run = self.run
        return run is None or not self.meta_written or self.written < len(run.events) or run.finished

    async def _drain(self) -> None:
        shared, pause = self.shared, 0.0
        while not self.done:
            if not self._pending():
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await (self._seal() if self.run is None else self._flush(self.run))
                pause = 0.0
            except StoreUnavailable:
                run, now = self.run, time.monotonic()
                if run is not None and run.finished_at is not None and now - run.finished_at > shared.resume_ttl_s:
                    shared.seal_later(self)
                if self.run is None and now - self.wrote_at > shared.live_ttl_ms / 1000:
                    return  # its keys have expired by now: nothing left to seal
                pause = min(self.MAX_PAUSE_S, pause * 2 or 0.2)
                await asyncio.sleep(pause)

    async def _flush(self, run: AgentRun) -> None:
        shared = self.shared
        events_key, meta_key, _ = run_keys(run.run_id)
        batch = run.events[self.written:self.written + BATCH]  # and the finished flag, with no await between
        last = run.finished and self.written + len(batch) == len(run.events)
        args: list = [self.written, shared.done_ttl_ms if last else shared.live_ttl_ms, int(last), run.owner or "",
                      shared.replica, run.session_id or "", run.model or "", shared.alive_ttl_ms]
        for ev in batch:
            args += [ev.id, ev.event, event_json(ev.data)]
        status, seq = await shared.call(
            shared.append_script(keys=[events_key, meta_key, replica_key(shared.replica)], args=args), "agent_run_log")
        if status == 1:
            self.written, self.meta_written, self.done = seq, True, last
            self.wrote_at = time.monotonic()
        elif status == 0:  # the stream does not end where this writer left it
            if seq > len(run.events):
                log.error("agent_run_log_foreign", run_id=run.run_id, stream=seq, events=len(run.events))
                self.done = True
            else:
                if seq < self.written:  # Redis lost entries it had taken: written again from there
                    log.warning("agent_run_log_rewritten", run_id=run.run_id, stream=seq, written=self.written)
                self.written = seq
        else:  # finished: by this writer (a lost reply), or sealed by a follower that took this replica for gone
            if seq:
                log.warning("agent_run_log_sealed", run_id=run.run_id, written=self.written,
                            events=len(run.events))
            self.done = True

    async def _seal(self) -> None:
        shared = self.shared
        events_key, meta_key, _ = run_keys(self.run_id)
        await shared.call(shared.seal_script(keys=[events_key, meta_key, replica_key(shared.replica)],
                                             args=[LOG_LOST, shared.done_ttl_ms, -1]), "agent_run_log")
        log.info("agent_run_log_sealed_late", run_id=self.run_id, written=self.written)
        self.done = True
