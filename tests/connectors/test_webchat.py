"""The webchat channel over real WebSocket connections (uvicorn + the ``websockets`` client, and the
widget itself run by Node against the server), each record read back from ``sb.inbound``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from connectors.base import ConnectorContext
from connectors.webchat import CHANNEL_TYPE, WebchatConfig, WebchatConnector, check, normalize_origin
from models import InboundMessage
from models.config import HostPort, KafkaConfig
from models.topics import Topics
from switchboard.http import HttpServer, build_app
from switchboard.supervision import Readiness
from tests.brokers import OwnBroker, outage_rig, running_broker
from tests.connectors.fixtures.harness import Gate, inbound

INSTANCE = "website-chat"
ORIGIN = "https://shop.example.com"


@dataclasses.dataclass
class Chat:
    connector: WebchatConnector
    server: HttpServer

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.server.port}/channels/{INSTANCE}"

    def open(self, origin: str | None = ORIGIN) -> Any:
        return connect(f"ws://{self.base}/ws", origin=origin, open_timeout=5, close_timeout=2)  # type: ignore[arg-type]


@pytest.fixture
async def serve_chat() -> AsyncIterator[Callable[..., Awaitable[Chat]]]:
    started: list[Chat] = []

    async def start(context: ConnectorContext, **options: Any) -> Chat:
        options.setdefault("allowed_origins", [ORIGIN, "http://localhost:8080"])
        config = WebchatConfig(name=INSTANCE, type="webchat", **options)
        connector = WebchatConnector(config, context)
        app = build_app(Readiness(), CollectorRegistry(), [(INSTANCE, connector.asgi_app())])
        server = HttpServer(app, HostPort("127.0.0.1", 0))
        await server.start()
        await connector.start()
        chat = Chat(connector, server)
        started.append(chat)
        return chat

    yield start
    for chat in reversed(started):
        await chat.connector.stop()
        await chat.server.stop()


async def frame(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return data


async def send(ws: ClientConnection, **fields: Any) -> None:
    await ws.send(json.dumps(fields))


async def hello(ws: ClientConnection, session: str | None = None, **fields: Any) -> dict[str, Any]:
    await send(ws, type="hello", session=session, **fields)
    welcome = await frame(ws)
    assert welcome["type"] == "welcome", welcome
    return welcome


# ----------------------------------------------------------------------------- config


def test_origins_are_normalized_and_checked() -> None:
    config = WebchatConfig(
        name="c",
        type="webchat",
        allowed_origins=["HTTPS://Shop.Example.com:443/", "http://127.0.0.1:8080", "*"],
    )
    assert config.allowed_origins == ("https://shop.example.com", "http://127.0.0.1:8080", "*")
    assert normalize_origin("http://[::1]:80") == "http://[::1]"
    for bad in ("shop.example.com", "ftp://x.example", "https://x.example/path", "https://x.example:99999"):
        with pytest.raises(ValueError):
            normalize_origin(bad)
    with pytest.raises(ValidationError, match="allowed_origins"):
        WebchatConfig(name="c", type="webchat", allowed_origins=[])
    with pytest.raises(ValidationError, match="allowed_origins"):
        WebchatConfig(name="c", type="webchat", allowed_origins=["not an origin"])


async def test_check_finds_the_widget_files() -> None:
    config = WebchatConfig(name="c", type="webchat", allowed_origins=[ORIGIN])
    assert ORIGIN in await check(config)
    assert CHANNEL_TYPE.http and CHANNEL_TYPE.check is check


# ------------------------------------------------------------------------ the socket


async def test_other_origins_and_missing_origins_are_refused_with_403(
    serve_chat: Any, connector_context: ConnectorContext
) -> None:
    chat = await serve_chat(connector_context)
    for origin in ("https://evil.example", "https://shop.example.com.evil.example", None, "null"):
        with pytest.raises(InvalidStatus) as refused:
            async with chat.open(origin):
                pass
        assert refused.value.response.status_code == 403
    async with chat.open("https://SHOP.example.com:443") as ws:  # the same origin, spelled differently
        await hello(ws)


async def test_messages_are_acked_after_publish_and_land_on_inbound(
    serve_chat: Any, connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    confirmed: dict[str, float] = {}

    async def timed_publish(message: InboundMessage) -> None:
        await asyncio.sleep(0.3)
        await connector_context.publish(message)
        confirmed[message.message_id] = time.monotonic()

    chat = await serve_chat(dataclasses.replace(connector_context, publish=timed_publish))
    async with chat.open() as ws:
        welcome = await hello(ws, name="Priya", locale="ta-IN", page="https://shop.example.com/orders/4471")
        assert welcome["resumed"] is False and len(welcome["session"]) >= 22
        assert welcome["limits"]["max_text_chars"] == 4000
        await send(ws, type="message", id="m-1", text="  Where is my order 4471?  ")
        ack = await frame(ws)
        acked_at = time.monotonic()
        assert ack["type"] == "ack" and ack["id"] == "m-1" and ack["duplicate"] is False
        assert confirmed[ack["message_id"]] <= acked_at  # the ack came after the broker's confirmation
        await send(ws, type="message", id="m-2", text="நான் காத்திருக்கிறேன்")
        second = await frame(ws)
        assert second["type"] == "ack" and second["id"] == "m-2"

    records = await inbound(kafka_config, topics.inbound)
    assert [r.text for r in records] == ["Where is my order 4471?", "நான் காத்திருக்கிறேன்"]
    first = records[0]
    assert first.message_id == ack["message_id"]
    assert first.channel == "webchat" and first.channel_instance == INSTANCE
    assert first.sender.id == welcome["visitor"] and first.sender.name == "Priya"
    assert first.conversation_id == f"{INSTANCE}:{welcome['visitor']}" == records[1].conversation_id
    assert welcome["session"] not in first.to_json_bytes().decode()  # the bearer token stays at the edge
    assert first.metadata["language_hint"] == "ta"
    assert first.metadata["webchat"] == {
        "origin": ORIGIN,
        "page": "https://shop.example.com/orders/4471",
        "user_agent": first.metadata["webchat"]["user_agent"],  # type: ignore[index,call-overload]
    }


async def test_a_resent_client_id_is_the_same_message_and_one_record_even_after_reconnecting(
    serve_chat: Any, connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    chat = await serve_chat(connector_context)
    async with chat.open() as ws:
        welcome = await hello(ws)
        await send(ws, type="message", id="abc", text="Refund please")
        first = await frame(ws)
        await send(ws, type="message", id="abc", text="Refund please")
        again = await frame(ws)
    assert again["message_id"] == first["message_id"] and again["duplicate"] is True
    async with chat.open() as ws:  # the widget after a page reload: same session, same id
        resumed = await hello(ws, session=welcome["session"])
        assert resumed["resumed"] is True and resumed["visitor"] == welcome["visitor"]
        await send(ws, type="message", id="abc", text="Refund please")
        third = await frame(ws)
        await send(ws, type="message", id="def", text="And the invoice")
        fourth = await frame(ws)
    assert third["message_id"] == first["message_id"] and third["duplicate"] is True
    assert fourth["duplicate"] is False
    records = await inbound(kafka_config, topics.inbound)
    assert [r.message_id for r in records] == [first["message_id"], fourth["message_id"]]
    assert len({r.conversation_id for r in records}) == 1  # the session is the conversation


async def test_a_resend_while_the_first_is_publishing_shares_its_outcome(
    serve_chat: Any, connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    publishes = 0

    async def slow_publish(message: InboundMessage) -> None:
        nonlocal publishes
        publishes += 1
        await asyncio.sleep(1.0)
        await connector_context.publish(message)

    chat = await serve_chat(dataclasses.replace(connector_context, publish=slow_publish))
    async with chat.open() as first_tab, chat.open() as second_tab:
        welcome = await hello(first_tab)
        await hello(second_tab, session=welcome["session"])
        await send(first_tab, type="message", id="same", text="hello?")
        await asyncio.sleep(0.2)
        await send(second_tab, type="message", id="same", text="hello?")
        acks = await asyncio.gather(frame(first_tab), frame(second_tab))
    assert {a["type"] for a in acks} == {"ack"}
    assert acks[0]["message_id"] == acks[1]["message_id"]
    assert publishes == 1
    assert len(await inbound(kafka_config, topics.inbound)) == 1


async def test_broker_down_is_an_unavailable_frame_and_the_retry_is_published_once(
    serve_chat: Any, connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    broker = Gate(connector_context.publish)
    broker.close()

    chat = await serve_chat(dataclasses.replace(connector_context, publish=broker.publish))
    async with chat.open() as ws:
        await hello(ws)
        await send(ws, type="message", id="m1", text="Is anyone there?")
        error = await frame(ws)
        assert error == {
            "type": "error",
            "code": "unavailable",
            "message": "the message was not stored",
            "id": "m1",
            "retry_after": 1.0,
        }
        assert await inbound(kafka_config, topics.inbound) == []
        broker.open()
        await send(ws, type="message", id="m1", text="Is anyone there?")
        ack = await frame(ws)
        assert ack["type"] == "ack" and ack["duplicate"] is False
        await send(ws, type="message", id="m1", text="Is anyone there?")
        assert (await frame(ws))["duplicate"] is True
    records = await inbound(kafka_config, topics.inbound)
    assert [r.message_id for r in records] == [ack["message_id"]]


async def test_a_slow_broker_is_unavailable_after_the_publish_deadline(
    serve_chat: Any, connector_context: ConnectorContext
) -> None:
    async def stuck_publish(message: InboundMessage) -> None:
        await asyncio.sleep(30)

    chat = await serve_chat(
        dataclasses.replace(connector_context, publish=stuck_publish), publish_deadline=0.5, drain_timeout=0.2
    )
    async with chat.open() as ws:
        await hello(ws)
        started = time.monotonic()
        await send(ws, type="message", id="slow", text="hi")
        error = await frame(ws)
        assert error["code"] == "unavailable" and error["id"] == "slow" and error["retry_after"] >= 1
        assert time.monotonic() - started < 2


async def test_rate_limit_is_an_error_frame_and_the_connection_stays(
    serve_chat: Any, connector_context: ConnectorContext
) -> None:
    chat = await serve_chat(connector_context, message_rate=1.0, message_burst=3)
    async with chat.open() as ws:
        await hello(ws)  # one token
        for n in range(2):
            await send(ws, type="message", id=f"r{n}", text="quick")
            assert (await frame(ws))["type"] == "ack"
        await send(ws, type="message", id="r2", text="too quick")
        limited = await frame(ws)
        assert limited["code"] == "rate_limited" and limited["id"] == "r2"
        assert 0.1 <= limited["retry_after"] <= 1.0
        await asyncio.sleep(limited["retry_after"])
        await send(ws, type="message", id="r2", text="too quick")
        assert (await frame(ws))["type"] == "ack"


async def test_oversized_and_malformed_frames_are_error_frames(
    serve_chat: Any, connector_context: ConnectorContext
) -> None:
    chat = await serve_chat(connector_context, max_frame_bytes=1024, max_text_chars=100, message_burst=50)
    async with chat.open() as ws:
        await send(ws, type="message", id="early", text="before hello")
        assert (await frame(ws))["code"] == "hello_required"
        await hello(ws)
        await ws.send("x" * 2000)
        assert (await frame(ws))["code"] == "too_large"
        await ws.send("{not json")
        assert (await frame(ws))["code"] == "bad_frame"
        await ws.send(b"\x00\x01")
        assert (await frame(ws))["code"] == "bad_frame"
        await send(ws, type="shout")
        assert (await frame(ws))["code"] == "bad_frame"
        await send(ws, type="message", id="has spaces", text="hi")
        assert (await frame(ws))["code"] == "invalid_message"
        await send(ws, type="message", id="blank", text="   ")
        assert (await frame(ws)) == {
            "type": "error",
            "code": "invalid_message",
            "message": "text must be a non-empty string",
            "id": "blank",
        }
        await send(ws, type="message", id="long", text="y" * 101)
        assert (await frame(ws))["code"] == "invalid_message"
        await send(ws, type="hello", session=None)
        assert (await frame(ws))["code"] == "bad_frame"
        await send(ws, type="ping")
        assert await frame(ws) == {"type": "pong"}  # still open after every error


async def test_silent_connections_are_closed(serve_chat: Any, connector_context: ConnectorContext) -> None:
    chat = await serve_chat(connector_context, idle_timeout=0.5, hello_timeout=0.3)
    async with chat.open() as ws:
        assert (await frame(ws))["code"] == "hello_required"
        with pytest.raises(ConnectionClosed):
            await frame(ws)
        assert ws.close_code == 1008
    async with chat.open() as ws:
        await hello(ws)
        assert (await frame(ws))["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed):
            await frame(ws)
        assert ws.close_code == 1000


async def test_connections_are_bounded(serve_chat: Any, connector_context: ConnectorContext) -> None:
    chat = await serve_chat(connector_context, max_connections=1)
    async with chat.open() as first:
        await hello(first)
        async with chat.open() as second:
            busy = await frame(second)
            assert busy["code"] == "busy" and busy["retry_after"] == 5
            with pytest.raises(ConnectionClosed):
                await frame(second)
            assert second.close_code == 1013
        await send(first, type="ping")
        assert await frame(first) == {"type": "pong"}


async def test_stop_closes_open_chats_for_reconnection_and_is_idempotent(
    serve_chat: Any, connector_context: ConnectorContext
) -> None:
    chat = await serve_chat(connector_context)
    async with chat.open() as ws:
        await hello(ws)
        stopping = asyncio.create_task(chat.connector.stop())
        notice = await frame(ws)
        assert notice["code"] == "shutting_down"
        with pytest.raises(ConnectionClosed):
            await frame(ws)
        assert ws.close_code == 1012
        await asyncio.wait_for(stopping, 5)
    await chat.connector.stop()
    assert chat.connector.connections == 0


async def test_widget_and_demo_page_are_served(serve_chat: Any, connector_context: ConnectorContext) -> None:
    chat = await serve_chat(connector_context)
    async with httpx.AsyncClient() as client:
        widget = await client.get(f"http://{chat.base}/widget.js")
        demo = await client.get(f"http://{chat.base}/demo")
    assert widget.status_code == 200
    assert widget.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "SwitchboardChat" in widget.text
    assert demo.status_code == 200 and '<script src="widget.js"' in demo.text
    quiet = await serve_chat(connector_context, demo_page=False)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://{quiet.base}/demo")).status_code == 404


# ---------------------------------------------------------------- the widget, in Node

# A browser stand-in just large enough for widget.js: a DOM that records nothing, a
# localStorage persisted to a file between runs (a page reload), Node's WebSocket with the
# page's Origin. The script types the given messages, waits, and prints what it saw.
HARNESS = r"""
const fs = require("fs");
const [widgetPath, storePath, endpoint, origin, messages, waitMs, killAfterMs] = process.argv.slice(2);
const store = fs.existsSync(storePath) ? JSON.parse(fs.readFileSync(storePath, "utf8")) : {};
const element = () => ({
  style: {}, dataset: {}, classList: { add() {}, remove() {} }, children: [], firstChild: null,
  setAttribute() {}, appendChild(c) { this.children.push(c); return c; }, removeChild() {},
  addEventListener() {}, attachShadow() { return element(); }, focus() {}, scrollHeight: 0,
});
const NodeWebSocket = WebSocket;
global.WebSocket = function (url) {
  const ws = new NodeWebSocket(url, { headers: { Origin: origin } });
  global.__sockets.push(ws);
  return ws;
};
global.WebSocket.OPEN = 1;
global.__sockets = [];
global.window = global;
global.navigator = { language: "es-MX" };
global.location = { href: origin + "/checkout" };
global.localStorage = {
  getItem: (k) => (k in store ? store[k] : null),
  setItem: (k, v) => { store[k] = v; fs.writeFileSync(storePath, JSON.stringify(store)); },
};
global.document = {
  currentScript: { src: endpoint.replace(/^ws/, "http").replace(/\/ws$/, "/widget.js"), dataset: { name: "Lucía" } },
  createElement: element, querySelectorAll: () => [], body: element(), addEventListener() {},
};
eval(fs.readFileSync(widgetPath, "utf8"));
for (const text of JSON.parse(messages)) window.SwitchboardChat.send(text);
if (Number(killAfterMs) > 0) {
  // The page goes away abruptly (tab closed) before acknowledgements can arrive.
  setTimeout(() => process.exit(0), Number(killAfterMs));
}
setTimeout(() => {
  const saved = JSON.parse(store[Object.keys(store)[0]] || "{}");
  console.log(JSON.stringify({ outbox: saved.outbox, log: saved.log, session: saved.session }));
  process.exit(0);
}, Number(waitMs));
"""

NODE = shutil.which("node")


def node_websocket_available() -> bool:
    if NODE is None:
        return False
    import subprocess

    probe = subprocess.run(
        [NODE, "--experimental-websocket", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


async def run_widget(
    tmp_path: Path, chat: Chat, messages: list[str], *, wait_ms: int = 3000, kill_after_ms: int = 0
) -> dict[str, Any]:
    assert NODE is not None
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    widget = Path(__file__).resolve().parents[2] / "connectors" / "webchat_static" / "widget.js"
    process = await asyncio.create_subprocess_exec(
        NODE,
        "--experimental-websocket",
        "--no-warnings",
        str(harness),
        str(widget),
        str(tmp_path / "localStorage.json"),
        f"ws://{chat.base}/ws",
        ORIGIN,
        json.dumps(messages),
        str(wait_ms),
        str(kill_after_ms),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().strip().splitlines()
    return json.loads(lines[-1]) if lines and kill_after_ms == 0 else {}


@pytest.fixture
def node() -> None:
    if not node_websocket_available():
        if os.environ.get("CI"):
            pytest.fail("Node.js >= 20 with WebSocket support is needed for the widget tests", pytrace=False)
        pytest.skip("Node.js >= 20 with WebSocket support is not installed")


async def test_the_widget_delivers_in_order_and_a_reload_resends_what_was_not_acked(
    node: None,
    tmp_path: Path,
    serve_chat: Any,
    connector_context: ConnectorContext,
    kafka_config: KafkaConfig,
    topics: Topics,
) -> None:
    release = asyncio.Event()

    async def held_publish(message: InboundMessage) -> None:
        await release.wait()  # the broker is unreachable until released
        await connector_context.publish(message)

    chat = await serve_chat(
        dataclasses.replace(connector_context, publish=held_publish), publish_deadline=0.5
    )
    # First visit: two messages typed, the broker does not confirm, the tab is closed.
    await run_widget(tmp_path, chat, ["Hola, mi pedido no llegó", "Es el pedido 5120"], kill_after_ms=1500)
    assert await inbound(kafka_config, topics.inbound) == []
    release.set()
    # The page is opened again: the widget resends the outbox by itself, in order, same ids.
    state = await run_widget(tmp_path, chat, [], wait_ms=4000)
    assert state["outbox"] == []
    assert [entry["status"] for entry in state["log"]] == ["sent", "sent"]
    records = await inbound(kafka_config, topics.inbound)
    assert [r.text for r in records] == ["Hola, mi pedido no llegó", "Es el pedido 5120"]
    assert {r.sender.name for r in records} == {"Lucía"}
    assert {r.metadata["language_hint"] for r in records} == {"es"}
    assert [r.native_id.rsplit(":", 1)[1] for r in records] == [entry["id"] for entry in state["log"]]
    # A third visit resumes the same conversation.
    later = await run_widget(tmp_path, chat, ["¿Alguna novedad?"], wait_ms=2000)
    assert later["session"] == state["session"]
    records = await inbound(kafka_config, topics.inbound)
    assert len(records) == 3 and len({r.conversation_id for r in records}) == 1


# --------------------------------------------------------------- a real broker outage


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[OwnBroker]:
    async with running_broker(tmp_path / "kafka") as broker:
        yield broker


async def test_broker_outage_the_widget_protocol_gets_unavailable_and_loses_nothing(
    own_broker: OwnBroker, serve_chat: Any
) -> None:
    async with outage_rig(
        own_broker, topic_prefix="chatoutage", channel="webchat", instance=INSTANCE, idempotent=True
    ) as outage:
        chat = await serve_chat(outage.context, publish_deadline=2.0, message_burst=100)
        acked: dict[str, str] = {}  # client id -> message_id
        async with chat.open() as ws:
            await hello(ws)
            for n in range(3):
                await send(ws, type="message", id=f"before-{n}", text=f"before the outage {n}")
                ack = await frame(ws)
                acked[ack["id"]] = ack["message_id"]

            await own_broker.stop()
            for n in range(2):
                await send(ws, type="message", id=f"during-{n}", text=f"during the outage {n}")
                error = await frame(ws, timeout=5)
                assert error["code"] == "unavailable" and error["id"] == f"during-{n}"

            await own_broker.start()
            pending = [f"during-{n}" for n in range(2)]
            deadline = time.monotonic() + 90
            while pending and time.monotonic() < deadline:  # what the widget does after retry_after
                client_id = pending[0]
                await send(ws, type="message", id=client_id, text=f"during the outage {client_id[-1]}")
                answer = await frame(ws, timeout=10)
                if answer["type"] == "ack":
                    acked[client_id] = answer["message_id"]
                    pending.pop(0)
                else:
                    assert answer["code"] == "unavailable"
                    await asyncio.sleep(answer["retry_after"])
            assert pending == []
        records = await inbound(outage.config, outage.topics.inbound)
    ids: dict[str, set[str]] = {}
    for message in records:
        ids.setdefault(message.native_id.rsplit(":", 1)[1], set()).add(message.message_id)
    assert set(ids) == set(acked)  # every acknowledged message is there, nothing else
    assert all(found == {acked[client_id]} for client_id, found in ids.items())  # repeats share the id
