"""The one LM client, by concern: ``types`` (what callers get), ``errors`` (an upstream's status →
a typed error), ``stream`` (SSE → typed chunks → events), ``retry`` (the policy and loop),
``models`` (one upstream's served list), ``calls`` (one call's record and its books), ``dispatch``
(slot, attempts and failover across the upstreams), ``client`` (:class:`LMClient`)."""

from typing import TYPE_CHECKING

from app.services.lm.calls import UsageCallback
from app.services.lm.types import (
    CallUsage,
    ContentDelta,
    Done,
    LMChoice,
    LMResult,
    ReasoningDelta,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    UpstreamModel,
    Usage,
)

if TYPE_CHECKING:
    from app.services.lm.client import LMClient


def __getattr__(name: str):
    # LMClient on first use: the client imports the upstream pool, whose modules import this
    # package's errors and models; an eager import here would make the two packages a cycle.
    if name == "LMClient":
        from app.services.lm.client import LMClient

        return LMClient
    raise AttributeError(name)


__all__ = [
    "CallUsage",
    "ContentDelta",
    "Done",
    "LMChoice",
    "LMClient",
    "LMResult",
    "ReasoningDelta",
    "StreamEvent",
    "ToolCall",
    "ToolCallDelta",
    "UpstreamModel",
    "Usage",
    "UsageCallback",
]
