"""Generic webhook (type ``webhook``): any gateway that can POST JSON becomes a channel, no code.

Endpoint: ``POST /channels/<name>/`` with ``Content-Type: application/json``. The body is one
message object, or ``{"messages": [ … ]}`` with up to 100 of them::

    {
      "id": "gw-000123",                       # required: the gateway's unique id of the message
      "sender": {"id": "+14155550100",         # required: who wrote (address, user id, E.164 …)
                 "name": "Asha Rao"},          # optional
      "conversation": "ticket-9",              # optional: thread key; default: sender.id
      "text": "My order has not arrived",      # the customer's words; "" only with attachments
      "subject": "Order 4471",                 # optional
      "sent_at": "2026-11-23T10:00:00Z",       # optional, RFC 3339 with a zone
      "attachments": [                         # optional, metadata only (bytes are not sent here)
        {"filename": "photo.jpg", "content_type": "image/jpeg", "size": 20480,
         "sha256": "<64 hex>", "url": "https://gateway.example/files/1"}
      ],
      "metadata": {"language_hint": "ta"}      # optional JSON object, copied to the record
    }

Unknown fields are refused (400 names them), so a typo never silently drops data.

Authentication: header ``X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of the raw body>``
keyed with the channel's ``secret``; missing or wrong is 401.

Answers: 200 ``{"accepted": n, "duplicates": d, "message_ids": [...]}`` once every message is
durable on ``sb.inbound``; 400 with the reason for a body that is not this shape; 401; 413
over ``max_body_bytes``; 429 over the rate limit; 503 (``Retry-After``) when the broker did not
confirm in time: retry then. Retrying a message is always safe: ``id`` is deduplicated (same
``message_id``, no second record), for ``dedup_retention_hours`` and across restarts.

Record: ``channel`` ``webhook``; ``native_id`` = ``id``; ``message_id`` from the instance and
``id``; ``conversation_id`` = instance + ``conversation`` (or ``sender.id``); attachment ``url``
becomes ``ref``; ``sent_at`` goes to ``metadata.sent_at``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, SecretStr, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connectors.base import ConnectorContext
from connectors.registry import ChannelType
from connectors.signatures import verify_hmac_sha256
from connectors.webedge import BadRequest, Delivery, EdgeConnector, HttpChannelConfig, parse_json, parse_model
from models import Attachment, InboundMessage, Sender
from models.ids import conversation_id, message_id
from models.messages import format_timestamp

__all__ = [
    "CHANNEL_TYPE",
    "SIGNATURE_HEADER",
    "WebhookBatch",
    "WebhookConfig",
    "WebhookConnector",
    "WebhookMessage",
    "build",
    "check",
    "to_record",
]

SIGNATURE_HEADER = "X-Switchboard-Signature"
MAX_BATCH = 100
_MAX_METADATA_BYTES = 16_384

ShortText = Annotated[str, Field(min_length=1, max_length=512)]


class WebhookConfig(HttpChannelConfig):
    """``type: webhook``: a JSON endpoint for any gateway, signed with a shared secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["webhook"] = "webhook"
    secret: SecretStr = Field(description="HMAC-SHA256 key of the X-Switchboard-Signature header")

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("secret must be at least 16 characters")
        return value


# ------------------------------------------------------------------------------ the shape


class _Shape(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WebhookSender(_Shape):
    id: ShortText
    name: str | None = Field(default=None, max_length=512)


class WebhookAttachment(_Shape):
    filename: str | None = Field(default=None, max_length=512)
    content_type: str = Field(default="application/octet-stream", max_length=255)
    size: int = Field(default=0, ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    url: str | None = Field(default=None, max_length=2048)


class WebhookMessage(_Shape):
    """One message as a gateway posts it (see the module docstring)."""

    id: ShortText
    sender: WebhookSender
    conversation: ShortText | None = None
    text: str = Field(default="", max_length=1_000_000)
    subject: str | None = Field(default=None, max_length=2048)
    sent_at: AwareDatetime | None = None
    attachments: list[WebhookAttachment] = Field(default_factory=list, max_length=100)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > _MAX_METADATA_BYTES:
            raise ValueError(f"metadata must stay under {_MAX_METADATA_BYTES} bytes of JSON")
        return value


class WebhookBatch(_Shape):
    messages: list[WebhookMessage] = Field(min_length=1, max_length=MAX_BATCH)


def _messages(data: object) -> list[WebhookMessage]:
    if isinstance(data, dict) and "messages" in data:
        return parse_model(WebhookBatch, data).messages
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", reason="invalid_payload")
    return [parse_model(WebhookMessage, data)]


def to_record(item: WebhookMessage, *, instance: str, received_at: datetime) -> InboundMessage:
    """The record of one posted message."""
    if not item.text.strip() and not item.attachments:
        raise BadRequest(f"message {item.id!r} has neither text nor attachments", reason="invalid_payload")
    metadata: dict[str, JsonValue] = dict(item.metadata)
    if item.sent_at is not None:
        metadata["sent_at"] = format_timestamp(item.sent_at)
    return InboundMessage(
        message_id=message_id(instance, item.id),
        channel="webhook",
        channel_instance=instance,
        native_id=item.id,
        received_at=received_at,
        sender=Sender(id=item.sender.id, name=item.sender.name),
        conversation_id=conversation_id(instance, item.conversation or item.sender.id),
        subject=item.subject,
        text=item.text,
        body=item.text,
        attachments=tuple(
            Attachment(
                filename=a.filename,
                content_type=a.content_type,
                size=a.size,
                sha256=a.sha256.lower() if a.sha256 else None,
                ref=a.url,
            )
            for a in item.attachments
        ),
        metadata=metadata,
    )


# ------------------------------------------------------------------------------ connector


class WebhookConnector(EdgeConnector):
    """The ``webhook`` channel: one signed JSON endpoint behind the shared :class:`WebEdge`."""

    def __init__(self, config: WebhookConfig, context: ConnectorContext) -> None:
        super().__init__(config, context, channel="webhook", post=self._receive)
        self.config = config

    async def _receive(self, request: Request) -> Response:
        raw = await self.edge.read_body(request)
        verify_hmac_sha256(
            self.config.secret, header=request.headers.get(SIGNATURE_HEADER), body=raw, name=SIGNATURE_HEADER
        )
        items = _messages(parse_json(raw))
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise BadRequest("message ids repeat within one request", reason="invalid_payload")
        received_at = self.edge.now()
        deliveries = [
            Delivery(item.id, to_record(item, instance=self.name, received_at=received_at)) for item in items
        ]
        report = await self.edge.deliver(deliveries, raw=raw)
        return JSONResponse(
            {
                "accepted": len(report.message_ids),
                "duplicates": report.duplicates,
                "message_ids": [d.message.message_id for d in deliveries],
            }
        )


def build(config: WebhookConfig, context: ConnectorContext) -> WebhookConnector:
    return WebhookConnector(config, context)


async def check(config: WebhookConfig) -> str:
    """``channels check``: nothing to reach; reports what a gateway must send."""
    return (
        f"POST JSON to /channels/{config.name}/ signed with {SIGNATURE_HEADER}: sha256=<hex>; "
        f"bodies up to {config.max_body_bytes} bytes"
    )


CHANNEL_TYPE = ChannelType(
    type="webhook",
    channel="webhook",
    config_model=WebhookConfig,
    factory=build,
    summary="Generic signed JSON webhook for any IM gateway (HMAC-SHA256 header)",
    http=True,
    check=check,
)
