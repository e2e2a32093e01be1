"""Named programs: a signature with its instructions, demos and model config, loaded from files at start.

A program file is JSON (``*.json``) or TOML (``*.toml``)::

    {"name": "sentiment", "description": "...", "signature": "text -> sentiment: Literal['pos', 'neg']",
     "instructions": "...", "module": "predict", "demos": [{"text": "...", "sentiment": "pos"}],
     "model": null, "config": {"temperature": 0}}

Files are validated when loaded: a broken program stops the gateway at start, not at call time.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from app.services.programs.config import Module, PredictConfig
from app.services.signature import Signature, parse_signature

class Program(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    version: int = Field(1, ge=1, description="programs get versions (sentiment@3); the newest is the default")
    description: str = ""
    signature: str | dict[str, Any]
    instructions: str | None = None
    module: Module = "predict"
    demos: list[dict[str, Any]] = Field(default_factory=list)
    model: str | None = None
    config: PredictConfig = Field(default_factory=PredictConfig)

    _signature: Signature | None = PrivateAttr(None)

    def parsed(self) -> Signature:
        """The program's signature, parsed once (at load) and reused by every request."""
        if self._signature is None:
            self._signature = parse_signature(self.signature, self.instructions)
        return self._signature

    def summary(self) -> dict[str, Any]:
        sig = self.parsed()
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "signature": str(sig),
            "instructions": sig.instructions,
            "module": self.module,
            "demos": len(self.demos),
            "model": self.model,
            "config": self.config.upstream_params(),
        }


def load_programs(directory: Path) -> dict[str, Program]:
    """Load every program file in ``directory``. Raises ``ValueError`` naming the broken file."""
    programs: dict[str, Program] = {}
    if not directory.is_dir():
        return programs
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".json", ".toml"):
            continue
        try:
            raw = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
            program = Program.model_validate(raw)
            program.parsed()  # the signature must parse now, not at the first request
        except Exception as exc:  # unreadable file, bad JSON/TOML, ValidationError, SignatureError
            raise ValueError(f"invalid program file {path}: {exc}") from exc
        ref = program.name if program.version == 1 else f"{program.name}@{program.version}"
        if ref in programs:
            raise ValueError(f"duplicate program {ref!r} in {path}")
        programs[ref] = program
    return programs
