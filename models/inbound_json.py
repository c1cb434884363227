"""Reading a batch of ``inbound/1`` records at router speed, with the answers validation gives.

``InboundMessage.model_validate_json`` spends much of its time in the Python validators that
clean each string, and on Indic text in Unicode's NFC check (~15 µs a Bengali message, as the
quick check cannot settle its vowel signs). Here msgspec parses each record into plain structs
that check what the model's fields check (types, required fields, non-empty ids, sizes, the
schema name), the subjects, texts and bodies of the whole batch are cleaned at once by
:func:`models.text.clean_texts`, and the other strings by :func:`models.text.clean_text` as the
model does, unless they are plain ASCII, as they nearly always are. On the router bench's
records (55 % not plain ASCII) that is ~83,000 instructions a record instead of ~114,000 by
validation (counted with callgrind over 6,000 records, fixed hash seed; timings on this machine
swing more than the difference).

msgspec is the stricter reader: it refuses what pydantic's lax mode coerces (``"size": "12"``,
a Unix time as ``received_at``), the ``NaN`` pydantic's parser takes and fields it does not
know, and such records, like anything it cannot read, are validated by the model, whose
verdict (and error text for the dead-letter topic) is the answer. So a record is accepted here
only when the model accepts it too, as the same message (tests compare the two on valid and
invalid records).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from models.messages import Attachment, InboundMessage, Sender, record_time, unvalidated
from models.text import clean_json, clean_texts

__all__ = ["parse_inbounds", "warm_up"]

_Id = Annotated[str, msgspec.Meta(min_length=1)]

# Up to microseconds only: msgspec rounds a seventh digit where pydantic cuts it, which can
# cross a millisecond. Other spellings pydantic takes (+0530, a space for the T) go to pydantic.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _SenderJSON(msgspec.Struct, kw_only=True):  # fields in the model's order (see _fields)
    id: _Id
    name: str | None = None


class _AttachmentJSON(msgspec.Struct, kw_only=True):  # fields in the model's order (see _fields)
    filename: str | None = None
    content_type: str = "application/octet-stream"
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: str | None = None
    ref: str | None = None


class _InboundJSON(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename={"schema_by_name": "schema_"}
):
    """An ``inbound/1`` record as Switchboard writes it. One with fields this version does not
    know (another writer's, a newer version's) is refused here and left to the model."""

    schema: Literal["inbound/1"] = "inbound/1"
    schema_by_name: Any = msgspec.UNSET
    """The model also takes a field by its Python name (``schema_``); such records go to it."""
    message_id: _Id
    channel: _Id
    channel_instance: _Id
    native_id: _Id
    received_at: str
    sender: _SenderJSON
    recipients: tuple[str, ...] = ()
    conversation_id: _Id
    in_reply_to: str | None = None
    subject: str | None = None
    text: str = ""
    body: str = ""
    attachments: tuple[_AttachmentJSON, ...] = ()
    auth: dict[str, str] = {}
    metadata: dict[str, Any] = {}


_DECODER = msgspec.json.Decoder(_InboundJSON)
_INBOUND_FIELDS = frozenset(InboundMessage.model_fields)
_SENDER_FIELDS = frozenset(Sender.model_fields)
_ATTACHMENT_FIELDS = frozenset(Attachment.model_fields)


class _NotHere(Exception):
    """The record is left to the model's validation."""


def parse_inbounds(records: Sequence[bytes]) -> list[InboundMessage | ValueError]:
    """For each record, the ``InboundMessage`` ``model_validate_json`` reads from it, or its error
    (a ``pydantic.ValidationError``, which is a ``ValueError``).

    Two differences nothing in Switchboard sees: ``model_fields_set`` of a message read here
    holds every field (validation lists only those the record had), and a UTC ``received_at``
    carries ``datetime.UTC`` where validation gives pydantic's own zero-offset tzinfo.
    """
    answers: list[InboundMessage | ValueError | dict[str, Any]] = []
    unclean: list[dict[str, Any]] = []
    for data in records:
        try:
            fields = _fields(_DECODER.decode(data))
        except (msgspec.DecodeError, RecursionError, _NotHere):
            answers.append(_validated(data))
            continue
        if not _plain_ascii(data):
            unclean.append(fields)
        answers.append(fields)
    _clean(unclean)
    return [_message(answer) if isinstance(answer, dict) else answer for answer in answers]


def warm_up() -> None:
    """Build now what the first batch holding non-ASCII text would build (the NFC tables, ~0.2 s).

    A long-running router calls it before joining its group, as it warms its decider.
    """
    clean_texts(["வணக்கம்"])


def _validated(data: bytes) -> InboundMessage | ValueError:
    try:
        return InboundMessage.model_validate_json(data)
    except ValueError as error:
        return error


def _nested_deeper_than(values: Iterable[Any], levels: int) -> bool:
    """Whether lists and objects among *values* nest more than *levels* deep.

    The model's JSON parser refuses documents nested more than ~200 levels (its recursion
    limit); msgspec reads up to Python's recursion limit and raises ``RecursionError`` past it.
    Only ``metadata`` can nest freely in a record read here (unknown fields are refused), so
    a record whose metadata nests at most ``_MOST_METADATA_LEVELS`` deep is read alike by both,
    and a deeper one (a rarity) is left to the model. Level by level: flat metadata, the usual
    kind, costs one pass over its values.
    """
    containers = [value for value in values if isinstance(value, dict | list)]
    while containers:
        if levels == 0:
            return True
        levels -= 1
        containers = [
            item
            for container in containers
            for item in (container.values() if isinstance(container, dict) else container)
            if isinstance(item, dict | list)
        ]
    return False


_MOST_METADATA_LEVELS = 100


def _plain_ascii(data: bytes) -> bool:
    """Whether every string in *data* is ASCII without NUL, so cleaning changes none of them.

    A backslash is looked for first: that search runs at memchr's speed, four times the two-byte
    one's, and most chat records have none at all.
    """
    return data.isascii() and (b"\\" not in data or b"\\u" not in data)


def _fields(record: _InboundJSON) -> dict[str, Any]:
    """The model's fields from a parsed record, strings as they came, nested models as dicts.

    In the model's order, as validation fills them (``repr`` shows them in that order).
    """
    if record.schema_by_name is not msgspec.UNSET or _nested_deeper_than(
        record.metadata.values(), _MOST_METADATA_LEVELS
    ):
        raise _NotHere
    return {
        "schema_": record.schema,
        "message_id": record.message_id,
        "channel": record.channel,
        "channel_instance": record.channel_instance,
        "native_id": record.native_id,
        "received_at": _timestamp(record.received_at),
        "sender": msgspec.structs.asdict(record.sender),
        "recipients": record.recipients,
        "conversation_id": record.conversation_id,
        "in_reply_to": record.in_reply_to,
        "subject": record.subject,
        "text": record.text,
        "body": record.body,
        "attachments": tuple(map(_attachment_fields, record.attachments)) if record.attachments else (),
        "auth": record.auth,
        "metadata": record.metadata,
    }


def _timestamp(value: str) -> datetime:
    if not _RFC3339.fullmatch(value):
        raise _NotHere
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:  # a day or an hour out of range: the model words the error
        raise _NotHere from None
    # UTC to the millisecond at most (every writer of ours): already what record_time makes.
    return moment if value[-1] == "Z" and len(value) <= _MILLISECONDS_Z else record_time(moment)


_MILLISECONDS_Z = len("2026-12-03T10:00:00.123Z")


def _attachment_fields(item: _AttachmentJSON) -> dict[str, Any]:
    if item.sha256 is not None and not _SHA256.fullmatch(item.sha256):
        raise _NotHere
    return msgspec.structs.asdict(item)


def _clean(drafts: list[dict[str, Any]]) -> None:
    """Clean every string of *drafts* in place, as the model's validators clean them.

    Subjects, texts and bodies, where nearly all the non-ASCII text is, are cleaned for the
    whole batch at once. A body equal to its text becomes the cleaned text, as in the model. A
    valid ``sha256`` is ASCII hex, so cleaning it changes nothing.
    """
    body_is_text = [fields["body"] == fields["text"] for fields in drafts]
    for fields in drafts:
        if not _plain_ascii_besides_texts(fields):
            for name, value in fields.items():
                if name not in _BATCHED:
                    fields[name] = clean_json(value)
    slots = [
        (fields, name)
        for fields, same in zip(drafts, body_is_text, strict=True)
        for name in _BATCHED
        if fields[name] is not None and not (same and name == "body")
    ]
    cleaned = clean_texts([fields[name] for fields, name in slots])
    for (fields, name), value in zip(slots, cleaned, strict=True):
        fields[name] = value
    for fields, same in zip(drafts, body_is_text, strict=True):
        if same:
            fields["body"] = fields["text"]


_BATCHED = ("subject", "text", "body")
# received_at is a datetime parsed from an ASCII timestamp: nothing to clean.
_BESIDES_TEXTS = tuple(name for name in InboundMessage.model_fields if name not in (*_BATCHED, "received_at"))
_JSON = msgspec.json.Encoder()


def _plain_ascii_besides_texts(fields: dict[str, Any]) -> bool:
    """Whether every string outside the subject, text and body is ASCII without NUL.

    Most non-ASCII records are so (ids, addresses and metadata are ASCII; the customer's words
    are not), and for them cleaning field by field, ~12 µs, changes nothing. Their JSON says it
    in ~1 µs: msgspec writes non-ASCII as UTF-8 and control characters, NUL among them, as
    escapes (a lone surrogate, which it cannot write, raises).
    """
    try:
        encoded = _JSON.encode([fields[name] for name in _BESIDES_TEXTS])
    except (msgspec.EncodeError, UnicodeEncodeError):
        return False
    return encoded.isascii() and b"\\u" not in encoded


def _message(fields: dict[str, Any]) -> InboundMessage:
    fields["sender"] = unvalidated(Sender, fields["sender"], _SENDER_FIELDS)
    if fields["attachments"]:
        fields["attachments"] = tuple(
            unvalidated(Attachment, item, _ATTACHMENT_FIELDS) for item in fields["attachments"]
        )
    return unvalidated(InboundMessage, fields, _INBOUND_FIELDS)
