"""One upstream's served models: listed from ``/v1/models``, trusted for ``models_refresh_s``.

The pool (``app.services.upstreams.pool``) joins every upstream's list: the default model and the
check that a requested name is served anywhere (llama.cpp, for one, silently answers any name with
its own model) follow the lists as they change.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time

import httpx
import pydantic

from app.errors import UpstreamError, VGateError
from app.services.lm.errors import malformed, status_failure, transport_failure
from app.services.lm.types import UpstreamModel
from app.settings import Settings

ERROR_TTL_S = 1.0  # a failed listing is answered from memory this long, not for models_refresh_s


class _ModelCard(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str = pydantic.Field(min_length=1)
    max_model_len: int | None = None


class _ModelList(pydantic.BaseModel):
    data: list[_ModelCard]


class ModelCatalog:
    """One upstream's model list from its /v1/models, refreshed every models_refresh_s (a failure remembered
    briefly)."""
    def __init__(self, http: httpx.AsyncClient, settings: Settings, upstream: str) -> None:
        self._http = http
        self.settings = settings
        self.upstream = upstream  # for log lines
        self._models: list[UpstreamModel] | None = None
        self._error: VGateError | None = None  # the last listing's failure, remembered ERROR_TTL_S
        self.served: frozenset[str] = frozenset()
        self._listed_at = float("-inf")  # time.monotonic() of the last listing attempt
        self._lock = asyncio.Lock()

    @property
    def known(self) -> bool:
        """Whether the last listing succeeded (else the upstream may serve any name)."""
        return self._models is not None and self._error is None

    async def list(self, *, refresh: bool = False, max_age_s: float | None = None) -> list[UpstreamModel]:
        """The served models, fetched again if ``refresh``, or if older than ``max_age_s`` (default:
        ``models_refresh_s``). Raises a 502/503/504 ``VGateError`` when the upstream cannot list them
        (an answer that is not a model list is ``upstream_malformed``)."""
        if not refresh and self.fresh(max_age_s):
            return self._cached()
        async with self._lock:
            if not refresh and self.fresh(max_age_s):  # another call refreshed it while this one waited
                return self._cached()
            try:
                models = await self._fetch()
            except VGateError as exc:
                # Remembered briefly, so a burst of calls does not each wait on a failing upstream;
                # never for long: the upstream may be back a second later. A cancelled fetch (the
                # caller left) is not remembered at all.
                self._error, self._listed_at = exc, time.monotonic()
                raise
            self._models, self._error, self._listed_at = models, None, time.monotonic()
            self.served = frozenset(m.id for m in self._models)
            return self._models

    async def last(self) -> list[UpstreamModel]:
        """The last list, without asking (an error if there is none)."""
        if self._models is None:
            raise UpstreamError("the upstream is down and has not listed its models")
        return self._models

    def invalidate(self) -> None:
        """Forget when the list was fetched, so the next lookup fetches it again."""
        self._listed_at = float("-inf")

    def fresh(self, max_age_s: float | None = None) -> bool:
        """Whether the list (or the last failure) is recent enough to use without fetching again."""
        ttl = self.settings.models_refresh_s if max_age_s is None else min(max_age_s, self.settings.models_refresh_s)
        if self._error is not None:
            ttl = ERROR_TTL_S
        return (self._models is not None or self._error is not None) and time.monotonic() - self._listed_at < ttl

    def first_fresh(self) -> str | None:
        """The first listed model's name while the list is fresh (nothing to fetch), else None."""
        if self._models and self._error is None and self.fresh():
            return self._models[0].id
        return None

    def _cached(self) -> list[UpstreamModel]:
        if self._error is not None:
            # A fresh copy each time: re-raising one object would grow its traceback with every
            # request's frames (and keep them alive) for as long as the error is remembered.
            raise copy.copy(self._error).with_traceback(None)
        assert self._models is not None  # _fresh() holds only with a list or an error
        return self._models

    async def _fetch(self) -> list[UpstreamModel]:
        try:
            r = await self._http.get("/v1/models", timeout=self.settings.connect_timeout_s * 2)
        except httpx.HTTPError as exc:
            raise transport_failure(exc, self.upstream).error from exc
        if r.status_code != 200:
            # The listing is the gateway's own request: whatever its status, it is not the client's fault.
            failure = status_failure(r.status_code, r.content, None, model="").error
            if failure.status_code < 500:
                raise UpstreamError(f"the upstream could not list its models ({r.status_code})",
                                    upstream_status=r.status_code)
            raise failure
        try:
            raw = json.loads(r.content)
            listed = _ModelList.model_validate(raw)
        except (ValueError, pydantic.ValidationError):
            raise malformed("a model list of an unexpected shape", r.text) from None
        return [UpstreamModel(id=m.id, max_model_len=m.max_model_len, raw=item)
                for m, item in zip(listed.data, raw["data"], strict=True)]
