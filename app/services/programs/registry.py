"""Every version of every program, by name: the files loaded at start (version 1 unless a file says
otherwise) and the versions an optimization adds. The newest version is a name's default."""

from __future__ import annotations

import re
from typing import Any

from app.errors import InvalidRequestError, NotFoundError
from app.services.programs.model import Program

_REF = re.compile(r"^(?P<name>[A-Za-z0-9_\-]{1,64})(?:@(?P<version>[1-9][0-9]{0,8}))?$")


class ProgramRegistry:
    def __init__(self, programs: dict[str, Program] | None = None) -> None:
        self._versions: dict[str, dict[int, Program]] = {}
        for program in (programs or {}).values():
            self.add(program)

    def add(self, program: Program) -> None:
        versions = self._versions.setdefault(program.name, {})
        if program.version in versions:
            raise ValueError(f"program {program.name!r} has two version {program.version}s")
        versions[program.version] = program

    def names(self) -> list[str]:
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

    async def save_version(self, base: Program, *, demos: list[dict[str, Any]], score_before: float | None,
                           score_after: float | None, provenance: dict[str, Any]) -> Program:
        """A new version of ``base``'s program (the next number) with these demos: what an
        optimization saves. Minimal, in this process's memory only (the programs branch replaces
        it: persisted, with its score and provenance)."""
        version = max((p.version for p in self.versions(base.name)), default=0) + 1
        program = base.model_copy(update={"version": version, "demos": [dict(d) for d in demos]})
        self.add(program)
        return program
