"""Configure structlog: JSON lines in production, readable console output in development.

Standard-library loggers (uvicorn, httpx, ...) go through the same renderer so every
line has one shape, and the request id bound with contextvars appears on every line.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

get_logger = structlog.get_logger


def info_enabled(level: str) -> bool:
    """Whether INFO lines are kept at ``level``: callers skip building a line that would be dropped."""
    value = logging.getLevelName(level.upper())
    return isinstance(value, int) and value <= logging.INFO


def configure_logging(fmt: Literal["json", "console"] = "json", level: str = "INFO") -> None:
    """Set up structlog and the standard logging it feeds: JSON lines (or console text) at ``level``."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Drops lines below the level before any processor runs (9.3 -> 1.2 us per dropped line).
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # No logger caching: it would freeze processors, so structlog.testing.capture_logs could not see them.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log duplicates our own request line; its error log stays.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpcore", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
