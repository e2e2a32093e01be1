"""The one LM client, by concern: ``types`` (what callers get), ``errors`` (an upstream's status →
a typed error), ``stream`` (SSE → typed chunks → events), ``retry`` (the policy and loop),
``models`` (the served list), ``calls`` (one
call's record and its books), ``client`` (:class:`LMClient`)."""

from app.services.lm.calls import UsageCallback
from app.services.lm.client import LMClient
from app.services.lm.types import (
    CallUsage,
    ContentDelta,
    Done,
    LMResult,
    ReasoningDelta,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    UpstreamModel,
    Usage,
)

__all__ = [
    "CallUsage",
    "ContentDelta",
    "Done",
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
