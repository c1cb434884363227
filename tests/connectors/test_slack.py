"""The Slack channel: Slack's documented payloads (fixtures) through real HTTP requests and a
local Socket Mode server, each record read back from ``sb.inbound`` on the real broker.

Untested here (needs Slack itself): TLS to ``wss://wss-primary.slack.com``, ``apps.connections.open``,
``users.info`` and ``auth.test`` over the network through slack_sdk's ``WebClient``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection, serve

from bus.state import KafkaStateStore, read_compacted
from connectors.base import ConnectorContext
from connectors.signatures import sign_slack
from connectors.slack import (
    CHANNEL_TYPE,
    SLACK_DEADLINE,
    Ignored,
    SlackApiFailed,
    SlackConfig,
    SlackConnector,
    UserDirectory,
    check,
    event_to_message,
    render_mrkdwn,
)
from models import InboundMessage
from models.config import HostPort, KafkaConfig
from models.ids import message_id
from models.topics import Topics
from switchboard.http import HttpServer, build_app
from switchboard.supervision import Readiness
from tests.brokers import OwnBroker, outage_rig, running_broker
from tests.connectors.fixtures.harness import Gate, inbound

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
INSTANCE = "support-slack"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"slack_{name}.json").read_text())
    return data


def mapped(name: str) -> InboundMessage | Ignored:
    return event_to_message(fixture(name), instance=INSTANCE, received_at=NOW)


def record(name: str) -> InboundMessage:
    result = mapped(name)
    assert isinstance(result, InboundMessage), result
    return result


# ------------------------------------------------------------------------------ mapping


def test_channel_message_becomes_a_record_keyed_by_channel_and_ts() -> None:
    message = record("message_channel")
    assert message.channel == "slack"
    assert message.channel_instance == INSTANCE
    assert message.native_id == "C123ABC456:1700000000.000100"
    assert message.message_id == message_id(INSTANCE, "C123ABC456:1700000000.000100")
    assert message.conversation_id == "support-slack:C123ABC456:1700000000.000100"
    assert message.sender.id == "U123ABC456"
    assert message.in_reply_to is None
    assert message.text == (
        "Hi, my order 4471 has not arrived yet & tracking shows nothing. Can @U0G9QF9C6 help? "
        "See order page (https://shop.example.com/orders/4471)"
    )
    assert message.received_at == NOW
    slack = message.metadata["slack"]
    assert isinstance(slack, dict)
    assert slack["event_id"] == "Ev06ABC12345"
    assert slack["channel_type"] == "channel"
    assert message.metadata["sent_at"] == "2023-11-14T22:13:20.000Z"


def test_thread_reply_joins_the_conversation_of_its_thread() -> None:
    parent, reply = record("message_channel"), record("message_thread_reply")
    assert reply.conversation_id == parent.conversation_id
    assert reply.in_reply_to == parent.native_id
    assert reply.native_id == "C123ABC456:1700000300.000200"
    assert reply.message_id != parent.message_id


def test_direct_message_is_a_conversation_of_its_own() -> None:
    message = record("message_im")
    assert message.conversation_id == "support-slack:D024BE91L:1700000400.000300"
    assert message.metadata["slack"]["channel_type"] == "im"  # type: ignore[index,call-overload]
    assert message.text == "Necesito una factura de mi compra, por favor"


def test_app_mention_and_its_message_event_are_one_record_without_the_mention() -> None:
    mention, plain = record("app_mention"), record("message_mention")
    assert mention.message_id == plain.message_id  # deduplicated downstream as one message
    assert mention.text == plain.text == "is my refund processed yet?"
    assert mention.body == "@U0LAN0Z89 is my refund processed yet?"
    assert mention.metadata["slack"]["mentions_app"] is True  # type: ignore[index,call-overload]


def test_file_share_keeps_file_metadata_and_skips_withheld_files() -> None:
    message = record("message_file_share")
    assert message.text == "Here is a photo of the damaged box"
    assert len(message.attachments) == 1  # the tombstoned file is not there
    attachment = message.attachments[0]
    assert attachment.filename == "damaged-box.jpg"
    assert attachment.content_type == "image/jpeg"
    assert attachment.size == 284311
    assert attachment.ref == "https://files.slack.com/files-pri/T123ABC456-F06ABCDEF12/damaged-box.jpg"


def test_edit_is_a_distinct_record_that_names_the_original() -> None:
    original, edit = record("message_channel"), record("message_changed")
    assert edit.message_id != original.message_id
    assert edit.native_id == "C123ABC456:1700000000.000100:edit:1700000700.000000"
    assert edit.conversation_id == original.conversation_id
    assert edit.text == "Hi, my order 4471 arrived damaged, I want a replacement"
    assert edit.metadata["edited"] == {
        "message_id": original.message_id,
        "native_id": original.native_id,
        "at": "2023-11-14T22:25:00Z",
    }
    assert "deleted" not in edit.metadata


def test_deletion_is_a_distinct_empty_record_in_the_thread_of_the_original() -> None:
    original, deletion = record("message_thread_reply"), record("message_deleted")
    assert deletion.message_id != original.message_id
    assert deletion.conversation_id == original.conversation_id
    assert deletion.text == "" and deletion.body == ""
    assert deletion.sender.id == "U123ABC456"
    assert deletion.metadata["deleted"] == {
        "message_id": original.message_id,
        "native_id": original.native_id,
        "at": "2023-11-14T22:28:20.000Z",
    }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bot_message", "bot_message"),
        ("message_from_app", "from a bot or from this app"),
        ("channel_join", "channel_join"),
        ("message_changed_unfurl", "not an edit"),
    ],
)
def test_bots_the_app_itself_housekeeping_and_unfurls_make_no_record(name: str, reason: str) -> None:
    result = mapped(name)
    assert isinstance(result, Ignored)
    assert reason in result.reason


def test_a_message_by_this_apps_bot_user_without_bot_id_is_ignored() -> None:
    callback = fixture("message_channel")
    callback["event"]["user"] = "U0LAN0Z89"  # the bot user named in authorizations
    assert isinstance(event_to_message(callback, instance=INSTANCE, received_at=NOW), Ignored)


def test_edit_of_a_bot_message_is_ignored() -> None:
    callback = fixture("message_changed")
    callback["event"]["message"]["bot_id"] = "B0ABCDEF01"
    assert isinstance(event_to_message(callback, instance=INSTANCE, received_at=NOW), Ignored)


def test_malformed_events_are_ignored_not_raised() -> None:
    for broken in (
        {},
        {"event": "x"},
        {"event": {"type": "message"}},
        {"event": {"type": "message", "channel": "C1"}},
    ):
        assert isinstance(event_to_message(broken, instance=INSTANCE, received_at=NOW), Ignored)


@pytest.mark.parametrize(
    ("markup", "plain"),
    [
        ("hi <@U1|ann> and <@U2>", "hi @ann and @U2"),
        ("in <#C1|general> or <#C2>", "in #general or #C2"),
        ("<!here> <!channel> <!subteam^S1|@support>", "@here @channel @support"),
        (
            "<https://x.example/a|the page> <https://x.example/b>",
            "the page (https://x.example/a) https://x.example/b",
        ),
        ("<mailto:a@example.com|a@example.com>", "a@example.com"),
        ("5 &lt; 6 &amp;&amp; 7 &gt; 3", "5 < 6 && 7 > 3"),
        ("&lt;@U1&gt; is not markup", "<@U1> is not markup"),
    ],
)
def test_mrkdwn_renders_as_plain_text(markup: str, plain: str) -> None:
    assert render_mrkdwn(markup) == plain


def test_config_needs_a_transport_and_a_deadline_inside_slacks_three_seconds() -> None:
    with pytest.raises(ValidationError, match="signing_secret"):
        SlackConfig(name="s", type="slack")
    with pytest.raises(ValidationError, match="publish_deadline"):
        SlackConfig(
            name="s", type="slack", signing_secret=SECRET, publish_deadline=2.6, user_lookup_timeout=0.5
        )
    config = SlackConfig(name="s", type="slack", signing_secret=SECRET)
    assert config.events_api and not config.socket_mode
    assert SECRET not in repr(config)


# ------------------------------------------------------------------------ user directory


class FakeApi:
    """A Slack Web API stand-in: users, an optional delay and failure, call counts."""

    def __init__(self, users: Mapping[str, str] | None = None, *, delay: float = 0.0) -> None:
        self.users = dict(users or {})
        self.delay = delay
        self.fail = False
        self.calls: list[str] = []
        self.socket_url = ""

    async def user_info(self, user_id: str) -> Mapping[str, Any]:
        self.calls.append(user_id)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise SlackApiFailed("users.info", "ratelimited")
        if user_id not in self.users:
            raise SlackApiFailed("users.info", "user_not_found")
        return {
            "id": user_id,
            "name": "handle",
            "profile": {"display_name": self.users[user_id], "real_name": "Real"},
        }

    async def auth_test(self) -> Mapping[str, Any]:
        return {"ok": True, "team": "Example", "user": "switchboard", "user_id": "U0LAN0Z89"}

    async def open_socket(self) -> str:
        self.calls.append("apps.connections.open")
        return self.socket_url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def directory(api: FakeApi, clock: Clock, *, timeout: float = 0.5, size: int = 100) -> UserDirectory:
    return UserDirectory(
        api, timeout=timeout, ttl=60, size=size, logger=structlog.get_logger("t"), clock=clock
    )


async def test_user_names_are_cached_until_their_ttl() -> None:
    api, clock = FakeApi({"U1": "Ann"}), Clock()
    users = directory(api, clock)
    assert await users.name("U1") == "Ann"
    assert await users.name("U1") == "Ann"
    assert api.calls == ["U1"]
    clock.now += 61
    assert await users.name("U1") == "Ann"
    assert api.calls == ["U1", "U1"]


async def test_a_slow_lookup_gives_no_name_now_and_fills_the_cache_for_later() -> None:
    api, clock = FakeApi({"U1": "Ann"}, delay=0.3), Clock()
    users = directory(api, clock, timeout=0.05)
    started = time.monotonic()
    assert await users.name("U1") is None
    assert time.monotonic() - started < 0.25
    await asyncio.sleep(0.4)
    assert await users.name("U1") == "Ann"
    assert api.calls == ["U1"]


async def test_failed_lookups_are_remembered_briefly_and_concurrent_ones_coalesce() -> None:
    api, clock = FakeApi({"U1": "Ann"}, delay=0.05), Clock()
    api.fail = True
    users = directory(api, clock)
    assert await asyncio.gather(*(users.name("U1") for _ in range(5))) == [None] * 5
    assert api.calls == ["U1"]
    assert await users.name("U1") is None  # negative cache: no new call
    assert api.calls == ["U1"]
    api.fail = False
    clock.now += 61
    assert await users.name("U1") == "Ann"


async def test_the_cache_is_bounded() -> None:
    api, clock = FakeApi({f"U{i}": f"n{i}" for i in range(20)}), Clock()
    users = directory(api, clock, size=10)
    for i in range(20):
        await users.name(f"U{i}")
    assert await users.name("U19") == "n19"
    calls = len(api.calls)
    await users.name("U0")  # evicted long ago: asked again
    assert len(api.calls) == calls + 1


async def test_check_reports_the_bot_identity_and_socket_grant() -> None:
    config = SlackConfig(
        name="s", type="slack", signing_secret=SECRET, bot_token="xoxb-1", app_token="xapp-1"
    )
    api = FakeApi()
    api.socket_url = "wss://example.invalid/link"
    summary = await check(config, api)
    assert "switchboard (U0LAN0Z89)" in summary and "Example" in summary
    assert "socket mode" in summary
    assert CHANNEL_TYPE.check is check and CHANNEL_TYPE.http


# ------------------------------------------------------------------ HTTP: the real thing

Read = Callable[[KafkaConfig, str, int], Awaitable[list[Any]]]


class Slack:
    """Plays Slack against a running channel: signs and posts Events API requests."""

    def __init__(self, client: httpx.AsyncClient, url: str, connector: SlackConnector) -> None:
        self.client = client
        self.url = url
        self.connector = connector

    async def post(
        self,
        body: bytes | dict[str, Any],
        *,
        retry: int = 0,
        timestamp: float | None = None,
        secret: str = SECRET,
        signature: str | None = None,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        stamp = str(int(time.time() if timestamp is None else timestamp))
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature or sign_slack(secret, stamp, raw),
        }
        if retry:
            headers["X-Slack-Retry-Num"] = str(retry)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return await self.client.post(self.url, content=raw, headers=headers)


def slack_context(context: ConnectorContext, **changes: Any) -> ConnectorContext:
    return dataclasses.replace(context, **changes)


@pytest.fixture
async def serve_slack() -> AsyncIterator[Callable[..., Awaitable[Slack]]]:
    """``await serve_slack(context, api=…, **config)``: a started channel behind a real HTTP server."""
    started: list[tuple[SlackConnector, HttpServer, httpx.AsyncClient]] = []

    async def start(context: ConnectorContext, api: FakeApi | None = None, **options: Any) -> Slack:
        config = SlackConfig(name=INSTANCE, type="slack", signing_secret=SECRET, **options)
        connector = SlackConnector(config, context, api=api)
        server = HttpServer(
            build_app(Readiness(), CollectorRegistry(), [(INSTANCE, connector.asgi_app())]),
            HostPort("127.0.0.1", 0),
        )
        await server.start()
        await connector.start()
        client = httpx.AsyncClient(timeout=10)
        started.append((connector, server, client))
        return Slack(client, f"http://127.0.0.1:{server.port}/channels/{INSTANCE}/", connector)

    yield start
    for connector, server, client in reversed(started):
        await client.aclose()
        await connector.stop()
        await server.stop()


async def test_url_verification_is_answered_only_when_signed(
    serve_slack: Any, connector_context: Any
) -> None:
    slack = await serve_slack(connector_context)
    handshake = fixture("url_verification")
    answer = await slack.post(handshake)
    assert answer.status_code == 200
    assert answer.json() == {"challenge": handshake["challenge"]}
    assert (await slack.post(handshake, secret="not-the-secret")).status_code == 401


async def test_signature_failures_are_401_and_publish_nothing(
    serve_slack: Any, connector_context: Any, kafka_config: KafkaConfig, topics: Topics
) -> None:
    slack = await serve_slack(connector_context)
    event = fixture("message_channel")
    wrong = await slack.post(event, secret="another-apps-secret")
    stale = await slack.post(event, timestamp=time.time() - 6 * 60)  # correctly signed, too old
    future = await slack.post(event, timestamp=time.time() + 6 * 60)
    unsigned = await slack.client.post(slack.url, json=event)
    garbled = await slack.post(event, signature="v0=" + "0" * 64)
    assert [r.status_code for r in (wrong, stale, future, unsigned, garbled)] == [401] * 5
    assert stale.json()["error"] == "stale_timestamp"
    assert unsigned.json()["error"] == "missing_signature"
    assert wrong.json()["error"] == "bad_signature"
    assert await inbound(kafka_config, topics.inbound) == []


async def test_each_customer_message_is_one_record_whatever_slack_repeats(
    serve_slack: Any, connector_context: Any, kafka_config: KafkaConfig, topics: Topics
) -> None:
    slack = await serve_slack(connector_context)
    sent = [
        "message_channel",
        "message_thread_reply",
        "message_im",
        "app_mention",
        "message_mention",  # the same message as app_mention: a duplicate
        "message_file_share",
        "message_changed",
        "message_deleted",
        "bot_message",
        "message_from_app",
        "channel_join",
        "message_changed_unfurl",
    ]
    outcomes = {}
    for name in sent:
        answer = await slack.post(fixture(name))
        assert answer.status_code == 200, (name, answer.text)
        outcomes[name] = answer.json()["outcome"]
    for retry in (1, 2, 3):  # Slack's retries of an event it did not see answered
        answer = await slack.post(fixture("message_channel"), retry=retry)
        assert answer.status_code == 200
        assert answer.json()["outcome"] == "duplicate"
    assert outcomes == {
        "message_channel": "published",
        "message_thread_reply": "published",
        "message_im": "published",
        "app_mention": "published",
        "message_mention": "duplicate",
        "message_file_share": "published",
        "message_changed": "published",
        "message_deleted": "published",
        "bot_message": "ignored",
        "message_from_app": "ignored",
        "channel_join": "ignored",
        "message_changed_unfurl": "ignored",
    }
    records = await inbound(kafka_config, topics.inbound)
    by_native = {r.native_id: r for r in records}
    assert len(records) == len(by_native) == 7
    assert set(by_native) == {
        "C123ABC456:1700000000.000100",
        "C123ABC456:1700000300.000200",
        "D024BE91L:1700000400.000300",
        "C123ABC456:1700000500.000400",
        "C123ABC456:1700000600.000500",
        "C123ABC456:1700000000.000100:edit:1700000700.000000",
        "C123ABC456:1700000300.000200:deleted",
    }
    edit = by_native["C123ABC456:1700000000.000100:edit:1700000700.000000"]
    assert edit.metadata["edited"]["message_id"] == by_native["C123ABC456:1700000000.000100"].message_id  # type: ignore[index,call-overload]
    assert by_native["C123ABC456:1700000600.000500"].attachments[0].filename == "damaged-box.jpg"


async def test_a_retry_during_the_first_attempt_waits_for_it_and_makes_no_second_record(
    serve_slack: Any, connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    publishes = 0

    async def slow_publish(message: InboundMessage) -> None:
        nonlocal publishes
        publishes += 1
        await asyncio.sleep(0.8)
        await connector_context.publish(message)

    slack = await serve_slack(slack_context(connector_context, publish=slow_publish))
    first = asyncio.create_task(slack.post(fixture("message_channel")))
    await asyncio.sleep(0.2)
    retry = await slack.post(fixture("message_channel"), retry=1)
    assert (await first).status_code == 200 and retry.status_code == 200
    assert {(await first).json()["outcome"], retry.json()["outcome"]} == {"published", "duplicate"}
    assert publishes == 1
    assert len(await inbound(kafka_config, topics.inbound)) == 1


async def test_broker_failure_is_503_then_slacks_retry_is_published_once(
    serve_slack: Any, connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    broker = Gate(connector_context.publish)
    broker.close()

    slack = await serve_slack(slack_context(connector_context, publish=broker.publish))
    down = await slack.post(fixture("message_im"))
    assert down.status_code == 503
    assert down.headers["Retry-After"] == "1"
    assert await inbound(kafka_config, topics.inbound) == []
    broker.open()
    first_retry = await slack.post(fixture("message_im"), retry=1)
    second_retry = await slack.post(fixture("message_im"), retry=2)
    assert (first_retry.json()["outcome"], second_retry.json()["outcome"]) == ("published", "duplicate")
    records = await inbound(kafka_config, topics.inbound)
    assert [r.native_id for r in records] == ["D024BE91L:1700000400.000300"]


async def test_a_slow_broker_is_answered_503_before_slacks_three_seconds(
    serve_slack: Any, connector_context: ConnectorContext
) -> None:
    async def stuck_publish(message: InboundMessage) -> None:
        await asyncio.sleep(30)

    slack = await serve_slack(slack_context(connector_context, publish=stuck_publish), drain_timeout=0.5)
    started = time.monotonic()
    answer = await slack.post(fixture("message_channel"))
    elapsed = time.monotonic() - started
    assert answer.status_code == 503
    assert answer.json()["error"] == "publish_timeout"
    assert 1.9 < elapsed < 2.8


async def test_edge_limits_and_bad_bodies(serve_slack: Any, connector_context: Any) -> None:
    slack = await serve_slack(connector_context, max_body_bytes=4096)
    big = fixture("message_channel")
    big["event"]["text"] = "x" * 5000
    assert (await slack.post(big)).status_code == 413
    not_json = await slack.post(b"{not json")
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_json"
    not_object = await slack.post(b"[1, 2]")
    assert not_object.status_code == 400
    assert (await slack.client.get(slack.url)).status_code == 405
    other = await slack.post({"type": "app_rate_limited", "team_id": "T1", "minute_rate_limited": 1518467820})
    assert other.status_code == 200 and other.json()["outcome"] == "ignored"


async def test_sender_names_come_from_the_injected_client(
    serve_slack: Any, connector_context: Any, kafka_config: KafkaConfig, topics: Topics
) -> None:
    api = FakeApi({"U123ABC456": "Kumar"})
    slack = await serve_slack(connector_context, api=api)
    assert (await slack.post(fixture("message_channel"))).status_code == 200
    assert (await slack.post(fixture("message_thread_reply"))).status_code == 200
    assert (await slack.post(fixture("message_channel"), retry=1)).json()["outcome"] == "duplicate"
    records = await inbound(kafka_config, topics.inbound)
    assert [r.sender.name for r in records] == ["Kumar", "Kumar"]
    assert api.calls == ["U123ABC456"]  # cached; no look-up for the retry


async def test_processed_ids_survive_a_restart_of_the_connector(
    serve_slack: Any,
    connector_context: ConnectorContext,
    kafka_config: KafkaConfig,
    topics: Topics,
) -> None:
    first = await serve_slack(connector_context)
    assert (await first.post(fixture("message_channel"))).json()["outcome"] == "published"
    await first.connector.stop()
    # A new process: state restored from the compacted topic, nothing in memory.
    producer_state = connector_context.state
    assert isinstance(producer_state, KafkaStateStore)
    restored = KafkaStateStore(producer_state._producer, topics.state, "test-instance")
    restored.restore(await read_compacted(kafka_config, topics.state))
    second = await serve_slack(slack_context(connector_context, state=restored))
    assert (await second.post(fixture("message_channel"), retry=3)).json()["outcome"] == "duplicate"
    assert len(await inbound(kafka_config, topics.inbound)) == 1


# ------------------------------------------------------ the Web API client, against a stand-in


@pytest.fixture
async def fake_web_api() -> AsyncIterator[tuple[str, list[tuple[str, str]], dict[str, Any]]]:
    """A local HTTP stand-in for slack.com/api: base URL, calls seen (method, token), settings."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls: list[tuple[str, str]] = []
    settings: dict[str, Any] = {"socket_url": "", "delay": 0.0}

    async def method(request: Request) -> JSONResponse:
        name = request.path_params["method"]
        calls.append((name, request.headers.get("authorization", "")))
        await asyncio.sleep(settings["delay"])
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token.endswith("revoked"):
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        if name == "users.info":
            user = request.query_params.get("user")
            return JSONResponse(
                {
                    "ok": True,
                    "user": {
                        "id": user,
                        "name": "kumar",
                        "profile": {"display_name": ""},
                        "real_name": "Kumar R",
                    },
                }
            )
        if name == "auth.test":
            return JSONResponse(
                {"ok": True, "team": "Example", "user": "switchboard", "user_id": "U0LAN0Z89"}
            )
        if name == "apps.connections.open":
            return JSONResponse({"ok": True, "url": settings["socket_url"]})
        return JSONResponse({"ok": False, "error": "unknown_method"})

    server = HttpServer(
        Starlette(routes=[Route("/api/{method}", method, methods=["GET", "POST"])]), HostPort("127.0.0.1", 0)
    )
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/api/", calls, settings
    finally:
        await server.stop()


async def test_the_sdk_client_calls_the_web_api_with_the_right_tokens(fake_web_api: Any) -> None:
    from pydantic import SecretStr

    from connectors.slack import SdkWebApi

    base, calls, settings = fake_web_api
    settings["socket_url"] = "wss://wss-primary.slack.com/link/?ticket=abc"
    api = SdkWebApi(
        bot_token=SecretStr("xoxb-test"), app_token=SecretStr("xapp-test"), timeout=2, base_url=base
    )
    assert (await api.user_info("U123ABC456"))["real_name"] == "Kumar R"
    assert (await api.auth_test())["user_id"] == "U0LAN0Z89"
    assert await api.open_socket() == settings["socket_url"]
    assert calls == [
        ("users.info", "Bearer xoxb-test"),
        ("auth.test", "Bearer xoxb-test"),
        ("apps.connections.open", "Bearer xapp-test"),
    ]
    revoked = SdkWebApi(bot_token=SecretStr("xoxb-revoked"), app_token=None, timeout=2, base_url=base)
    with pytest.raises(SlackApiFailed, match="invalid_auth"):
        await revoked.auth_test()
    with pytest.raises(SlackApiFailed, match="no app_token"):
        await revoked.open_socket()
    settings["delay"] = 3.0
    started = time.monotonic()
    with pytest.raises(SlackApiFailed, match="timeout"):
        await api.auth_test()
    assert time.monotonic() - started < 2.5
    unreachable = SdkWebApi(
        bot_token=SecretStr("xoxb-test"), app_token=None, timeout=2, base_url="http://127.0.0.1:9/api/"
    )
    with pytest.raises(SlackApiFailed, match="network error"):
        await unreachable.auth_test()


async def test_channels_check_uses_auth_test_through_the_sdk(fake_web_api: Any) -> None:
    from pydantic import SecretStr

    from connectors.slack import SdkWebApi

    base, calls, _ = fake_web_api
    config = SlackConfig(name="s", type="slack", signing_secret=SECRET, bot_token="xoxb-revoked")
    api = SdkWebApi(bot_token=SecretStr("xoxb-revoked"), app_token=None, timeout=2, base_url=base)
    with pytest.raises(SlackApiFailed, match=r"auth\.test: invalid_auth"):
        await check(config, api)
    assert [name for name, _ in calls] == ["auth.test"]


# ------------------------------------------------------------------------- Socket Mode


class FakeSlackSocket:
    """A local Socket Mode endpoint: says hello, sends envelopes, collects acks."""

    def __init__(self) -> None:
        self.acks: asyncio.Queue[str] = asyncio.Queue()
        self.connections: list[ServerConnection] = []
        self.connected = asyncio.Event()

    async def handler(self, connection: ServerConnection) -> None:
        self.connections.append(connection)
        await connection.send(json.dumps(fixture("socket_hello")))
        self.connected.set()
        async for frame in connection:
            ack = json.loads(frame)
            await self.acks.put(ack["envelope_id"])

    async def send(self, envelope: Mapping[str, Any]) -> None:
        await self.connections[-1].send(json.dumps(envelope))


def envelope(envelope_id: str, payload: dict[str, Any], retry: int = 0) -> dict[str, Any]:
    wrapped = copy.deepcopy(fixture("socket_events_api"))
    wrapped.update(envelope_id=envelope_id, payload=payload, retry_attempt=retry)
    return wrapped


async def next_ack(fake: FakeSlackSocket, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(fake.acks.get(), timeout)


async def test_socket_mode_acks_each_envelope_after_its_record_is_durable(
    connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    fake = FakeSlackSocket()
    broker = Gate(connector_context.publish)
    broker.close()

    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        api = FakeApi()
        api.socket_url = f"ws://127.0.0.1:{port}/link/?ticket=t1"
        config = SlackConfig(name=INSTANCE, type="slack", app_token="xapp-1-A1-1-abc", drain_timeout=1)
        context = slack_context(connector_context, publish=broker.publish)
        connector = SlackConnector(config, context, api=api)
        await connector.start()
        try:
            await asyncio.wait_for(fake.connected.wait(), 5)
            assert api.calls == ["apps.connections.open"]
            socket_event = fixture("socket_events_api")

            await fake.send(envelope("env-1", socket_event["payload"]))  # broker down: no ack
            with pytest.raises(TimeoutError):
                await next_ack(fake, timeout=1.0)
            broker.open()
            await fake.send(envelope("env-1b", socket_event["payload"], retry=1))  # Slack redelivers
            assert await next_ack(fake) == "env-1b"
            await fake.send(envelope("env-1c", socket_event["payload"], retry=2))
            assert await next_ack(fake) == "env-1c"  # a duplicate is acknowledged too
            await fake.send(envelope("env-2", fixture("bot_message")))
            assert await next_ack(fake) == "env-2"  # ignored events are acknowledged
            await fake.send({"envelope_id": "env-3", "type": "slash_commands", "payload": {"command": "/x"}})
            assert await next_ack(fake) == "env-3"

            # Slack refreshes the connection: the client reconnects and goes on.
            fake.connected.clear()
            await fake.send(fixture("socket_disconnect"))
            await asyncio.wait_for(fake.connected.wait(), 5)
            assert api.calls.count("apps.connections.open") == 2
            await fake.send(envelope("env-4", fixture("message_thread_reply")))
            assert await next_ack(fake) == "env-4"
        finally:
            await connector.stop()
    records = await inbound(kafka_config, topics.inbound)
    assert sorted(r.native_id for r in records) == [
        "C123ABC456:1700000300.000200",
        "C123ABC456:1700002000.002000",
    ]
    assert connector.socket is not None and connector.socket.connections == 2


class RecordingHealth:
    def __init__(self) -> None:
        self.states: list[str] = []

    def ok(self) -> None:
        self.states.append("ok")

    def failing(self, reason: str) -> None:
        self.states.append(f"failing: {reason}")


async def test_socket_mode_reports_a_failed_connection_and_retries_with_backoff(
    connector_context: ConnectorContext,
) -> None:
    fake = FakeSlackSocket()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        api = FakeApi()
        refusals = 2

        async def open_socket() -> str:
            nonlocal refusals
            api.calls.append("apps.connections.open")
            if refusals:
                refusals -= 1
                raise SlackApiFailed("apps.connections.open", "invalid_auth")
            return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/link"

        api.open_socket = open_socket  # type: ignore[method-assign]
        health = RecordingHealth()
        config = SlackConfig(name=INSTANCE, type="slack", app_token="xapp-1", drain_timeout=1)
        connector = SlackConnector(config, dataclasses.replace(connector_context, health=health), api=api)
        started = time.monotonic()
        await connector.start()
        try:
            await asyncio.wait_for(fake.connected.wait(), 10)
            assert connector.socket is not None
            while connector.socket.connections == 0:  # until the client has read the hello
                await asyncio.sleep(0.01)
        finally:
            await connector.stop()
    assert api.calls == ["apps.connections.open"] * 3
    assert health.states[:2] == ["failing: socket mode: apps.connections.open: invalid_auth"] * 2
    assert health.states[2] == "ok"  # after Slack's hello
    assert time.monotonic() - started >= 1.0  # backed off: about 0.5-1 s, then 1-2 s


async def test_socket_mode_through_the_sdk_client_end_to_end(
    fake_web_api: Any, connector_context: ConnectorContext, kafka_config: KafkaConfig, topics: Topics
) -> None:
    from pydantic import SecretStr

    from connectors.slack import SdkWebApi

    base, calls, settings = fake_web_api
    fake = FakeSlackSocket()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        settings["socket_url"] = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/link/?ticket=t2"
        config = SlackConfig(
            name=INSTANCE, type="slack", app_token="xapp-1-A1", bot_token="xoxb-1", drain_timeout=1
        )
        api = SdkWebApi(
            bot_token=config.bot_token, app_token=SecretStr("xapp-1-A1"), timeout=2, base_url=base
        )
        connector = SlackConnector(config, connector_context, api=api)
        await connector.start()
        try:
            await asyncio.wait_for(fake.connected.wait(), 10)
            await fake.send(envelope("env-sdk", fixture("socket_events_api")["payload"]))
            assert await next_ack(fake) == "env-sdk"
        finally:
            await connector.stop()
    assert [name for name, _ in calls] == ["apps.connections.open", "users.info"]
    records = await inbound(kafka_config, topics.inbound)
    assert [(r.native_id, r.sender.name) for r in records] == [("C123ABC456:1700002000.002000", "Kumar R")]


async def test_socket_mode_only_channel_refuses_http_events(
    serve_slack: Any, connector_context: ConnectorContext
) -> None:
    config = SlackConfig(name=INSTANCE, type="slack", app_token="xapp-1")
    connector = SlackConnector(config, connector_context, api=FakeApi())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=connector.asgi_app()), base_url="http://t")
    async with client:
        answer = await client.post("/", content=b"{}")
    assert answer.status_code == 404 and answer.json()["error"] == "not_enabled"


# --------------------------------------------------------------- a real broker outage


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[OwnBroker]:
    async with running_broker(tmp_path / "kafka") as broker:
        yield broker


def numbered_event(n: int) -> dict[str, Any]:
    event = fixture("message_channel")
    event["event"]["ts"] = event["event"]["event_ts"] = f"17000100{n:02d}.000100"
    event["event"]["text"] = f"outage message {n}"
    event["event_id"] = f"Ev06OUTAGE{n:02d}"
    return event


async def test_broker_outage_slack_gets_503s_and_after_its_retries_every_message_is_there(
    own_broker: OwnBroker, serve_slack: Any
) -> None:
    async with outage_rig(
        own_broker, topic_prefix="slackoutage", channel="slack", instance=INSTANCE, idempotent=True
    ) as outage:
        slack = await serve_slack(outage.context)
        accepted: dict[str, str] = {}  # native id -> message_id of every event answered 200
        for n in range(5):
            answer = await slack.post(numbered_event(n))
            assert answer.status_code == 200, answer.text
            accepted[f"C123ABC456:17000100{n:02d}.000100"] = answer.json()["message_id"]

        await own_broker.stop()
        started = time.monotonic()
        during = await asyncio.gather(*(slack.post(numbered_event(n)) for n in range(5, 10)))
        assert [a.status_code for a in during] == [503] * 5
        assert time.monotonic() - started < SLACK_DEADLINE  # answered before Slack gives up

        await own_broker.start()
        pending, attempt = list(range(5, 10)), 0
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:  # Slack retries with X-Slack-Retry-Num
            attempt += 1
            retried = await asyncio.gather(*(slack.post(numbered_event(n), retry=attempt) for n in pending))
            for n, answer in zip(list(pending), retried, strict=True):
                if answer.status_code == 200:
                    accepted[f"C123ABC456:17000100{n:02d}.000100"] = answer.json()["message_id"]
                    pending.remove(n)
                else:
                    assert answer.status_code == 503
            if pending:
                await asyncio.sleep(1)
        assert pending == []
        records = await inbound(outage.config, outage.topics.inbound)
    ids_by_native: dict[str, set[str]] = {}
    for message in records:
        ids_by_native.setdefault(message.native_id, set()).add(message.message_id)
    assert set(ids_by_native) == set(accepted)  # none missing, nothing unexpected
    # Sends that timed out during the outage may still reach the broker once it is back (the
    # producer keeps them buffered), so a few records can repeat: always with the same id.
    assert all(ids == {accepted[native]} for native, ids in ids_by_native.items())
