"""The router's routed JSON: the input's own bytes carried on when they are unambiguous."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import InboundMessage, RoutedMessage, Routing, Sender
from router.service import _routed_json, _routing_json


def message(text: str = "Where is my parcel?") -> InboundMessage:
    return InboundMessage(
        message_id="m1",
        channel="email",
        channel_instance="support-mail",
        native_id="<abc@mail.example.com>",
        received_at=datetime(2026, 12, 3, 10, 0, tzinfo=UTC),
        sender=Sender(id="kumar@example.org", name="Kumar"),
        recipients=("support@example.com",),
        conversation_id="support-mail:<abc@mail.example.com>",
        subject="Order 4471",
        text=text,
        metadata={"auto_submitted": "no"},
    )


ROUTING = Routing(
    department="shipping",
    confidence=0.93,
    language="ta",
    model="department-1",
    routed_at=datetime(2026, 12, 3, 10, 0, 1, tzinfo=UTC),
    reasons=["model:top=shipping:0.93"],
)


def expected(inbound: InboundMessage) -> bytes:
    return RoutedMessage.from_inbound(inbound, ROUTING).to_json_bytes()


@given(st.text())
def test_a_record_as_switchboard_writes_it_is_carried_on_and_equals_the_model(text: str) -> None:
    inbound = message(text)
    assert _routed_json(inbound, ROUTING, inbound.to_json_bytes()) == expected(inbound)


def test_without_the_original_bytes_the_message_is_serialized() -> None:
    assert _routed_json(message(), ROUTING) == expected(message())


def written_by_another(**changes: object) -> bytes:
    fields = json.loads(message().to_json_bytes())
    fields.update(changes)
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "raw",
    [
        # a writer's own "routing" would stand beside the router's: readers differ on which wins
        written_by_another(routing={"department": "billing"}),
        # a second "schema" would turn the routed record back into an inbound one for readers
        # that keep the last of duplicate keys
        written_by_another()[:-1] + b',"schema":"inbound/1"}',
        # the escape of a character that cleaning removes
        written_by_another(text="a\x00b"),
    ],
    ids=["own-routing", "second-schema", "nul"],
)
def test_ambiguous_bytes_are_not_carried_on_the_validated_message_is_serialized(raw: bytes) -> None:
    inbound = InboundMessage.from_json_bytes(raw)
    routed = _routed_json(inbound, ROUTING, raw)
    assert routed == expected(inbound)
    assert RoutedMessage.from_json_bytes(routed).routing == ROUTING


def test_fields_another_writer_adds_are_carried_on_and_readers_ignore_them() -> None:
    raw = written_by_another(ticket_system={"id": 88})
    routed = _routed_json(InboundMessage.from_json_bytes(raw), ROUTING, raw)
    assert json.loads(routed)["ticket_system"] == {"id": 88}
    assert RoutedMessage.from_json_bytes(routed) == RoutedMessage.from_json_bytes(expected(message()))


def test_json_in_another_layout_is_serialized_again() -> None:
    raw = json.dumps(json.loads(message().to_json_bytes()), indent=2).encode()
    assert _routed_json(InboundMessage.from_json_bytes(raw), ROUTING, raw) == expected(message())


ROUTINGS = st.builds(
    Routing,
    department=st.text(min_size=1),
    confidence=st.floats(min_value=0.0, max_value=1.0),
    language=st.text(),
    escalate=st.booleans(),
    priority=st.sampled_from(["low", "normal", "high", "urgent"]),
    reasons=st.lists(st.text(), max_size=4),
    model=st.just("department-1"),
    routed_at=st.datetimes(timezones=st.just(UTC)),
)


@given(ROUTINGS)
def test_the_routing_is_written_as_the_model_writes_it(routing: Routing) -> None:
    assert _routing_json(routing) == routing.model_dump_json().encode()
