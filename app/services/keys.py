"""Keys made through /admin/keys: created, listed, changed and revoked at run time, kept in the
shared store (Redis, or this process's memory without one).

A key is shown once, when it is made; the store keeps its SHA-256 and a short prefix to recognise
it by. Keys from the configuration are listed beside them but cannot be changed here (the file is
their source of truth).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import structlog
from pydantic import Field, ValidationError

from app.errors import NotFoundError, VGateError
from app.services.access import KeyRing, Principal, digest, principal_of
from app.services.state.connection import Health, guarded
from app.settings import KEY_ID_PATTERN, KeyLimits, KeyPolicy, KeyScope

log = structlog.get_logger("vgate.keys")
KEY_PREFIX = "vg-"


class KeyCreate(KeyPolicy):
    """A new key: what it may do and its limits, as a configured key's. ``id``: default, generated."""

    id: str | None = Field(None, pattern=KEY_ID_PATTERN)


class KeyUpdate(KeyLimits):
    """Fields to change; a field sent as null is cleared (a limit removed, every model allowed)."""

    alias: str | None = Field(None, max_length=64)
    scopes: list[KeyScope] | None = None
    models: list[str] | None = None
    tools: list[str] | None = None
    priority_raise: bool | None = None


class KeyInfo(KeyCreate):
    """A key as /admin/keys shows it: its policy, where it comes from, its prefix; never the secret."""
    id: str
    source: Literal["config", "admin"] = "admin"
    prefix: str | None = None  # the key's first characters, to recognise it by
    created_at: float | None = None


class KeyCreated(KeyInfo):
    """A key just made: its settings and the key itself, shown this once."""
    key: str  # shown this once


class KeyConflict(VGateError):
    """An /admin/keys change that conflicts (409): an id taken, a configured key, or access control off."""
    status_code = 409
    type = "key_conflict"


# Each change is one script, so a key revoked while it is being changed stays revoked.
_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
_REPLACE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
_DELETE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""
_KEYS = ["vg:keys:ids", "vg:keys:by_digest"]


class KeyStore:
    """Admin keys by digest, in Redis (``redis``) or in memory."""

    def __init__(self, redis=None, health: Health | None = None) -> None:
        self.redis = redis
        self.health = health
        self._by_digest: dict[str, str] = {}  # memory: digest -> record JSON
        self._ids: dict[str, str] = {}  # memory: id -> digest
        if redis is not None:
            self._add, self._replace, self._delete = (redis.register_script(s) for s in (_ADD, _REPLACE, _DELETE))

    async def principal(self, key_digest: str) -> Principal | None:
        """The caller a key digest belongs to, or None for an unknown digest."""
        raw = await self._get_by_digest(key_digest)
        if raw is None:
            return None
        info = _read(raw)
        return principal_of(info, source="admin") if info is not None else None

    async def _get_by_digest(self, key_digest: str) -> bytes | str | None:
        if self.redis is None:
            return self._by_digest.get(key_digest)
        return await guarded(self.redis.hget("vg:keys:by_digest", key_digest), "keys_lookup", self.health)

    async def add(self, info: KeyInfo, key_digest: str) -> bool:
        """Store a new key; False if its id is taken."""
        raw = info.model_dump_json()
        if self.redis is None:
            if info.id in self._ids:
                return False
            self._ids[info.id] = key_digest
            self._by_digest[key_digest] = raw
            return True
        return bool(await guarded(self._add(keys=_KEYS, args=[info.id, key_digest, raw]), "keys_add", self.health))

    async def get(self, key_id: str) -> tuple[str, KeyInfo] | None:
        """A run-time key's digest and settings by id, or None."""
        if self.redis is None:
            d = self._ids.get(key_id)
            return (d, KeyInfo.model_validate_json(self._by_digest[d])) if d else None
        d = await guarded(self.redis.hget("vg:keys:ids", key_id), "keys_get", self.health)
        if d is None:
            return None
        raw = await self._get_by_digest(d.decode())
        info = _read(raw) if raw is not None else None
        return (d.decode(), info) if info is not None else None

    async def replace(self, key_digest: str, info: KeyInfo) -> bool:
        """Store the changed record; False if the key was revoked meanwhile."""
        if self.redis is None:
            if self._ids.get(info.id) != key_digest:
                return False
            self._by_digest[key_digest] = info.model_dump_json()
            return True
        return bool(await guarded(self._replace(keys=_KEYS, args=[info.id, key_digest, info.model_dump_json()]),
                                  "keys_update", self.health))

    async def delete(self, key_id: str, key_digest: str) -> bool:
        """Revoke; False if it was revoked meanwhile."""
        if self.redis is None:
            if self._ids.get(key_id) != key_digest:
                return False
            del self._ids[key_id]
            self._by_digest.pop(key_digest, None)
            return True
        return bool(await guarded(self._delete(keys=_KEYS, args=[key_id, key_digest]), "keys_delete", self.health))

    async def all(self) -> list[KeyInfo]:
        """Every key made at run time."""
        if self.redis is None:
            raws = list(self._by_digest.values())
        else:
            raws = list((await guarded(self.redis.hgetall("vg:keys:by_digest"), "keys_list", self.health)).values())
        return sorted((info for r in raws if (info := _read(r)) is not None), key=lambda k: k.id)


class KeyAdmin:
    """The /admin/keys operations over the keyring: its configured keys, and its store's made ones."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    @property
    def store(self) -> KeyStore:
        """The store of run-time keys (memory or Redis)."""
        return self.keyring.store

    def _require_access_control(self) -> None:
        if not self.keyring.enabled:
            raise KeyConflict("access control is off (no API keys configured): configure an admin key "
                              "([[api_keys]] or VGATE_API_KEYS) first, or keys made here would not be asked for",
                              type="access_control_off")

    async def create(self, req: KeyCreate) -> KeyCreated:
        """Make a key with the given policy; the answer carries the key itself, this once."""
        self._require_access_control()
        key_id = req.id or "key_" + secrets.token_hex(6)
        if self.keyring.configured(key_id) is not None:
            raise KeyConflict(f"key id {key_id!r} is taken by a configured key")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(**{**req.model_dump(), "id": key_id}, prefix=key[:8], created_at=round(time.time(), 3))
        if not await self.store.add(info, digest(key)):
            raise KeyConflict(f"key id {key_id!r} is taken")
        return KeyCreated(**info.model_dump(), key=key)

    async def list(self) -> list[KeyInfo]:
        """Every key: the configured ones, then those made at run time."""
        configured = [_info_of(p) for p in self.keyring.configured_keys()]
        return configured + await self.store.all()

    async def get(self, key_id: str) -> KeyInfo:
        """One key's settings by id (configured or run-time); 404 if unknown."""
        p = self.keyring.configured(key_id)
        if p is not None:
            return _info_of(p)
        found = await self.store.get(key_id)
        if found is None:
            raise NotFoundError(f"no key {key_id!r}", type="key_not_found")
        return found[1]

    async def update(self, key_id: str, req: KeyUpdate) -> KeyInfo:
        """Change a run-time key's policy (a configured key is a 409); returns its new settings."""
        d, info = await self._made(key_id)
        changes = {k: getattr(req, k) for k in req.model_fields_set}
        for name in ("scopes", "priority_raise"):
            if name in changes and changes[name] is None:
                changes.pop(name)  # every key has them: null leaves them
        updated = KeyInfo(**{**info.model_dump(), **changes})
        if not await self.store.replace(d, updated):
            raise NotFoundError(f"no key {key_id!r} (revoked meanwhile)", type="key_not_found")
        self.keyring.forget(d)
        return updated

    async def revoke(self, key_id: str) -> None:
        """Revoke a run-time key: it is refused everywhere within key_cache_s."""
        d, _ = await self._made(key_id)
        if not await self.store.delete(key_id, d):
            raise NotFoundError(f"no key {key_id!r} (revoked meanwhile)", type="key_not_found")
        self.keyring.forget(d)

    async def _made(self, key_id: str) -> tuple[str, KeyInfo]:
        if self.keyring.configured(key_id) is not None:
            raise KeyConflict(f"key {key_id!r} is configured (settings or the TOML file): change it there",
                              type="key_from_config")
        found = await self.store.get(key_id)
        if found is None:
            raise NotFoundError(f"no key {key_id!r}", type="key_not_found")
        return found


def _read(raw: bytes | str) -> KeyInfo | None:
    try:
        return KeyInfo.model_validate_json(raw)
    except ValidationError:  # a record written by another version, or damaged: not a key
        log.warning("key_record_unreadable")
        return None


def _info_of(p: Principal) -> KeyInfo:
    lim = p.limits
    fields: dict[str, Any] = dict(id=p.id, alias=p.alias, scopes=sorted(p.scopes),
                                  models=sorted(p.models) if p.models is not None else None,
                                  tools=sorted(p.tools) if p.tools is not None else None, source="config",
                                  priority_raise=p.priority_raise,
                                  rpm=lim.rpm, tpm=lim.tpm, max_concurrent=lim.max_concurrent,
                                  budget_usd_daily=lim.budget_usd_daily, budget_usd_monthly=lim.budget_usd_monthly)
    return KeyInfo(**fields)


__all__ = ["KeyAdmin", "KeyCreate", "KeyCreated", "KeyInfo", "KeyStore", "KeyUpdate"]
