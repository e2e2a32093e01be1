"""Background checks of every upstream: its load (``/metrics``, every ``metrics_scrape_interval_s``
with a short timeout), its health (``/health``, every ``health_check_interval_s``, and as the
half-open probe of an open breaker once its cooldown is over) and its model list (kept fresh, so a
request rarely waits on a listing). After each round the scheduler hands out whatever slots the
news freed (an upstream back up, a saturation gone)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiohttp
import httpx
import structlog

from app.errors import VGateError
from app.services.lm.errors import dropped
from app.services.upstreams.breaker import CLOSED, OPEN
from app.services.upstreams.load import parse_vllm_metrics
from app.services.upstreams.upstream import Upstream
from app.settings import Settings

log = structlog.get_logger("vgate.upstreams")

ABSENT_RETRY_S = 60.0  # a server without /metrics is asked again this rarely


class Monitor:
    """Background health checks and /metrics scrapes of every upstream, feeding routing and the breakers."""
    def __init__(self, upstreams: Sequence[Upstream], settings: Settings, on_news: Callable[[], None]) -> None:
        self.upstreams = upstreams
        self.settings = settings
        self.on_news = on_news
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start one watcher task per upstream."""
        self._tasks = [asyncio.create_task(self._watch(u), name=f"monitor {u.name}") for u in self.upstreams]

    async def aclose(self) -> None:
        """Stop the watcher tasks and wait for them to end."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _watch(self, u: Upstream) -> None:
        s = self.settings
        next_health = next_scrape = next_models = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_scrape:
                    next_scrape = now + (await self.scrape(u) or s.metrics_scrape_interval_s)
                due = now >= next_health
                if u.breaker.state == OPEN and u.breaker.available(now):  # cooldown over: the probe
                    due = True
                if due:
                    await self.check_health(u)
                    next_health = time.monotonic() + s.health_check_interval_s
                if now >= next_models and u.breaker.state != OPEN:
                    try:  # ahead of its expiry, so that a request never waits on a listing
                        await u.models.list(refresh=True)
                    except VGateError:
                        pass  # remembered by the catalog, and the breaker hears it from /health
                    next_models = time.monotonic() + s.models_refresh_s / 2
            except Exception:  # never let one bad answer end the watch
                log.exception("upstream_monitor_error", upstream=u.name)
            self.on_news()
            await asyncio.sleep(min(s.metrics_scrape_interval_s, 1.0))

    async def scrape(self, u: Upstream) -> float | None:
        """One scrape; returns a longer interval when the server has no vLLM metrics."""
        timeout = min(1.0, self.settings.metrics_scrape_interval_s)
        try:
            r = await u.http.get("/metrics", timeout=timeout)
        except (httpx.HTTPError, aiohttp.ClientError):
            return None  # the report ages; past metrics_stale_s the upstream counts as saturated
        if r.status_code != 200:
            return ABSENT_RETRY_S if r.status_code in (404, 501) and not u.scraped else None
        report = parse_vllm_metrics(r.text)
        if report is None:
            return None if u.scraped else ABSENT_RETRY_S
        u.observe(report)
        return None

    async def check_health(self, u: Upstream) -> bool:
        """Probe an upstream's /health; update its breaker and return whether it answered."""
        was = u.breaker.state
        u.breaker.probe_started()
        try:
            r = await u.http.get("/health", timeout=self.settings.connect_timeout_s)
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            refused = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and not dropped(exc)
            u.breaker.failure(at_once=refused)
            return False
        if r.status_code == 200:
            u.breaker.success()
            if was != CLOSED:
                log.info("upstream_recovered", upstream=u.name)
            return True
        u.breaker.failure(at_once=r.status_code >= 500)
        return False
