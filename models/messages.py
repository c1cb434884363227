"""The records on the wire: ``InboundMessage`` (schema ``inbound/1``) and ``RoutedMessage`` (``routed/1``).

Models are frozen; strings are cleaned on the way in (see :func:`models.text.clean_text`) so any
record that validates also serializes. Readers ignore fields they do not know, which lets a
newer writer add fields without breaking older readers.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    ValidationInfo,
    field_validator,
)

from models.text import clean_json, clean_text, truncate_utf8

__all__ = [
    "INBOUND_SCHEMA",
    "ROUTED_SCHEMA",
    "Attachment",
    "InboundMessage",
    "Priority",
    "RoutedMessage",
    "Routing",
    "Sender",
    "fit_to_size",
    "format_timestamp",
    "record_time",
    "unvalidated",
]

INBOUND_SCHEMA = "inbound/1"
ROUTED_SCHEMA = "routed/1"
_ZERO = timedelta(0)

Priority = Literal["low", "normal", "high", "urgent"]


@functools.lru_cache(maxsize=64)
def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; milliseconds only when there are any.

    Memoized: the router stamps a whole batch with one ``routed_at`` and writes it twice per
    message (routed record and conversation state); formatting it is ~4 µs each time.
    """
    moment = moment.astimezone(UTC)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def record_time(moment: datetime) -> datetime:
    """*moment* as records carry it: UTC, cut to milliseconds (so a JSON round trip is exact).

    A moment already at offset zero and in whole milliseconds (every record a writer of ours
    made) is returned as it is, whatever its tzinfo object: ``astimezone`` costs ~2 µs with
    the one pydantic parses ``Z`` into, a tenth of validating a whole record.
    """
    if moment.tzinfo is None:
        raise ValueError("timestamp must carry a time zone (RFC 3339)")
    if not moment.microsecond % 1000 and moment.utcoffset() == _ZERO:
        return moment
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


_ModelT = TypeVar("_ModelT", bound=BaseModel)


# BaseModel's slots, set through their descriptors: ~0.15 µs each, ~0.6 through object.__setattr__.
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__


def unvalidated(model: type[_ModelT], fields: dict[str, Any], fields_set: frozenset[str]) -> _ModelT:
    """An instance of *model* holding *fields* (all of them, in field order), not validated.

    What ``model_construct`` sets, without its generic loop over the fields (~1.5 µs instead of
    ~5.5 for a routing, as slow as validating). For the router's hot path only: the caller
    answers for every value being what validation would have made of it.
    """
    instance = model.__new__(model)
    _SET_DICT(instance, fields)
    _SET_FIELDS_SET(instance, set(fields_set))  # model_copy adds to it
    _SET_EXTRA(instance, None)
    _SET_PRIVATE(instance, None)
    return instance


CleanStr = Annotated[str, AfterValidator(clean_text)]
Timestamp = Annotated[
    datetime,
    AfterValidator(record_time),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Sender(_Record):
    """Who wrote: an address, a platform user id or a phone number in E.164."""

    id: CleanStr = Field(min_length=1)
    name: CleanStr | None = None


class Attachment(_Record):
    """Metadata of one attachment; the bytes live in the attachment store behind ``ref``."""

    filename: CleanStr | None = None
    content_type: CleanStr = "application/octet-stream"
    size: int = Field(ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    ref: CleanStr | None = None


class InboundMessage(_Record):
    """One customer message from any channel, normalized."""

    schema_: Literal["inbound/1"] = Field(default="inbound/1", alias="schema")
    message_id: CleanStr = Field(min_length=1)
    channel: CleanStr = Field(min_length=1)
    channel_instance: CleanStr = Field(min_length=1)
    native_id: CleanStr = Field(min_length=1)
    received_at: Timestamp
    sender: Sender
    recipients: tuple[CleanStr, ...] = ()
    conversation_id: CleanStr = Field(min_length=1)
    in_reply_to: CleanStr | None = None
    subject: CleanStr | None = None
    text: CleanStr = ""
    body: str = ""
    attachments: tuple[Attachment, ...] = ()
    auth: dict[CleanStr, CleanStr] = Field(default_factory=dict)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("body", mode="after")
    @classmethod
    def _clean_body(cls, value: str, info: ValidationInfo) -> str:
        # A chat message's body is its text. A body equal to the cleaned text is clean itself
        # (clean_text leaves a clean string as it is), so it is not checked again: the NFC check
        # costs ~8 µs on an Indic-script message.
        text = info.data.get("text")
        if isinstance(text, str) and value == text:
            return text
        return clean_text(value)

    @field_validator("metadata", mode="after")
    @classmethod
    def _clean_metadata(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return {clean_text(k): clean_json(v) for k, v in value.items()}

    @property
    def schema_name(self) -> str:
        return self.schema_

    def to_json_bytes(self) -> bytes:
        """The record as compact UTF-8 JSON, field names as the contract spells them."""
        return self.model_dump_json(by_alias=True).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes | str) -> InboundMessage:
        return cls.model_validate_json(data)


class Routing(_Record):
    """The router's decision about one message, with the reasons that led to it."""

    department: CleanStr = Field(min_length=1)
    confidence: float = Field(ge=0.0, le=1.0)
    language: CleanStr
    escalate: bool = False
    priority: Priority = "normal"
    reasons: tuple[CleanStr, ...] = ()
    model: CleanStr
    routed_at: Timestamp

    @classmethod
    def trusted(
        cls,
        *,
        department: str,
        confidence: float,
        language: str,
        escalate: bool,
        priority: Priority,
        reasons: tuple[str, ...],
        model: str,
        routed_at: datetime,
    ) -> Routing:
        """A routing built from parts the caller has already checked, not validated again.

        The router makes one per message (see :func:`unvalidated`). The caller answers for the
        values: *routed_at* must be in UTC with millisecond precision.
        """
        fields = {
            "department": department,
            "confidence": confidence,
            "language": language,
            "escalate": escalate,
            "priority": priority,
            "reasons": reasons,
            "model": model,
            "routed_at": routed_at,
        }
        return unvalidated(cls, fields, _ROUTING_FIELDS)


_ROUTING_FIELDS = frozenset(Routing.model_fields)


class RoutedMessage(InboundMessage):
    """An ``InboundMessage`` that the router has decided about."""

    schema_: Literal["routed/1"] = Field(default="routed/1", alias="schema")  # type: ignore[assignment]
    routing: Routing

    @classmethod
    def from_inbound(cls, message: InboundMessage, routing: Routing) -> RoutedMessage:
        fields: dict[str, Any] = message.model_dump(exclude={"schema_"})
        return cls.model_validate({**fields, "routing": routing})

    @classmethod
    def from_json_bytes(cls, data: bytes | str) -> RoutedMessage:
        return cls.model_validate_json(data)


def _json_weight(value: str) -> float:
    """How many bytes of JSON one byte of *value*'s UTF-8 becomes (escapes make it > 1)."""
    raw = len(value.encode("utf-8"))
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8")) / raw if raw else 1.0


def fit_to_size(message: InboundMessage, max_bytes: int) -> InboundMessage:
    """Return *message* with ``body`` (and if need be ``text``) cut so its JSON fits *max_bytes*.

    ``text`` (the customer's new words) keeps at least half of the room left by the other
    fields; ``body`` gets the rest. A cut record says so in ``metadata.body_truncated`` (and
    ``text_truncated``) and keeps the original size in ``metadata.body_bytes``.
    """
    if len(message.to_json_bytes()) <= max_bytes:
        return message
    body_bytes = len(message.body.encode("utf-8"))
    text_bytes = len(message.text.encode("utf-8"))
    metadata = {**message.metadata, "body_truncated": True, "body_bytes": body_bytes}
    if body_bytes + text_bytes > max_bytes // 2:
        metadata["text_truncated"] = True
    skeleton = message.model_copy(update={"body": "", "text": "", "metadata": metadata})
    budget = max_bytes - len(skeleton.to_json_bytes())
    for _ in range(8):  # JSON escaping is estimated, so shrink until it fits
        text_room = min(text_bytes, max(budget - body_bytes, budget // 2))
        text, text_cut = truncate_utf8(message.text, int(max(0, text_room) / _json_weight(message.text)))
        body, _ = truncate_utf8(message.body, int(max(0, budget - text_room) / _json_weight(message.body)))
        metadata["text_truncated"] = text_cut
        fitted = message.model_copy(update={"body": body, "text": text, "metadata": metadata})
        if len(fitted.to_json_bytes()) <= max_bytes:
            return fitted
        budget = int(budget * 0.9)
    raise ValueError(f"record cannot fit in {max_bytes} bytes")
