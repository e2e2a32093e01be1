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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from app.services.signature import Signature, parse_signature

Module = Literal["predict", "chain_of_thought"]


class PredictConfig(BaseModel):
    """Sampling settings passed to vLLM. Unknown keys are refused, never dropped silently."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=131072)
    min_tokens: int | None = Field(None, ge=0, le=131072)  # vLLM: no stop before this many tokens
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | None = Field(None, max_length=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    chat_template_kwargs: dict[str, Any] | None = None  # e.g. Qwen3 {"enable_thinking": false}

    def merged(self, override: PredictConfig | None) -> PredictConfig:
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))

    def upstream_params(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Program(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
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
        if program.name in programs:
            raise ValueError(f"duplicate program name {program.name!r} in {path}")
        programs[program.name] = program
    return programs
