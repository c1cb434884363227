"""The shared HTTP edge on its own: error mapping, body limits, rate limiting, deduplication, drain.

These pin the edge's guarantees with an in-memory state store and a scripted publish; the
channel tests run the same code against the real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.base import ConnectorContext
from connectors.metrics import ChannelMetricFamilies
from connectors.signatures import SignatureError
from connectors.webedge import (
    BadRequest,
    Deduplicator,
    Delivery,
    Forbidden,
    HttpChannelConfig,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    TokenBucket,
    Unavailable,
    WebEdge,
    answer_for,
    parse_json,
    parse_model,
)
from models import InboundMessage, Sender
from models.errors import PublishError, RecordRejected
from models.quarantine import QuarantineItem

LOG = structlog.get_logger("test")


class MemoryState:
    """A StateStore in memory that can list its keys, like ``KafkaStateStore``."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.fail_puts = False

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def put(self, key: str, value: bytes | None) -> None:
        if self.fail_puts:
            raise PublishError("state topic unavailable")
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    def keys(self) -> list[str]:
        return list(self.values)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
        self.monotonic = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.monotonic += seconds


class Health:
    def __init__(self) -> None:
        self.state = "starting"

    def ok(self) -> None:
        self.state = "ok"

    def failing(self, reason: str) -> None:
        self.state = reason


class Host:
    """What the host hands a connector, with a scripted publish and recorded side effects."""

    def __init__(self) -> None:
        self.published: list[InboundMessage] = []
        self.quarantined: list[QuarantineItem] = []
        self.publish_error: Exception | None = None
        self.publish_delay = 0.0
        self.state = MemoryState()
        self.clock = Clock()
        self.health = Health()
        self.tasks: list[asyncio.Task[None]] = []
        self.registry = CollectorRegistry()

    async def publish(self, message: InboundMessage) -> None:
        await asyncio.sleep(self.publish_delay)
        if self.publish_error is not None:
            raise self.publish_error
        self.published.append(message)

    async def quarantine(self, item: QuarantineItem) -> None:
        self.quarantined.append(item)

    async def spawn(self, name: str, coroutine: Any) -> None:
        self.tasks.append(asyncio.create_task(coroutine, name=name))

    def context(self) -> ConnectorContext:
        return ConnectorContext(
            publish=self.publish,
            quarantine=self.quarantine,
            state=self.state,
            health=self.health,
            metrics=ChannelMetricFamilies(self.registry).bind("webhook", "edge"),
            spawn=self.spawn,
            logger=LOG,
            clock=self.clock,
        )


def record(native: str) -> InboundMessage:
    return InboundMessage(
        message_id=f"id-{native}",
        channel="webhook",
        channel_instance="edge",
        native_id=native,
        received_at=datetime(2026, 11, 23, tzinfo=UTC),
        sender=Sender(id="someone"),
        conversation_id="edge:c",
        text=native,
    )


def config(**overrides: Any) -> HttpChannelConfig:
    return HttpChannelConfig.model_validate({"name": "edge", "type": "webhook", **overrides})


# ------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("error", "status", "reason", "retry_after"),
    [
        (BadRequest("body is not JSON"), 400, "bad_request", None),
        (SignatureError("bad_signature", "X-Sig does not match"), 401, "bad_signature", None),
        (Forbidden("nope"), 403, "forbidden", None),
        (RequestTimeout("slow"), 408, "body_timeout", None),
        (PayloadTooLarge("big"), 413, "too_large", None),
        (RateLimited("slow down", retry_after=2.2), 429, "rate_limited", "3"),
        (Unavailable("stopping", reason="shutting_down", retry_after=5), 503, "shutting_down", "5"),
        (PublishError("broker unreachable"), 503, "publish_failed", "1"),
        (TimeoutError(), 503, "publish_timeout", "1"),
        (RecordRejected("too large for the topic"), 422, "unprocessable", None),
        (KeyError("bug"), 500, "internal", None),
    ],
)
def test_one_mapping_from_failure_to_answer(
    error: BaseException, status: int, reason: str, retry_after: str | None
) -> None:
    answer = answer_for(error)
    assert (answer.status, answer.reason, answer.headers.get("Retry-After")) == (status, reason, retry_after)
    if status == 500:
        assert "bug" not in answer.detail  # internals are logged, not shown


def test_parse_errors_say_where() -> None:
    with pytest.raises(BadRequest, match="line 2 column 1"):
        parse_json(b'{"a":\n}')
    with pytest.raises(BadRequest, match="not UTF-8"):
        parse_json(b'{"a": "\xff"}')

    class Item(BaseModel):
        name: str
        count: int

    class Shape(BaseModel):
        items: list[Item]

    with pytest.raises(BadRequest) as caught:
        parse_model(Shape, {"items": [{"name": "a", "count": 1}, {"count": "x"}]})
    assert caught.value.detail.startswith("items[1].name: Field required; items[1].count: Input should be")
    assert caught.value.reason == "invalid_payload"


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: clock.monotonic)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take() == 0.0
    clock.advance(100)
    assert [bucket.take() for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills only up to the burst
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1)


# ------------------------------------------------------------------------------ the edge


@pytest.fixture
def host() -> Host:
    return Host()


async def served(edge: WebEdge, handler: Callable[[Request], Awaitable[Response]]) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/", edge.endpoint(handler), methods=["POST"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge")


@pytest.fixture
async def echo(host: Host) -> AsyncIterator[tuple[WebEdge, httpx.AsyncClient]]:
    """An edge whose handler reads the body and publishes one record keyed by the body."""
    edge = WebEdge(config(max_body_bytes=1024, body_timeout=0.3), host.context(), channel="webhook")

    async def handler(request: Request) -> Response:
        raw = await edge.read_body(request)
        report = await edge.deliver([Delivery(raw.decode(), record(raw.decode()))], raw=raw)
        return JSONResponse({"ids": report.message_ids, "duplicates": report.duplicates})

    async with await served(edge, handler) as client:
        yield edge, client


async def test_body_limit_declared_streamed_and_slow(
    echo: tuple[WebEdge, httpx.AsyncClient], host: Host
) -> None:
    _, client = echo

    async def stream(parts: list[bytes], pause: float = 0.0) -> AsyncIterator[bytes]:
        for part in parts:
            await asyncio.sleep(pause)
            yield part

    declared = await client.post("/", content=b"x" * 1025)
    streamed = await client.post("/", content=stream([b"x" * 600, b"x" * 600]))
    slow = await client.post("/", content=stream([b"a", b"b", b"c"], pause=0.2))
    fits = await client.post("/", content=b"x" * 1024)
    assert [r.status_code for r in (declared, streamed, slow, fits)] == [413, 413, 408, 200]
    assert len(host.published) == 1


async def test_broker_failure_is_503_and_nothing_is_remembered(
    echo: tuple[WebEdge, httpx.AsyncClient], host: Host
) -> None:
    edge, client = echo
    host.publish_error = PublishError("down")
    failed = await client.post("/", content=b"m1")
    host.publish_error = None
    retried = await client.post("/", content=b"m1")
    again = await client.post("/", content=b"m1")
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "1"
    assert retried.json() == {"ids": ["id-m1"], "duplicates": 0}
    assert again.json() == {"ids": [], "duplicates": 1}
    assert [m.native_id for m in host.published] == ["m1"]
    await edge.dedup.flush()
    assert set(host.state.values) == {"seen:m1"}


async def test_record_the_broker_can_never_take_is_quarantined_with_the_raw_body(
    echo: tuple[WebEdge, httpx.AsyncClient], host: Host
) -> None:
    _, client = echo
    host.publish_error = RecordRejected("record too large")
    answer = await client.post("/", content=b"huge")
    host.publish_error = None
    again = await client.post("/", content=b"huge")
    assert answer.status_code == 200 and again.json()["duplicates"] == 1
    [item] = host.quarantined
    assert (item.raw, item.error_class, item.channel_instance) == (b"huge", "RecordRejected", "edge")
    assert host.published == []


async def test_stop_drains_requests_in_flight_and_refuses_new_ones(
    echo: tuple[WebEdge, httpx.AsyncClient], host: Host
) -> None:
    edge, client = echo
    await edge.start()
    host.publish_delay = 0.3
    in_flight = asyncio.create_task(client.post("/", content=b"m-drain"))
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(edge.stop())
    await asyncio.sleep(0.05)
    late = await client.post("/", content=b"m-late")
    await stopping
    assert (await in_flight).status_code == 200
    assert late.status_code == 503 and late.json()["error"] == "shutting_down"
    assert host.health.state == "stopped"
    await asyncio.wait_for(asyncio.gather(*host.tasks), timeout=2)  # the prune loop ended too


# --------------------------------------------------------------------------- deduplication


def dedup(host: Host, **options: Any) -> Deduplicator:
    return Deduplicator(host.state, logger=LOG, clock=host.clock, **options)


def counting_action(calls: list[str], key: str, delay: float = 0.0, error: Exception | None = None) -> Any:
    async def action() -> None:
        calls.append(key)
        await asyncio.sleep(delay)
        if error is not None:
            raise error

    return action


async def test_concurrent_attempts_share_one_run(host: Host) -> None:
    seen = dedup(host)
    calls: list[str] = []
    outcomes = await asyncio.gather(
        *(seen.run_once("k", counting_action(calls, "k", delay=0.05), deadline=5) for _ in range(5))
    )
    assert calls == ["k"]
    assert sorted(outcomes) == ["duplicate"] * 4 + ["processed"]
    assert seen.in_flight == 0


async def test_a_failure_is_shared_and_the_next_attempt_runs_again(host: Host) -> None:
    seen = dedup(host)
    calls: list[str] = []
    failing = counting_action(calls, "k", delay=0.05, error=PublishError("down"))
    results = await asyncio.gather(
        seen.run_once("k", failing, deadline=5),
        seen.run_once("k", failing, deadline=5),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [PublishError, PublishError]
    assert calls == ["k"]
    assert await seen.run_once("k", counting_action(calls, "k"), deadline=5) == "processed"
    assert calls == ["k", "k"]


async def test_a_slow_action_outlives_its_deadline_and_still_counts(host: Host) -> None:
    seen = dedup(host)
    calls: list[str] = []
    with pytest.raises(TimeoutError):
        await seen.run_once("k", counting_action(calls, "k", delay=0.2), deadline=0.05)
    # The retry arrives while the first attempt is still publishing: it waits for it.
    assert await seen.run_once("k", counting_action(calls, "k"), deadline=5) == "duplicate"
    assert calls == ["k"]


async def test_processed_ids_are_persisted_and_expire_after_retention(host: Host) -> None:
    calls: list[str] = []
    first = dedup(host, retention=timedelta(hours=24))
    assert await first.run_once("k", counting_action(calls, "k"), deadline=5) == "processed"
    await first.flush()
    assert host.state.values["seen:k"] == b"2026-11-23T10:00:00Z"

    restarted = dedup(host, retention=timedelta(hours=24))  # new process: empty memory
    host.clock.advance(23 * 3600)
    assert await restarted.seen("k")
    assert await restarted.run_once("k", counting_action(calls, "k"), deadline=5) == "duplicate"

    later = dedup(host, retention=timedelta(hours=24))
    host.clock.advance(2 * 3600)
    assert not await later.seen("k")
    assert await later.prune() == 1
    assert host.state.values == {}
    assert await later.run_once("k", counting_action(calls, "k"), deadline=5) == "processed"
    assert calls == ["k", "k"]


async def test_memory_is_bounded_and_the_state_still_remembers(host: Host) -> None:
    seen = dedup(host, memory=2)
    calls: list[str] = []
    for key in ("a", "b", "c"):
        await seen.run_once(key, counting_action(calls, key), deadline=5)
    await seen.flush()
    assert await seen.run_once("a", counting_action(calls, "a"), deadline=5) == "duplicate"  # from state
    # Without the state, only the two most recent ids are remembered ("a" was just looked up).
    host.state.values.clear()
    assert await seen.run_once("c", counting_action(calls, "c"), deadline=5) == "duplicate"
    assert await seen.run_once("b", counting_action(calls, "b"), deadline=5) == "processed"
    assert calls == ["a", "b", "c", "b"]


async def test_state_write_failure_does_not_fail_a_published_message(host: Host) -> None:
    seen = dedup(host)
    host.state.fail_puts = True
    calls: list[str] = []
    assert await seen.run_once("k", counting_action(calls, "k"), deadline=5) == "processed"
    await seen.flush()
    assert host.state.values == {}
    assert await seen.run_once("k", counting_action(calls, "k"), deadline=5) == "duplicate"  # memory
    assert calls == ["k"]


async def test_in_flight_is_bounded_and_close_refuses_new_keys(host: Host) -> None:
    seen = dedup(host, max_in_flight=1)
    calls: list[str] = []
    slow = asyncio.create_task(seen.run_once("a", counting_action(calls, "a", delay=10), deadline=20))
    await asyncio.sleep(0.01)
    with pytest.raises(Unavailable, match="too many"):
        await seen.run_once("b", counting_action(calls, "b"), deadline=5)
    await seen.close(timeout=0.05)  # "a" does not finish in time: cancelled, its caller told to retry
    with pytest.raises(Unavailable, match="shutting down"):
        await slow
    with pytest.raises(Unavailable, match="shutting down"):
        await seen.run_once("c", counting_action(calls, "c"), deadline=5)
    assert calls == ["a"]


async def test_a_publish_still_stalled_when_the_drain_ends_is_answered_503(host: Host) -> None:
    edge = WebEdge(config(drain_timeout=0.2, publish_deadline=30), host.context(), channel="webhook")

    async def handler(request: Request) -> Response:
        raw = await edge.read_body(request)
        await edge.deliver([Delivery("stuck", record("stuck"))], raw=raw)
        return Response(status_code=200)

    host.publish_delay = 10
    async with await served(edge, handler) as client:
        stuck = asyncio.create_task(client.post("/", content=b"stuck"))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(edge.stop(), timeout=5)
        answer = await stuck
    assert answer.status_code == 503 and answer.json()["error"] == "shutting_down"
    assert host.published == []
