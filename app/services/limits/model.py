"""What a key's limits are, what a check answers, and the refusal a caller sees."""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass, field

from app.errors import VGateError

WINDOW_S = 60.0  # requests and tokens per minute: a sliding window this long


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; None: no such limit."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd_daily: float | None = None
    budget_usd_monthly: float | None = None

    @property
    def per_request(self) -> bool:
        """Anything to check when a request arrives (else only its calls' usage is recorded)."""
        return any(v is not None for v in (self.rpm, self.tpm, self.max_concurrent, self.budget_usd_daily,
                                           self.budget_usd_monthly))

    @property
    def per_call(self) -> bool:
        """Anything a call must reserve before it goes upstream: tokens or money."""
        return self.tpm is not None or self.budget_usd_daily is not None or self.budget_usd_monthly is not None

    @classmethod
    def of(cls, obj) -> Limits:
        """The limits of a key's configuration or policy object."""
        return cls(rpm=obj.rpm, tpm=obj.tpm, max_concurrent=obj.max_concurrent,
                   budget_usd_daily=obj.budget_usd_daily, budget_usd_monthly=obj.budget_usd_monthly)


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Periods:
    """The budget periods a moment falls in (UTC), and how long until each ends."""

    day: str  # 2026-12-02
    month: str  # 2026-12
    day_reset_s: float
    month_reset_s: float

    @classmethod
    def at(cls, now: float | None = None) -> Periods:
        """The UTC day and month a time falls in, and seconds until each resets."""
        now = time.time() if now is None else now
        t = time.gmtime(now)
        day_end = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        month_end = calendar.timegm((year, month, 1, 0, 0, 0))
        return cls(day=f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", month=f"{t.tm_year:04d}-{t.tm_mon:02d}",
                   day_reset_s=day_end - now, month_reset_s=month_end - now)


def days_between(since: str, until: str) -> list[str]:
    """The UTC days from ``since`` to ``until`` (YYYY-MM-DD, both included)."""
    import datetime as dt

    first, last = dt.date.fromisoformat(since), dt.date.fromisoformat(until)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


_current: list = [None, None]  # (second, Periods): one computation per second, not per call


def periods_now() -> Periods:
    """``Periods.at(now)``, computed once a second (its reset times may be up to a second long)."""
    second = int(time.time())
    if _current[0] != second:
        _current[1] = Periods.at(second)
        _current[0] = second
    return _current[1]


@dataclass(slots=True)
class Verdict:
    """A check's answer: admitted, or the limit that refused and when to retry; and what is left."""

    limit: str | None = None  # None: admitted; else rpm, tpm, max_concurrent, budget_usd_daily, budget_usd_monthly
    retry_after_s: float = 0.0
    requests_used: int = 0  # in the window, this request included when admitted
    requests_reset_s: float = 0.0  # until the window's oldest request leaves it
    tokens_used: int = 0  # reserved or spent in the window
    spent_day: float = 0.0  # spent and reserved, USD
    spent_month: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether nothing refused the request."""
        return self.limit is None


class LimitExceeded(VGateError):
    """429: a key's limit or budget; the message names it and when it resets; the headers say what is left."""

    status_code = 429
    type = "rate_limited"

    def __init__(self, message: str, *, limit_headers: list[tuple[bytes, bytes]] | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.limit_headers = limit_headers or []

    def headers(self) -> dict[str, str]:
        """Retry-After plus the remaining-limit headers of the refused key."""
        return {**super().headers(), **{k.decode(): v.decode() for k, v in self.limit_headers}}


def refusal(key_id: str, limits: Limits, verdict: Verdict, periods: Periods, *, cost: float = 0.0,
            tokens: int = 0, headers: list[tuple[bytes, bytes]] | None = None) -> LimitExceeded:
    """The 429 for ``verdict`` (not ok), naming the limit, its value and when it frees up."""
    name = verdict.limit
    retry = max(verdict.retry_after_s, 0.001)
    when = _human(retry)
    if name == "rpm":
        msg = f"key {key_id!r} may make {limits.rpm} requests per minute (rpm); one frees up in {when}"
    elif name == "tpm":
        msg = (f"key {key_id!r} may use {limits.tpm} tokens per minute (tpm); {verdict.tokens_used} are used or "
               f"reserved and this call reserves {tokens}; enough frees up in {when}")
    elif name == "max_concurrent":
        msg = (f"key {key_id!r} may have {limits.max_concurrent} requests in flight at once (max_concurrent); "
               "one frees up when one of them ends")
    elif name == "budget_usd_daily":
        msg = (f"key {key_id!r} has spent its daily budget of ${limits.budget_usd_daily:g} "
               f"(${verdict.spent_day:.6f} spent or reserved{_needs(cost)}); it resets at 00:00 UTC, in {when}")
    else:
        msg = (f"key {key_id!r} has spent its monthly budget of ${limits.budget_usd_monthly:g} "
               f"(${verdict.spent_month:.6f} spent or reserved{_needs(cost)}); it resets on the 1st, 00:00 UTC, "
               f"in {when}")
    kind = "budget_exceeded" if name.startswith("budget") else "rate_limited"
    return LimitExceeded(msg, type=kind, retry_after_s=math.ceil(retry), limit=name,
                         resets_in_s=round(retry, 3), limit_headers=headers)


def _needs(cost: float) -> str:
    return f", this call reserves ${cost:.6f}" if cost > 0 else ""


def _human(seconds: float) -> str:
    s = math.ceil(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"
