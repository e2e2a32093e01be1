"""Where the versions an optimization saves live: files in the programs directory (``name@3.json``,
read back by ``load_programs`` at the next start), or Redis when the gateway has one, so that every
replica serves a version any of them saved.

Redis keeps one hash per program (``vg:{programs}:p:<name>``: ``next``, the last version number
given, and ``v:<n>``, each version's program file without its version), the set of names, and a
revision counter bumped by every save: a replica reads the counter (at most every ``REFRESH_S``) and
fetches the programs only when it moved. Numbering is atomic (one Lua script), and never reuses a
number the replica's own files hold.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import structlog

from app.errors import VGateError
from app.services.programs.model import Program
from app.services.state.connection import Health, guarded

log = structlog.get_logger("vgate.programs")

REFRESH_S = 0.5  # how stale a replica's view of the versions in Redis may be
NAMES_KEY = "vg:{programs}:names"
REV_KEY = "vg:{programs}:rev"


def program_key(name: str) -> str:
    """The Redis key of a program's saved versions."""
    return f"vg:{{programs}}:p:{name}"


class ProgramStoreError(VGateError):
    """A version could not be saved where the gateway keeps them."""

    status_code = 503
    type = "program_store_unavailable"


class FileVersions:
    """Versions as files in the programs directory; this process sees its own at once, others at
    their next start."""

    shared = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def save(self, program: Program, floor: int) -> int:
        """Write the program as the first free version above ``floor``; returns that version."""
        return await asyncio.to_thread(self._write, program, floor)

    def _write(self, program: Program, floor: int) -> int:
        """Write ``name@<n>.json`` for the first free n above ``floor``: the file appears whole or not
        at all (written aside, then linked into place, which fails if another process took the name)."""
        version = floor + 1
        tmp = self.directory / f".{program.name}.{uuid.uuid4().hex}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            while True:
                tmp.write_text(json.dumps(program.model_copy(update={"version": version}).to_file(), indent=2) + "\n")
                try:
                    os.link(tmp, self.directory / f"{program.name}@{version}.json")
                    return version
                except FileExistsError:
                    version += 1
        except OSError as exc:
            log.error("program_version_not_saved", program=program.name, version=version, directory=str(self.directory),
                      error=exc.strerror or str(exc))
            raise ProgramStoreError(
                f"cannot save version {version} of program {program.name!r}: the gateway's directory for program "
                "versions is not writable (the operator sets VGATE_PROGRAM_VERSIONS_DIR, or VGATE_REDIS_URL to keep "
                "versions in Redis)") from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the directory itself is not there

    async def load(self) -> list[Program]:
        """Nothing: saved files are loaded with the program directory at start."""
        return []


# KEYS: the program's hash, the names set, the revision; ARGV: floor, the program (JSON), its name
_SAVE = """
local n = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
local floor = tonumber(ARGV[1])
if n < floor then n = floor end
n = n + 1
redis.call('HSET', KEYS[1], 'next', n, 'v:' .. n, ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('INCR', KEYS[3])
return n
"""


class RedisVersions:
    """Program versions kept in Redis, shared by every replica."""
    shared = True

    def __init__(self, redis: Any, health: Health | None = None) -> None:
        self.redis = redis
        self.health = health
        self._save = redis.register_script(_SAVE)
        self._rev: bytes | None = None

    async def save(self, program: Program, floor: int) -> int:
        """Save the program as the first free version above ``floor`` (one atomic script); returns that version."""
        body = program.to_file()
        body.pop("version", None)
        n = await guarded(self._save(keys=[program_key(program.name), NAMES_KEY, REV_KEY],
                                     args=[floor, json.dumps(body), program.name]), "programs_save", self.health)
        return int(n)

    async def load(self) -> list[Program]:
        """Every version in Redis, when anything was saved since the last look; else nothing."""
        rev = await guarded(self.redis.get(REV_KEY), "programs_rev", self.health)
        if rev is None or rev == self._rev:
            return []
        names = sorted(n.decode() for n in await guarded(self.redis.smembers(NAMES_KEY), "programs_names",
                                                         self.health))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(program_key(name))
            hashes = await guarded(pipe.execute(), "programs_load", self.health)
        found = []
        for name, fields in zip(names, hashes, strict=True):
            for key, raw in fields.items():
                key = key.decode()
                if not key.startswith("v:"):
                    continue
                try:
                    program = Program.model_validate({**json.loads(raw), "version": int(key[2:])})
                    program.parsed()
                except Exception as exc:  # a version this replica cannot read must not stop the others
                    log.warning("program_version_unreadable", program=name, version=key[2:], error=str(exc)[:300])
                    continue
                found.append(program)
        self._rev = rev
        return found
