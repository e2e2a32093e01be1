"""The upstreams behind the gateway, as one: served models joined, health, routing and admission.

``VGATE_UPSTREAMS`` (or ``[[upstreams]]`` in the TOML file, or ``vgate serve --upstream`` repeated)
lists them; the single ``VGATE_UPSTREAM_URL`` is the one-upstream case. A call goes to an upstream
that serves its model and whose breaker is closed; when none is, to any that serves it (a fleet
that is all down answers with its own errors, and the retries and their backoff apply as with one).
"""

from __future__ import annotations

import asyncio
import random

import httpx
import structlog

from app.errors import NotFoundError, UpstreamError, VGateError
from app.metrics import Metrics
from app.services.lm.types import UpstreamModel
from app.services.upstreams.breaker import CLOSED, OPEN
from app.services.upstreams.choice import Chooser
from app.services.upstreams.monitor import Monitor
from app.services.upstreams.scheduler import Scheduler
from app.services.upstreams.upstream import Upstream
from app.settings import Settings

log = structlog.get_logger("vgate.upstreams")

MISS_REFRESH_INTERVAL_S = 1.0  # an unknown name refetches the lists at most this often


class UpstreamPool:
    """The upstreams behind the gateway: their models, health, routing and the scheduler that hands out slots."""
    def __init__(self, settings: Settings, metrics: Metrics, *,
                 transport: httpx.AsyncBaseTransport | None = None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.upstreams = [Upstream(c, settings, transport=transport, on_breaker=self._on_breaker)
                          for c in settings.upstream_configs()]
        self._known: set[str] = set(settings.prices)  # label values: configured or served names
        if settings.default_model:
            self._known.add(settings.default_model)
        self.chooser = Chooser(settings.routing, settings.prefix_affinity_entries if settings.prefix_affinity else 0,
                               rng=rng)
        assert settings.max_queued_per_model is not None  # Settings fills in its default
        self.scheduler = Scheduler(self.candidates, self.chooser, max_queued=settings.max_queued_per_model,
                                   batch_min_share=settings.batch_min_share, batch_max_share=settings.batch_max_share,
                                   metrics=metrics, label=self.label)
        self.monitor = Monitor(self.upstreams, settings, self.scheduler.dispatch)
        for u in self.upstreams:
            metrics.upstream_in_flight.labels(upstream=u.name).set_function(lambda u=u: u.in_use)
            metrics.upstream_up.labels(upstream=u.name).set_function(lambda u=u: u.breaker.state == CLOSED)
            metrics.upstream_saturation.labels(upstream=u.name).set_function(lambda u=u: min(u.saturation(), 1e9))

    def start(self) -> None:
        """Background health, load and model checks (the app's lifespan starts them)."""
        self.monitor.start()

    async def aclose(self) -> None:
        """Stop the monitor and close every upstream's connections."""
        await self.monitor.aclose()
        await asyncio.gather(*(u.aclose() for u in self.upstreams))

    # ------------------------------------------------------------------ routing inputs

    def candidates(self, model: str) -> list[Upstream]:
        """The upstreams that list the model (else those that cannot list, which may serve it), up
        ones first: an upstream whose list is unknown (just restarted, an old server) must not take
        another's calls and answer them 404."""
        serving = [u for u in self.upstreams if model in u.models.served]
        if not serving:
            serving = [u for u in self.upstreams if not u.models.known]
        up = [u for u in serving if u.breaker.available()]
        return up or serving

    def failed(self, upstream: Upstream, *, at_once: bool) -> None:
        """Count a failed call against the upstream's breaker (``at_once``: open it now)."""
        upstream.breaker.failure(at_once=at_once)

    def succeeded(self, upstream: Upstream) -> None:
        """Count a successful call for the upstream's breaker."""
        if upstream.breaker.state != CLOSED or upstream.breaker.consecutive:
            upstream.breaker.success()

    def _on_breaker(self, upstream: Upstream, state: str) -> None:
        self.metrics.upstream_breaker.labels(upstream=upstream.name, state=state).inc()
        (log.warning if state == "open" else log.info)("upstream_breaker", upstream=upstream.name, state=state)
        if state == CLOSED:
            self.scheduler.dispatch()

    # ------------------------------------------------------------------ models

    def label(self, model: str) -> str:
        """Bounded label values: configured or served names only."""
        if model in self._known:
            return model
        if any(model in u.models.served for u in self.upstreams):  # listed by the monitor's refresh
            self._known.add(model)
            return model
        return "other"

    async def list_models(self, *, refresh: bool = False, max_age_s: float | None = None) -> list[UpstreamModel]:
        """Every upstream's models, joined (the first upstream listing a name gives its card). Raises
        the first upstream's error only when none can list."""
        # An upstream whose breaker is open is not asked while another is up (a hung one would hold
        # every listing up to its timeout): its last list stands, or it counts as unable to list.
        up = {u for u in self.upstreams if u.breaker.state != OPEN} or set(self.upstreams)
        results = await asyncio.gather(*(u.models.list(refresh=refresh, max_age_s=max_age_s)
                                         if u in up else u.models.last()
                                         for u in self.upstreams), return_exceptions=True)
        seen: dict[str, UpstreamModel] = {}
        errors: list[BaseException] = []
        for r in results:
            if isinstance(r, BaseException):
                if not isinstance(r, VGateError):
                    raise r
                errors.append(r)
                continue
            for m in r:
                seen.setdefault(m.id, m)
        self._known.update(seen)
        if errors and len(errors) == len(results):
            raise errors[0]
        return list(seen.values())

    async def resolve(self, model: str | None) -> str:
        """The model to call: the named one, else the configured default, else the first upstream's first."""
        name = model or self.settings.default_model
        if name is not None and any(name in u.models.served and u.models.fresh() for u in self.upstreams):
            return name  # the hot path: a listed name, the list not yet due for a refresh
        if name is None:
            first = self.upstreams[0].models.first_fresh()
            if first is not None:  # what list_models would put first, with no task per upstream to get it
                return first
            models = await self.list_models()
            if not models:
                raise UpstreamError("the upstream serves no model")
            return models[0].id
        try:
            await self.list_models()
            if self._served(name):
                return name
            # It may have just been loaded: look again, at most once a second however many ask.
            await self.list_models(max_age_s=MISS_REFRESH_INTERVAL_S)
            if self._served(name):
                return name
        except VGateError as exc:
            # No list is available (an old or odd server): let the upstream judge the name.
            log.info("model_list_unavailable", model=name, error_type=exc.type)
            return name
        if any(not u.models.known and u.breaker.state != OPEN for u in self.upstreams):
            return name  # an upstream that is up but cannot list may serve it
        raise NotFoundError(f"model {name!r} is not served by the upstream", type="model_not_found",
                            available=sorted({m for u in self.upstreams for m in u.models.served}))

    def _served(self, name: str) -> bool:
        return any(name in u.models.served for u in self.upstreams)
