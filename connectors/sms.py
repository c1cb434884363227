"""SMS through Twilio (type ``sms``): the incoming-message webhook of a Twilio number.

Set the number's (or Messaging Service's) "A message comes in" webhook to
``https://<public host>/channels/<name>/``, method POST. Twilio posts the message as
``application/x-www-form-urlencoded`` and signs it with ``X-Twilio-Signature`` (HMAC-SHA1 with the
account's ``auth_token`` over the URL it called plus the sorted form parameters). Behind a proxy
or load balancer this process does not see that URL: set ``public_url`` to exactly the URL
configured at Twilio (without any ``#`` fragment; the query string of each request is appended).
Without it, the URL as this process saw it is checked, with and without the channel root's
trailing slash (``/channels/<name>`` and ``/channels/<name>/`` are the same endpoint).

* A message is one record, deduplicated on ``MessageSid``; the answer is an empty TwiML
  ``<Response/>`` (no automatic reply), sent only once the record is durable.
* ``NumMedia`` media (MMS) become attachment metadata: ``ref`` is ``MediaUrlN``,
  ``content_type`` is ``MediaContentTypeN``; nothing is downloaded.
* The sender is ``From`` (E.164), the recipient ``To``; the conversation is the pair.
* Failures: 401 bad signature, 400 missing fields, 413, 429, 503 when the broker did not
  confirm in time. Twilio does not retry a failed webhook by default: add the connection
  override ``#rc=5&rp=5xx`` (or ``rp=all``) to the URL at Twilio so a 503 is retried; retries are
  deduplicated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal
from urllib.parse import parse_qsl

from pydantic import ConfigDict, Field, JsonValue, SecretStr, field_validator
from starlette.requests import Request
from starlette.responses import Response

from connectors.base import ConnectorContext
from connectors.registry import ChannelType
from connectors.signatures import SignatureError, verify_twilio
from connectors.webedge import BadRequest, Delivery, EdgeConnector, Forbidden, HttpChannelConfig
from models import Attachment, InboundMessage, Sender
from models.ids import conversation_id, message_id

__all__ = [
    "CHANNEL_TYPE",
    "EMPTY_TWIML",
    "SmsConfig",
    "SmsConnector",
    "build",
    "check",
    "parse_form",
    "to_delivery",
]

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_MEDIA = 10  # Twilio's own limit per MMS
_MAX_FIELDS = 200
_LOCATION_FIELDS = ("FromCountry", "FromState", "FromCity", "FromZip")


class SmsConfig(HttpChannelConfig):
    """``type: sms``: a Twilio messaging webhook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["sms"] = "sms"
    auth_token: SecretStr = Field(description="the Twilio account's auth token: key of X-Twilio-Signature")
    public_url: str | None = Field(
        default=None, description="URL configured at Twilio, when a proxy changes scheme, host or path"
    )
    account_sid: str | None = Field(
        default=None, pattern=r"^AC[0-9a-fA-F]{32}$", description="if set, other accounts' posts get 403"
    )
    publish_deadline: float = Field(
        default=10.0, gt=0, le=14, description="seconds to wait for the broker (Twilio waits 15)"
    )

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.startswith(("https://", "http://")) or "#" in value or "?" in value
        ):
            raise ValueError("public_url must be an absolute http(s) URL without query or fragment")
        return value


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The form fields of *body*, in order, repeated names kept; 400 when it is not a form."""
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"body is not a URL-encoded form: {error}", reason="invalid_form") from None


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise BadRequest(f"{name}: Field required", reason="invalid_payload")
    return value


def _attachments(fields: dict[str, str]) -> tuple[Attachment, ...]:
    count = fields.get("NumMedia", "0") or "0"
    if not count.isdigit() or int(count) > MAX_MEDIA:
        raise BadRequest(f"NumMedia must be 0-{MAX_MEDIA}", reason="invalid_payload")
    return tuple(
        Attachment(
            content_type=fields.get(f"MediaContentType{i}") or "application/octet-stream",
            size=0,  # Twilio does not say; the media URL does
            ref=_required(fields, f"MediaUrl{i}"),
        )
        for i in range(int(count))
    )


def to_delivery(pairs: Sequence[tuple[str, str]], *, instance: str, received_at: datetime) -> Delivery:
    """The record of one incoming message, keyed by ``MessageSid``."""
    fields = dict(pairs)
    sid = fields.get("MessageSid") or fields.get("SmsMessageSid") or _required(fields, "MessageSid")
    sender, recipient = _required(fields, "From"), _required(fields, "To")
    text = fields.get("Body", "")
    sms: dict[str, JsonValue] = {"account_sid": fields.get("AccountSid")}
    if fields.get("NumSegments", "").isdigit():
        sms["num_segments"] = int(fields["NumSegments"])
    if fields.get("MessagingServiceSid"):
        sms["messaging_service_sid"] = fields["MessagingServiceSid"]
    sms.update({name: fields[name] for name in _LOCATION_FIELDS if fields.get(name)})
    record = InboundMessage(
        message_id=message_id(instance, sid),
        channel="sms",
        channel_instance=instance,
        native_id=sid,
        received_at=received_at,
        sender=Sender(id=sender),
        recipients=(recipient,),
        conversation_id=conversation_id(instance, f"{recipient}:{sender}"),
        text=text,
        body=text,
        attachments=_attachments(fields),
        metadata={"sms": sms},
    )
    return Delivery(sid, record)


class SmsConnector(EdgeConnector):
    """The ``sms`` channel: Twilio's signed form webhook behind the shared :class:`WebEdge`."""

    def __init__(self, config: SmsConfig, context: ConnectorContext) -> None:
        super().__init__(config, context, channel="sms", post=self._receive)
        self.config = config

    def signed_urls(self, request: Request) -> list[str]:
        """The URLs Twilio may have signed: ``public_url`` (plus this request's query), or else the
        URL seen, also without the trailing slash the process adds to a channel's bare root."""
        if self.config.public_url is not None:
            query = request.url.query
            return [self.config.public_url + (f"?{query}" if query else "")]
        seen = request.url
        urls = [str(seen)]
        if seen.path.endswith("/"):
            urls.append(str(seen.replace(path=seen.path.rstrip("/"))))
        return urls

    def verify(self, request: Request, pairs: list[tuple[str, str]]) -> None:
        """Check ``X-Twilio-Signature`` against every candidate URL; 401 unless one matches."""
        header = request.headers.get("X-Twilio-Signature")
        failure: SignatureError | None = None
        for url in self.signed_urls(request):
            try:
                verify_twilio(self.config.auth_token, header=header, url=url, params=pairs)
            except SignatureError as error:
                failure = error
            else:
                return
        assert failure is not None
        raise failure

    async def _receive(self, request: Request) -> Response:
        raw = await self.edge.read_body(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != FORM_TYPE:
            raise BadRequest(f"expected {FORM_TYPE}", reason="invalid_form")
        pairs = parse_form(raw)
        self.verify(request, pairs)
        if self.config.account_sid is not None and dict(pairs).get("AccountSid") != self.config.account_sid:
            raise Forbidden("message for another Twilio account", reason="wrong_account")
        delivery = to_delivery(pairs, instance=self.name, received_at=self.edge.now())
        await self.edge.deliver([delivery], raw=raw, content_type=FORM_TYPE)
        return Response(EMPTY_TWIML, media_type="text/xml")


def build(config: SmsConfig, context: ConnectorContext) -> SmsConnector:
    return SmsConnector(config, context)


async def check(config: SmsConfig) -> str:
    """``channels check``: what Twilio must be configured with (Twilio's API is not called)."""
    url = config.public_url or f"<public URL of this process>/channels/{config.name}/"
    return f"set the Twilio messaging webhook to POST {url}#rc=5&rp=5xx; auth_token set"


CHANNEL_TYPE = ChannelType(
    type="sms",
    channel="sms",
    config_model=SmsConfig,
    factory=build,
    summary="SMS/MMS through Twilio's messaging webhook (X-Twilio-Signature)",
    http=True,
    check=check,
)
