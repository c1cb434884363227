"""The shared HTTP edge of every webhook channel: limits, parsing, deduplication, publishing.

A channel module describes *what* a platform sends (signatures, payload shapes); this module
decides *how* any HTTP input is taken in, the same way for every channel:

1. :meth:`WebEdge.endpoint` wraps each handler: while stopping it answers 503, it applies the
   instance's token-bucket rate limit (429 with ``Retry-After``), and it turns every exception
   into an HTTP answer in one place, :func:`answer_for` (the only status mapping).
2. :meth:`WebEdge.read_body` reads the raw body (signatures are computed over raw bytes) within
   ``max_body_bytes`` (413, checked on ``Content-Length`` first, then while streaming) and
   ``body_timeout`` (408).
3. :func:`parse_json` / :func:`parse_model` turn bytes into data or a 400 that says why.
4. :meth:`WebEdge.deliver` publishes each :class:`Delivery` at most once per platform id through
   the :class:`Deduplicator` and answers only after the broker confirmed: a broker failure or a
   confirmation slower than ``publish_deadline`` becomes 503, so the platform retries; nothing is
   acknowledged and then lost. A record the broker can never take (:class:`RecordRejected`) is
   kept in quarantine with the raw body and counts as processed.

Public API (stable; the Slack and webchat channels import it):

* :class:`HttpChannelConfig` — base config of HTTP channels (``max_body_bytes``, ``body_timeout``,
  ``rate_limit``, ``rate_burst``, ``publish_deadline``, ``dedup_memory``,
  ``dedup_retention_hours``, ``max_in_flight``, ``drain_timeout``); subclasses add credentials
  and keep ``extra="forbid"``.
* :class:`WebEdge` — ``endpoint(handler)``, ``read_body(request)``, ``deliver(deliveries, raw=…,
  content_type=…)``, ``quarantine(raw, reason=…, error_class=…)``, ``failure(error)``,
  ``start()``, ``stop()``, ``log``, ``dedup``, ``now()``.
* :class:`EdgeConnector` — base of a connector that is one :class:`WebEdge` guarding its handlers
  at the channel root (``name``, ``edge``, ``asgi_app()``, ``start()``, ``stop()``).
* :class:`Delivery` (dedup key + record), :class:`DeliveryReport` (``message_ids``,
  ``duplicates``, ``quarantined``).
* Errors, each with ``status`` and a ``reason`` used as the metric label: :class:`EdgeError`,
  :class:`BadRequest` (400), :class:`Forbidden` (403), :class:`RequestTimeout` (408),
  :class:`PayloadTooLarge` (413), :class:`RateLimited` (429), :class:`Unavailable` (503);
  :class:`connectors.signatures.SignatureError` is answered 401.
* :func:`answer_for` (error → :class:`Answer`), :func:`error_response` (error → Response).
* :func:`parse_json`, :func:`parse_model`, :func:`read_body`.
* :class:`TokenBucket` (rate limiter, injectable monotonic clock) and :class:`Deduplicator`
  (usable on its own, e.g. per WebSocket message).

Deduplication guarantees (:class:`Deduplicator`): for one key the action runs at most once at a
time; a request for a key whose action is still running waits for it and shares its outcome
(success: it is a duplicate; failure: the same error), and never starts a second publish. An
action keeps running when its requester's deadline passes (bounded by ``task_timeout``), so a
slow broker confirmation still marks the id processed and the platform's retry is a duplicate.
Processed ids are remembered in a bounded in-memory LRU and in ``ctx.state`` (one key per id,
value = the time it was processed), retained ``dedup_retention_hours`` (≥ 24 h; default 8 days,
longer than WhatsApp's 7-day and Slack's minutes-long retry horizons), so a restarted connector
still recognises a retry. The state write starts right after the broker confirmed the record and
runs off the answer's path (``stop()`` waits for it): a crash in that instant costs at most one
repeat of the record with the same ``message_id``, which consumers drop. Expired ids are deleted
from the state by a periodic prune when the state store can list its keys.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from connectors.base import ConnectorContext, StateStore, utc_now
from connectors.signatures import SignatureError
from models import InboundMessage
from models.config import ChannelConfig
from models.errors import RecordRejected, SwitchboardError
from models.messages import format_timestamp
from models.quarantine import QuarantineItem

__all__ = [
    "Answer",
    "BadRequest",
    "Deduplicator",
    "Delivery",
    "DeliveryReport",
    "EdgeConnector",
    "EdgeError",
    "EnumerableState",
    "Forbidden",
    "Handler",
    "HttpChannelConfig",
    "Outcome",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "TokenBucket",
    "Unavailable",
    "WebEdge",
    "answer_for",
    "error_response",
    "parse_json",
    "parse_model",
    "read_body",
]

_M = TypeVar("_M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]
Outcome = Literal["processed", "duplicate"]

_MAX_ERRORS_SHOWN = 5  # validation errors listed in a 400; the rest are counted
_MAX_DETAIL = 500  # characters of an error detail sent back


# ------------------------------------------------------------------------------------ config


class HttpChannelConfig(ChannelConfig):
    """What every HTTP channel shares: the limits of its edge. Channel configs extend this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=64 << 20, description="bytes; a larger request body gets 413"
    )
    body_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds to receive a request body; then 408"
    )
    rate_limit: float | None = Field(
        default=200.0, gt=0, description="requests per second (token bucket); null = unlimited"
    )
    rate_burst: int = Field(default=400, ge=1, description="requests allowed in a burst above rate_limit")
    publish_deadline: float = Field(
        default=5.0, gt=0, le=120, description="seconds to wait for the broker before answering 503"
    )
    dedup_memory: int = Field(
        default=100_000, ge=100, le=10_000_000, description="processed platform ids kept in memory"
    )
    dedup_retention_hours: float = Field(
        default=192.0, ge=24.0, le=24 * 90, description="hours a processed id is remembered in sb.state"
    )
    max_in_flight: int = Field(
        default=1_000, ge=1, le=100_000, description="messages publishing at once; more get 503"
    )
    drain_timeout: float = Field(
        default=5.0, ge=0, le=120, description="seconds stop() lets requests in flight finish"
    )


# ------------------------------------------------------------------------------------ errors


class EdgeError(SwitchboardError):
    """A request answered with an HTTP error; ``reason`` is short and also the metric label."""

    status = 400
    default_reason = "bad_request"

    def __init__(self, detail: str, *, reason: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason or self.default_reason
        self.retry_after = retry_after


class BadRequest(EdgeError):
    """The body is not what the platform documents (not JSON, wrong shape, missing fields)."""


class Forbidden(EdgeError):
    status = 403
    default_reason = "forbidden"


class RequestTimeout(EdgeError):
    status = 408
    default_reason = "body_timeout"


class PayloadTooLarge(EdgeError):
    status = 413
    default_reason = "too_large"


class RateLimited(EdgeError):
    status = 429
    default_reason = "rate_limited"


class Unavailable(EdgeError):
    """Not taken in now; the platform should retry (broker down or slow, shutting down)."""

    status = 503
    default_reason = "unavailable"
    retriable = True


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP error answer: status, metric reason, a detail safe to show, extra headers."""

    status: int
    reason: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def unexpected(self) -> bool:
        return self.status == 500


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {} if seconds is None else {"Retry-After": str(max(1, round(seconds + 0.499)))}


def answer_for(error: BaseException) -> Answer:
    """The one mapping from a failure to an HTTP answer.

    Edge errors carry their status; a bad signature is 401; a broker that failed or did not
    confirm in time is 503 with ``Retry-After`` (the platform retries, nothing is lost); a
    record that can never be accepted is 422; anything else is a bug: 500, which platforms
    also retry.
    """
    if isinstance(error, EdgeError):
        return Answer(error.status, error.reason, error.detail[:_MAX_DETAIL], _retry_after(error.retry_after))
    if isinstance(error, SignatureError):
        return Answer(401, error.reason, error.detail[:_MAX_DETAIL])
    if isinstance(error, TimeoutError):
        return Answer(503, "publish_timeout", "the message was not stored in time", _retry_after(1))
    if isinstance(error, SwitchboardError):
        if error.retriable:
            return Answer(503, "publish_failed", "the message was not stored", _retry_after(1))
        return Answer(422, "unprocessable", str(error)[:_MAX_DETAIL])
    return Answer(500, "internal", "internal error")


def error_response(error: BaseException) -> Response:
    """:func:`answer_for` as a JSON response: ``{"error": reason, "detail": text}``."""
    answer = answer_for(error)
    return JSONResponse(
        {"error": answer.reason, "detail": answer.detail}, status_code=answer.status, headers=answer.headers
    )


# ------------------------------------------------------------------------------- body parsing


async def read_body(request: Request, *, limit: int, timeout: float) -> bytes:
    """The raw request body, at most *limit* bytes, received within *timeout* seconds.

    A declared ``Content-Length`` above the limit is refused before reading anything.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number", reason="bad_content_length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"body not received within {timeout:g}s") from None
    except ClientDisconnect:
        raise BadRequest("client disconnected", reason="disconnected") from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """*body* as JSON (UTF-8), or :class:`BadRequest` saying where it is broken."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8", reason="invalid_json") from None
    except json.JSONDecodeError as error:
        raise BadRequest(
            f"body is not JSON: {error.msg} at line {error.lineno} column {error.colno}",
            reason="invalid_json",
        ) from None


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def parse_model(model: type[_M], data: Any) -> _M:
    """Validate *data* (already parsed JSON) against *model*; a 400 lists what is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = [f"{_location(e['loc'])}: {e['msg']}" for e in error.errors()[:_MAX_ERRORS_SHOWN]]
        more = error.error_count() - len(problems)
        if more > 0:
            problems.append(f"and {more} more")
        raise BadRequest("; ".join(problems), reason="invalid_payload") from None


# ------------------------------------------------------------------------------ rate limiting


class TokenBucket:
    """A token bucket: *rate* tokens per second, holding at most *burst*. Not thread-safe.

    Starts full, so a quiet channel can take a burst at once.
    """

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self, tokens: float = 1.0) -> float:
        """Take *tokens* if available and return 0; else take nothing and return the seconds to wait."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= tokens:
            self._tokens -= tokens
            return 0.0
        return (tokens - self._tokens) / self._rate


# ------------------------------------------------------------------------------ deduplication


@runtime_checkable
class EnumerableState(StateStore, Protocol):
    """A state store that can list its keys (``KafkaStateStore`` can); enables pruning."""

    def keys(self) -> list[str]: ...


class Deduplicator:
    """Runs an action at most once per key, across retries, concurrency and restarts.

    See the module docstring for the guarantees. Keys are the platform's own ids (update_id,
    wamid, MessageSid …), stored in ``state`` as ``<namespace>:<key>``; the store is private to
    one channel instance, so keys need no instance prefix.
    """

    def __init__(
        self,
        state: StateStore,
        *,
        logger: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], datetime] = utc_now,
        memory: int = 100_000,
        retention: timedelta = timedelta(days=8),
        max_in_flight: int = 1_000,
        task_timeout: float = 60.0,
        namespace: str = "seen",
    ) -> None:
        self._state = state
        self._log = logger
        self._clock = clock
        self._memory: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._memory_size = memory
        self._retention = retention
        self._max_in_flight = max_in_flight
        self._task_timeout = task_timeout
        self._prefix = f"{namespace}:"
        self._in_flight: dict[str, asyncio.Task[Outcome]] = {}
        self._marks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def seen(self, key: str) -> bool:
        """Whether *key* was processed within the retention period."""
        return key in self._memory or await self._persisted(key)

    async def run_once(self, key: str, action: Callable[[], Awaitable[None]], *, deadline: float) -> Outcome:
        """Run *action* unless *key* was processed; ``"duplicate"`` if it was (or is being).

        Waits at most *deadline* seconds (:class:`TimeoutError` after that; the action goes on);
        raises the action's error if it failed, for every request that shared it, and
        :class:`Unavailable` if :meth:`close` cancelled it.
        """
        if key in self._memory:
            self._memory.move_to_end(key)
            return "duplicate"
        task = self._in_flight.get(key)
        joined = task is not None
        if task is None:
            if self._closed.is_set():
                raise Unavailable("shutting down", reason="shutting_down", retry_after=1)
            if len(self._in_flight) + len(self._marks) >= self._max_in_flight:
                raise Unavailable("too many messages in flight", reason="overloaded", retry_after=1)
            task = asyncio.create_task(self._first_attempt(key, action), name=f"dedup {key}")
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task), timeout=deadline)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() gave up on the action, not our caller: an answer the platform retries.
                raise Unavailable("shutting down", reason="shutting_down", retry_after=5) from None
            raise
        return "duplicate" if joined else outcome

    def _finished(self, key: str, task: asyncio.Task[Outcome]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so a failure nobody waited for (all deadlines passed) is still seen.
            self._log.info("publish attempt failed", key=key, error=repr(task.exception()))

    async def _first_attempt(self, key: str, action: Callable[[], Awaitable[None]]) -> Outcome:
        if await self._persisted(key):
            self._remember(key)
            return "duplicate"
        async with asyncio.timeout(self._task_timeout):
            await action()
        self._remember(key)
        self._mark_soon(key)
        return "processed"

    def _mark_soon(self, key: str) -> None:
        """Persist the processed mark off the answer's path: it only serves later retries.

        Pending marks count against ``max_in_flight`` with the running actions, so a state topic
        that falls behind makes new keys wait (503) instead of letting writes pile up.
        """
        task = asyncio.create_task(self._persist(key), name=f"dedup mark {key}")
        self._marks.add(task)
        task.add_done_callback(self._marks.discard)

    async def flush(self) -> None:
        """Wait until every processed mark written so far is durable (or failed and was logged)."""
        while self._marks:
            await asyncio.wait(set(self._marks))

    def _remember(self, key: str) -> None:
        self._memory[key] = None
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_size:
            self._memory.popitem(last=False)

    def _expired(self, stamp: bytes) -> bool:
        try:
            when = datetime.fromisoformat(stamp.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return True
        return self._clock() - when > self._retention

    async def _persisted(self, key: str) -> bool:
        stamp = await self._state.get(self._prefix + key)
        return stamp is not None and not self._expired(stamp)

    async def _persist(self, key: str) -> None:
        """Write the processed mark. The record is already durable, so a failure here only costs
        a possible repeat (same ``message_id``) after a restart: logged, not raised."""
        stamp = format_timestamp(self._clock().astimezone(UTC)).encode("ascii")
        try:
            await self._state.put(self._prefix + key, stamp)
        except Exception as error:
            self._log.warning("processed id not persisted", key=key, error=repr(error))

    async def prune(self) -> int:
        """Delete expired marks from the state (if it can list keys); returns how many."""
        if not isinstance(self._state, EnumerableState):
            return 0
        removed = 0
        for key in list(self._state.keys()):  # a copy: deleting while iterating
            if not key.startswith(self._prefix):
                continue
            stamp = await self._state.get(key)
            if stamp is not None and self._expired(stamp):
                await self._state.put(key, None)
                removed += 1
        return removed

    async def prune_forever(self, interval: float = 600.0) -> None:
        """Prune every *interval* seconds until :meth:`close`; a failed pass is logged and retried."""
        while not self._closed.is_set():
            try:
                removed = await self.prune()
            except Exception as error:
                self._log.warning("pruning processed ids failed", error=repr(error))
            else:
                if removed:
                    self._log.info("pruned processed ids", removed=removed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=interval)

    async def close(self, timeout: float) -> None:
        """Refuse new keys; let running actions and mark writes finish within *timeout*, cancel the rest."""
        self._closed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for group in (self._in_flight.values(), self._marks):
            tasks = list(group)
            if not tasks:
                continue
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)


# ----------------------------------------------------------------------------------- the edge


@dataclass(frozen=True, slots=True)
class Delivery:
    """One record to publish, deduplicated on *key* (the platform's own id for it)."""

    key: str
    message: InboundMessage


@dataclass(slots=True)
class DeliveryReport:
    """What :meth:`WebEdge.deliver` did: ids of the records taken now (durable on ``sb.inbound``,
    or kept in quarantine: ``quarantined`` counts those), and how many were duplicates."""

    message_ids: list[str] = field(default_factory=list)
    duplicates: int = 0
    quarantined: int = 0


class WebEdge:
    """The edge of one HTTP channel instance. Build one per connector; no I/O before ``start``."""

    def __init__(
        self,
        config: HttpChannelConfig,
        context: ConnectorContext,
        *,
        channel: str,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.context = context
        self.log = context.logger.bind(channel=channel, instance=config.name)
        self._limiter = (
            TokenBucket(config.rate_limit, config.rate_burst, clock=monotonic)
            if config.rate_limit is not None
            else None
        )
        self.dedup = Deduplicator(
            context.state,
            logger=self.log,
            clock=context.clock,
            memory=config.dedup_memory,
            retention=timedelta(hours=config.dedup_retention_hours),
            max_in_flight=config.max_in_flight,
            task_timeout=max(60.0, config.publish_deadline * 4),
        )
        self._active = 0
        self._started = False
        self._stopping = False

    def now(self) -> datetime:
        """The context's clock, in UTC."""
        return self.context.clock().astimezone(UTC)

    # -------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start pruning expired ids in the background; opens no connection."""
        if self._started:
            return
        self._started = True
        await self.context.spawn(f"channel:{self.config.name}:dedup-prune", self.dedup.prune_forever())

    async def stop(self) -> None:
        """Answer 503 to new requests, let those in flight finish within ``drain_timeout``.

        Idempotent. Publishes still running after the deadline are cancelled: their requests
        were answered 503 (or not at all), so the platform retries them.
        """
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        while self._active and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.dedup.close(max(0.0, deadline - loop.time()))
        self.context.health.failing("stopped")

    # --------------------------------------------------------------------- requests

    def endpoint(self, handler: Handler) -> Handler:
        """*handler* behind the edge: shutdown check, rate limit, and the one error mapping."""

        async def guarded(request: Request) -> Response:
            if self._stopping:
                return self.failure(Unavailable("shutting down", reason="shutting_down", retry_after=5))
            self._active += 1
            try:
                self._check_rate()
                return await handler(request)
            except Exception as error:
                return self.failure(error)
            finally:
                self._active -= 1

        return guarded

    def _check_rate(self) -> None:
        if self._limiter is None:
            return
        wait = self._limiter.take()
        if wait > 0:
            raise RateLimited("too many requests", retry_after=wait)

    def failure(self, error: BaseException) -> Response:
        """Count, log and answer a failed request (see :func:`answer_for`)."""
        answer = answer_for(error)
        metrics = self.context.metrics
        if answer.status == 503:
            metrics.publish_failed()
            metrics.errored()
        else:
            metrics.rejected(answer.reason)
        if answer.unexpected:
            self.log.error("request failed unexpectedly", exc_info=error)
        else:
            self.log.info("request refused", status=answer.status, reason=answer.reason, detail=answer.detail)
        return error_response(error)

    async def read_body(self, request: Request) -> bytes:
        """The raw body within the configured size limit and timeout (413 / 408)."""
        return await read_body(request, limit=self.config.max_body_bytes, timeout=self.config.body_timeout)

    async def deliver(
        self, deliveries: Sequence[Delivery], *, raw: bytes, content_type: str = "application/json"
    ) -> DeliveryReport:
        """Publish each delivery once, in order, all within one ``publish_deadline``.

        Returns when every record is durable (or was already, or is quarantined); raises on the
        first one that is not, so the whole request is retried and the ones already published
        come back as duplicates. *raw* is the request body, quarantined with a record the
        broker can never take.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.publish_deadline
        report = DeliveryReport()
        for delivery in deliveries:
            self.context.metrics.received()
            outcome = await self.dedup.run_once(
                delivery.key,
                functools.partial(self._publish, delivery.message, raw, content_type, report),
                deadline=max(0.0, deadline - loop.time()),
            )
            if outcome == "duplicate":
                self.context.metrics.duplicate()
                self.log.debug("duplicate dropped", key=delivery.key)
            else:
                report.message_ids.append(delivery.message.message_id)
        report.duplicates = len(deliveries) - len(report.message_ids)
        return report

    async def _publish(
        self, message: InboundMessage, raw: bytes, content_type: str, report: DeliveryReport
    ) -> None:
        started = time.perf_counter()
        try:
            await self.context.publish(message)
        except RecordRejected as error:
            await self.quarantine(
                raw,
                reason=f"record {message.message_id} rejected: {error}",
                error_class=error.__class__.__name__,
                content_type=content_type,
                received_at=message.received_at,
            )
            report.quarantined += 1
            return
        self.context.metrics.published(time.perf_counter() - started)

    async def quarantine(
        self,
        raw: bytes,
        *,
        reason: str,
        error_class: str,
        content_type: str = "application/json",
        received_at: datetime | None = None,
    ) -> None:
        """Keep raw input that cannot become a record in ``sb.quarantine``; returns once durable."""
        item = QuarantineItem(
            channel_instance=self.config.name,
            raw=raw,
            reason=reason[:1000],
            error_class=error_class,
            content_type=content_type,
            received_at=received_at or self.now(),
        )
        await self.context.quarantine(item)
        self.context.metrics.quarantined()
        self.log.warning("input quarantined", error_class=error_class, reason=reason[:200])


class EdgeConnector:
    """A connector that is one :class:`WebEdge` and the handlers it guards at the channel root.

    Each handler runs behind :meth:`WebEdge.endpoint` (shutdown, rate limit, the one error
    mapping). ``start`` and ``stop`` are the edge's: no connection is opened, and ``stop`` is
    idempotent and drains requests in flight within ``drain_timeout``.
    """

    def __init__(
        self,
        config: HttpChannelConfig,
        context: ConnectorContext,
        *,
        channel: str,
        post: Handler,
        get: Handler | None = None,
    ) -> None:
        self.name = config.name
        self.edge = WebEdge(config, context, channel=channel)
        handlers = {"GET": get, "POST": post}
        self._app = Router(
            routes=[
                Route("/", self.edge.endpoint(handler), methods=[method])
                for method, handler in handlers.items()
                if handler is not None
            ]
        )

    def asgi_app(self) -> Router:
        return self._app

    async def start(self) -> None:
        await self.edge.start()

    async def stop(self) -> None:
        await self.edge.stop()
