"""Multi-step program files: what load_programs accepts, and the clear error (naming the step and
the field) for each way a program can fail to hold together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.services.programs import Program, ProgramRegistry, load_programs
from app.services.signature import TypeSpec

QA = {"name": "qa", "signature": "context: list[str], question: str -> answer: str"}

SIGNATURE = "question: str -> answer: str, supported: bool, issues: list[str], sub_questions: list[str]"


def steps_program(steps: list[dict], *, inputs=None, outputs=None, name: str = "multi", **extra) -> dict:
    return {"name": name, "inputs": inputs or {"question": "str"},
            "outputs": outputs or {"answer": f"{steps[-1]['name']}.answer"}, "steps": steps, **extra}


def write(directory: Path, *programs: dict) -> Path:
    for p in programs:
        ref = p["name"] if p.get("version", 1) == 1 else f"{p['name']}@{p['version']}"
        (directory / f"{ref}.json").write_text(json.dumps(p))
    return directory


def load_error(tmp_path: Path, *programs: dict) -> str:
    with pytest.raises(ValueError) as info:
        load_programs(write(tmp_path, *programs))
    return str(info.value)


PLAN = {"name": "plan", "signature": "question -> questions: list[str]", "inputs": {"question": "inputs.question"}}
EACH = {"name": "each", "signature": "question -> answer", "map": "question", "inputs": {"question": "plan.questions"}}


def test_the_shipped_programs_load_and_research_answer_is_multi_step():
    programs = load_programs(Path("app/programs"))
    research = programs["research_answer"]
    assert [s.name for s in research.steps] == ["plan", "answer", "synthesize", "verify"]
    assert str(research.parsed()) == SIGNATURE
    assert research.summary()["module"] == "steps"
    plan = research.plan()
    assert plan.steps[1].outputs == {"answer": TypeSpec.list_of(TypeSpec("str"))}  # mapped: a list
    assert plan.steps[3].deps == {"synthesize", "answer"}


def test_steps_may_come_in_any_order_and_call_other_programs(tmp_path):
    final = {"name": "final", "program": "qa", "inputs": {"question": "inputs.question", "context": "each.answer"}}
    programs = load_programs(write(tmp_path, QA, steps_program([final, EACH, PLAN],
                                                               outputs={"answer": "final.answer"})))
    multi = programs["multi"]
    assert multi.plan().steps[0].program is programs["qa"]
    assert str(multi.parsed()) == "question: str -> answer: str"


@pytest.mark.parametrize(("steps", "outputs", "needle"), [
    ([{**PLAN, "inputs": {"question": "inputs.query"}}], {"q": "plan.questions"},
     "step 'plan', input 'question': inputs.query is not one of the program's inputs"),
    ([PLAN, {**EACH, "inputs": {"question": "plann.questions"}}], None,
     "step 'each', input 'question': plann.questions names no step"),
    ([PLAN, {**EACH, "inputs": {"question": "plan.question"}}], None,
     "step 'each', input 'question': step 'plan' has no output 'question'"),
    ([PLAN, {**EACH, "inputs": {"question": "plan.questions", "extra": "inputs.question"}}], None,
     "step 'each', input 'extra': the step has no such input field"),
    ([PLAN, {**EACH, "signature": "question, context -> answer"}], None,
     "step 'each', input 'context': not mapped"),
    ([PLAN, {**EACH, "map": None}], None,
     "step 'each', input 'question': plan.questions is list[str], but the field is str"),
    ([PLAN, {**EACH, "inputs": {"question": "inputs.question"}}], None,
     "step 'each', input 'question': map needs a list, but inputs.question is str"),
    ([PLAN, {**EACH, "signature": "question: int -> answer"}], None,
     "step 'each', input 'question': an item of plan.questions is str, but the field is int"),
    ([PLAN, {**EACH, "map": "context"}], None, "step 'each': map names 'context', which is not one of its mapped"),
    ([PLAN, {**EACH, "inputs": {"question": "questions"}}], None,
     "step 'each', input 'question': 'questions' is not a reference"),
    ([PLAN, {**EACH, "inputs": {"question": "each.answer"}}], None, "each.answer refers to the step itself"),
    ([PLAN, PLAN], None, "two steps are named 'plan'"),
    ([PLAN], {"answer": "plan.answer"}, "program 'multi', output 'answer': step 'plan' has no output 'answer'"),
    ([PLAN, {**EACH, "signature": "question -> answer: list[int]"}], None, None),  # fine: answer becomes a list
])
def test_a_broken_step_stops_the_load_naming_the_step_and_field(tmp_path, steps, outputs, needle):
    program = steps_program(steps, outputs=outputs or {"answers": f"{steps[-1]['name']}.answer"})
    if needle is None:
        assert load_programs(write(tmp_path, program))["multi"].parsed().outputs[0].type == \
            TypeSpec.list_of(TypeSpec.list_of(TypeSpec("int")))
        return
    message = load_error(tmp_path, program)
    assert "multi.json" in message and needle in message, message


def test_steps_that_wait_for_each_other_in_a_cycle_are_refused(tmp_path):
    a = {"name": "a", "signature": "x -> y", "inputs": {"x": "b.y"}}
    b = {"name": "b", "signature": "x -> y", "inputs": {"x": "a.y"}}
    message = load_error(tmp_path, steps_program([a, b], outputs={"y": "a.y"}))
    assert "steps form a cycle: a -> b -> a" in message


def test_programs_calling_each_other_in_a_cycle_are_refused(tmp_path):
    one = steps_program([{"name": "s", "program": "two", "inputs": {"question": "inputs.question"}}],
                        name="one", outputs={"answer": "s.answer"})
    two = steps_program([{"name": "t", "program": "one", "inputs": {"question": "inputs.question"}}],
                        name="two", outputs={"answer": "t.answer"})
    message = load_error(tmp_path, one, two)
    assert "programs call each other in a cycle: one -> two -> one" in message


def test_a_step_calling_an_unknown_program_or_version_is_refused(tmp_path):
    step = {"name": "s", "program": "qa@2", "inputs": {"question": "inputs.question"}}
    message = load_error(tmp_path, QA, steps_program([step], outputs={"answer": "s.answer"}))
    assert "step 's': program 'qa@2' is not loaded" in message


@pytest.mark.parametrize(("program", "needle"), [
    ({"name": "p", "signature": "q -> a", "steps": [PLAN], "inputs": {}, "outputs": {}}, "exactly one of"),
    ({"name": "p", "steps": [PLAN], "outputs": {"q": "plan.questions"}}, "declares its 'inputs' and its 'outputs'"),
    ({"name": "p", "signature": "q -> a", "inputs": {"q": "str"}}, "belong to a program with 'steps'"),
    (steps_program([PLAN], outputs={"q": "plan.questions"}, demos=[{"question": "x"}]), "demos: set them on the steps"),
    (steps_program([{**PLAN, "signature": None}], outputs={"q": "plan.questions"}), "exactly one of 'signature' or"),
    (steps_program([{"name": "s", "program": "qa", "module": "chain_of_thought", "inputs": {}}],
                   outputs={"a": "s.answer"}), "module belong to that program"),
    (steps_program([{**PLAN, "name": "inputs"}], outputs={"q": "inputs.questions"}), "may not be named 'inputs'"),
    (steps_program([{**PLAN, "signature": "question -> questions: lisst[str]"}], outputs={"q": "plan.questions"}),
     "step 'plan': "),
    (steps_program([{**PLAN, "demos": [{"question": "q", "answer": "a"}]}], outputs={"q": "plan.questions"}),
     "step 'plan': demo 0 has unknown field(s) 'answer'"),
])
def test_malformed_multi_step_files_are_refused(tmp_path, program, needle):
    assert needle in load_error(tmp_path, QA, program)


def test_a_chain_of_thought_steps_reasoning_may_be_referenced(tmp_path):
    think = {**PLAN, "module": "chain_of_thought"}
    program = steps_program([think], outputs={"why": "plan.reasoning", "qs": "plan.questions"})
    assert str(load_programs(write(tmp_path, program))["multi"].parsed()) == \
        "question: str -> why: str, qs: list[str]"


def test_an_optional_input_may_be_left_unmapped_and_a_value_goes_into_an_optional(tmp_path):
    step = {"name": "s", "signature": "question, hint: Optional[str], n: Optional[int] -> answer",
            "inputs": {"question": "inputs.question", "n": "inputs.count"}}
    program = steps_program([step], inputs={"question": "str", "count": "int"})
    assert load_programs(write(tmp_path, program))["multi"].plan().steps[0].deps == frozenset()


def test_several_versions_of_one_name_load_side_by_side(tmp_path):
    write(tmp_path, {**QA, "version": 1}, {**QA, "version": 3, "score": 0.9, "demos": []})
    registry = ProgramRegistry(load_programs(tmp_path))
    assert [p.version for p in registry.versions("qa")] == [1, 3]
    assert registry.resolve("qa").score == 0.9
    assert registry.resolve("qa@1").score is None


def test_a_program_built_in_code_with_steps_is_checked_when_first_used():
    program = Program.model_validate(steps_program([PLAN, {**EACH, "inputs": {"question": "plan.nope"}}]))
    with pytest.raises(Exception, match="step 'each', input 'question': step 'plan' has no output 'nope'"):
        program.parsed()


async def test_a_program_step_runs_on_its_programs_own_model_unless_the_step_or_request_names_one(tmp_path):
    """The multi-step program's ``model`` is the default of its signature steps; a program step runs
    the program it names on that program's own model (as it gets that program's own config), unless
    the step or the request says otherwise. The outer model took precedence over the program's own."""
    from types import SimpleNamespace

    from app.services.lm import Usage
    from app.services.programs.pipeline import Pipeline

    fixed = {"name": "fixed", "signature": "question -> answer", "model": "small"}
    free = {"name": "free", "signature": "question -> answer"}
    outer = steps_program([
        {"name": "a", "program": "fixed", "inputs": {"question": "inputs.question"}},
        {"name": "b", "program": "fixed", "model": "step-model", "inputs": {"question": "inputs.question"}},
        {"name": "c", "program": "free", "inputs": {"question": "inputs.question"}},
        {"name": "d", "signature": "question -> answer", "inputs": {"question": "inputs.question"}},
    ], outputs={"a": "a.answer", "b": "b.answer", "c": "c.answer", "d": "d.answer"}, model="big")
    programs = load_programs(write(tmp_path, fixed, free, outer))
    seen: dict[str, str | None] = {}

    def answer(model):
        return SimpleNamespace(outputs={"answer": "x"}, usage=Usage(), cost_usd=0.0, model=model or "default",
                               as_dict=lambda: {"outputs": {"answer": "x"}})

    async def run_program(target, inputs, *, model=None, **kw):
        seen[target.name + ("-b" if target.name in seen else "")] = model or target.model
        return answer(model or target.model)

    async def predict(signature, inputs, *, model=None, **kw):
        seen["signature"] = model
        return answer(model)

    service = SimpleNamespace(settings=SimpleNamespace(max_batch_size=8), predict=predict)
    pipeline = Pipeline(service, run_program)  # type: ignore[arg-type]
    await pipeline.run(programs["multi"], {"question": "q"})
    assert seen == {"fixed": "small", "fixed-b": "step-model", "free": "big", "signature": "big"}
    seen.clear()
    await pipeline.run(programs["multi"], {"question": "q"}, model="request-model")
    assert set(seen.values()) == {"request-model"}
