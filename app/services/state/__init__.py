"""State shared by workers and replicas: Redis when ``VGATE_REDIS_URL`` is set, else this process's memory."""

from app.services.state.connection import StoreUnavailable, connect, guarded

__all__ = ["StoreUnavailable", "connect", "guarded"]
