"""Who may call: API keys from configuration, their scopes, models and tools.

A key is presented as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``; only its SHA-256 is
kept (a configured ``key`` is hashed at start, or the operator gives ``key_sha256``), so a key is
never in memory, logs or metrics in the clear past startup. Lookups go by hash: comparing a secret
byte by byte is what leaks timing; a dict lookup of its digest does not tell how much matched.

With no key configured the gateway is open, as before, and says so at start.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from app.errors import VGateError
from app.services.limits.model import NO_LIMITS, Limits


class UnauthorizedError(VGateError):
    """No API key, or an unknown one (401, with WWW-Authenticate)."""
    status_code = 401
    type = "unauthorized"

    def headers(self) -> dict[str, str]:
        """The WWW-Authenticate header that says a bearer token is expected."""
        return {"WWW-Authenticate": 'Bearer realm="vgate"'}


class ForbiddenError(VGateError):
    """The key may not do this (403): a scope, model or tool it lacks."""
    status_code = 403
    type = "forbidden"


def digest(key: str) -> str:
    """The hex SHA-256 of a key (only digests are kept)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a key's id and what it may do."""

    id: str
    alias: str | None
    scopes: frozenset[str]
    models: frozenset[str] | None  # None: every model
    tools: frozenset[str] | None  # None: every tool
    limits: Limits = NO_LIMITS
    source: str = "config"  # config (the settings) or admin (made through /admin/keys)
    priority_raise: bool = False  # X-Vgate-Priority may raise its requests' class

    def require(self, scope: str) -> None:
        """Raise a 403 scope_missing unless the key has the scope (admin includes metrics)."""
        if scope not in self.scopes and not (scope == "metrics" and "admin" in self.scopes):
            raise ForbiddenError(f"this key has no {scope!r} scope", type="scope_missing", scope=scope)

    def allow_model(self, model: str) -> None:
        """Raise a 403 model_not_allowed unless the key may use the model."""
        if self.models is not None and model not in self.models:
            raise ForbiddenError(f"this key may not use model {model!r}", type="model_not_allowed",
                                 allowed=sorted(self.models))

    def allow_tools(self, names: Iterable[str]) -> None:
        """Raise a 403 tool_not_allowed unless the key may use every one of these tools."""
        if self.tools is None:
            return
        refused = sorted(set(names) - self.tools)
        if refused:
            raise ForbiddenError(f"this key may not use the tools {', '.join(refused)}", type="tool_not_allowed",
                                 allowed=sorted(self.tools))

    def usable_tools(self, names: Iterable[str]) -> list[str]:
        """The tools of these names that the key may use."""
        return [n for n in names if self.tools is None or n in self.tools]


class KeyRing:
    """The configured keys (in memory) and, through ``store``, those made by /admin/keys (in the
    shared store). A store lookup, found or not, is trusted ``cache_s``: a key revoked on one replica
    is refused by all within it."""

    MAX_CACHED = 10_000

    def __init__(self, keys: Iterable[tuple[str, Principal]], cache_s: float = 0.5) -> None:
        self._by_digest = dict(keys)
        self.cache_s = cache_s
        self.store = None  # app.services.keys.KeyStore, set by the lifespan
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()  # LRU

    @property
    def enabled(self) -> bool:
        """Access control is on when the configuration has keys (the admin key that makes others among them)."""
        return bool(self._by_digest)

    def configured(self, key_id: str) -> Principal | None:
        """The configured key with this id, or None."""
        return next((p for p in self._by_digest.values() if p.id == key_id), None)

    def configured_keys(self) -> list[Principal]:
        """Every configured key, by id."""
        return sorted(self._by_digest.values(), key=lambda p: p.id)

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """The caller, or a 401: no key presented, or one that is not known (a 503 if the store that
        would know is unreachable)."""
        token = api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if not token:
            raise UnauthorizedError("an API key is required: Authorization: Bearer <key> or x-api-key: <key>")
        d = digest(token)
        principal = self._by_digest.get(d)
        if principal is None and self.store is not None:
            now = time.monotonic()
            hit = self._cache.get(d)
            if hit is not None and hit[0] > now:
                principal = hit[1]
                self._cache.move_to_end(d)
            else:
                principal = await self.store.principal(d)
                if len(self._cache) >= self.MAX_CACHED:
                    self._cache.popitem(last=False)  # the least recently used: random keys sprayed go first
                self._cache[d] = (now + self.cache_s, principal)
        if principal is None:
            raise UnauthorizedError("the API key is not valid")
        return principal

    def forget(self, key_digest: str) -> None:
        """Drop a cached lookup (this replica revoked or changed the key)."""
        self._cache.pop(key_digest, None)


def build_keyring(settings) -> KeyRing:
    """The configured keys by digest; two keys with one digest fail at start."""
    keys: dict[str, Principal] = {}
    for k in settings.api_keys:
        d = k.key_sha256 or digest(k.key.get_secret_value())
        if d in keys:
            raise ValueError(f"api keys {keys[d].id!r} and {k.id!r} are the same key")
        keys[d] = principal_of(k)
    return KeyRing(keys.items(), cache_s=settings.key_cache_s)


def principal_of(k, source: str = "config") -> Principal:
    """The principal of a key's settings (an ``ApiKeyConfig`` or a stored key's record)."""
    return Principal(id=k.id, alias=k.alias, scopes=frozenset(k.scopes),
                     models=frozenset(k.models) if k.models is not None else None,
                     tools=frozenset(k.tools) if k.tools is not None else None,
                     limits=Limits.of(k), source=source, priority_raise=k.priority_raise)


def current_principal() -> Principal | None:
    """The caller of the request being handled, or None (no keys configured, or outside a request)."""
    from app.context import request_context

    ctx = request_context.get()
    return ctx.principal if ctx is not None else None
