"""Slack (type ``slack``): customer messages from Slack channels, threads and DMs as records.

Two transports feed one intake; each is on when its credential is configured (both may be,
e.g. while moving an app from one to the other; deduplication spans them):

* **Events API over HTTP** (``signing_secret``) at ``/channels/<name>/``. The request signature
  (``X-Slack-Signature`` over the raw body, timestamp at most five minutes off) is checked
  before the body is even parsed; a failure is 401. ``url_verification`` is answered with its
  challenge. Answers: 200 ``{"ok": true, "outcome": "published" | "duplicate" | "ignored",
  "message_id"}``; 400 (not JSON), 401 (signature), 413 (``max_body_bytes``), 429 (rate
  limit), 503 with ``Retry-After`` (broker down or slow), all mapped in one place,
  :func:`connectors.webedge.answer_for`. Without a ``signing_secret`` the path answers 404.
* **Socket Mode** (``app_token``): an outbound WebSocket opened with the app-level token; every
  envelope is acknowledged on the socket only after its record is durable, so an
  unacknowledged envelope is redelivered by Slack.

Guarantees
----------
* **A 200 (or a Socket Mode ack) means the record is on** ``sb.inbound``. Publishing runs inside
  the request with a deadline (``publish_deadline``) inside Slack's 3 s; when the broker is down or
  slower, the answer is 503 (no ack in Socket Mode) and Slack retries.
* **One record per customer message.** The deduplication key is the record's ``message_id``,
  derived from the instance and ``channel:ts``: it is the same for every retry of an event
  (``X-Slack-Retry-Num`` / ``retry_attempt``, same ``event_id``) and for the ``message`` and
  ``app_mention`` events Slack sends for one message that mentions the app. A retry that
  arrives while the first attempt is still publishing waits for that attempt's outcome; the
  processed-id memory lives in ``sb.state`` (``dedup_retention_hours``, 8 days by default) and
  so outlives Slack's retry horizon (three retries within about five minutes) and restarts.
* **What becomes a record**: ``message`` events (public and private channels, thread replies,
  DMs and group DMs; subtypes none, ``file_share``, ``thread_broadcast``, ``me_message``) and
  ``app_mention``. Answered 200 and dropped: anything from a bot (``bot_id``, subtype
  ``bot_message``) or from this app (its bot user or ``app_id``), channel housekeeping
  (joins, topic changes …), and ``message_changed`` events that are not a user's edit
  (link unfurls, reply counters of a thread parent).
* **Edits and deletions are not new customer messages.** Each becomes a record of its own with a
  distinct ``message_id`` (native id ``channel:ts:edit:<edit ts>`` / ``channel:ts:deleted``) in
  the original message's conversation, marked ``metadata.edited`` or ``metadata.deleted`` =
  ``{"message_id", "native_id", "at"}`` naming the original record. An edit carries the new
  text; a deletion carries none. Consumers update or retract the original; the router may
  route them like any record.
* **Ids**: ``native_id`` is ``channel:ts``; the conversation is ``channel:thread_ts`` (``ts`` for
  a message outside a thread), namespaced by instance, so a thread is one conversation and a
  top-level message starts one. The sender is the Slack user id; ``sender.name`` is the display
  name from ``users.info`` when the bot token allows it, looked up through an injectable client
  with a bounded TTL cache and a short timeout (never more than ``user_lookup_timeout``; on
  failure the name is null). Files are attachment metadata whose ``ref`` is the file's
  ``url_private`` (fetching it needs the bot token); their bytes are not downloaded.
* **No Slack API call at start.** The first call is the first user-name lookup (or, in Socket
  Mode, ``apps.connections.open``); ``channels check`` calls ``auth.test``.

Why not bolt's ``AsyncApp``
---------------------------
Bolt acknowledges through ``ack()`` and, even with ``process_before_response``, maps a listener
failure to its own error response, runs authorization middleware that calls ``auth.test`` on
the request path, and has no in-flight-aware deduplication. Its async classes also need
``aiohttp`` for the Web API client. Here the Events API is driven directly: verification first
(:func:`connectors.signatures.verify_slack`, the same v0 scheme as bolt's verifier), then the
mapping below, then publish, and only then the answer, so each outcome has exactly one HTTP
status. Socket Mode is spoken directly over ``websockets`` (already a
dependency) for the same reason: the envelope is acknowledged after the broker confirmed.
Web API calls go through slack_sdk's synchronous ``WebClient`` in a worker thread, bounded by a
timeout, behind the :class:`SlackWebApi` protocol that tests replace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog
from pydantic import Field, JsonValue, SecretStr, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from connectors.base import ConnectorContext, Health
from connectors.registry import ChannelType
from connectors.signatures import verify_slack
from connectors.webedge import BadRequest, Delivery, HttpChannelConfig, WebEdge, parse_json
from models import Attachment, InboundMessage, Sender
from models.errors import SwitchboardError
from models.ids import conversation_id, message_id
from models.messages import format_timestamp

__all__ = [
    "CHANNEL_TYPE",
    "Ignored",
    "SdkWebApi",
    "SlackApiFailed",
    "SlackConfig",
    "SlackConnector",
    "SlackWebApi",
    "SocketModeClient",
    "UserDirectory",
    "build",
    "check",
    "event_to_message",
    "render_mrkdwn",
    "slack_time",
]

# Slack gives up on a request after 3 s and retries it; every answer must come before that.
SLACK_DEADLINE = 3.0
_ANSWER_MARGIN = 0.2  # seconds kept for reading, verifying and answering around the publish


class SlackConfig(HttpChannelConfig):
    """``type: slack``: the Events API over HTTP (``signing_secret``) and/or Socket Mode (``app_token``)."""

    type: Literal["slack"] = "slack"
    signing_secret: SecretStr | None = Field(
        default=None, description="the app's signing secret; enables the Events API at /channels/<name>"
    )
    bot_token: SecretStr | None = Field(
        default=None, description="xoxb- token: user display names (users.info) and `channels check`"
    )
    app_token: SecretStr | None = Field(
        default=None, description="xapp- app-level token with connections:write; enables Socket Mode"
    )
    publish_deadline: float = Field(
        default=2.0, gt=0, le=2.8, description="seconds to wait for the broker before 503 (Slack waits 3 s)"
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=16 << 20, description="bytes; a larger event request gets 413"
    )
    user_names: bool = Field(default=True, description="look up sender display names (needs bot_token)")
    user_lookup_timeout: float = Field(
        default=0.5, gt=0, le=2.0, description="seconds a name look-up may add to a message; then no name"
    )
    user_cache_size: int = Field(default=10_000, ge=10, le=1_000_000, description="user names cached")
    user_cache_ttl: float = Field(default=3600.0, ge=1, le=7 * 86400, description="seconds a name is cached")
    api_timeout: float = Field(
        default=10.0, gt=0, le=60, description="seconds for a Slack Web API call (check, Socket Mode)"
    )
    socket_ping_interval: float = Field(
        default=20.0, gt=0, le=300, description="Socket Mode: seconds between WebSocket pings"
    )

    @model_validator(mode="after")
    def _consistent(self) -> SlackConfig:
        if self.signing_secret is None and self.app_token is None:
            raise ValueError("set signing_secret (Events API over HTTP) and/or app_token (Socket Mode)")
        if self.publish_deadline + self.user_lookup_timeout > SLACK_DEADLINE - _ANSWER_MARGIN:
            raise ValueError(
                f"publish_deadline + user_lookup_timeout must stay under {SLACK_DEADLINE - _ANSWER_MARGIN:g}s:"
                " Slack retries requests it has no answer to after 3 s"
            )
        return self

    @property
    def events_api(self) -> bool:
        return self.signing_secret is not None

    @property
    def socket_mode(self) -> bool:
        return self.app_token is not None


# ---------------------------------------------------------------------------------- mapping

# Subtypes of ``message`` that a person wrote; everything else is housekeeping or a bot.
_CUSTOMER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
_CHANNEL_TYPES = frozenset({"channel", "group", "im", "mpim", "app_home"})
UNKNOWN_USER = "unknown"  # sender of a deletion whose author Slack did not include
_MAX_FILES = 100  # attachment metadata kept per message; Slack allows far fewer per message


@dataclass(frozen=True, slots=True)
class Ignored:
    """An event that is answered 200 but becomes no record, and why (logged, counted)."""

    reason: str


def slack_time(ts: str) -> datetime | None:
    """The moment a Slack ``ts`` (``"1355517523.000005"``: Unix seconds) names, or None if invalid."""
    try:
        seconds = float(ts)
    except (TypeError, ValueError):
        return None
    if not 0 < seconds < 1e11:
        return None
    return datetime.fromtimestamp(seconds, UTC)


_ANGLE = re.compile(r"<([^<>\n]{1,2000})>")


def _render_reference(inner: str, names: Mapping[str, str]) -> str:
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        user = target[1:]
        return "@" + (label or names.get(user) or user)
    if target.startswith("#"):
        return "#" + (label or target[1:])
    if target.startswith("!"):
        command = target[1:]
        if label:
            return label
        if command in ("here", "channel", "everyone"):
            return "@" + command
        return "@" + command.split("^", 1)[0]
    if target.startswith("mailto:"):
        return label or target.removeprefix("mailto:")
    if label and label != target:
        return f"{label} ({target})"
    return target


def render_mrkdwn(text: str, names: Mapping[str, str] | None = None) -> str:
    """Slack's message markup as the plain text a person reads.

    ``<@U1|ann>``/``<@U1>`` become ``@ann``/``@U1`` (or the name from *names*), ``<#C1|general>``
    ``#general``, ``<!here>`` ``@here``, ``<https://x|label>`` ``label (https://x)``; the three
    HTML entities Slack escapes (``&lt; &gt; &amp;``) are unescaped last, so escaped text never
    turns into markup. Formatting characters (``*bold*``) are kept: they are the user's text.
    """
    rendered = _ANGLE.sub(lambda m: _render_reference(m.group(1), names or {}), text)
    return rendered.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _app_identity(callback: Mapping[str, Any]) -> tuple[frozenset[str], str | None]:
    """This app's bot user ids (from ``authorizations``) and its app id (``api_app_id``)."""
    bot_users = set()
    for authorization in callback.get("authorizations") or ():
        if isinstance(authorization, Mapping) and authorization.get("is_bot"):
            user = _str(authorization.get("user_id"))
            if user:
                bot_users.add(user)
    return frozenset(bot_users), _str(callback.get("api_app_id"))


def _from_a_bot(message: Mapping[str, Any], bot_users: frozenset[str], app_id: str | None) -> bool:
    if message.get("bot_id") or message.get("subtype") == "bot_message" or message.get("bot_profile"):
        return True
    if app_id is not None and message.get("app_id") == app_id:
        return True
    return message.get("user") in bot_users


def _attachments(message: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """File shares as metadata; files Slack withholds (tombstones, plan limits) are skipped."""
    files = message.get("files")
    if not isinstance(files, list):
        return ()
    kept = []
    for item in files[:_MAX_FILES]:
        if not isinstance(item, Mapping) or item.get("mode") in ("tombstone", "hidden_by_limit"):
            continue
        size = item.get("size")
        kept.append(
            Attachment(
                filename=_str(item.get("name")) or _str(item.get("title")),
                content_type=_str(item.get("mimetype")) or "application/octet-stream",
                size=size if isinstance(size, int) and size >= 0 else 0,
                ref=_str(item.get("url_private")),
            )
        )
    return tuple(kept)


def _strip_leading_mention(text: str, bot_users: frozenset[str]) -> str:
    """Drop an opening ``<@BOT>`` addressed to this app: it is not the customer's words."""
    for user in bot_users:
        for prefix in (f"<@{user}>", f"<@{user}|"):
            if text.startswith(prefix):
                end = text.find(">") + 1
                return text[end:].lstrip(" :,")
    return text


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a message lives: its channel, its own ts and its thread."""

    channel: str
    ts: str
    thread_ts: str

    def native_id(self) -> str:
        return f"{self.channel}:{self.ts}"


def _place(channel: str, message: Mapping[str, Any]) -> _Place | None:
    ts = _str(message.get("ts"))
    if ts is None or slack_time(ts) is None:
        return None
    return _Place(channel, ts, _str(message.get("thread_ts")) or ts)


def _slack_metadata(
    callback: Mapping[str, Any], event: Mapping[str, Any], place: _Place, **extra: JsonValue
) -> dict[str, JsonValue]:
    sent = slack_time(place.ts)
    slack: dict[str, JsonValue] = {
        "team_id": _str(callback.get("team_id")),
        "channel": place.channel,
        "channel_type": _str(event.get("channel_type")),
        "ts": place.ts,
        "thread_ts": place.thread_ts if place.thread_ts != place.ts else None,
        "event_id": _str(callback.get("event_id")),
        "event_type": _str(event.get("type")),
        **extra,
    }
    return {
        "slack": {k: v for k, v in slack.items() if v is not None},
        "sent_at": format_timestamp(sent) if sent else None,
    }


def event_to_message(
    callback: Mapping[str, Any], *, instance: str, received_at: datetime
) -> InboundMessage | Ignored:
    """The record for one Events API ``event_callback`` body, or why there is none.

    Pure: no I/O, no clock (``received_at`` is given). ``sender.name`` is left null; the intake
    fills it from the user directory. Malformed events are :class:`Ignored` with a reason,
    because Slack would only retry them unchanged.
    """
    event = callback.get("event")
    if not isinstance(event, Mapping):
        return Ignored("no event object")
    event_type = event.get("type")
    if event_type not in ("message", "app_mention"):
        return Ignored(f"event type {event_type!r} is not a message")
    channel = _str(event.get("channel"))
    if channel is None:
        return Ignored("message without a channel")
    if event.get("channel_type") is not None and event.get("channel_type") not in _CHANNEL_TYPES:
        return Ignored(f"channel type {event.get('channel_type')!r}")
    bot_users, app_id = _app_identity(callback)
    subtype = event.get("subtype")
    if subtype == "message_changed":
        return _edit(callback, event, channel, instance, received_at, bot_users, app_id)
    if subtype == "message_deleted":
        return _deletion(callback, event, channel, instance, received_at, bot_users, app_id)
    if subtype not in _CUSTOMER_SUBTYPES:
        return Ignored(f"message subtype {subtype!r}")
    if _from_a_bot(event, bot_users, app_id):
        return Ignored("message from a bot or from this app")
    user = _str(event.get("user"))
    place = _place(channel, event)
    if user is None or place is None:
        return Ignored("message without user or ts")
    raw_text = event.get("text") if isinstance(event.get("text"), str) else ""
    assert isinstance(raw_text, str)
    mentions_app = event_type == "app_mention" or any(f"<@{u}" in raw_text for u in bot_users)
    return _record(
        instance=instance,
        native_id=place.native_id(),
        place=place,
        user=user,
        text=render_mrkdwn(_strip_leading_mention(raw_text, bot_users)),
        body=render_mrkdwn(raw_text),
        attachments=_attachments(event),
        received_at=received_at,
        metadata=_slack_metadata(callback, event, place, mentions_app=mentions_app),
    )


def _record(
    *,
    instance: str,
    native_id: str,
    place: _Place,
    user: str,
    text: str,
    body: str,
    attachments: tuple[Attachment, ...],
    received_at: datetime,
    metadata: dict[str, JsonValue],
) -> InboundMessage:
    in_reply_to = f"{place.channel}:{place.thread_ts}" if place.thread_ts != place.ts else None
    return InboundMessage(
        message_id=message_id(instance, native_id),
        channel="slack",
        channel_instance=instance,
        native_id=native_id,
        received_at=received_at,
        sender=Sender(id=user),
        conversation_id=conversation_id(instance, f"{place.channel}:{place.thread_ts}"),
        in_reply_to=in_reply_to,
        text=text,
        body=body,
        attachments=attachments,
        metadata={k: v for k, v in metadata.items() if v is not None},
    )


def _original(instance: str, place: _Place, at: str | None) -> dict[str, JsonValue]:
    moment = slack_time(at) if at else None
    return {
        "message_id": message_id(instance, place.native_id()),
        "native_id": place.native_id(),
        "at": format_timestamp(moment) if moment else None,
    }


def _edit(
    callback: Mapping[str, Any],
    event: Mapping[str, Any],
    channel: str,
    instance: str,
    received_at: datetime,
    bot_users: frozenset[str],
    app_id: str | None,
) -> InboundMessage | Ignored:
    message = event.get("message")
    if not isinstance(message, Mapping):
        return Ignored("message_changed without message")
    edited = message.get("edited")
    if not isinstance(edited, Mapping):
        # Slack also sends message_changed for unfurls and thread reply counters: not an edit.
        return Ignored("message_changed that is not an edit")
    previous = event.get("previous_message")
    if _from_a_bot(message, bot_users, app_id) or (
        isinstance(previous, Mapping) and _from_a_bot(previous, bot_users, app_id)
    ):
        return Ignored("edit of a bot's message")
    user = _str(message.get("user"))
    place = _place(channel, message)
    edit_ts = _str(edited.get("ts")) or _str(event.get("ts"))
    if user is None or place is None or edit_ts is None:
        return Ignored("message_changed without user, ts or edit ts")
    raw_text = message.get("text") if isinstance(message.get("text"), str) else ""
    assert isinstance(raw_text, str)
    return _record(
        instance=instance,
        native_id=f"{place.native_id()}:edit:{edit_ts}",
        place=place,
        user=user,
        text=render_mrkdwn(_strip_leading_mention(raw_text, bot_users)),
        body=render_mrkdwn(raw_text),
        attachments=_attachments(message),
        received_at=received_at,
        metadata={
            **_slack_metadata(callback, event, place, subtype="message_changed"),
            "edited": _original(instance, place, edit_ts),
        },
    )


def _deletion(
    callback: Mapping[str, Any],
    event: Mapping[str, Any],
    channel: str,
    instance: str,
    received_at: datetime,
    bot_users: frozenset[str],
    app_id: str | None,
) -> InboundMessage | Ignored:
    previous = event.get("previous_message")
    previous = previous if isinstance(previous, Mapping) else {}
    if previous and _from_a_bot(previous, bot_users, app_id):
        return Ignored("deletion of a bot's message")
    deleted_ts = _str(event.get("deleted_ts")) or _str(previous.get("ts"))
    if deleted_ts is None or slack_time(deleted_ts) is None:
        return Ignored("message_deleted without deleted_ts")
    place = _Place(channel, deleted_ts, _str(previous.get("thread_ts")) or deleted_ts)
    return _record(
        instance=instance,
        native_id=f"{place.native_id()}:deleted",
        place=place,
        # Slack does not say who deleted; the author of the deleted message is the best sender.
        user=_str(previous.get("user")) or UNKNOWN_USER,
        text="",
        body="",
        attachments=(),
        received_at=received_at,
        metadata={
            **_slack_metadata(callback, event, place, subtype="message_deleted"),
            "deleted": _original(instance, place, _str(event.get("ts"))),
        },
    )


# ----------------------------------------------------------------------------- Web API


class SlackApiFailed(SwitchboardError):
    """A Slack Web API call failed (``ok: false``, HTTP error, timeout); ``error`` is Slack's code."""

    retriable = True

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error


class SlackWebApi(Protocol):
    """The few Web API calls this channel makes. Tests hand in a fake; nothing here is called at start."""

    async def user_info(self, user_id: str) -> Mapping[str, Any]:
        """``users.info``: the ``user`` object."""
        ...

    async def auth_test(self) -> Mapping[str, Any]:
        """``auth.test`` with the bot token: ``team``, ``user_id``, ``bot_id`` …"""
        ...

    async def open_socket(self) -> str:
        """``apps.connections.open`` with the app token: a fresh Socket Mode WebSocket URL."""
        ...


class SdkWebApi:
    """:class:`SlackWebApi` on slack_sdk's ``WebClient`` (standard library HTTP, no aiohttp).

    Each call runs in a worker thread and is bounded by *timeout* (the socket timeout of the
    call, and the wait for it); failures become :class:`SlackApiFailed`. *base_url* is Slack's
    API root; tests point it at a local stand-in.
    """

    def __init__(
        self,
        *,
        bot_token: SecretStr | None,
        app_token: SecretStr | None,
        timeout: float,
        base_url: str = "https://slack.com/api/",
    ) -> None:
        self._bot_token = bot_token
        self._app_token = app_token
        self._timeout = timeout
        self._base_url = base_url

    async def _call(
        self, method: str, token: SecretStr | None, call: Callable[[Any], Any]
    ) -> Mapping[str, Any]:
        from slack_sdk import WebClient
        from slack_sdk.errors import SlackApiError

        if token is None:
            raise SlackApiFailed(method, "no token configured for this call")
        client = WebClient(
            token=token.get_secret_value(), base_url=self._base_url, timeout=int(max(1, self._timeout))
        )

        def blocking() -> Mapping[str, Any]:
            response = call(client)
            data = response.data
            return data if isinstance(data, Mapping) else {}

        try:
            return await asyncio.wait_for(asyncio.to_thread(blocking), timeout=self._timeout + 1)
        except SlackApiError as error:
            raise SlackApiFailed(method, str(error.response.get("error", "error"))) from None
        except TimeoutError:
            raise SlackApiFailed(method, "timeout") from None
        except OSError as error:
            raise SlackApiFailed(method, f"network error: {error.__class__.__name__}") from None

    async def user_info(self, user_id: str) -> Mapping[str, Any]:
        data = await self._call("users.info", self._bot_token, lambda c: c.users_info(user=user_id))
        user = data.get("user")
        return user if isinstance(user, Mapping) else {}

    async def auth_test(self) -> Mapping[str, Any]:
        return await self._call("auth.test", self._bot_token, lambda c: c.auth_test())

    async def open_socket(self) -> str:
        token = self._app_token
        if token is None:
            raise SlackApiFailed("apps.connections.open", "no app_token configured")
        data = await self._call(
            "apps.connections.open",
            token,
            lambda c: c.apps_connections_open(app_token=token.get_secret_value()),
        )
        url = data.get("url")
        if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
            raise SlackApiFailed("apps.connections.open", "no WebSocket URL in the answer")
        return url


def display_name(user: Mapping[str, Any]) -> str | None:
    """What Slack shows for a user: profile display name, else real name, else the handle."""
    profile = user.get("profile") if isinstance(user.get("profile"), Mapping) else {}
    assert isinstance(profile, Mapping)
    for value in (
        profile.get("display_name"),
        profile.get("real_name"),
        user.get("real_name"),
        user.get("name"),
    ):
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


@dataclass(slots=True)
class _CachedName:
    name: str | None
    expires: float


class UserDirectory:
    """User id → display name, through the Web API, with a bounded TTL cache.

    Guarantees: :meth:`name` returns within ``timeout`` seconds, never raises, and returns None
    when the name is unknown or slow; a slow look-up keeps running in the background (bounded
    by the client's own timeout) and fills the cache for the next message. At most
    ``max_lookups`` look-ups run at once and one per user; failures are cached for a minute so
    a broken token does not turn every message into an API call.
    """

    _NEGATIVE_TTL = 60.0

    def __init__(
        self,
        api: SlackWebApi,
        *,
        timeout: float,
        ttl: float,
        size: int,
        logger: structlog.typing.FilteringBoundLogger,
        max_lookups: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._timeout = timeout
        self._ttl = ttl
        self._size = size
        self._log = logger
        self._max_lookups = max_lookups
        self._clock = clock
        self._cache: collections.OrderedDict[str, _CachedName] = collections.OrderedDict()
        self._pending: dict[str, asyncio.Task[None]] = {}

    async def name(self, user_id: str) -> str | None:
        cached = self._cache.get(user_id)
        if cached is not None and cached.expires > self._clock():
            self._cache.move_to_end(user_id)
            return cached.name
        task = self._pending.get(user_id)
        if task is None:
            if len(self._pending) >= self._max_lookups:
                return cached.name if cached else None
            task = asyncio.create_task(self._look_up(user_id), name=f"slack users.info {user_id}")
            self._pending[user_id] = task
            task.add_done_callback(lambda _: self._pending.pop(user_id, None))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=self._timeout)
        fresh = self._cache.get(user_id, cached)
        return fresh.name if fresh else None

    async def _look_up(self, user_id: str) -> None:
        try:
            user = await self._api.user_info(user_id)
        except Exception as error:  # a name is optional: never let a look-up fail a message
            self._log.info("slack user look-up failed", user=user_id, error=str(error))
            self._store(user_id, None, self._NEGATIVE_TTL)
            return
        self._store(user_id, display_name(user), self._ttl)

    def _store(self, user_id: str, name: str | None, ttl: float) -> None:
        self._cache[user_id] = _CachedName(name, self._clock() + ttl)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        if self._pending:
            await asyncio.wait(list(self._pending.values()))


# ------------------------------------------------------------------------------- intake

Outcome = Literal["published", "duplicate", "ignored"]


class _Intake:
    """One ``event_callback`` body → at most one durable record; shared by both transports."""

    def __init__(self, config: SlackConfig, edge: WebEdge, users: UserDirectory | None) -> None:
        self._config = config
        self._edge = edge
        self._users = users

    async def take(
        self, callback: Mapping[str, Any], raw: bytes, *, retry: int = 0
    ) -> tuple[Outcome, str | None]:
        """Returns once the record is durable (or was already, or there is none to make).

        Raises what :meth:`WebEdge.deliver` raises when the broker did not confirm in time.
        """
        result = event_to_message(callback, instance=self._config.name, received_at=self._edge.now())
        log = self._edge.log.bind(event_id=callback.get("event_id"), retry=retry)
        if isinstance(result, Ignored):
            log.debug("slack event ignored", reason=result.reason)
            return "ignored", None
        message = result
        known_user = message.sender.id != UNKNOWN_USER
        if self._users is not None and known_user and not await self._edge.dedup.seen(message.message_id):
            name = await self._users.name(message.sender.id)
            if name is not None:
                message = message.model_copy(update={"sender": Sender(id=message.sender.id, name=name)})
        report = await self._edge.deliver([Delivery(message.message_id, message)], raw=raw)
        outcome: Outcome = "duplicate" if report.duplicates else "published"
        log.debug("slack message taken", outcome=outcome, message_id=message.message_id)
        return outcome, message.message_id


# --------------------------------------------------------------------------- Events API


def _events_app(config: SlackConfig, edge: WebEdge, intake: _Intake) -> ASGIApp:
    """``POST /``: verify, then answer the handshake or take the event; 200 only once durable."""
    secret = config.signing_secret

    async def events(request: Request) -> Response:
        if secret is None:
            return JSONResponse(
                {"error": "not_enabled", "detail": "this channel has no signing_secret (Socket Mode only)"},
                status_code=404,
            )
        body = await edge.read_body(request)
        verify_slack(
            secret,
            timestamp=request.headers.get("x-slack-request-timestamp"),
            signature=request.headers.get("x-slack-signature"),
            body=body,
            now=edge.now().timestamp(),
        )
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a JSON object", reason="invalid_payload")
        kind = payload.get("type")
        if kind == "url_verification":
            challenge = payload.get("challenge")
            if not isinstance(challenge, str):
                raise BadRequest("url_verification without a challenge", reason="invalid_payload")
            return JSONResponse({"challenge": challenge})
        if kind != "event_callback":
            edge.log.info("slack callback ignored", type=kind)
            return JSONResponse({"ok": True, "outcome": "ignored"})
        retry = request.headers.get("x-slack-retry-num", "0")
        outcome, record_id = await intake.take(payload, body, retry=int(retry) if retry.isdigit() else 0)
        return JSONResponse({"ok": True, "outcome": outcome, "message_id": record_id})

    return Starlette(routes=[Route("/", edge.endpoint(events), methods=["POST"])])


# -------------------------------------------------------------------------- Socket Mode


class SocketModeClient:
    """A Socket Mode connection that reconnects until stopped.

    Each ``events_api`` envelope is handled in its own task (at most ``max_in_flight`` at once)
    and acknowledged with ``{"envelope_id": …}`` only after its record is durable; a failed
    envelope is left unacknowledged, so Slack redelivers it (``retry_attempt`` > 0) and the
    deduplication makes the redelivery harmless. Other envelope types (slash commands,
    interactivity) are acknowledged at once: this channel does not serve them. ``disconnect``
    envelopes (Slack refreshes connections every few hours) lead to an immediate reconnect;
    errors to a reconnect after an exponential back-off with jitter, capped at a minute.
    """

    def __init__(
        self,
        api: SlackWebApi,
        intake: _Intake,
        *,
        health: Health,
        logger: structlog.typing.FilteringBoundLogger,
        max_in_flight: int,
        max_frame_bytes: int,
        ping_interval: float,
        open_timeout: float,
    ) -> None:
        self._api = api
        self._intake = intake
        self._health = health
        self._log = logger
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_frame_bytes = max_frame_bytes
        self._ping_interval = ping_interval
        self._open_timeout = open_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._connection: ClientConnection | None = None
        self.connections = 0  # successful connections so far (observable in tests and logs)

    async def run(self) -> None:
        """Connect, serve, reconnect; returns only after :meth:`stop`."""
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                refresh = await self._connect_and_serve()
            except (OSError, TimeoutError, WebSocketException, SlackApiFailed) as error:
                self._health.failing(f"socket mode: {error}")
                self._log.warning("slack socket mode connection failed", error=str(error), retry_in=backoff)
                refresh = False
            if self._stopping.is_set():
                break
            if refresh:
                backoff = 1.0
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff * random.uniform(0.5, 1.0))  # noqa: S311
            backoff = min(backoff * 2, 60.0)

    async def _connect_and_serve(self) -> bool:
        """Serve one connection; True when Slack asked us to reconnect (``disconnect``)."""
        url = await self._api.open_socket()
        async with connect(
            url,
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_interval,
            close_timeout=2,
            max_size=self._max_frame_bytes,
            proxy=None,
        ) as connection:
            self._connection = connection
            try:
                async for frame in connection:
                    if self._stopping.is_set():
                        return False
                    if await self._on_frame(connection, frame):
                        return True
            finally:
                self._connection = None
        return False

    async def _on_frame(self, connection: ClientConnection, frame: str | bytes) -> bool:
        raw = frame.encode("utf-8") if isinstance(frame, str) else frame
        try:
            envelope = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._log.warning("slack socket mode frame is not JSON", size=len(raw))
            return False
        if not isinstance(envelope, dict):
            return False
        kind = envelope.get("type")
        if kind == "hello":
            self.connections += 1
            self._health.ok()
            self._log.info("slack socket mode connected", connections=envelope.get("num_connections"))
            return False
        if kind == "disconnect":
            self._log.info("slack socket mode disconnect requested", reason=envelope.get("reason"))
            return True
        envelope_id = envelope.get("envelope_id")
        if not isinstance(envelope_id, str):
            return False
        if kind != "events_api":
            await self._ack(connection, envelope_id)
            return False
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            await self._ack(connection, envelope_id)
            return False
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(connection, envelope_id, payload, raw, envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return False

    async def _handle(
        self,
        connection: ClientConnection,
        envelope_id: str,
        payload: dict[str, Any],
        raw: bytes,
        envelope: Mapping[str, Any],
    ) -> None:
        try:
            retry = envelope.get("retry_attempt")
            await self._intake.take(payload, raw, retry=retry if isinstance(retry, int) else 0)
        except Exception as error:
            # Not acknowledged: Slack redelivers the envelope.
            self._log.warning("slack envelope not taken; left for redelivery", error=repr(error))
            return
        finally:
            self._slots.release()
        await self._ack(connection, envelope_id)

    async def _ack(self, connection: ClientConnection, envelope_id: str) -> None:
        try:
            await connection.send(json.dumps({"envelope_id": envelope_id}))
        except WebSocketException as error:
            self._log.info("slack ack not sent; Slack will redeliver", error=str(error))

    async def stop(self, timeout: float) -> None:
        """Stop reconnecting, let envelopes in flight finish within *timeout*, then close."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._connection is not None:
            await self._connection.close()


# ---------------------------------------------------------------------------- connector


class SlackConnector:
    """The ``slack`` channel: an :class:`connectors.base.HttpConnector`, plus Socket Mode when configured."""

    def __init__(
        self, config: SlackConfig, context: ConnectorContext, *, api: SlackWebApi | None = None
    ) -> None:
        self.name = config.name
        self.config = config
        self._context = context
        self.edge = WebEdge(config, context, channel="slack")
        self._api: SlackWebApi = api or SdkWebApi(
            bot_token=config.bot_token, app_token=config.app_token, timeout=config.api_timeout
        )
        self.users = (
            UserDirectory(
                self._api,
                timeout=config.user_lookup_timeout,
                ttl=config.user_cache_ttl,
                size=config.user_cache_size,
                logger=self.edge.log,
            )
            if config.user_names and (config.bot_token is not None or api is not None)
            else None
        )
        self._intake = _Intake(config, self.edge, self.users)
        self.socket: SocketModeClient | None = None
        if config.socket_mode:
            self.socket = SocketModeClient(
                self._api,
                self._intake,
                health=context.health,
                logger=self.edge.log,
                max_in_flight=config.max_in_flight,
                max_frame_bytes=config.max_body_bytes,
                ping_interval=config.socket_ping_interval,
                open_timeout=config.api_timeout,
            )
        self._app = _events_app(config, self.edge, self._intake)
        self._started = False
        self._stopped = False

    def asgi_app(self) -> ASGIApp:
        return self._app

    async def start(self) -> None:
        """Ready for requests; starts the Socket Mode loop in the background when configured.

        Calls no Slack API itself (the Socket Mode loop's first call is ``apps.connections.open``).
        """
        if self._started:
            return
        self._started = True
        await self.edge.start()
        if self.socket is not None:
            await self._context.spawn(f"channel:{self.name}:socket-mode", self.socket.run())
        self.edge.log.info(
            "slack channel started", events_api=self.config.events_api, socket_mode=self.config.socket_mode
        )

    async def stop(self) -> None:
        """Idempotent: stop Socket Mode and the HTTP edge, each draining within ``drain_timeout``."""
        if self._stopped:
            return
        self._stopped = True
        if self.socket is not None:
            await self.socket.stop(self.config.drain_timeout)
        await self.edge.stop()
        if self.users is not None:
            await self.users.close()


def build(config: SlackConfig, context: ConnectorContext) -> SlackConnector:
    """The registry's factory: Web API calls through slack_sdk."""
    return SlackConnector(config, context)


async def check(config: SlackConfig, api: SlackWebApi | None = None) -> str:
    """``channels check``: ``auth.test`` with the bot token; ``apps.connections.open`` for Socket Mode."""
    api = api or SdkWebApi(bot_token=config.bot_token, app_token=config.app_token, timeout=config.api_timeout)
    parts = []
    if config.bot_token is not None:
        identity = await api.auth_test()
        parts.append(
            f"bot {identity.get('user', '?')} ({identity.get('user_id', '?')}) in team {identity.get('team', '?')}"
        )
    else:
        parts.append("no bot_token: sender names are not looked up")
    if config.socket_mode:
        await api.open_socket()
        parts.append("socket mode: connection URL granted")
    if config.events_api:
        parts.append("events API: signing secret set")
    return "; ".join(parts)


CHANNEL_TYPE = ChannelType(
    type="slack",
    channel="slack",
    config_model=SlackConfig,
    factory=build,
    summary="Slack Events API (signed HTTP) and Socket Mode: channels, threads, DMs, mentions",
    http=True,
    check=check,
)
