"""Named programs: a signature with its instructions, demos and model config, or several steps
(``steps.py``), loaded from files at start.

A program file is JSON (``*.json``) or TOML (``*.toml``)::

    {"name": "sentiment", "description": "...", "signature": "text -> sentiment: Literal['pos', 'neg']",
     "instructions": "...", "module": "predict", "demos": [{"text": "...", "sentiment": "pos"}],
     "model": null, "config": {"temperature": 0}}

or, a multi-step program (see ``steps.py`` for references, ``map`` and the checks)::

    {"name": "research_answer", "inputs": {"question": "str"},
     "outputs": {"answer": "synthesize.answer"},
     "steps": [{"name": "subq", "signature": "question -> questions: list[str]",
                "inputs": {"question": "inputs.question"}}, ...]}

A file may carry ``"version": 3`` (and ``score``, ``provenance``, ``created_at``): the versions an
optimization saves are files ``name@3.json`` of this form, loaded back at the next start; several
versions of one name live side by side, the newest being the default.

Files are validated when loaded: a broken program stops the gateway at start, not at call time.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from app.services.programs.config import Module, PredictConfig
from app.services.programs.steps import Plan, ProgramError, Step, compile_plan
from app.services.signature import Signature, parse_signature

STEPS_MODULE = "steps"  # what a multi-step program's responses and listings say its module is


class Program(BaseModel):
    """A named program: a signature (or steps), its module, demos, model and settings, at one version."""
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    version: int = Field(1, ge=1, description="programs get versions (sentiment@3); the newest is the default")
    description: str = ""
    signature: str | dict[str, Any] | None = None
    instructions: str | None = None
    module: Module = "predict"
    demos: list[dict[str, Any]] = Field(default_factory=list)
    model: str | None = None
    config: PredictConfig = Field(default_factory=PredictConfig)
    # a multi-step program instead of a signature (steps.py)
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    steps: list[Step] | None = None
    # a version's record (save_version): its validation score and how it was made
    score: float | None = None
    provenance: dict[str, Any] | None = None
    created_at: str | None = None

    _signature: Signature | None = PrivateAttr(None)
    _plan: Plan | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _signature_or_steps(self) -> Program:
        if (self.signature is None) == (self.steps is None):
            raise ValueError("give exactly one of 'signature' or 'steps'")
        if self.steps is None:
            if self.inputs is not None or self.outputs is not None:
                raise ValueError("'inputs' and 'outputs' belong to a program with 'steps'; a signature declares "
                                 "its own")
        else:
            if self.inputs is None or self.outputs is None:
                raise ValueError("a program with 'steps' declares its 'inputs' and its 'outputs'")
            own = [k for k in ("instructions", "module", "demos") if k in self.model_fields_set]
            if own:
                raise ValueError(f"{', '.join(own)}: set them on the steps of a multi-step program")
        return self

    @property
    def ref(self) -> str:
        """``name`` for version 1, else ``name@version``."""
        return self.name if self.version == 1 else f"{self.name}@{self.version}"

    @property
    def module_name(self) -> str:
        """The module that runs it: the program's, or the steps' pipeline."""
        return STEPS_MODULE if self.steps is not None else self.module

    def plan(self, resolve: Callable[[str, str], Program] | None = None) -> Plan:
        """A multi-step program's checked steps, built once (at load, where ``resolve`` finds the
        programs its steps call)."""
        if self.steps is None:
            raise ProgramError(f"program {self.name!r} has no steps")
        if self._plan is None:
            assert self.inputs is not None and self.outputs is not None
            self._plan = compile_plan(self.name, self.inputs, self.outputs, self.steps, resolve)
        return self._plan

    def parsed(self) -> Signature:
        """The program's signature, parsed once (at load) and reused by every request; for a
        multi-step program, its inputs and its outputs."""
        if self._signature is None:
            if self.steps is not None:
                self._signature = self.plan().signature
            else:
                self._signature = parse_signature(self.signature, self.instructions)  # type: ignore[arg-type]
        return self._signature

    def summary(self) -> dict[str, Any]:
        """The program as GET /predict/programs lists it."""
        sig = self.parsed()
        out = {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "signature": str(sig),
            "instructions": sig.instructions,
            "module": self.module_name,
            "demos": len(self.demos),
            "model": self.model,
            "config": self.config.upstream_params(),
        }
        if self.steps is not None:
            out["steps"] = [s.name for s in self.steps]
        return out

    def version_summary(self) -> dict[str, Any]:
        """One line of GET /predict/programs/{name}."""
        return {**self.summary(), "score": self.score, "provenance": self.provenance, "created_at": self.created_at}

    def to_file(self) -> dict[str, Any]:
        """The program file's content (what ``load_programs`` reads back)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {
            "name": self.name, "version": self.version}


def _read(path: Path) -> Program:
    raw = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    return Program.model_validate(raw)


def load_programs(*directories: Path) -> dict[str, Program]:
    """Load every program file in ``directories`` (``sentiment``, ``sentiment@3``: by reference; a
    directory that is not there holds none). Raises ``ValueError`` naming the broken file, and for a
    multi-step program the step and field."""
    programs: dict[str, Program] = {}
    paths: dict[str, Path] = {}
    files = [p for d in dict.fromkeys(d.resolve() for d in directories) if d.is_dir() for p in sorted(d.iterdir())]
    for path in files:
        if path.suffix not in (".json", ".toml") or path.name.startswith("."):
            continue
        try:
            program = _read(path)
            if program.steps is None:
                program.parsed().check_budget()  # it must parse, and fit vLLM's schema budget, now
        except Exception as exc:  # unreadable file, bad JSON/TOML, ValidationError, SignatureError
            raise ValueError(f"invalid program file {path}: {exc}") from exc
        if program.ref in programs:
            raise ValueError(f"duplicate program {program.ref!r} in {path}")
        programs[program.ref] = program
        paths[program.ref] = path
    _link(programs, paths)
    return programs


def _link(programs: dict[str, Program], paths: dict[str, Path]) -> None:
    """Check every multi-step program, resolving the programs its steps call; a program that calls
    itself, directly or through others, is refused."""
    newest: dict[str, Program] = {}
    for program in programs.values():
        if program.name not in newest or program.version > newest[program.name].version:
            newest[program.name] = program
    by_version = {(p.name, str(p.version)): p for p in programs.values()}
    walking: list[str] = []

    def compile_(program: Program) -> None:
        if program._plan is not None:
            return
        walking.append(program.ref)

        def resolve(ref: str, where: str) -> Program:
            name, _, version = ref.partition("@")
            target = newest.get(name) if not version else by_version.get((name, version))
            if target is None:
                raise ProgramError(f"{where}: program {ref!r} is not loaded (programs: {', '.join(sorted(newest))})")
            if target.ref in walking:
                cycle = " -> ".join([*walking[walking.index(target.ref):], target.ref])
                raise ProgramError(f"{where}: programs call each other in a cycle: {cycle}")
            if target.steps is not None:
                compile_(target)
            return target

        program.plan(resolve)
        program.parsed()
        walking.pop()

    for ref, program in programs.items():
        if program.steps is not None:
            try:
                compile_(program)
            except Exception as exc:
                raise ValueError(f"invalid program file {paths[ref]}: {exc}") from exc
