"""WhatsApp Business Cloud API (type ``whatsapp``): the Meta webhook of a WhatsApp Business account.

Set the app's webhook callback URL to ``https://<public host>/channels/<name>/`` with the
channel's ``verify_token`` and subscribe to the ``messages`` field.

* ``GET`` is Meta's verification handshake: ``hub.mode=subscribe`` with the right
  ``hub.verify_token`` is answered with ``hub.challenge`` (text/plain); anything else is 403.
* ``POST`` bodies must carry ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``
  keyed with the app's ``app_secret`` (else 401). One POST may carry several messages (several
  entries, changes and messages); each is published once, deduplicated on its ``wamid``, and
  the POST is answered 200 only when all of them are durable (503 otherwise: Meta retries the
  whole POST, and the ones already published come back as duplicates).

What becomes a record: ``text``; ``interactive`` button and list replies and template quick-reply
``button`` presses (the title is the text; ids in ``metadata.interactive``); ``image``,
``document``, ``audio``, ``video`` and ``sticker`` as attachment metadata (``ref`` is
``whatsapp:media/<media id>``; the caption is the text; nothing is downloaded); ``location``
(``metadata.location``). Status callbacks (sent, delivered, read, failed) and reactions are
acknowledged with 200 and ignored. The sender is the contact's ``wa_id`` in E.164 (``+…``) with
its profile name; the conversation is the business number and the customer
(``<phone_number_id>:<wa_id>``); a reply's ``context.id`` is ``in_reply_to``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from connectors.base import ConnectorContext
from connectors.registry import ChannelType
from connectors.signatures import verify_hub_sha256
from connectors.webedge import (
    Delivery,
    EdgeConnector,
    Forbidden,
    HttpChannelConfig,
    parse_json,
    parse_model,
)
from models import Attachment, InboundMessage, Sender
from models.ids import conversation_id, message_id
from models.messages import format_timestamp

__all__ = ["CHANNEL_TYPE", "WhatsAppConfig", "WhatsAppConnector", "build", "check", "to_deliveries"]

_MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")


class WhatsAppConfig(HttpChannelConfig):
    """``type: whatsapp``: the WhatsApp Cloud API webhook of one Meta app."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["whatsapp"] = "whatsapp"
    app_secret: SecretStr = Field(description="the Meta app secret: key of X-Hub-Signature-256")
    verify_token: SecretStr = Field(description="the token entered with the callback URL (GET handshake)")
    access_token: SecretStr | None = Field(
        default=None, description="system-user token for Graph API calls (media, channels check)"
    )


# --------------------------------------------------------------------- the webhook shape


class _Shape(BaseModel):
    # Meta adds fields over time: unknown ones are ignored, never refused.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Profile(_Shape):
    name: str | None = None


class Contact(_Shape):
    wa_id: str
    profile: Profile = Profile()


class Text(_Shape):
    body: str = ""


class Reply(_Shape):
    id: str = ""
    title: str = ""
    description: str | None = None


class Interactive(_Shape):
    type: str
    button_reply: Reply | None = None
    list_reply: Reply | None = None


class Button(_Shape):
    text: str = ""
    payload: str | None = None


class Media(_Shape):
    id: str
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool | None = None


class Location(_Shape):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class Context(_Shape):
    id: str | None = None
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class Message(_Shape):
    id: str = Field(min_length=1)
    from_: str = Field(alias="from", min_length=1)
    timestamp: str
    type: str
    text: Text | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    image: Media | None = None
    document: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    sticker: Media | None = None
    location: Location | None = None
    context: Context | None = None


class PhoneMetadata(_Shape):
    display_phone_number: str = ""
    phone_number_id: str = ""


class Value(_Shape):
    messaging_product: str = "whatsapp"
    metadata: PhoneMetadata = PhoneMetadata()
    contacts: list[Contact] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)


class Change(_Shape):
    field: str
    value: Value


class Entry(_Shape):
    id: str
    changes: list[Change] = Field(default_factory=list)


class Notification(_Shape):
    object: Literal["whatsapp_business_account"]
    entry: list[Entry] = Field(max_length=1000)


# ------------------------------------------------------------------------------ mapping


def _e164(number: str) -> str:
    digits = number.strip().lstrip("+")
    return f"+{digits}"


def _hex_sha256(value: str | None) -> str | None:
    """WhatsApp sends media hashes base64-encoded; records carry hex."""
    if not value:
        return None
    if len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _content(message: Message) -> tuple[str, tuple[Attachment, ...], dict[str, JsonValue]] | None:
    """Text, attachments and type-specific metadata; ``None`` for a type we do not record."""
    if message.type == "text" and message.text is not None:
        return message.text.body, (), {}
    if message.type == "interactive" and message.interactive is not None:
        reply = message.interactive.button_reply or message.interactive.list_reply
        if reply is None:
            return None
        details: dict[str, JsonValue] = {
            "type": message.interactive.type,
            "id": reply.id,
            "title": reply.title,
        }
        if reply.description:
            details["description"] = reply.description
        return reply.title, (), {"interactive": details}
    if message.type == "button" and message.button is not None:
        return message.button.text, (), {"interactive": {"type": "button", "payload": message.button.payload}}
    if message.type in _MEDIA_TYPES:
        media: Media | None = getattr(message, message.type)
        if media is None:
            return None
        attachment = Attachment(
            filename=media.filename,
            content_type=media.mime_type or "application/octet-stream",
            size=0,  # the webhook does not say; the media endpoint does
            sha256=_hex_sha256(media.sha256),
            ref=f"whatsapp:media/{media.id}",
        )
        extra: dict[str, JsonValue] = {"voice": True} if media.voice else {}
        return media.caption or "", (attachment,), extra
    if message.type == "location" and message.location is not None:
        place = message.location
        location: dict[str, JsonValue] = {"latitude": place.latitude, "longitude": place.longitude}
        if place.name:
            location["name"] = place.name
        if place.address:
            location["address"] = place.address
        return "", (), {"location": location}
    return None


def _sent_at(timestamp: str) -> str | None:
    return format_timestamp(datetime.fromtimestamp(int(timestamp), UTC)) if timestamp.isdigit() else None


def _record(message: Message, value: Value, *, instance: str, received_at: datetime) -> InboundMessage | None:
    content = _content(message)
    if content is None:
        return None
    text, attachments, extra = content
    names = {contact.wa_id: contact.profile.name for contact in value.contacts}
    business = value.metadata
    metadata: dict[str, JsonValue] = {
        "whatsapp": {
            "type": message.type,
            "phone_number_id": business.phone_number_id,
            "display_phone_number": business.display_phone_number,
        },
        **extra,
    }
    sent_at = _sent_at(message.timestamp)
    if sent_at is not None:
        metadata["sent_at"] = sent_at
    if message.context is not None and (message.context.forwarded or message.context.frequently_forwarded):
        metadata["forwarded"] = True
    return InboundMessage(
        message_id=message_id(instance, message.id),
        channel="whatsapp",
        channel_instance=instance,
        native_id=message.id,
        received_at=received_at,
        sender=Sender(id=_e164(message.from_), name=names.get(message.from_)),
        recipients=(_e164(business.display_phone_number),) if business.display_phone_number else (),
        conversation_id=conversation_id(instance, f"{business.phone_number_id}:{message.from_}"),
        in_reply_to=message.context.id if message.context is not None else None,
        text=text,
        body=text,
        attachments=attachments,
        metadata=metadata,
    )


def to_deliveries(notification: Notification, *, instance: str, received_at: datetime) -> list[Delivery]:
    """Every customer message in one webhook POST, in the order sent, keyed by ``wamid``."""
    deliveries: list[Delivery] = []
    for entry in notification.entry:
        for change in entry.changes:
            if change.field != "messages":
                continue
            for message in change.value.messages:
                record = _record(message, change.value, instance=instance, received_at=received_at)
                if record is not None:
                    deliveries.append(Delivery(message.id, record))
    return deliveries


# ---------------------------------------------------------------------------- connector


class WhatsAppConnector(EdgeConnector):
    """The ``whatsapp`` channel: the verification handshake and the signed notifications."""

    def __init__(self, config: WhatsAppConfig, context: ConnectorContext) -> None:
        super().__init__(config, context, channel="whatsapp", get=self._handshake, post=self._receive)
        self.config = config

    async def _handshake(self, request: Request) -> Response:
        query = request.query_params
        token = query.get("hub.verify_token", "")
        expected = self.config.verify_token.get_secret_value()
        if query.get("hub.mode") != "subscribe" or not hmac.compare_digest(token.encode(), expected.encode()):
            raise Forbidden("verification failed", reason="bad_verify_token")
        return PlainTextResponse(query.get("hub.challenge", "")[:1000])

    async def _receive(self, request: Request) -> Response:
        raw = await self.edge.read_body(request)
        verify_hub_sha256(self.config.app_secret, header=request.headers.get("X-Hub-Signature-256"), body=raw)
        notification = parse_model(Notification, parse_json(raw))
        deliveries = to_deliveries(notification, instance=self.name, received_at=self.edge.now())
        report = await self.edge.deliver(deliveries, raw=raw)
        return JSONResponse({"accepted": len(report.message_ids), "duplicates": report.duplicates})


def build(config: WhatsAppConfig, context: ConnectorContext) -> WhatsAppConnector:
    return WhatsAppConnector(config, context)


async def check(config: WhatsAppConfig) -> str:
    """``channels check``: the credentials are present (the Graph API is not called)."""
    token = "set" if config.access_token is not None else "not set (media cannot be fetched)"
    return f"webhook at /channels/{config.name}/ with app_secret and verify_token; access_token {token}"


CHANNEL_TYPE = ChannelType(
    type="whatsapp",
    channel="whatsapp",
    config_model=WhatsAppConfig,
    factory=build,
    summary="WhatsApp Business Cloud API webhook (verification handshake, X-Hub-Signature-256)",
    http=True,
    check=check,
)
