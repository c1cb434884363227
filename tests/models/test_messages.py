"""The records survive a JSON round trip whatever text customers send."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from models import Attachment, InboundMessage, RoutedMessage, Routing, Sender
from models.messages import fit_to_size, record_time
from models.text import clean_text, clean_texts

SCRIPTS = st.sampled_from(
    [
        "என் ஆர்டர் எங்கே?",  # Tamil
        "আমার অর্ডার কোথায়?",  # Bengali
        "मेरा ऑर्डर कहाँ है?",  # Hindi
        "Nasaan na po ang order ko?",  # Tagalog
        "¿Dónde está mi pedido?",  # Spanish
        "أين طلبي؟",  # Arabic, right to left
        "הזמנה שלי איפה",  # Hebrew, right to left
        "📦🚚😡👍🏽",  # emoji with a skin-tone modifier
        "e\u0301",  # decomposed é: NFC composes it
    ]
)
ANY_TEXT = st.one_of(SCRIPTS, st.text(), st.text(alphabet=st.characters(codec=None)))


def inbound(**overrides: object) -> InboundMessage:
    fields: dict[str, object] = {
        "message_id": "m1",
        "channel": "email",
        "channel_instance": "support-mail",
        "native_id": "<abc@mail.example.com>",
        "received_at": datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
        "sender": Sender(id="kumar@example.org", name="Kumar"),
        "recipients": ("support@example.com",),
        "conversation_id": "support-mail:<abc@mail.example.com>",
        "subject": "Order 4471 not delivered",
        "text": "Where is my parcel?",
        "body": "Where is my parcel?\n\n> old quote",
        "attachments": (
            Attachment(filename="a.pdf", content_type="application/pdf", size=3, sha256="0" * 64),
        ),
        "auth": {"spf": "pass", "dkim": "none", "dmarc": "none"},
        "metadata": {"auto_submitted": "auto-reply"},
    }
    fields.update(overrides)
    return InboundMessage.model_validate(fields)


def routing() -> Routing:
    return Routing(
        department="shipping",
        confidence=0.93,
        language="ta",
        priority="high",
        reasons=("rule:vip-domain", "model:top=shipping"),
        model="default-2026.11",
        routed_at=datetime(2026, 11, 23, 10, 0, 0, 12_345, tzinfo=UTC),
    )


def test_inbound_json_has_the_contract_field_names() -> None:
    data = json.loads(inbound().to_json_bytes())
    assert data["schema"] == "inbound/1"
    assert data["received_at"] == "2026-11-23T10:00:00Z"
    assert data["sender"] == {"id": "kumar@example.org", "name": "Kumar"}
    assert set(data) == {
        "schema",
        "message_id",
        "channel",
        "channel_instance",
        "native_id",
        "received_at",
        "sender",
        "recipients",
        "conversation_id",
        "in_reply_to",
        "subject",
        "text",
        "body",
        "attachments",
        "auth",
        "metadata",
    }


def test_routed_message_adds_routing_and_keeps_milliseconds() -> None:
    routed = RoutedMessage.from_inbound(inbound(), routing())
    data = json.loads(routed.to_json_bytes())
    assert data["schema"] == "routed/1"
    assert data["routing"]["routed_at"] == "2026-11-23T10:00:00.012Z"
    assert RoutedMessage.from_json_bytes(routed.to_json_bytes()) == routed


def test_readers_ignore_fields_they_do_not_know() -> None:
    data = json.loads(inbound().to_json_bytes())
    data["added_in_a_later_version"] = {"x": 1}
    assert InboundMessage.model_validate(data) == inbound()


def test_timestamps_are_converted_to_utc_and_naive_ones_rejected() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    message = inbound(received_at=datetime(2026, 11, 23, 15, 30, tzinfo=ist))
    assert json.loads(message.to_json_bytes())["received_at"] == "2026-11-23T10:00:00Z"
    with pytest.raises(ValidationError, match="time zone"):
        inbound(received_at=datetime(2026, 11, 23, 10, 0))


def test_nul_is_stripped_and_lone_surrogates_become_replacement_characters() -> None:
    message = inbound(text="a\x00b\ud800c", subject="x\udfffy", metadata={"k\x00": ["v\ud83d"]})
    assert message.text == "ab\ufffdc"
    assert message.subject == "x\ufffdy"
    assert message.metadata == {"k": ["v\ufffd"]}
    assert InboundMessage.from_json_bytes(message.to_json_bytes()) == message


@given(text=ANY_TEXT, subject=ANY_TEXT, name=ANY_TEXT)
def test_any_unicode_round_trips(text: str, subject: str, name: str) -> None:
    message = inbound(text=text, subject=subject, sender=Sender(id="x", name=name), metadata={"note": text})
    encoded = message.to_json_bytes()
    encoded.decode("utf-8")  # always valid UTF-8
    assert InboundMessage.from_json_bytes(encoded) == message
    routed = RoutedMessage.from_inbound(message, routing())
    assert RoutedMessage.from_json_bytes(routed.to_json_bytes()) == routed


@given(text=ANY_TEXT, body=ANY_TEXT)
def test_the_body_is_cleaned_like_the_text_whether_or_not_they_are_equal(text: str, body: str) -> None:
    for pair in ((text, body), (text, text), (body, body)):
        message = inbound(text=pair[0], body=pair[1])
        assert message.body == clean_text(pair[1])
        assert message.text == clean_text(pair[0])
        assert InboundMessage.from_json_bytes(message.to_json_bytes()) == message


@given(value=ANY_TEXT)
def test_cleaning_clean_text_changes_nothing(value: str) -> None:
    assert clean_text(clean_text(value)) == clean_text(value)


@given(values=st.lists(ANY_TEXT, max_size=8))
def test_cleaning_a_batch_cleans_each_text_as_cleaning_it_alone(values: list[str]) -> None:
    assert clean_texts(values) == [clean_text(value) for value in values]


def test_records_are_frozen() -> None:
    with pytest.raises(ValidationError):
        inbound().text = "changed"  # type: ignore[misc]


def test_a_record_too_large_for_the_broker_is_cut_and_says_so() -> None:
    big = inbound(body="ব" * 100_000, text="ব" * 100_000)
    fitted = fit_to_size(big, 60_000)
    assert len(fitted.to_json_bytes()) <= 60_000
    assert fitted.metadata["body_truncated"] is True
    assert fitted.metadata["text_truncated"] is True
    assert fitted.body and set(fitted.body) == {"ব"}  # never cut inside a character
    assert fit_to_size(inbound(), 60_000) == inbound()


def test_a_trusted_routing_is_the_same_record_as_a_validated_one() -> None:
    parts = {
        "department": "orders",
        "confidence": 0.8731,
        "language": "ta",
        "escalate": True,
        "priority": "high",
        "reasons": ("language:ta(script)", "model:top=orders:0.87"),
        "model": "default-2026.12",
        "routed_at": record_time(datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC)),
    }
    trusted = Routing.trusted(**parts)  # type: ignore[arg-type]
    validated = Routing(**parts)  # type: ignore[arg-type]
    assert trusted == validated
    assert trusted.model_dump_json() == validated.model_dump_json()
    assert trusted.model_fields_set == validated.model_fields_set
    assert Routing.model_validate_json(trusted.model_dump_json()) == trusted
    assert trusted.model_copy(update={"priority": "urgent"}).priority == "urgent"
    with pytest.raises(ValidationError):
        trusted.department = "billing"  # type: ignore[misc]
