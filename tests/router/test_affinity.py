"""What the router remembers about a conversation, and how each decision changes it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models import Routing
from router.affinity import AffinityTable, ConversationState, advance

NOON = datetime(2026, 11, 23, 12, 0, 0, 250_000, tzinfo=UTC)


def routing(department: str, *, escalate: bool = False) -> Routing:
    return Routing(
        department=department, confidence=0.9, language="en", escalate=escalate, model="m", routed_at=NOON
    )


def test_a_confident_route_moves_the_conversation_to_its_department() -> None:
    state = advance(ConversationState("sales", 2, None, True), routing("billing"), "department")
    assert state == ConversationState("billing", 3, NOON, False)


def test_an_escalated_route_leaves_the_conversation_unresolved() -> None:
    assert advance(ConversationState(), routing("complaints", escalate=True), "department").unresolved


def test_triage_keeps_the_last_confident_department_but_marks_it_unresolved() -> None:
    state = advance(ConversationState("shipping", 1, None, False), routing("orders"), "triage")
    assert state == ConversationState("shipping", 2, NOON, True)


def test_a_dropped_auto_reply_only_counts() -> None:
    before = ConversationState("billing", 4, NOON, False)
    assert advance(before, routing("general"), "dropped") == ConversationState("billing", 5, NOON, False)


def test_states_round_trip_through_their_compact_json() -> None:
    state = ConversationState("returns", 7, NOON, True)
    encoded = state.to_bytes()
    assert b" " not in encoded and b'"last_routed_at":"2026-11-23T12:00:00.250Z"' in encoded
    assert ConversationState.from_bytes(encoded) == state
    assert ConversationState.from_bytes(ConversationState().to_bytes()) == ConversationState()


@pytest.mark.parametrize(
    "value", [b"{", b"[]", b'{"v":2}', b'{"v":1,"messages_seen":-1}', b'{"v":1,"department":5}']
)
def test_unreadable_values_are_refused(value: bytes) -> None:
    with pytest.raises(ValueError):
        ConversationState.from_bytes(value)


def test_the_table_holds_state_per_owned_partition() -> None:
    table = AffinityTable()
    good = ConversationState("billing", 1, NOON, False)
    skipped = table.load(0, {b"mail:a": good.to_bytes(), b"mail:b": b"not json"})
    table.put(1, "chat:c", ConversationState("sales", 1, None, False))
    assert skipped == 1 and len(table) == 2
    assert table.get(0, "mail:a") == good
    assert table.get(0, "mail:b") == ConversationState(), "an unreadable state starts afresh"
    table.forget(0)
    assert table.get(0, "mail:a") == ConversationState() and len(table) == 1


def test_the_classifier_is_handed_the_state_as_its_context_field_by_field() -> None:
    from router.pipeline import ConversationContext
    from router.service import _context

    state = ConversationState("billing", 3, NOON, True)
    assert ConversationContext._fields == ConversationState._fields
    assert _context(state) == ConversationContext(
        department="billing", messages_seen=3, last_routed_at=NOON, unresolved=True
    )
