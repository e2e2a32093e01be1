"""vgate: a client for the vgate gateway, shaped like DSPy.

    import vgate
    vgate.configure(base_url="http://localhost:8080", api_key=None)
    qa = vgate.Predict("question -> answer: int")
    qa(question="What is 2 + 3?").answer          # an int

Sync and async: ``qa(...)`` / ``await qa.acall(...)``, ``batch`` / ``abatch``, ``Agent.stream`` /
``Agent.astream``, ``evaluate`` / ``aevaluate``, ``optimize`` / ``aoptimize``.
"""

from vgate.agent import (
    Agent,
    DeltaEvent,
    ErrorEvent,
    Event,
    FinalEvent,
    ReasoningEvent,
    RunEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from vgate.client import AsyncClient, Client, __version__, configure, default_async_client, default_client
from vgate.errors import (
    AgentError,
    AuthenticationError,
    Conflict,
    ConnectionError,
    InternalServerError,
    InvalidRequest,
    JobFailed,
    NotFound,
    OutputValidationError,
    PermissionDenied,
    PredictionError,
    RateLimited,
    Timeout,
    UpstreamError,
    VGateError,
)
from vgate.evaluation import (
    EvaluationResult,
    ExampleResult,
    OptimizationResult,
    aevaluate,
    aget_job,
    aoptimize,
    evaluate,
    get_job,
    optimize,
)
from vgate.jobs import AsyncJob, Job
from vgate.modules import ChainOfThought, Majority, Predict, Program
from vgate.results import BatchResult, Prediction, TraceStep, Usage

__all__ = [
    "Agent", "AgentError", "AsyncClient", "AsyncJob", "AuthenticationError", "BatchResult", "ChainOfThought",
    "Client", "Conflict", "ConnectionError", "DeltaEvent", "ErrorEvent", "EvaluationResult", "Event",
    "ExampleResult", "FinalEvent", "InternalServerError", "InvalidRequest", "Job", "JobFailed", "Majority",
    "NotFound", "OptimizationResult", "OutputValidationError", "PermissionDenied", "Predict", "Prediction",
    "PredictionError", "Program", "RateLimited", "ReasoningEvent", "RunEvent", "Timeout", "ToolCallEvent",
    "ToolResultEvent", "TraceStep", "UpstreamError", "Usage", "VGateError", "__version__", "aevaluate",
    "aget_job", "aoptimize", "configure", "default_async_client", "default_client", "evaluate", "get_job",
    "optimize",
]
