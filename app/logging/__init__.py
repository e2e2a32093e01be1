"""structlog setup and request-id binding.

(Named ``app.logging`` inside the package: a top-level ``logging`` package would shadow the stdlib.)
"""

from app.logging.request_id import new_request_id, sanitize_request_id
from app.logging.setup import configure_logging, get_logger, info_enabled

__all__ = ["configure_logging", "get_logger", "info_enabled", "new_request_id", "sanitize_request_id"]
