"""Who may call: API keys from configuration, their scopes, models and tools.

A key is presented as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``; only its SHA-256 is
kept (a configured ``key`` is hashed at start, or the operator gives ``key_sha256``), so a key is
never in memory, logs or metrics in the clear past startup. Lookups go by hash: comparing a secret
byte by byte is what leaks timing; a dict lookup of its digest does not tell how much matched.

With no key configured the gateway is open, as before, and says so at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from app.errors import VGateError


class UnauthorizedError(VGateError):
    status_code = 401
    type = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="vgate"'}


class ForbiddenError(VGateError):
    status_code = 403
    type = "forbidden"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a key's id and what it may do."""

    id: str
    alias: str | None
    scopes: frozenset[str]
    models: frozenset[str] | None  # None: every model
    tools: frozenset[str] | None  # None: every tool

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ForbiddenError(f"this key has no {scope!r} scope", type="scope_missing", scope=scope)

    def allow_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise ForbiddenError(f"this key may not use model {model!r}", type="model_not_allowed",
                                 allowed=sorted(self.models))

    def allow_tools(self, names: Iterable[str]) -> None:
        if self.tools is None:
            return
        refused = sorted(set(names) - self.tools)
        if refused:
            raise ForbiddenError(f"this key may not use the tools {', '.join(refused)}", type="tool_not_allowed",
                                 allowed=sorted(self.tools))

    def usable_tools(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.tools is None or n in self.tools]


class KeyRing:
    def __init__(self, keys: Iterable[tuple[str, Principal]]) -> None:
        self._by_digest = dict(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """The caller, or a 401: no key presented, or one that is not configured."""
        token = api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if not token:
            raise UnauthorizedError("an API key is required: Authorization: Bearer <key> or x-api-key: <key>")
        principal = self._by_digest.get(digest(token))
        if principal is None:
            raise UnauthorizedError("the API key is not valid")
        return principal


def build_keyring(settings) -> KeyRing:
    """The configured keys by digest; two keys with one digest fail at start."""
    keys: dict[str, Principal] = {}
    for k in settings.api_keys:
        d = k.key_sha256 or digest(k.key.get_secret_value())
        if d in keys:
            raise ValueError(f"api keys {keys[d].id!r} and {k.id!r} are the same key")
        keys[d] = Principal(id=k.id, alias=k.alias, scopes=frozenset(k.scopes),
                            models=frozenset(k.models) if k.models is not None else None,
                            tools=frozenset(k.tools) if k.tools is not None else None)
    return KeyRing(keys.items())


def current_principal() -> Principal | None:
    from app.context import request_context

    ctx = request_context.get()
    return ctx.principal if ctx is not None else None
