"""Session history kept between /agent turns: bounded in messages and bytes, cut only where a turn
starts (a user message), so it never begins with tool results or a tool call without its results."""

from __future__ import annotations

import json

from app.services.agent import SessionStore


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def calls(*ids: str) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": "calculator", "arguments": "{}"}} for i in ids]}


def result(call_id: str, content: str = "42") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


TURN1 = [user("first"), calls("a", "b"), result("a"), result("b"), answer("one")]
TURN2 = [user("second"), calls("c"), result("c"), answer("two")]


def kept(store: SessionStore, messages: list[dict]) -> list[dict]:
    assert store.acquire("s") is not None
    store.release("s", messages)
    history = store.acquire("s")
    store.release("s", None)
    return history


def test_a_count_cut_moves_to_the_next_turn():
    history = kept(SessionStore(ttl_s=60, max_sessions=10, max_messages=6), TURN1 + TURN2)
    assert history == TURN2  # not [tool, assistant, user, ...]: the last 6 would start mid-turn


def test_history_is_bounded_in_bytes():
    big = [user("third"), calls("d"), result("d", "x" * 3000), answer("three")]
    store = SessionStore(ttl_s=60, max_sessions=10, max_bytes=3400)
    history = kept(store, TURN1 + TURN2 + big)
    assert len(json.dumps(history, separators=(",", ":")).encode()) <= 3400
    assert history == big  # with the turn before it, 3495 bytes


def test_a_turn_too_big_to_keep_is_kept_as_its_question_and_answer():
    big = [user("third"), calls("d"), result("d", "x" * 5000), answer("three")]
    history = kept(SessionStore(ttl_s=60, max_sessions=10, max_bytes=4000), TURN1 + big)
    assert history == [user("third"), answer("three")]


def test_what_fits_is_kept_whole():
    history = kept(SessionStore(ttl_s=60, max_sessions=10), TURN1 + TURN2)
    assert history == TURN1 + TURN2
