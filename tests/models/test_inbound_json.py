"""Reading inbound records in batches gives, record for record, the answer of the model's validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import InboundMessage
from models.inbound_json import parse_inbounds

SCRIPTS = st.sampled_from(
    [
        "என் ஆர்டர் எங்கே? ஆர்டர் எண் 4471",  # Tamil
        "আমার অর্ডার কোথায়? বোতল ভেঙে গেছে",  # Bengali: vowel signs that compose
        "মো\u09c7\u09be",  # Bengali written decomposed: NFC composes it to U+09CB
        "मेरा ऑर्डर कहाँ है?",  # Hindi
        "Nasaan na po ang order ko?",  # Tagalog
        "¿Dónde está mi pedido?",
        "e\u0301",  # decomposed é
        "📦🚚😡👍🏽",
        "a\x00b",  # NUL: cleaning removes it
    ]
)
TEXT = st.one_of(SCRIPTS, st.text(), st.text(alphabet=st.characters(codec=None)))


def fields(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": "inbound/1",
        "message_id": "m1",
        "channel": "email",
        "channel_instance": "support-mail",
        "native_id": "<abc@mail.example.com>",
        "received_at": "2026-12-03T10:00:00.123Z",
        "sender": {"id": "kumar@example.org", "name": "Kumar"},
        "recipients": ["support@example.com"],
        "conversation_id": "support-mail:<abc@mail.example.com>",
        "subject": "Order 4471",
        "text": "Where is my parcel?",
        "body": "Where is my parcel?",
        "attachments": [
            {"filename": "a.pdf", "content_type": "application/pdf", "size": 3, "sha256": "0" * 64}
        ],
        "auth": {"spf": "pass"},
        "metadata": {"auto_submitted": "no"},
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not ...}


def written(ascii_only: bool = False, **changes: Any) -> bytes:
    """A record as another writer might write it (``ensure_ascii``: as Python's json does by default).

    A lone surrogate written raw is not UTF-8: both readers must refuse those bytes.
    """
    text = json.dumps(fields(**changes), ensure_ascii=ascii_only, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def validated(record: bytes) -> InboundMessage | str:
    """What the model's validation answers: the message, or the text of its error."""
    try:
        return InboundMessage.model_validate_json(record)
    except ValueError as error:
        return str(error)


def parsed(records: list[bytes]) -> list[InboundMessage | str]:
    return [
        answer if isinstance(answer, InboundMessage) else str(answer) for answer in parse_inbounds(records)
    ]


def assert_same_answers(records: list[bytes]) -> None:
    expected = [validated(record) for record in records]
    answers = parsed(records)
    assert answers == expected
    for answer, wanted in zip(answers, expected, strict=True):
        if isinstance(answer, InboundMessage):
            assert isinstance(wanted, InboundMessage)
            assert answer.to_json_bytes() == wanted.to_json_bytes()
            # field for field in the model's order; only the UTC tzinfo object differs
            assert repr(answer.model_copy(update={"received_at": wanted.received_at})) == repr(wanted)


@settings(deadline=None)  # the first example loads the NFC tables, ~0.3 s
@given(
    subject=TEXT, text=TEXT, body=st.one_of(st.none(), TEXT), name=TEXT, key=TEXT, ascii_only=st.booleans()
)
def test_any_text_is_read_and_cleaned_as_validation_reads_it(
    subject: str, text: str, body: str | None, name: str, key: str, ascii_only: bool
) -> None:
    records = [
        written(
            ascii_only,
            subject=subject,
            text=text,
            body=text if body is None else body,
            sender={"id": "s1", "name": name},
            recipients=[name, "support@example.com"],
            auth={key: name},
            metadata={key: [text, {name: 1.5}], "n": None},
        ),
        written(ascii_only, message_id=name or "m", text=subject, body=text),
    ]
    assert_same_answers(records)


@pytest.mark.parametrize(
    "changes",
    [
        {"received_at": "2026-12-03T10:00:00Z"},
        {"received_at": "2026-12-03T10:00:00.12Z"},
        {"received_at": "2026-12-03T10:00:00.1234Z"},  # past the millisecond: cut
        {"received_at": "2026-12-03T15:30:00.5+05:30"},
        {"received_at": "2026-12-03T15:30:00+0530"},  # no colon: read by the model
        {"received_at": "2026-12-03T10:00:00.9999995Z"},  # seventh digit: cut, not rounded
        {"received_at": "2026-12-03T10:00:00.123456789Z"},
        {"received_at": "2026-12-03 10:00:00Z"},
        {"received_at": "2026-12-03t10:00:00z"},
        {"received_at": "2026-12-03"},
        {"received_at": 1764756000},  # Unix time
        {"received_at": "2026-12-03T10:00:00"},  # no time zone
        {"received_at": "2026-02-30T10:00:00Z"},
        {"received_at": "2026-12-03T24:00:00Z"},
        {"size_as_text": True},
        {"attachments": [{"size": "3"}]},
        {"attachments": [{"size": -1}]},
        {"attachments": [{"size": 1.0}]},
        {"attachments": [{"size": 2**70}]},
        {"attachments": [{"size": 1, "sha256": "A" * 64}]},
        {"attachments": [{"size": 1, "sha256": "0" * 64 + "\n"}]},
        {"attachments": [{"filename": "x"}]},
        {"message_id": ""},
        {"message_id": "\x00"},  # long enough before cleaning, empty after: as the model
        {"message_id": ...},
        {"message_id": 7},
        {"sender": {"name": "no id"}},
        {"sender": None},
        {"schema": "routed/1"},
        {"schema": ...},
        {"schema_": "inbound/2"},
        {"recipients": "one@example.org"},
        {"auth": {"spf": 1}},
        {"metadata": {"big": 12345678901234567890123, "tiny": 5e-324, "max": 1.7976931348623157e308}},
        {"metadata": {"x": 0.1, "y": 2.2250738585072011e-308, "z": 9007199254740993}},
        {"metadata": {"nested": {"a": [1, [2, [3]]]}}},
        {"text": None},
        # non-ASCII words, and something to clean outside them
        {"text": "வணக்கம்", "sender": {"id": "s1", "name": "Ku\x00mar"}},
        {"text": "வணக்கம்", "metadata": {"e\u0301": ["\x00", {"k": "\x01"}]}},
        {"subject": "¿Dónde?", "recipients": ["e\u0301@example.org"]},
        {"unknown_field": {"anything": [1, 2]}},
    ],
)
def test_edge_records_get_the_validation_answer(changes: dict[str, Any]) -> None:
    if changes.pop("size_as_text", False):
        changes["attachments"] = [{"size": "12"}]
    assert_same_answers([written(**changes), written(True, **changes)])


@pytest.mark.parametrize(
    "record",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'{"message_id":"m1"',
        b"\xef\xbb\xbf" + written(),  # byte order mark
        written() + b"x",
        written().replace(b"Kumar", b"Ku\xffmar"),  # not UTF-8
        written().replace(b"Kumar", b"Ku\\ud800mar"),  # a lone surrogate
        written().replace(b'"text"', b'"t\\u0065xt"'),  # an escaped key
        written().replace(b'"Where', b'"Where\tis\x01'),  # a raw control character
        written()[:-1] + b',"metadata":{"k":1e400}}',
        written()[:-1] + b',"message_id":""}',  # a duplicate key: the last one counts
        written()[:-1] + b',"text":"second"}',
    ],
)
def test_malformed_and_ambiguous_json_gets_the_validation_answer(record: bytes) -> None:
    assert_same_answers([record])


def test_nan_which_validation_takes_is_taken() -> None:
    (answer,) = parse_inbounds([written()[:-1] + b',"metadata":{"k":NaN}}'])
    assert isinstance(answer, InboundMessage)
    assert answer.metadata["k"] != answer.metadata["k"]  # NaN; validation reads it as well


@pytest.mark.parametrize("depth", [99, 100, 101, 150, 199, 200, 201, 202, 5_000, 100_000])
def test_deep_nesting_gets_the_validation_answer_and_never_overflows(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    assert_same_answers(
        [
            written()[:-1] + b',"metadata":{"a":' + nested + b"}}",
            written()[:-1] + b',"unknown":' + nested + b"}",
        ]
    )


def test_a_batch_keeps_its_order_around_records_that_fail() -> None:
    records = [
        written(message_id="a"),
        b"{",
        written(message_id="b", text="মো\u09c7\u09be"),
        written(message_id=""),
    ]
    answers = parse_inbounds(records)
    ids = [answer.message_id if isinstance(answer, InboundMessage) else None for answer in answers]
    assert ids == ["a", None, "b", None]
    assert isinstance(answers[2], InboundMessage) and answers[2].text == "মো\u09cb"
    assert_same_answers(records)
