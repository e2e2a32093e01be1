"""Per-key limits and budgets (rpm, tpm, concurrency, USD per day and month) and usage, kept
atomically in memory or in Redis."""

from app.services.limits.memory import MemoryLimitStore
from app.services.limits.meter import Admission, Meter
from app.services.limits.model import NO_LIMITS, LimitExceeded, Limits, Periods, Verdict
from app.services.limits.redis_store import RedisLimitStore

__all__ = ["NO_LIMITS", "Admission", "LimitExceeded", "Limits", "MemoryLimitStore", "Meter", "Periods",
           "RedisLimitStore", "Verdict"]
