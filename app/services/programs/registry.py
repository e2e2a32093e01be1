"""Every version of every program, by name: the files loaded at start (version 1 unless a file says
otherwise) and the versions an optimization adds (``save_version``). The newest version is a name's
default.

Lookups stay synchronous and in memory. With Redis (``use_redis``) the versions other replicas
saved arrive through ``await refresh()``, which the resolve paths call first: it reads Redis at most
every ``REFRESH_S`` (one counter; the programs only when it moved), so /predict pays no round trip
when nothing changed; if Redis is away, the versions already seen are served.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from app.errors import InvalidRequestError, NotFoundError
from app.services.programs.model import Program
from app.services.programs.versions import REFRESH_S, FileVersions, RedisVersions
from app.services.state.connection import Health, StoreUnavailable

log = structlog.get_logger("vgate.programs")

_REF = re.compile(r"^(?P<name>[A-Za-z0-9_\-]{1,64})(?:@(?P<version>[1-9][0-9]{0,8}))?$")


class ProgramRegistry:
    """The named programs and their versions: from files at start, and saved by /optimize (to files or Redis)."""
    def __init__(self, programs: dict[str, Program] | None = None, *, directory: Path | None = None) -> None:
        """``directory``: where ``save_version`` writes files (without it, and without Redis, a saved
        version lives in this process only)."""
        self._versions: dict[str, dict[int, Program]] = {}
        for program in (programs or {}).values():
            self.add(program)
        self._store: FileVersions | RedisVersions | None = FileVersions(directory) if directory is not None else None
        self._checked = float("-inf")

    def use_redis(self, redis: Any, health: Health | None = None) -> None:
        """Keep saved versions in Redis, and see those every replica saved (called by the lifespan)."""
        self._store = RedisVersions(redis, health)
        self._checked = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        """Take in the versions other replicas saved: a no-op without Redis, and within ``REFRESH_S``
        of the last look unless ``force``."""
        if self._store is None or not self._store.shared:
            return
        now = time.monotonic()
        if not force and now - self._checked < REFRESH_S:
            return
        self._checked = now
        try:
            found = await self._store.load()
        except StoreUnavailable:
            if force:
                raise
            return  # logged by the connection's health; the versions seen so far are served
        for program in found:
            if self.get(program.name, program.version) is None:
                self.add(program)

    async def find(self, ref: str, version: int | None = None) -> Program:
        """``resolve`` after ``refresh``; with Redis, a name or version not known here yet makes it read
        the store now (a version another replica saved a moment ago, named by the client it answered),
        instead of a 404 for up to ``REFRESH_S``. The 404 stands if the store has nothing more or is away."""
        await self.refresh()
        try:
            return self.resolve(ref, version)
        except NotFoundError:
            if self._store is None or not self._store.shared:
                raise
            try:
                await self.refresh(force=True)
            except StoreUnavailable:
                pass
            return self.resolve(ref, version)

    async def save_version(
        self,
        base: Program,
        *,
        demos: Sequence[dict[str, Any]],
        score_before: float | None,
        score_after: float | None,
        provenance: dict[str, Any],
    ) -> Program:
        """A new version of ``base.name`` (the newest + 1): ``base``'s definition with ``demos`` and
        the score after; ``provenance`` (strategy, metric, sizes, usage and cost...) gains the base
        version, both scores and ``created_at``. Persisted (a file, or Redis) before it is returned;
        a 503 ``program_store_unavailable`` when it cannot be."""
        if base.steps is not None:
            raise InvalidRequestError(f"program {base.ref!r} has steps: its demos belong to its steps; optimize "
                                      "the programs its steps run instead", type="invalid_program")
        from app.services.adapter import demo_messages

        demo_messages(base.parsed(), demos)  # a 422 for a malformed demo, before anything is saved
        await self.refresh(force=True)
        known = [p.version for p in self.versions(base.name)]
        created_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = base.model_copy(update={
            "demos": [dict(d) for d in demos],
            "score": score_after,
            "provenance": {**provenance, "base_version": base.version, "score_before": score_before,
                           "score_after": score_after, "created_at": created_at},
            "created_at": created_at,
        })
        floor = max(known, default=0)
        version = await self._store.save(record, floor) if self._store is not None else floor + 1
        program = record.model_copy(update={"version": version})
        if self.get(program.name, version) is None:
            self.add(program)
        log.info("program_version_saved", program=program.name, version=version, score_before=score_before,
                 score_after=score_after, demos=len(program.demos))
        return self.get(program.name, version)  # type: ignore[return-value]

    def add(self, program: Program) -> None:
        """Register a program version (two with one name and version is a ValueError)."""
        versions = self._versions.setdefault(program.name, {})
        if program.version in versions:
            raise ValueError(f"program {program.name!r} has two version {program.version}s")
        versions[program.version] = program

    def names(self) -> list[str]:
        """The programs' names, sorted."""
        return sorted(self._versions)

    def __len__(self) -> int:
        return len(self._versions)

    def versions(self, name: str) -> list[Program]:
        """``name``'s versions, oldest first (empty for an unknown name)."""
        return [p for _, p in sorted(self._versions.get(name, {}).items())]

    def latest(self) -> list[Program]:
        """The default (newest) version of each program, by name."""
        return [self.versions(name)[-1] for name in self.names()]

    def get(self, name: str, version: int | None = None) -> Program | None:
        """A program by name: the given version, else the newest; None if unknown."""
        versions = self._versions.get(name)
        if not versions:
            return None
        return versions.get(version) if version is not None else versions[max(versions)]

    def resolve(self, ref: str, version: int | None = None) -> Program:
        """The program ``ref`` names (``"sentiment"``, the newest, or ``"sentiment@3"``); a 422 for a
        malformed reference, a 404 ``program_not_found`` for an unknown name or version."""
        m = _REF.match(ref)
        if m is None:
            raise InvalidRequestError(f"invalid program reference {ref!r}: expected 'name' or 'name@version'",
                                      type="invalid_program_reference")
        name = m["name"]
        if m["version"] is not None:
            if version is not None and version != int(m["version"]):
                raise InvalidRequestError(f"program {ref!r} and version {version} disagree")
            version = int(m["version"])
        program = self.get(name, version)
        if program is None:
            known = [p.version for p in self.versions(name)]
            if known:
                raise NotFoundError(f"program {name!r} has no version {version}", type="program_not_found",
                                    versions=known)
            raise NotFoundError(f"unknown program {name!r}", type="program_not_found", available=self.names())
        return program
