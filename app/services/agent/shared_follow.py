"""Following, through this replica, runs that it does not have (another replica's, or one it no
longer keeps): ``RemoteRun`` for each client, and one ``FollowHub`` per process that reads all the
followed streams at once (one XREAD BLOCK over them), so that a follower costs no Redis connection
of its own while it waits: 300 followers are one blocking read, not 300."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from app.services.agent.runs import TERMINAL_EVENTS, AgentEvent
from app.services.agent.shared_keys import BATCH, RUN_LOST, entry_event, replica_key, run_keys, stream_entries
from app.services.state.connection import StoreUnavailable

if TYPE_CHECKING:
    from app.services.agent.shared_runs import SharedRuns

log = structlog.get_logger("vgate.agent")


class Feed:
    """One run followed through this replica: where the hub reads its stream from, and its followers here."""

    def __init__(self, run_id: str, replica: str) -> None:
        self.run_id = run_id
        self.replica = replica  # the one running it
        self.events_key, self.meta_key, self.followers_key = run_keys(run_id)
        self.cursor: int | None = None  # the hub reads the entries after it; None until a follower caught up
        self.subs: set[Follower] = set()
        self.ended = False  # its last event was read, or its log is finished or gone: nothing more comes
        self.failed = False  # Redis failed: its followers end (their clients reconnect)
        self.heard = time.monotonic()  # when the hub last read an entry of it


class Follower:
    """One client's place in a feed: the entries the hub read for it, not yet sent. Bounded: past
    ``MAX_QUEUE`` the hub drops them and says so (``missed``), and the follower reads them itself."""

    MAX_QUEUE = 2 * BATCH

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.queue: deque[AgentEvent] = deque()
        self.missed = False
        self.saw_end = False  # it sent the run's last event
        self.wake = asyncio.Event()

    def push(self, events: list[AgentEvent]) -> None:
        """Queue events for this follower (past its bound, it is told to catch up from the log)."""
        if len(self.queue) < self.MAX_QUEUE:
            self.queue.extend(events)
        else:
            self.missed = True
        self.wake.set()


class FollowHub:
    """This process's one reader of followed streams: a loop of XREAD BLOCK over every feed that a
    follower has caught up on, its entries fanned out to the followers' queues. Between reads it
    renews this replica's presence in each followed run (``followers``, every ``RENEW_S``), and
    looks at the runs that have been quiet for ``CHECK_S``: a finished or expired log ends its feed;
    one whose replica is gone is sealed (``run_lost``) once it has been silent ``ALIVE_TTL_S`` too."""

    RENEW_S = 1.0
    CHECK_S = 1.0

    def __init__(self, shared: SharedRuns) -> None:
        self.shared = shared
        self.feeds: dict[str, Feed] = {}  # by run id
        self.task: asyncio.Task | None = None
        self._changed = asyncio.Event()  # a feed became readable
        self._renewed = self._checked = float("-inf")

    async def join(self, run_id: str, replica: str) -> Follower:
        """A new follower of the run; a run new to this replica first counts it present, at once (its
        replica may be about to cancel it for want of clients). Raises ``StoreUnavailable``."""
        feed = self.feeds.get(run_id)
        fresh = feed is None
        if feed is None:
            feed = self.feeds[run_id] = Feed(run_id, replica)
        sub = Follower(feed)
        feed.subs.add(sub)
        if fresh:
            try:
                await self.shared.present(feed.followers_key, self.shared.follower_ttl_s)
            except StoreUnavailable:
                self._fail(feed)
                raise
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="agent-follow-hub")
        return sub

    def caught_up(self, feed: Feed, last: int) -> None:
        """A follower has read the stream through ``last``: the hub reads the feed from there on, or
        from where it was if that is earlier (what a follower has already is skipped, by its id)."""
        if feed.cursor is None or last < feed.cursor:
            feed.cursor, feed.heard = last, time.monotonic()
            self._changed.set()

    def leave(self, sub: Follower) -> None:
        """The follower is gone. With it the run's last follower here: unless the run has ended, this
        replica stays present for the disconnect grace, as the run's own replica keeps a run whose
        last client left; written in the background (this may run in a cancelled scope)."""
        feed = sub.feed
        feed.subs.discard(sub)
        if feed.subs or self.feeds.get(feed.run_id) is not feed:
            return
        del self.feeds[feed.run_id]
        if not (feed.ended or sub.saw_end or feed.failed):
            self.shared.spawn(self.shared.present(feed.followers_key, self.shared.grace_s, exact=True))

    def _fail(self, feed: Feed) -> None:
        feed.failed = True
        if self.feeds.get(feed.run_id) is feed:
            del self.feeds[feed.run_id]
        for sub in feed.subs:
            sub.wake.set()

    async def _run(self) -> None:
        shared = self.shared
        while self.feeds:
            try:
                await self._tend()
                reading = {f.events_key: (f, f.cursor) for f in self.feeds.values()
                           if f.cursor is not None and not f.ended}
                if not reading:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), self.RENEW_S)
                    continue
                reply = await shared.call(shared.redis.xread({k: f"0-{c}" for k, (_, c) in reading.items()},
                                                             count=BATCH, block=shared.block_ms), "agent_resume")
            except Exception as exc:  # its followers end (and their clients reconnect) rather than wait for nothing
                if not isinstance(exc, StoreUnavailable):
                    log.exception("agent_follow_hub_failed")
                for feed in list(self.feeds.values()):
                    self._fail(feed)
                continue
            for key, entries in stream_entries(reply).items():
                feed, cursor = reading[key.decode() if isinstance(key, bytes) else key]
                events = [entry_event(entry) for entry in entries]
                if not events:
                    continue
                if feed.cursor == cursor:  # not moved back meanwhile by a follower that needs more
                    feed.cursor = events[-1].id
                feed.heard = time.monotonic()
                feed.ended = feed.ended or any(ev.event in TERMINAL_EVENTS for ev in events)
                for sub in feed.subs:
                    sub.push(events)

    async def _tend(self) -> None:
        """Presence and quiet runs, each at most once a ``RENEW_S`` / ``CHECK_S``."""
        shared, now = self.shared, time.monotonic()
        if now - self._renewed >= self.RENEW_S:
            self._renewed = now
            present = [f for f in self.feeds.values() if f.subs and not f.ended]
            if present:
                pipe = shared.redis.pipeline(transaction=False)
                for feed in present:
                    await shared.present_script(keys=[feed.followers_key], args=shared.presence(shared.follower_ttl_s),
                                                client=pipe)
                await shared.call(pipe.execute(), "agent_followers")
        if now - self._checked < self.CHECK_S:
            return
        self._checked = now
        quiet = [f for f in self.feeds.values()
                 if f.cursor is not None and not f.ended and now - f.heard >= self.CHECK_S]
        if not quiet:
            return
        pipe = shared.redis.pipeline(transaction=False)
        for feed in quiet:
            pipe.hget(feed.meta_key, "finished")
            pipe.exists(replica_key(feed.replica))
        replies = await shared.call(pipe.execute(), "agent_resume")
        for feed, finished, alive in zip(quiet, replies[::2], replies[1::2], strict=True):
            if finished != b"0":  # finished (its last entries are read next, by its followers), or expired
                feed.ended = True
                for sub in feed.subs:
                    sub.wake.set()
            elif not alive:  # its next read finds the run_lost event, if the log was silent long enough
                await shared.call(shared.seal_script(
                    keys=[feed.events_key, feed.meta_key, replica_key(feed.replica)],
                    args=[RUN_LOST, shared.done_ttl_ms, shared.seal_silence_ms]), "agent_resume")


@dataclass
class RemoteRun:
    """A run this replica does not have, as Redis had it when it was looked up. It can only be
    followed: stopping it is for the replica that runs it."""

    shared: SharedRuns
    run_id: str
    owner: str | None
    replica: str
    finished: bool
    last_id: int  # its last event's id, then

    async def follow(self, after_id: int = 0, stopping: anyio.Event | None = None) -> AsyncIterator[AgentEvent]:
        """As ``AgentRun.follow``: the events with id > ``after_id`` from the stream (XRANGE, page by
        page), then the live ones as the hub reads them, until the run's last event, each once and
        in order. From the start this client counts as one of the run's (``followers``).

        Ends early, without an error event, if Redis fails on the way (the client reconnects, and
        is told 503 while Redis is unreachable), if the run's keys expire, or once ``stopping`` is
        set (this server is shutting down; the run goes on where it runs)."""
        hub = self.shared.hub
        last = max(0, after_id)
        try:
            sub = await hub.join(self.run_id, self.replica)
        except StoreUnavailable:
            return
        stopper = None
        if stopping is not None:
            stopper = asyncio.ensure_future(stopping.wait())
            stopper.add_done_callback(lambda _: sub.wake.set())
        try:
            catch_up = True  # read the stream after `last` ourselves: at first, and after a gap
            while not (stopping is not None and stopping.is_set()) and not sub.feed.failed:
                if catch_up:
                    ended, sub.missed = sub.feed.ended, False
                    page = await self._page(last)
                    for ev in page:
                        yield ev
                        last = ev.id
                        if ev.event in TERMINAL_EVENTS:
                            sub.saw_end = True
                            return
                    if len(page) == BATCH:
                        continue
                    if ended:  # nothing more comes, and that read saw all there was
                        return
                    catch_up = False
                    hub.caught_up(sub.feed, last)
                    continue
                queue = sub.queue
                while queue and queue[0].id <= last:
                    queue.popleft()
                if queue and queue[0].id == last + 1:
                    ev = queue.popleft()
                    yield ev
                    last = ev.id
                    if ev.event in TERMINAL_EVENTS:
                        sub.saw_end = True
                        return
                elif queue or sub.missed or sub.feed.ended:  # a gap, entries dropped for it, or the end
                    catch_up = True
                else:
                    sub.wake.clear()
                    await sub.wake.wait()
        except StoreUnavailable:
            return
        finally:
            if stopper is not None:
                stopper.cancel()
            hub.leave(sub)

    async def _page(self, after_id: int) -> list[AgentEvent]:
        """Up to ``BATCH`` of the stream's events after ``after_id``, as it is now."""
        events_key, _, _ = run_keys(self.run_id)
        page = await self.shared.call(self.shared.redis.xrange(events_key, min=f"0-{after_id + 1}", count=BATCH),
                                      "agent_resume")
        return [entry_event(entry) for entry in page]
