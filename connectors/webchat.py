"""Website live chat (type ``webchat``): a WebSocket endpoint and an embeddable widget.

Served under ``/channels/<name>``:

* ``/ws`` — the chat WebSocket (protocol below);
* ``/widget.js`` — the widget, plain JavaScript with no build step; embed it with
  ``<script src="https://…/channels/<name>/widget.js" async></script>``;
* ``/demo`` — a small page that embeds the widget (``demo_page: false`` turns it off).

Guarantees
----------
* **Origin allow-list.** A handshake whose ``Origin`` is not in ``allowed_origins`` (``"*"``:
  any) is refused with HTTP 403 before the socket opens; so is one without ``Origin`` unless
  ``allow_missing_origin`` (for non-browser clients) is set.
* **An ack means durable.** ``{"type": "ack", "id": <client id>, "message_id": …}`` is sent only
  after the record is on ``sb.inbound``. The client id names the message: a resend of the same
  id in the same session (after a lost ack, a reconnect, a page reload) gets the same
  ``message_id`` and makes no second record, also while the first attempt is still publishing
  and across restarts (the processed-id memory of :class:`connectors.webedge.Deduplicator`).
* **The session is the conversation.** The server issues a random session token in
  ``welcome``; the widget keeps it in ``localStorage`` and presents it again in ``hello`` to
  resume. The token is a bearer secret and never leaves the edge: records carry a digest of it
  (``sender.id``, ``conversation_id``), so agents reading records cannot write as the visitor.
* **Bounded.** Frames above ``max_frame_bytes`` and texts above ``max_text_chars`` are refused
  with an error frame; each connection has a token-bucket rate limit (``message_rate``,
  ``message_burst``) answered with an error frame, not a disconnect; a connection silent for
  ``idle_timeout`` (``hello_timeout`` before its hello) is closed; at most ``max_connections``
  are open at once; a publish waits at most ``publish_deadline``.
* **Errors are frames.** Every failure is ``{"type": "error", "code", "message"}`` plus the
  client ``id`` when it concerns a message and ``retry_after`` (seconds) when trying again
  later will help. A broker that is down or slow is ``unavailable``: the widget retries the
  same id. See :data:`ERROR_CODES`.

Protocol (JSON text frames)
---------------------------
Client → server::

    {"type": "hello", "session": <token or null>, "name": <visitor name or null>,
     "locale": "es-MX" | null, "page": <page URL or null>}         # first frame
    {"type": "message", "id": <client id: 1-64 of A-Z a-z 0-9 _ ->, "text": <text>}
    {"type": "ping"}

Server → client::

    {"type": "welcome", "session": <token>, "visitor": <public id>, "resumed": bool,
     "limits": {"max_text_chars", "max_frame_bytes", "message_rate", "message_burst"}}
    {"type": "ack", "id": <client id>, "message_id": <record id>, "duplicate": bool}
    {"type": "pong"}
    {"type": "error", "code": …, "message": …, ["id": …], ["retry_after": …]}

Close codes: 1000 idle, 1008 policy (hello missing in time), 1012 server restarting,
1013 too many connections. In all of them the widget reconnects with back-off when it has
something to send.

Records: ``channel`` ``webchat``; ``native_id`` ``<visitor>:<client id>``; ``sender.id`` the
visitor id, ``sender.name`` the name given in ``hello`` (unverified); ``metadata.webchat`` has
``origin``, ``page`` and ``user_agent``; ``metadata.language_hint`` the primary language of
``locale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, JsonValue, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from connectors.base import ConnectorContext
from connectors.registry import ChannelType
from connectors.webedge import Delivery, HttpChannelConfig, TokenBucket, WebEdge, answer_for
from models import InboundMessage, Sender
from models.ids import conversation_id, message_id, stable_digest

__all__ = [
    "CHANNEL_TYPE",
    "ERROR_CODES",
    "WebchatConfig",
    "WebchatConnector",
    "build",
    "check",
    "normalize_origin",
]

ERROR_CODES: Mapping[str, str] = {
    # code -> what the widget does
    "bad_frame": "not JSON or not a known frame: a bug in the client; not retried",
    "hello_required": "a frame before hello: send hello first",
    "too_large": "frame above max_frame_bytes: not retried",
    "invalid_message": "message without a valid id or text, or text above max_text_chars: not retried",
    "rate_limited": "over the connection's rate limit: retry the same id after retry_after",
    "unavailable": "broker down or slow, or overloaded: retry the same id after retry_after",
    "rejected": "the record can never be accepted: not retried",
    "internal": "unexpected server error: retry the same id after retry_after",
    "idle_timeout": "nothing received for idle_timeout: the socket closes (1000)",
    "shutting_down": "the server is stopping: reconnect after retry_after",
    "busy": "too many connections: reconnect after retry_after",
}

_STATIC = "connectors.webchat_static"
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SESSION = re.compile(r"[A-Za-z0-9_-]{22,64}")
_LOCALE = re.compile(r"([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str:
    """An origin in the form browsers send it: ``scheme://host[:port]``, lower-case, no default port.

    ``"*"`` stays ``"*"``. Raises :class:`ValueError` for anything that is not an http(s) origin.
    """
    text = value.strip()
    if text == "*":
        return text
    parts = urlsplit(text.lower().rstrip("/"))
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"{value!r} is not an origin like https://shop.example.com")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


class WebchatConfig(HttpChannelConfig):
    """``type: webchat``: the chat WebSocket, the widget and its limits."""

    type: Literal["webchat"] = "webchat"
    allowed_origins: tuple[str, ...] = Field(
        min_length=1,
        description='origins of the pages that may embed the chat, e.g. https://shop.example.com; "*" = any',
    )
    allow_missing_origin: bool = Field(
        default=False, description="accept handshakes without an Origin header (non-browser clients)"
    )
    max_frame_bytes: int = Field(default=16_384, ge=256, le=1 << 20, description="largest frame accepted")
    max_text_chars: int = Field(default=4000, ge=1, le=100_000, description="longest message text accepted")
    message_rate: float = Field(default=1.0, gt=0, le=1000, description="frames per second per connection")
    message_burst: int = Field(
        default=8, ge=1, le=10_000, description="frames allowed in a burst per connection"
    )
    idle_timeout: float = Field(
        default=600.0, gt=0, le=86_400, description="seconds of silence before closing"
    )
    hello_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds to send hello after connecting"
    )
    max_connections: int = Field(default=2000, ge=1, le=1_000_000, description="open chat sockets at once")
    demo_page: bool = Field(default=True, description="serve the example page at /channels/<name>/demo")

    @field_validator("allowed_origins", mode="after")
    @classmethod
    def _normalize(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalize_origin(origin) for origin in value))


class _Stopping(Exception):
    """The connector is stopping: close this connection."""


@dataclass(frozen=True, slots=True)
class _Visitor:
    session: str  # the bearer token; stays here
    visitor: str  # its public digest, used in records
    name: str | None
    language: str | None
    page: str | None
    origin: str | None
    user_agent: str | None


def _text_or_none(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] if value else None


def _language(locale: object) -> str | None:
    if not isinstance(locale, str):
        return None
    match = _LOCALE.fullmatch(locale.strip()[:64])
    return match.group(1).lower() if match else None


def _error(
    code: str, message: str, *, client_id: str | None = None, retry_after: float | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if client_id is not None:
        frame["id"] = client_id
    if retry_after is not None:
        frame["retry_after"] = math.ceil(max(retry_after, 0.1) * 10) / 10  # up: retrying earlier fails again
    return frame


def _failure_frame(error: BaseException, client_id: str) -> dict[str, Any]:
    """The error frame for a message that could not be taken (the one mapping, via :func:`answer_for`)."""
    answer = answer_for(error)
    retry = float(answer.headers.get("Retry-After", "1"))
    if answer.status == 503:
        return _error("unavailable", answer.detail, client_id=client_id, retry_after=retry)
    if answer.status == 500:
        return _error("internal", "internal error", client_id=client_id, retry_after=retry)
    return _error("rejected", answer.detail, client_id=client_id)


class _Connection:
    """One chat socket: hello, then messages, each acknowledged after publish. Frames are handled
    in order, one at a time, so a visitor's messages are published in the order sent."""

    def __init__(self, connector: WebchatConnector, socket: WebSocket) -> None:
        self._connector = connector
        self._config = connector.config
        self._edge = connector.edge
        self._socket = socket
        self._bucket = TokenBucket(self._config.message_rate, self._config.message_burst)
        self._visitor: _Visitor | None = None
        self._pending: asyncio.Future[Message] | None = None

    async def send(self, frame: Mapping[str, Any]) -> bool:
        """Send one frame; False when the client is already gone."""
        try:
            await self._socket.send_text(json.dumps(frame, ensure_ascii=False))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return False
        return True

    async def close(self, code: int, reason: str = "") -> None:
        with contextlib.suppress(RuntimeError, OSError):  # already closed by the client
            await self._socket.close(code=code, reason=reason)

    async def _receive(self, timeout: float) -> Message | None:
        """The next ASGI message, None after *timeout* seconds of silence; :class:`_Stopping` on stop."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._socket.receive())
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._connector.stopping.wait())
        waiting: set[asyncio.Future[Any]] = {self._pending, stopping}
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if self._pending in done:
            message, self._pending = self._pending.result(), None
            return message
        if self._connector.stopping.is_set():
            raise _Stopping
        return None

    async def run(self) -> None:
        try:
            await self._serve()
        except _Stopping:
            await self.send(_error("shutting_down", "the server is restarting", retry_after=2))
            await self.close(1012, "server restarting")
        finally:
            if self._pending is not None:
                self._pending.cancel()

    async def _serve(self) -> None:
        while True:
            waiting_for_hello = self._visitor is None
            message = await self._receive(
                self._config.hello_timeout if waiting_for_hello else self._config.idle_timeout
            )
            if message is None:
                if waiting_for_hello:
                    await self.send(_error("hello_required", "no hello received in time"))
                    await self.close(1008, "hello required")
                else:
                    await self.send(_error("idle_timeout", "closed after a period of silence"))
                    await self.close(1000, "idle")
                return
            if message["type"] == "websocket.disconnect":
                return
            await self._on_frame(message)
            if self._connector.stopping.is_set():
                raise _Stopping

    async def _on_frame(self, message: Message) -> None:
        text = message.get("text")
        if text is None:
            await self.send(_error("bad_frame", "frames are JSON text"))
            return
        assert isinstance(text, str)
        raw = text.encode("utf-8", errors="replace")
        if len(raw) > self._config.max_frame_bytes:
            self._edge.context.metrics.rejected("too_large")
            await self.send(
                _error("too_large", f"frames are limited to {self._config.max_frame_bytes} bytes")
            )
            return
        try:
            frame = json.loads(text)
        except json.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict):
            await self.send(_error("bad_frame", "a frame is a JSON object with a type"))
            return
        kind = frame.get("type")
        client_id = frame.get("id") if kind == "message" and isinstance(frame.get("id"), str) else None
        wait = self._bucket.take()
        if wait > 0:
            self._edge.context.metrics.rejected("rate_limited")
            await self.send(_error("rate_limited", "slow down", client_id=client_id, retry_after=wait))
            return
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "hello":
            await self._hello(frame)
        elif self._visitor is None:
            await self.send(_error("hello_required", "send hello first", client_id=client_id))
        elif kind == "message":
            await self._message(frame, raw, self._visitor)
        else:
            await self.send(_error("bad_frame", f"unknown frame type {kind!r}"))

    async def _hello(self, frame: Mapping[str, Any]) -> None:
        if self._visitor is not None:
            await self.send(_error("bad_frame", "hello was already received"))
            return
        offered = frame.get("session")
        resumed = isinstance(offered, str) and _SESSION.fullmatch(offered) is not None
        session = offered if resumed and isinstance(offered, str) else secrets.token_urlsafe(24)
        headers = self._socket.headers
        self._visitor = _Visitor(
            session=session,
            visitor="v" + stable_digest((self._config.name, session), 24),
            name=_text_or_none(frame.get("name"), 200),
            language=_language(frame.get("locale")),
            page=_text_or_none(frame.get("page"), 2000),
            origin=_text_or_none(headers.get("origin"), 300),
            user_agent=_text_or_none(headers.get("user-agent"), 500),
        )
        config = self._config
        await self.send(
            {
                "type": "welcome",
                "session": session,
                "visitor": self._visitor.visitor,
                "resumed": resumed,
                "limits": {
                    "max_text_chars": config.max_text_chars,
                    "max_frame_bytes": config.max_frame_bytes,
                    "message_rate": config.message_rate,
                    "message_burst": config.message_burst,
                },
            }
        )

    async def _message(self, frame: Mapping[str, Any], raw: bytes, visitor: _Visitor) -> None:
        client_id = frame.get("id")
        text = frame.get("text")
        if not isinstance(client_id, str) or _CLIENT_ID.fullmatch(client_id) is None:
            await self.send(_error("invalid_message", "id must be 1-64 letters, digits, _ or -"))
            return
        if not isinstance(text, str) or not text.strip():
            await self.send(_error("invalid_message", "text must be a non-empty string", client_id=client_id))
            return
        if len(text) > self._config.max_text_chars:
            self._edge.context.metrics.rejected("too_large")
            await self.send(
                _error(
                    "invalid_message",
                    f"text is limited to {self._config.max_text_chars} characters",
                    client_id=client_id,
                )
            )
            return
        record = self._record(visitor, client_id, text.strip())
        try:
            report = await self._edge.deliver([Delivery(record.message_id, record)], raw=raw)
        except Exception as error:
            self._edge.failure(error)  # counted and logged like any edge failure
            await self.send(_failure_frame(error, client_id))
            return
        await self.send(
            {
                "type": "ack",
                "id": client_id,
                "message_id": record.message_id,
                "duplicate": report.duplicates > 0,
            }
        )

    def _record(self, visitor: _Visitor, client_id: str, text: str) -> InboundMessage:
        instance = self._config.name
        native_id = f"{visitor.visitor}:{client_id}"
        webchat: dict[str, JsonValue] = {
            "origin": visitor.origin,
            "page": visitor.page,
            "user_agent": visitor.user_agent,
        }
        metadata: dict[str, JsonValue] = {"webchat": {k: v for k, v in webchat.items() if v is not None}}
        if visitor.language is not None:
            metadata["language_hint"] = visitor.language
        return InboundMessage(
            message_id=message_id(instance, native_id),
            channel="webchat",
            channel_instance=instance,
            native_id=native_id,
            received_at=self._edge.now(),
            sender=Sender(id=visitor.visitor, name=visitor.name),
            conversation_id=conversation_id(instance, visitor.visitor),
            text=text,
            body=text,
            metadata=metadata,
        )


class WebchatConnector:
    """The ``webchat`` channel: an :class:`connectors.base.HttpConnector` with a WebSocket."""

    def __init__(self, config: WebchatConfig, context: ConnectorContext) -> None:
        self.name = config.name
        self.config = config
        self.edge = WebEdge(config, context, channel="webchat")
        self._origins = frozenset(config.allowed_origins)
        self._connections: set[_Connection] = set()
        self._static: dict[str, bytes] = {}
        self.stopping = asyncio.Event()
        self._stopped = False
        self._app = self._build_app()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def asgi_app(self) -> ASGIApp:
        return self._app

    def _build_app(self) -> Starlette:
        routes: list[BaseRoute] = [
            WebSocketRoute("/ws", self._websocket),
            Route("/widget.js", self.edge.endpoint(self._widget), methods=["GET", "HEAD"]),
        ]
        if self.config.demo_page:
            routes.append(Route("/demo", self.edge.endpoint(self._demo), methods=["GET", "HEAD"]))
        return Starlette(routes=routes)

    def _file(self, name: str) -> bytes:
        if name not in self._static:
            self._static[name] = resources.files(_STATIC).joinpath(name).read_bytes()
        return self._static[name]

    async def _widget(self, _: Request) -> Response:
        return Response(
            self._file("widget.js"),
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def _demo(self, _: Request) -> Response:
        return Response(
            self._file("demo.html"),
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": (
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:"
                ),
                "X-Content-Type-Options": "nosniff",
            },
        )

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None or origin == "null":
            return self.config.allow_missing_origin
        if "*" in self._origins:
            return True
        try:
            return normalize_origin(origin) in self._origins
        except ValueError:
            return False

    async def _websocket(self, socket: WebSocket) -> None:
        metrics = self.edge.context.metrics
        if not self.origin_allowed(socket.headers.get("origin")):
            metrics.rejected("origin")
            self.edge.log.info("webchat origin refused", origin=(socket.headers.get("origin") or "")[:300])
            await socket.close(code=1008)  # before accept: the handshake is answered 403
            return
        await socket.accept()
        connection = _Connection(self, socket)
        if self.stopping.is_set():
            await connection.send(_error("shutting_down", "the server is restarting", retry_after=2))
            await connection.close(1012, "server restarting")
            return
        if len(self._connections) >= self.config.max_connections:
            metrics.rejected("busy")
            await connection.send(_error("busy", "too many conversations at once", retry_after=5))
            await connection.close(1013, "try again later")
            return
        self._connections.add(connection)
        started = time.monotonic()
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self.edge.log.debug("webchat connection closed", seconds=round(time.monotonic() - started, 1))

    async def start(self) -> None:
        """Ready at once: opens no connection (the HTTP server serves the app)."""
        await self.edge.start()

    async def stop(self) -> None:
        """Idempotent: refuse new sockets; close idle ones now (1012) and busy ones once their
        message is acknowledged, within ``drain_timeout``; then stop the edge."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.edge.stop()


def build(config: WebchatConfig, context: ConnectorContext) -> WebchatConnector:
    return WebchatConnector(config, context)


async def check(config: WebchatConfig) -> str:
    """``channels check``: the widget files are installed; lists the allowed origins."""
    for name in ("widget.js", "demo.html"):
        if not resources.files(_STATIC).joinpath(name).is_file():
            raise FileNotFoundError(f"the webchat widget file {name} is missing from the installation")
    return f"widget installed; origins allowed: {', '.join(config.allowed_origins)}"


CHANNEL_TYPE = ChannelType(
    type="webchat",
    channel="webchat",
    config_model=WebchatConfig,
    factory=build,
    summary="Website live chat: a WebSocket endpoint and an embeddable widget (origin allow-list)",
    http=True,
    check=check,
)
