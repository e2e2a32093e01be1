"""Multi-step programs: the ``steps`` of a program file and the checks made when it is loaded.

A program with ``steps`` declares its ``inputs`` (the JSON form's field specs), its ``outputs``
(each a reference to a step's output) and the steps, in any order::

    {"name": "research_answer",
     "inputs": {"question": "str"},
     "outputs": {"answer": "synthesize.answer", "supported": "verify.supported"},
     "steps": [
       {"name": "subq", "signature": "question -> questions: list[str]",
        "inputs": {"question": "inputs.question"}},
       {"name": "answer", "program": "qa", "map": "question",
        "inputs": {"question": "subq.questions", "context": "inputs.context"}},
       ...]}

References are ``inputs.<field>`` (the request's input) or ``<step>.<field>`` (an output of that
step; ``reasoning`` too when the step is a chain of thought). A step is a ``signature`` (string or
JSON form, with its own ``instructions``, ``module``, ``demos``, ``model``, ``config``) or another
``program`` by reference (``"qa"``, the newest loaded, or ``"qa@2"``; ``model``/``config`` override
its own). ``map`` names one of the step's input fields whose reference is a list: the step runs once
per item, concurrently, and each of its outputs becomes the list of the items' outputs (``answer``
above gives ``answer.answer: list[str]``).

Checked at load, with an error naming the step and the field: every reference resolves, to an
output of another step or a declared input; every required input of a step is mapped and no unknown
one is; types agree (equal, or a ``T`` into an ``Optional[T]``; a mapped reference must be a list
whose item type agrees); steps form no cycle, nor do programs calling programs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import InvalidRequestError, VGateError
from app.services.programs.config import Module, PredictConfig
from app.services.signature import REASONING_FIELD, Signature, TypeSpec, parse_signature
from app.services.signature import Field as SigField

INPUTS = "inputs"  # the source name of the request's inputs in a reference
MAX_STEPS = 32
_REF = re.compile(r"^(?P<source>[A-Za-z_][A-Za-z0-9_]*)\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)$")


class ProgramError(InvalidRequestError):
    """A multi-step program that does not hold together (at load, or built in code)."""

    type = "invalid_program"


class Step(BaseModel):
    """One step of a multi-step program: a signature or a program, its inputs wired from earlier fields, maybe
    mapped."""
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    signature: str | dict[str, Any] | None = None
    program: str | None = Field(None, description="another program: 'qa' (the newest loaded) or 'qa@2'")
    instructions: str | None = None
    module: Module = "predict"
    demos: list[dict[str, Any]] = Field(default_factory=list)
    model: str | None = None
    config: PredictConfig = Field(default_factory=PredictConfig)
    inputs: dict[str, str] = Field(default_factory=dict, description="the step's input field -> a reference")
    map: str | None = Field(None, description="an input field whose reference is a list: run once per item")

    @model_validator(mode="after")
    def _signature_or_program(self) -> Step:
        if (self.signature is None) == (self.program is None):
            raise ValueError(f"step {self.name!r}: give exactly one of 'signature' or 'program'")
        if self.program is not None:
            own = [k for k in ("instructions", "module", "demos") if k in self.model_fields_set]
            if own:
                raise ValueError(f"step {self.name!r} runs program {self.program!r}: {', '.join(own)} belong to "
                                 "that program, not to the step")
        if self.name == INPUTS:
            raise ValueError(f"a step may not be named {INPUTS!r}: references use it for the program's inputs")
        return self


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to a field: of the program's inputs, or of an earlier step's outputs."""
    source: str  # INPUTS or a step's name
    field: str

    def __str__(self) -> str:
        return f"{self.source}.{self.field}"


def parse_ref(text: Any, where: str) -> Ref:
    """Parse 'inputs.<field>' or '<step>.<field>'; anything else is a ProgramError naming ``where``."""
    m = _REF.match(text) if isinstance(text, str) else None
    if m is None:
        raise ProgramError(f"{where}: {text!r} is not a reference; write 'inputs.<field>' or '<step>.<field>'")
    return Ref(m["source"], m["field"])


@dataclass(frozen=True, slots=True)
class CompiledStep:
    """A step checked and bound: its signature, the program it runs (if any), and its input wiring."""
    step: Step
    signature: Signature  # the fields the step takes and gives (a program step: that program's)
    program: Any  # the Program a program step runs, else None
    bindings: tuple[tuple[str, Ref], ...]  # input field -> where its value comes from
    deps: frozenset[str]  # the steps it waits for
    outputs: dict[str, TypeSpec]  # what later steps may reference (mapped: lists)

    @property
    def name(self) -> str:
        """The step's name."""
        return self.step.name


@dataclass(frozen=True, slots=True)
class Plan:
    """A program's steps, checked, in the order declared; ``signature`` is the whole program's."""

    steps: tuple[CompiledStep, ...]
    signature: Signature
    outputs: tuple[tuple[str, Ref], ...]


def compatible(source: TypeSpec, target: TypeSpec) -> bool:
    """A value of type ``source`` may fill a field of type ``target``: the same, or into Optional."""
    if source == target:
        return True
    try:
        return TypeSpec.optional(source) == target
    except VGateError:
        return False


def _list_item(spec: TypeSpec) -> TypeSpec | None:
    return spec.args[0] if spec.kind == "list" else None


def _step_fields(step: Step, resolve: Callable[[str, str], Any] | None, where: str) -> tuple[Signature, Any, Module]:
    """The signature a step runs (and the Program, for a program step), checked."""
    if step.program is not None:
        if resolve is None:
            raise ProgramError(f"{where}: program {step.program!r} is not loaded")
        target = resolve(step.program, where)
        module = "predict" if target.steps else target.module
        return target.parsed(), target, module
    from app.services.adapter import demo_messages  # the one check of a demo's fields (the adapter's)

    try:
        signature = parse_signature(step.signature, step.instructions)  # type: ignore[arg-type]
        demo_messages(signature, step.demos)
    except VGateError as exc:
        raise ProgramError(f"{where}: {exc.message}") from exc
    return signature, None, step.module


def compile_plan(
    name: str,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    steps: list[Step],
    resolve: Callable[[str, str], Any] | None = None,
) -> Plan:
    """Check a multi-step program and build what running it needs. ``resolve(ref, where)`` returns
    the Program a step's ``program`` names (raising a ProgramError when it cannot)."""
    if not steps:
        raise ProgramError(f"program {name!r}: 'steps' is empty")
    if len(steps) > MAX_STEPS:
        raise ProgramError(f"program {name!r} has {len(steps)} steps; the limit is {MAX_STEPS}")
    if not outputs:
        raise ProgramError(f"program {name!r}: 'outputs' is empty; map each output to a step's output")
    try:  # the program's own inputs, in the JSON form (output names checked for clashes with them too)
        head = parse_signature({"inputs": inputs, "outputs": {k: "str" for k in outputs}})
    except VGateError as exc:
        raise ProgramError(f"program {name!r}: {exc.message}") from exc
    given = {f.name: f.type for f in head.inputs}

    by_name: dict[str, Step] = {}
    for step in steps:
        if step.name in by_name:
            raise ProgramError(f"program {name!r}: two steps are named {step.name!r}")
        by_name[step.name] = step

    shapes: dict[str, tuple[Signature, Any, Module]] = {}
    for step in steps:
        shapes[step.name] = _step_fields(step, resolve, f"step {step.name!r}")

    def output_types(step_name: str) -> dict[str, TypeSpec]:
        sig, _, module = shapes[step_name]
        types = {f.name: f.type for f in sig.outputs}
        if module == "chain_of_thought":
            types.setdefault(REASONING_FIELD, TypeSpec("str"))
        if by_name[step_name].map is not None:
            types = {k: TypeSpec.list_of(v) for k, v in types.items()}
        return types

    def type_of(ref: Ref, where: str, own: str | None = None) -> TypeSpec:
        if ref.source == INPUTS:
            if ref.field not in given:
                raise ProgramError(f"{where}: {ref} is not one of the program's inputs ({', '.join(given)})")
            return given[ref.field]
        if ref.source == own:
            raise ProgramError(f"{where}: {ref} refers to the step itself")
        if ref.source not in by_name:
            raise ProgramError(f"{where}: {ref} names no step (steps: {', '.join(by_name)})")
        types = output_types(ref.source)
        if ref.field not in types:
            raise ProgramError(f"{where}: step {ref.source!r} has no output {ref.field!r} ({', '.join(types)})")
        return types[ref.field]

    compiled: dict[str, CompiledStep] = {}
    for step in steps:
        sig, program, _ = shapes[step.name]
        fields = {f.name: f.type for f in sig.inputs}
        unknown = [k for k in step.inputs if k not in fields]
        if unknown:
            raise ProgramError(f"step {step.name!r}, input {unknown[0]!r}: the step has no such input field "
                               f"({', '.join(fields) or 'none'})")
        missing = [k for k, t in fields.items() if k not in step.inputs and not t.is_optional]
        if missing:
            raise ProgramError(f"step {step.name!r}, input {missing[0]!r}: not mapped; map it to "
                               "'inputs.<field>' or '<step>.<field>'")
        if step.map is not None and step.map not in step.inputs:
            raise ProgramError(f"step {step.name!r}: map names {step.map!r}, which is not one of its mapped inputs")
        bindings = []
        for field, text in step.inputs.items():
            where = f"step {step.name!r}, input {field!r}"
            ref = parse_ref(text, where)
            source = type_of(ref, where, own=step.name)
            if field == step.map:
                item = _list_item(source)
                if item is None:
                    raise ProgramError(f"{where}: map needs a list, but {ref} is {source}")
                source = item
            if not compatible(source, fields[field]):
                what = "an item of " if field == step.map else ""
                raise ProgramError(f"{where}: {what}{ref} is {source}, but the field is {fields[field]}")
            bindings.append((field, ref))
        deps = frozenset(r.source for _, r in bindings if r.source != INPUTS)
        compiled[step.name] = CompiledStep(step, sig, program, tuple(bindings), deps, output_types(step.name))

    _refuse_cycles(name, compiled)

    out_fields, out_refs = [], []
    for out_name, spec in outputs.items():
        where = f"program {name!r}, output {out_name!r}"
        text, desc = (spec.get("from"), spec.get("desc")) if isinstance(spec, dict) else (spec, None)
        ref = parse_ref(text, where)
        out_fields.append(SigField(out_name, type_of(ref, where), desc))
        out_refs.append((out_name, ref))
    signature = Signature(inputs=head.inputs, outputs=tuple(out_fields))
    return Plan(steps=tuple(compiled[s.name] for s in steps), signature=signature, outputs=tuple(out_refs))


def _refuse_cycles(name: str, steps: dict[str, CompiledStep]) -> None:
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(step: str, path: list[str]) -> None:
        if state.get(step) == 2:
            return
        if state.get(step) == 1:
            cycle = path[path.index(step):] + [step]
            raise ProgramError(f"program {name!r}: steps form a cycle: {' -> '.join(cycle)}")
        state[step] = 1
        for dep in sorted(steps[step].deps):
            walk(dep, [*path, step])
        state[step] = 2

    for step in steps:
        walk(step, [])
