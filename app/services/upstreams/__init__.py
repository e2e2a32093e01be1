"""The upstream pool, by concern: ``upstream`` (one server: connections, models, breaker, load),
``breaker``, ``load`` (vLLM's /metrics → saturation), ``monitor`` (background scrapes and health
checks), ``prefix`` (the key affinity routes by), ``choice`` (which upstream), ``scheduler`` (slots,
the per-model priority queue, 429s), ``pool`` (all of it as one)."""

from app.services.upstreams.pool import UpstreamPool
from app.services.upstreams.prefix import prefix_key
from app.services.upstreams.scheduler import PRIORITIES, Lease
from app.services.upstreams.upstream import Upstream

__all__ = ["PRIORITIES", "Lease", "Upstream", "UpstreamPool", "prefix_key"]
