"""One vLLM upstream as the pool sees it: its connection pool, served models, breaker and load."""

from __future__ import annotations

import math
import time

import httpx

from app.services.lm.models import ModelCatalog
from app.services.upstreams.breaker import CLOSED, Breaker
from app.services.upstreams.load import LoadReport, saturation
from app.services.upstreams.wire import UpstreamTransport, Wire
from app.settings import Settings, UpstreamConfig

_EWMA_ALPHA = 0.2


class Upstream:
    """One vLLM server: its connection pool, model list, breaker, load figures and in-flight count."""
    def __init__(self, config: UpstreamConfig, settings: Settings, *,
                 transport: httpx.AsyncBaseTransport | None = None, on_breaker=None) -> None:
        self.url = config.url
        self.name = config.name or config.url  # the metrics label
        self.weight = config.weight
        self.settings = settings
        limits = httpx.Limits(max_connections=settings.max_connections,
                              max_keepalive_connections=settings.max_connections, keepalive_expiry=30)
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        if config.api_key is not None:
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self.transport = transport or UpstreamTransport(limits=limits)
        self.wire = Wire(config.url, headers, self.transport)  # the passthrough's calls
        self.http = httpx.AsyncClient(  # the LM client's calls, the monitor's checks and model lists
            base_url=config.url,
            transport=self.transport,
            timeout=httpx.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s,
                                  write=settings.read_timeout_s, pool=settings.request_timeout_s),
            headers=headers,
        )
        self.models = ModelCatalog(self.http, settings, self.name)
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown_s,
                               on_change=(lambda state: on_breaker(self, state)) if on_breaker else None)
        self.slots = settings.max_inflight_per_upstream
        self.in_use = 0  # the gateway's calls in flight here
        self.batch_in_use = 0  # of which batch calls
        self.hold_s: float | None = None  # moving average of how long a call holds its slot
        self.report: LoadReport | None = None  # its load, from the last two scrapes of its /metrics
        self.report_at = float("-inf")  # time.monotonic() of the last one
        self.scraped = False  # it has served vLLM's load gauges at least once
        self._last: LoadReport | None = None

    def __repr__(self) -> str:
        return f"Upstream({self.name!r})"

    async def aclose(self) -> None:
        """Close the upstream's connections."""
        await self.http.aclose()

    def took(self) -> None:
        """Count a call taking a slot here."""
        self.in_use += 1

    def released(self, held_s: float | None) -> None:
        """Count a call giving its slot back; its holding time feeds the moving average."""
        self.in_use -= 1
        if held_s is not None:
            self.hold_s = held_s if self.hold_s is None else self.hold_s + _EWMA_ALPHA * (held_s - self.hold_s)

    def observe(self, report: LoadReport) -> None:
        """A scrape. The queue and KV figures kept are the smaller of this scrape's and the last one's:
        a burst of arrivals sits in vLLM's waiting queue until its next step (tens of ms), and one
        scrape that catches it must not read as saturation; a queue that stays is seen a scrape later.
        (The running count is the latest: it only feeds the load score.)"""
        last = self._last or LoadReport()  # saturation is only ever seen in two scrapes in a row
        self.report = LoadReport(waiting=min(last.waiting, report.waiting), running=report.running,
                                 kv_usage=min(last.kv_usage, report.kv_usage))
        self._last, self.report_at, self.scraped = report, time.monotonic(), True

    def saturation(self, now: float | None = None) -> float:
        """vLLM's own saturation (see ``load``): 0 for a server without vLLM's gauges, infinite for
        one whose gauges stopped coming."""
        if not self.scraped or self.breaker.state != CLOSED:
            return 0.0  # no gauges; or it is down, and its error (503), not a 429, is the answer
        now = time.monotonic() if now is None else now
        if self.report is None or now - self.report_at > self.settings.metrics_stale_s:
            return math.inf
        return saturation(self.report, self.settings.saturation_queue_threshold,
                          self.settings.saturation_kv_threshold)

    def load(self) -> float:
        """Requests on it per unit of weight: the gateway's own count (exact, live) or vLLM's (which
        also sees other clients), whichever is larger."""
        seen = self.report.running + self.report.waiting if self.report is not None else 0.0
        return max(self.in_use, seen) / self.weight
