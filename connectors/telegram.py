"""Telegram bots (type ``telegram``): Bot API updates by webhook or by long polling.

Webhook mode (default): register ``https://<public host>/channels/<name>/`` with ``setWebhook``
and the channel's ``secret_token``; every request must carry it in
``X-Telegram-Bot-Api-Secret-Token`` (else 401). Polling mode (``mode: polling``) calls
``getUpdates`` in the background instead, for deployments without a public URL; it needs
``bot_token`` and no webhook may be set for the bot. Starting either mode opens no connection:
the first ``getUpdates`` call is made by the background loop.

What becomes a record (one update is one record, deduplicated on ``update_id``):

* ``message`` and ``channel_post``: a new message; ``edited_message`` and
  ``edited_channel_post``: ``metadata.edited = true`` with ``metadata.edit_date``, a record of
  its own (its ``message_id`` includes the ``update_id``) that keeps the original ``native_id``.
* ``text``, or the ``caption`` of a media message, is the text.
* ``photo`` (largest size), ``document``, ``audio``, ``voice``, ``video``, ``video_note`` and
  ``animation`` become attachment metadata; ``ref`` is ``telegram:file/<file_id>`` (nothing
  is downloaded; ``getFile`` resolves it). ``location`` goes to ``metadata.location``.
* ``native_id`` is ``<chat id>:<message_id>``; the conversation is the chat;
  ``from.language_code`` becomes ``metadata.language_hint``; a reply sets ``in_reply_to`` to
  the replied message's ``native_id``.
* Ignored with 200: other update types (callback queries, member updates …), messages from
  bots, and service messages with neither text nor media.

Answers in webhook mode: 200 once the record is durable; 400 for a body that is not an Update;
401; 413; 429; 503 when the broker did not confirm in time (Telegram retries the update).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretStr, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from connectors.base import ConnectorContext
from connectors.registry import ChannelType
from connectors.signatures import verify_telegram_secret
from connectors.webedge import (
    BadRequest,
    Delivery,
    HttpChannelConfig,
    WebEdge,
    parse_json,
    parse_model,
)
from models import Attachment, InboundMessage, Sender
from models.errors import SwitchboardError
from models.ids import conversation_id, message_id
from models.messages import format_timestamp

__all__ = [
    "CHANNEL_TYPE",
    "SECRET_HEADER",
    "BotApi",
    "BotApiError",
    "TelegramConfig",
    "TelegramConnector",
    "UrllibBotApi",
    "build",
    "check",
    "to_delivery",
]

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name, not a secret
MESSAGE_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post")
_MEDIA_KINDS = ("document", "audio", "voice", "video", "video_note", "animation")


class TelegramConfig(HttpChannelConfig):
    """``type: telegram``: a bot's updates, by webhook (default) or long polling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["telegram"] = "telegram"
    mode: Literal["webhook", "polling"] = Field(default="webhook", description="webhook | polling")
    secret_token: SecretStr | None = Field(
        default=None, description="setWebhook secret_token, checked on every request (webhook mode)"
    )
    bot_token: SecretStr | None = Field(
        default=None, description="bot token from @BotFather (polling mode, channels check)"
    )
    api_url: str = Field(default="https://api.telegram.org", description="Bot API base URL")
    poll_timeout: int = Field(default=30, ge=0, le=50, description="getUpdates long-poll seconds")
    poll_limit: int = Field(default=100, ge=1, le=100, description="updates fetched per getUpdates")
    poll_backoff_max: float = Field(default=60.0, gt=0, le=3600, description="seconds between failed polls")

    @model_validator(mode="after")
    def _credentials_for_mode(self) -> TelegramConfig:
        if self.mode == "webhook":
            token = self.secret_token.get_secret_value() if self.secret_token else ""
            if not token:
                raise ValueError("webhook mode needs secret_token (the one given to setWebhook)")
            if len(token) > 256 or not all(c.isascii() and (c.isalnum() or c in "_-") for c in token):
                raise ValueError("secret_token: 1-256 characters of A-Z, a-z, 0-9, _ and -")
        if self.mode == "polling" and self.bot_token is None:
            raise ValueError("polling mode needs bot_token")
        return self


# ------------------------------------------------------------------------ the Update shape


class _Shape(BaseModel):
    # Telegram adds fields over time: unknown ones are ignored, never refused.
    model_config = ConfigDict(frozen=True, extra="ignore")


class User(_Shape):
    id: int
    is_bot: bool = False
    first_name: str = ""
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None


class Chat(_Shape):
    id: int
    type: str = "private"
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class PhotoSize(_Shape):
    file_id: str
    file_unique_id: str | None = None
    width: int = 0
    height: int = 0
    file_size: int | None = None


class FileObject(_Shape):
    file_id: str
    file_unique_id: str | None = None
    file_name: str | None = None
    mime_type: str | None = None
    file_size: int | None = None


class Location(_Shape):
    latitude: float
    longitude: float


class RepliedMessage(_Shape):
    message_id: int


class Message(_Shape):
    message_id: int
    date: int
    chat: Chat
    from_: User | None = Field(default=None, alias="from")
    sender_chat: Chat | None = None
    author_signature: str | None = None
    message_thread_id: int | None = None
    edit_date: int | None = None
    text: str | None = None
    caption: str | None = None
    photo: list[PhotoSize] = Field(default_factory=list)
    document: FileObject | None = None
    audio: FileObject | None = None
    voice: FileObject | None = None
    video: FileObject | None = None
    video_note: FileObject | None = None
    animation: FileObject | None = None
    location: Location | None = None
    reply_to_message: RepliedMessage | None = None


class Update(_Shape):
    update_id: int
    message: Message | None = None
    edited_message: Message | None = None
    channel_post: Message | None = None
    edited_channel_post: Message | None = None


# ------------------------------------------------------------------------------ mapping


def _attachments(message: Message) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        found.append(
            Attachment(
                filename=None,
                content_type="image/jpeg",  # Telegram re-encodes photos as JPEG
                size=largest.file_size or 0,
                ref=f"telegram:file/{largest.file_id}",
            )
        )
    for kind in _MEDIA_KINDS:
        item: FileObject | None = getattr(message, kind)
        if item is not None:
            found.append(
                Attachment(
                    filename=item.file_name,
                    content_type=item.mime_type or "application/octet-stream",
                    size=item.file_size or 0,
                    ref=f"telegram:file/{item.file_id}",
                )
            )
    return tuple(found)


def _sender(message: Message) -> Sender:
    user = message.from_
    if user is not None:
        name = " ".join(p for p in (user.first_name, user.last_name) if p) or user.username
        return Sender(id=str(user.id), name=name)
    chat = message.sender_chat or message.chat  # channel posts are signed by the channel
    return Sender(id=str(chat.id), name=message.author_signature or chat.title or chat.username)


def to_delivery(update: Update, *, instance: str, received_at: datetime) -> Delivery | None:
    """The record of one update, keyed by ``update_id``; ``None`` for updates we ignore."""
    kind = next((k for k in MESSAGE_KINDS if getattr(update, k) is not None), None)
    if kind is None:
        return None
    message: Message = getattr(update, kind)
    if message.from_ is not None and message.from_.is_bot:
        return None
    text = message.text if message.text is not None else (message.caption or "")
    attachments = _attachments(message)
    if not text.strip() and not attachments and message.location is None:
        return None  # a service message (member joined, pinned …): not a customer's words
    native = f"{message.chat.id}:{message.message_id}"
    edited = kind.startswith("edited_")
    metadata: dict[str, JsonValue] = {
        "telegram": {"update_id": update.update_id, "update_type": kind, "chat_type": message.chat.type},
        "sent_at": format_timestamp(datetime.fromtimestamp(message.date, UTC)),
    }
    if edited:
        metadata["edited"] = True
        if message.edit_date is not None:
            metadata["edit_date"] = format_timestamp(datetime.fromtimestamp(message.edit_date, UTC))
    if message.from_ is not None and message.from_.language_code:
        metadata["language_hint"] = message.from_.language_code
    if message.from_ is not None and message.from_.username:
        metadata["username"] = message.from_.username
    if message.message_thread_id is not None:
        metadata["thread_id"] = message.message_thread_id
    if message.location is not None:
        metadata["location"] = {
            "latitude": message.location.latitude,
            "longitude": message.location.longitude,
        }
    extra = ("update", str(update.update_id)) if edited else ()
    record = InboundMessage(
        message_id=message_id(instance, native, *extra),
        channel="telegram",
        channel_instance=instance,
        native_id=native,
        received_at=received_at,
        sender=_sender(message),
        conversation_id=conversation_id(instance, str(message.chat.id)),
        in_reply_to=(
            f"{message.chat.id}:{message.reply_to_message.message_id}" if message.reply_to_message else None
        ),
        text=text,
        body=text,
        attachments=attachments,
        metadata=metadata,
    )
    return Delivery(str(update.update_id), record)


# ------------------------------------------------------------------------------ Bot API


class BotApiError(SwitchboardError):
    """A Bot API call failed; the message never contains the bot token."""

    retriable = True


class BotApi(Protocol):
    """The Bot API calls this channel makes; injectable so tests need no network."""

    async def get_updates(self, *, offset: int | None, timeout: int, limit: int) -> list[dict[str, Any]]: ...

    async def get_me(self) -> dict[str, Any]: ...


class UrllibBotApi:
    """The Bot API over HTTPS with the standard library, one call at a time in a worker thread."""

    def __init__(self, token: SecretStr, base_url: str = "https://api.telegram.org") -> None:
        self._token = token
        self._base_url = base_url.rstrip("/")

    async def get_updates(self, *, offset: int | None, timeout: int, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"timeout": timeout, "limit": limit, "allowed_updates": list(MESSAGE_KINDS)}
        if offset is not None:
            params["offset"] = offset
        result = await self._call("getUpdates", params, timeout=timeout + 15)
        if not isinstance(result, list):
            raise BotApiError("getUpdates returned no list")
        return [u for u in result if isinstance(u, dict)]

    async def get_me(self) -> dict[str, Any]:
        result = await self._call("getMe", {}, timeout=15)
        if not isinstance(result, dict):
            raise BotApiError("getMe returned no object")
        return result

    async def _call(self, method: str, params: dict[str, Any], *, timeout: float) -> Any:
        return await asyncio.to_thread(self._call_blocking, method, params, timeout)

    def _call_blocking(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        url = f"{self._base_url}/bot{self._token.get_secret_value()}/{method}"
        request = urllib.request.Request(  # noqa: S310 - the URL is the configured Bot API
            url, data=json.dumps(params).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                answer = json.loads(response.read(8 << 20))
        except urllib.error.HTTPError as error:
            # Telegram explains errors in a JSON body; the URL (with the token) stays out of it.
            description = error.read(4096).decode("utf-8", "replace")
            raise BotApiError(f"{method}: HTTP {error.code} {description}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise BotApiError(f"{method}: {type(error).__name__}: {reason}") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            raise BotApiError(f"{method}: {str(answer)[:300]}")
        return answer.get("result")


# ---------------------------------------------------------------------------- connector


class TelegramConnector:
    """The ``telegram`` channel: the webhook endpoint, or the polling loop."""

    def __init__(
        self, config: TelegramConfig, context: ConnectorContext, *, api: BotApi | None = None
    ) -> None:
        self.name = config.name
        self.config = config
        self._context = context
        self.edge = WebEdge(config, context, channel="telegram")
        self._api: BotApi | None = api
        if self._api is None and config.bot_token is not None:
            self._api = UrllibBotApi(config.bot_token, config.api_url)
        routes = (
            [Route("/", self.edge.endpoint(self._receive), methods=["POST"])]
            if config.mode == "webhook"
            else []
        )
        self._app = Router(routes=routes)
        self._stopped = asyncio.Event()
        self.offset: int | None = None  # polling: the next update_id to ask for

    def asgi_app(self) -> Router:
        return self._app

    async def start(self) -> None:
        await self.edge.start()
        if self.config.mode == "polling":
            await self._context.spawn(f"channel:{self.name}:poll", self._poll_forever())

    async def stop(self) -> None:
        self._stopped.set()
        await self.edge.stop()

    # ---------------------------------------------------------------------- webhook

    async def _receive(self, request: Request) -> Response:
        assert self.config.secret_token is not None  # guaranteed in webhook mode
        verify_telegram_secret(self.config.secret_token, request.headers.get(SECRET_HEADER))
        raw = await self.edge.read_body(request)
        update = parse_model(Update, parse_json(raw))
        delivery = to_delivery(update, instance=self.name, received_at=self.edge.now())
        if delivery is not None:
            await self.edge.deliver([delivery], raw=raw)
        return Response(status_code=200)

    # ---------------------------------------------------------------------- polling

    async def poll_once(self) -> int:
        """One ``getUpdates`` round: publish each update in order, then move the offset past it.

        The offset (which confirms updates to Telegram on the next call) only moves past an
        update once its record is durable, so a failure re-fetches it; dedup drops repeats.
        Returns the number of updates fetched.
        """
        assert self._api is not None
        updates = await self._api.get_updates(
            offset=self.offset, timeout=self.config.poll_timeout, limit=self.config.poll_limit
        )
        for update_id, raw, update in sorted(self._readable(updates), key=lambda found: found[0]):
            if update is None:
                await self.edge.quarantine(raw, reason="not a Telegram Update", error_class="BadRequest")
            else:
                delivery = to_delivery(update, instance=self.name, received_at=self.edge.now())
                if delivery is not None:
                    await self.edge.deliver([delivery], raw=raw)
            self.offset = update_id + 1
        return len(updates)

    def _readable(self, updates: list[dict[str, Any]]) -> list[tuple[int, bytes, Update | None]]:
        """Each update with its id, raw bytes and parsed form (``None`` when malformed).

        An entry without an integer ``update_id`` cannot be confirmed or retried: it is logged
        and left out.
        """
        readable: list[tuple[int, bytes, Update | None]] = []
        for entry in updates:
            update_id = entry.get("update_id")
            if not isinstance(update_id, int):
                self.edge.log.warning("update without update_id ignored")
                continue
            try:
                update: Update | None = parse_model(Update, entry)
            except BadRequest:
                update = None
            readable.append((update_id, json.dumps(entry).encode(), update))
        return readable

    async def _poll_forever(self) -> None:
        backoff = 1.0
        while not self._stopped.is_set():
            try:
                await self.poll_once()
            except Exception as error:
                self._context.metrics.errored()
                self._context.health.failing(f"polling failed: {error}")
                self.edge.log.warning("telegram poll failed", error=str(error), retry_in=backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, self.config.poll_backoff_max)
            else:
                backoff = 1.0
                self._context.metrics.succeeded()
                self._context.health.ok()

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        except TimeoutError:
            return


def build(config: TelegramConfig, context: ConnectorContext) -> TelegramConnector:
    return TelegramConnector(config, context)


async def check(config: TelegramConfig) -> str:
    """``channels check``: ``getMe`` with the bot token (the network is allowed here)."""
    if config.bot_token is None:
        return f"{config.mode} mode; no bot_token, so the bot itself was not checked"
    me = await UrllibBotApi(config.bot_token, config.api_url).get_me()
    return f"{config.mode} mode; bot @{me.get('username', '?')} (id {me.get('id', '?')}) answers getMe"


CHANNEL_TYPE = ChannelType(
    type="telegram",
    channel="telegram",
    config_model=TelegramConfig,
    factory=build,
    summary="Telegram bot: webhook with secret token, or long polling",
    http=True,
    check=check,
)
