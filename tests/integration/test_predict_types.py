"""/predict with DSPy's full type syntax, object types and constraints, against the simulator (which
writes JSON from the schema it is sent: anyOf, prefixItems, $ref/$defs; it does not honour ``pattern``)."""

from __future__ import annotations

import json

from tests.support import gateway


async def predict(gw, body: dict) -> tuple[int, dict]:
    r = await gw.client.post("/predict", json=body)
    return r.status_code, r.json()


async def test_unions_tuples_any_and_nested_optional_come_back_typed(sim_url):
    sig = ("question -> a: Union[int, str], b: str | int, pair: tuple[int, str], nums: Tuple[float, ...], "
           "anything: Any, nested: dict[str, list[Optional[Tuple[int, str]]]], maybe: Optional[list[Optional[int]]], "
           "either: Union[list[str], dict[str, Any]]")
    async with gateway(sim_url) as gw:
        status, body = await predict(gw, {"signature": sig, "inputs": {"question": "What about Turing machines?"}})
    assert status == 200, body
    out = body["outputs"]
    assert type(out["a"]) is int  # the first member the simulator picks; int | str keeps it an int
    assert type(out["b"]) is str
    assert isinstance(out["pair"], list) and len(out["pair"]) == 2  # a tuple, validated, sent as an array
    assert type(out["pair"][0]) is int and type(out["pair"][1]) is str
    assert isinstance(out["nums"], list) and all(type(x) in (int, float) for x in out["nums"])
    assert "anything" in out
    assert isinstance(out["nested"], dict) and out["nested"]
    for items in out["nested"].values():
        for item in items:
            assert item is None or (len(item) == 2 and type(item[0]) is int and type(item[1]) is str)
    assert out["maybe"] is None or all(x is None or type(x) is int for x in out["maybe"])
    assert isinstance(out["either"], list) and all(type(x) is str for x in out["either"])
    assert body["signature"] == (
        "question: str -> a: int | str, b: str | int, pair: tuple[int, str], nums: tuple[float, ...], "
        "anything: Any, nested: dict[str, list[Optional[tuple[int, str]]]], maybe: Optional[list[Optional[int]]], "
        "either: list[str] | dict[str, Any]"
    )


CONTACTS = {
    "types": {"Contact": {"name": "str", "email": {"type": "Optional[str]", "desc": "if the text gives one"},
                          "tags": {"type": "list[str]", "max_items": 3}}},
    "inputs": {"text": {"type": "str", "min_length": 1}},
    "outputs": {"contacts": {"type": "list[Contact]", "min_items": 1}, "lead": "Optional[Contact]",
                "stars": {"type": "int", "ge": 1, "le": 5}},
}


async def test_object_type_list_and_constraints(sim_url):
    async with gateway(sim_url) as gw:
        status, body = await predict(gw, {"signature": CONTACTS,
                                          "inputs": {"text": "Ada Lovelace wrote to Alan Turing at Bletchley."}})
    assert status == 200, body
    out = body["outputs"]
    assert isinstance(out["contacts"], list) and len(out["contacts"]) >= 1
    for contact in out["contacts"]:
        assert set(contact) == {"name", "email", "tags"}
        assert type(contact["name"]) is str
        assert contact["email"] is None or type(contact["email"]) is str
        assert isinstance(contact["tags"], list) and len(contact["tags"]) <= 3
    assert out["lead"] is None or set(out["lead"]) == {"name", "email", "tags"}
    assert type(out["stars"]) is int and 1 <= out["stars"] <= 5
    assert body["signature"] == "text: str -> contacts: list[Contact], lead: Optional[Contact], stars: int"


async def test_extract_contacts_program_returns_contacts(sim_url):
    async with gateway(sim_url) as gw:
        listing = (await gw.client.get("/predict/programs")).json()
        status, body = await predict(gw, {"program": "extract_contacts",
                                          "inputs": {"text": "Grace Hopper (Navy) met Edsger Dijkstra."}})
    summary = next(p for p in listing["programs"] if p["name"] == "extract_contacts")
    assert summary["signature"] == "text: str -> contacts: list[Contact]"
    assert status == 200, body
    for contact in body["outputs"]["contacts"]:
        assert set(contact) == {"name", "email", "organization", "role"} and type(contact["name"]) is str


async def test_input_constraint_is_a_422(sim_url):
    async with gateway(sim_url) as gw:
        status, body = await predict(gw, {"signature": CONTACTS, "inputs": {"text": ""}})
    assert status == 422, body
    assert body["error"]["type"] == "invalid_request" and body["error"]["errors"][0]["loc"] == ["text"]


async def test_a_reply_that_breaks_a_constraint_is_a_502_with_the_errors(sim_url):
    # the simulator does not honour "pattern" (nor does every backend): validation catches it
    sig = {"inputs": {"question": "str"}, "outputs": {"code": {"type": "str", "pattern": "^[0-9]{6}$"}}}
    async with gateway(sim_url) as gw:
        status, body = await predict(gw, {"signature": sig, "inputs": {"question": "Give me a code."}})
    assert status == 502, body
    err = body["error"]
    assert err["type"] == "output_validation_error"
    assert err["errors"][0]["loc"] == ["code"] and err["errors"][0]["type"] == "string_pattern_mismatch"
    assert "code" in json.loads(err["raw"])


async def test_over_budget_schema_is_a_422_before_any_upstream_call(sim_url):
    members = " | ".join(["int", "str", "float", "bool", "list[str]", "list[int]", "dict[str, int]", "tuple[int]",
                          "tuple[str]"])
    async with gateway(sim_url) as gw:
        status, body = await predict(gw, {"signature": f"q -> a: {members}", "inputs": {"q": "x"}})
        batch_status, batch = await predict(gw, {"signature": f"q -> a: {members}", "batch": [{"q": "x"}]})
    assert status == 422, body
    err = body["error"]
    assert err["type"] == "schema_too_complex" and err["limit"] == "MAX_UNION_WIDTH"
    assert err["max"] == 8 and err["value"] == 9 and "MAX_UNION_WIDTH" in err["message"]
    assert batch_status == 422 and batch["error"]["type"] == "schema_too_complex"


async def test_bad_object_type_is_a_422_naming_it(sim_url):
    sig = {"types": {"A": {"b": "list[B]"}, "B": {"a": "A"}}, "outputs": {"a": "A"}}
    async with gateway(sim_url) as gw:
        status, body = await predict(gw, {"signature": sig, "inputs": {}})
    assert status == 422, body
    assert body["error"]["type"] == "invalid_signature" and body["error"]["type_name"] == "A"
    assert "A -> B -> A" in body["error"]["message"]
