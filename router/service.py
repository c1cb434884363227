"""The routing service: ``sb.inbound`` → decisions → department queues, exactly once.

Every input record gets an explicit destination, committed together with its input offset:

- a valid :class:`models.InboundMessage` becomes one :class:`models.RoutedMessage` on
  ``sb.dept.<department>``, or on ``sb.triage`` when ``routing.confidence`` is below
  ``router.min_confidence``, plus a copy on ``sb.escalations`` when ``routing.escalate``;
- an auto-reply the classifier says to drop (``router.auto_replies: drop``) is counted in
  ``switchboard_router_dropped_total`` and logged: its configured destination is "dropped";
- anything else (not JSON, not a valid record, a decision that names no configured department,
  a classifier failure on that one message, a routed record too large) goes to ``sb.dlq`` with
  its original key, bytes and headers plus ``sb-error``, ``sb-error-class``, ``sb-source-topic``,
  ``sb-source-partition`` and ``sb-source-offset``; the stream goes on.

Each decision also updates the conversation's affinity state in ``sb.conversations`` in the
same transaction (see :mod:`router.affinity`). The Kafka mechanics (transactions, rebalances,
fencing, at-least-once fallback) are :class:`bus.transactional.TransactionalLoop`'s.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
import structlog
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from bus.admin import ensure_topics, partition_counts
from bus.changelog import changelog_partition, read_changelog
from bus.headers import MESSAGE_ID as MESSAGE_ID_HEADER
from bus.headers import SCHEMA as SCHEMA_HEADER
from bus.headers import Headers
from bus.transactional import (
    Health,
    LoopTuning,
    Output,
    Record,
    TransactionalLoop,
    let_io_progress,
    resolve_exactly_once,
)
from models import ROUTED_SCHEMA, InboundMessage, Routing
from models.config import Settings
from models.inbound_json import parse_inbounds
from models.messages import format_timestamp
from models.topics import Topics
from router.affinity import AffinityTable, ConversationState, Destination, advance
from router.pipeline import ConversationContext, Decider, Decision

__all__ = ["RouterMetrics", "RouterService", "RouterTuning", "group_id"]

Logger = structlog.typing.FilteringBoundLogger

CONVERSATION_SCHEMA = "conversation/1"
_ROUTED_SCHEMA = ROUTED_SCHEMA.encode()
_CONVERSATION_SCHEMA = CONVERSATION_SCHEMA.encode()
# Room for the routing object on top of an inbound record that was cut to kafka.max_record_bytes.
_ROUTING_ROOM = 16 * 1024
_MAX_ERROR_CHARS = 1000


def group_id(settings: Settings) -> str:
    """The router's consumer group: ``<topic_prefix>.router``."""
    return f"{settings.kafka.topic_prefix}.router"


@dataclass(frozen=True, slots=True)
class RouterTuning:
    """Knobs beyond the configuration file, with production defaults (tests shorten them)."""

    loop: LoopTuning = field(default_factory=LoopTuning)
    decide_in_thread: bool = False
    """Run ``decide_batch`` in a worker thread instead of on the event loop.

    Off by default: measured with ``bench/router_e2e.py``, the thread's contention for the GIL
    with the loop's own Python (fetching, producing) cost a third of the throughput and made
    p50 latency ten times worse. Deciding inline is bounded: a batch is at most
    ``loop.max_records`` messages and the models read at most ``MAX_MODEL_CHARS`` of each,
    so the loop is held for well under a second, far inside the group's session timeout.
    A custom decider that may block (a remote model) should turn it on."""
    restore_timeout_s: float = 120.0


class RouterMetrics:
    """The router's Prometheus metrics, registered in the process registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.routed = Counter(
            "switchboard_router_routed_total",
            "Records published to a department queue",
            ["department"],
            registry=registry,
        )
        self.triaged = Counter(
            "switchboard_router_triaged_total",
            "Records published to the triage queue, by best department",
            ["department"],
            registry=registry,
        )
        self.escalated = Counter(
            "switchboard_router_escalated_total",
            "Copies published to the escalations queue",
            ["department"],
            registry=registry,
        )
        self.dropped = Counter(
            "switchboard_router_dropped_total",
            "Auto-replies dropped because router.auto_replies is drop",
            registry=registry,
        )
        self.dlq = Counter(
            "switchboard_router_dlq_total",
            "Records sent to the dead-letter queue",
            ["error_class"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "switchboard_router_batch_seconds",
            "Time from handing a fetched batch to the router until its commit",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.lag = Gauge(
            "switchboard_router_consumer_lag",
            "Records on the owned sb.inbound partitions not yet committed (as of the last fetch)",
            registry=registry,
        )
        self.conversations = Gauge(
            "switchboard_router_conversations",
            "Conversation states held in memory for the owned partitions",
            registry=registry,
        )


class _Failure(NamedTuple):
    error: str
    error_class: str


class _Decided(NamedTuple):
    routing: Routing
    destination: Destination
    state: ConversationState  # the conversation's state after this message


def _decode_all(records: Sequence[Record]) -> list[InboundMessage | _Failure]:
    parsed = iter(parse_inbounds([record.value for record in records if record.value is not None]))
    return [
        _Failure("the record has no value", "EmptyRecord") if record.value is None else _decoded(next(parsed))
        for record in records
    ]


def _decoded(item: InboundMessage | ValueError) -> InboundMessage | _Failure:
    if isinstance(item, InboundMessage):
        return item
    return _Failure(
        str(item), "ValidationError" if isinstance(item, ValidationError) else type(item).__name__
    )


_INBOUND_PREFIX = b'{"schema":"inbound/1",'
_ROUTED_PREFIX = b'{"schema":"routed/1",'


def _reusable(original: bytes | None) -> bool:
    """Whether *original* is inbound JSON as Switchboard writes it, so it can be carried on.

    Not when it holds a second "schema" or a "routing" key of the writer's (what a duplicate
    key means depends on the reader) or the escape of NUL, which cleaning removes (the JSON
    parser refuses lone surrogates outright). A match inside a text only costs serializing the
    message again. Three searches, ~1 µs each on the bench's records (the last only where there
    is a backslash): a third of serializing.
    """
    if original is None or not original.startswith(_INBOUND_PREFIX) or not original.endswith(b"}"):
        return False
    start = len(_INBOUND_PREFIX)
    return (
        original.find(b'"schema"', start) < 0
        and original.find(b'"routing"', start) < 0
        and (b"\\" not in original or original.find(b"\\u0000", start) < 0)  # memchr first
    )


_JSON = msgspec.json.Encoder()


def _routing_json(routing: Routing) -> bytes:
    """``routing.model_dump_json()``, byte for byte (a test pins it), in a quarter of the time.

    pydantic's serializer and msgspec write strings and floats alike (shortest round-trip
    floats, the same escapes), so only the timestamp needs the model's own format.
    """
    return _JSON.encode(
        {
            "department": routing.department,
            "confidence": routing.confidence,
            "language": routing.language,
            "escalate": routing.escalate,
            "priority": routing.priority,
            "reasons": routing.reasons,
            "model": routing.model,
            "routed_at": format_timestamp(routing.routed_at),
        }
    )


def _routed_json(message: InboundMessage, routing: Routing, original: bytes | None = None) -> bytes:
    """The RoutedMessage JSON of a validated message and routing, without validating again.

    A RoutedMessage is its InboundMessage's fields (``schema`` first) followed by ``routing``,
    so its JSON is the inbound JSON with the schema swapped and ``routing`` appended; a test
    pins that this equals ``RoutedMessage.from_inbound(...).to_json_bytes()``. When the input
    record's own bytes are that JSON (records written by Switchboard's connectors are), they are
    reused instead of serializing the message again, ~10 µs a message. Bytes of other writers
    are reused too when nothing in them is ambiguous (see ``_reusable``); fields this version does
    not know are then carried on, as readers ignore them.
    """
    inbound = original if original is not None and _reusable(original) else message.to_json_bytes()
    assert inbound.startswith(_INBOUND_PREFIX)
    return b"".join(
        (
            _ROUTED_PREFIX,
            memoryview(inbound)[len(_INBOUND_PREFIX) : -1],  # a view: the join copies it once
            b',"routing":',
            _routing_json(routing),
            b"}",
        )
    )


def _waves(keys: Sequence[tuple[int, str]]) -> list[list[int]]:
    """Indices grouped so that each conversation appears at most once per wave, in order.

    A batch can hold several messages of one conversation; deciding them wave by wave lets each
    follow-up see the state its predecessor left.
    """
    seen: dict[tuple[int, str], int] = {}
    waves: list[list[int]] = []
    for index, key in enumerate(keys):
        wave = seen.get(key, 0)
        seen[key] = wave + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(index)
    return waves


class _Route(NamedTuple):
    """Where a department's messages go and the tags that count them."""

    topic: str
    routed: str
    triaged: str
    escalated: str


def _context(state: ConversationState) -> ConversationContext:
    # The two share their fields in order (a test pins it): ~0.5 µs instead of 1.5 by keyword.
    return ConversationContext._make(state)


class _RouterProcessor:
    """The :class:`bus.transactional.Processor` that turns inbound batches into routed outputs."""

    def __init__(
        self,
        settings: Settings,
        decider: Decider,
        metrics: RouterMetrics,
        logger: Logger,
        tuning: RouterTuning,
    ) -> None:
        self._settings = settings
        self._decider = decider
        self._metrics = metrics
        self._log = logger
        self._tuning = tuning
        self._topics = Topics(settings.kafka.topic_prefix)
        self._departments = frozenset(settings.router.departments)
        self._min_confidence = settings.router.min_confidence
        self._max_bytes = settings.kafka.max_record_bytes + _ROUTING_ROOM
        self.affinity = AffinityTable()
        self.changelog_partitions = 1
        # Built once rather than per message: topic names, tags, input partitions.
        self._routes: dict[str, _Route] = {}
        self._sources: dict[int, tuple[TopicPartition, int]] = {}  # and its changelog partition
        self._triage = self._topics.triage
        self._escalations = self._topics.escalations
        self._conversations = self._topics.conversations
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._tuning.decide_in_thread:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-decide")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ Processor

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self._sources.clear()  # built again with the changelog's partition count as it is now
        sources = {
            tp.partition: changelog_partition(tp.partition, self.changelog_partitions) for tp in partitions
        }
        snapshot = await read_changelog(
            self._settings.kafka,
            self._topics.conversations,
            sorted(set(sources.values())),
            timeout=self._tuning.restore_timeout_s,
        )
        unreadable = sum(self.affinity.load(p, snapshot[source]) for p, source in sources.items())
        self._log.info(
            "conversations restored",
            partitions=sorted(sources),
            conversations=len(self.affinity),
            unreadable=unreadable,
        )

    def released(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self.affinity.forget(tp.partition)

    async def process(self, records: Sequence[Record]) -> Sequence[Output]:
        decoded = _decode_all(records)
        await let_io_progress()  # the batch before commits meanwhile (see Processor.process)
        results: list[_Decided | _Failure | None] = [
            item if isinstance(item, _Failure) else None for item in decoded
        ]
        valid = [i for i, item in enumerate(decoded) if not isinstance(item, _Failure)]
        messages = [item for item in decoded if isinstance(item, InboundMessage)]
        keys = [(records[i].partition, m.conversation_id) for i, m in zip(valid, messages, strict=True)]
        for wave in _waves(keys):
            wave_keys = [keys[w] for w in wave]
            states = [self.affinity.get(partition, conversation) for partition, conversation in wave_keys]
            decisions = await self._decide([messages[w] for w in wave], [_context(s) for s in states])
            for w, (partition, conversation), state, decision in zip(
                wave, wave_keys, states, decisions, strict=True
            ):
                destination = self._destination(decision)
                if isinstance(destination, _Failure):
                    results[valid[w]] = destination
                    continue
                assert isinstance(decision, Decision)
                new = advance(state, decision.routing, destination)
                self.affinity.put(partition, conversation, new)
                results[valid[w]] = _Decided(decision.routing, destination, new)
        await let_io_progress()
        outputs: list[Output] = []
        for record, item, result in zip(records, decoded, results, strict=True):
            assert result is not None  # every record was decided or failed above
            outputs.extend(self._outputs(record, item, result))
        return outputs

    def committed(self, outputs: Sequence[Output], seconds: float) -> None:
        """Count what became visible: each output's tag says what it stands for."""
        metrics = self._metrics
        # Counted per batch, then added: a labelled counter's lookup costs more than the add.
        for tag, count in Tally(o.tag for o in outputs if o.tag is not None).items():
            kind, _, label = tag.partition(":")
            if kind == "routed":
                metrics.routed.labels(department=label).inc(count)
            elif kind == "triaged":
                metrics.triaged.labels(department=label).inc(count)
            elif kind == "escalated":
                metrics.escalated.labels(department=label).inc(count)
            elif kind == "dlq":
                metrics.dlq.labels(error_class=label).inc(count)
            elif kind == "dropped":
                metrics.dropped.inc(count)
        metrics.batch_seconds.observe(seconds)

    # ------------------------------------------------------------------ deciding

    async def _call(
        self, messages: Sequence[InboundMessage], contexts: Sequence[ConversationContext]
    ) -> list[Decision]:
        if self._executor is None:
            return self._decider.decide_batch(messages, contexts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decider.decide_batch, messages, contexts)

    async def _decide(
        self, messages: Sequence[InboundMessage], contexts: Sequence[ConversationContext]
    ) -> list[Decision | _Failure]:
        """One decision per message; a failure is confined to the message that caused it."""
        try:
            decisions = await self._call(messages, contexts)
            if len(decisions) != len(messages):
                raise RuntimeError(
                    f"decide_batch returned {len(decisions)} decisions for {len(messages)} messages"
                )
            return list(decisions)
        except Exception as error:
            if len(messages) == 1:
                return [_Failure(f"the classifier failed: {error!r}", type(error).__name__)]
            self._log.warning(
                "decide_batch failed; deciding one by one", error=repr(error), size=len(messages)
            )
        results: list[Decision | _Failure] = []
        for message, context in zip(messages, contexts, strict=True):
            results.extend(await self._decide([message], [context]))
        return results

    def _destination(self, decision: Decision | _Failure) -> Destination | _Failure:
        if isinstance(decision, _Failure):
            return decision
        routing = decision.routing
        if routing.department not in self._departments:
            return _Failure(
                f"the classifier chose department {routing.department!r}, which is not configured",
                "UnknownDepartment",
            )
        if decision.drop:
            return "dropped"
        if routing.confidence < self._min_confidence:
            return "triage"
        return "department"

    # ------------------------------------------------------------------ outputs

    def _outputs(
        self, record: Record, item: InboundMessage | _Failure, result: _Decided | _Failure
    ) -> list[Output]:
        """The record's outputs: routed (plus escalation copy) or DLQ, and its new state."""
        if isinstance(result, _Failure):
            return [self._dead_letter(record, result)]
        assert isinstance(item, InboundMessage)
        source, changelog = self._sources.get(record.partition) or self._source(record)
        routing = result.routing
        key = item.conversation_id.encode()
        message_id = item.message_id.encode()
        state_headers: Headers = [(SCHEMA_HEADER, _CONVERSATION_SCHEMA), (MESSAGE_ID_HEADER, message_id)]
        state_value = result.state.to_bytes()
        if result.destination == "dropped":
            self._log.info(
                "auto-reply dropped",
                message_id=item.message_id,
                conversation_id=item.conversation_id,
                channel_instance=item.channel_instance,
            )
            dropped = Output(
                source, self._conversations, key, state_value, state_headers, changelog, "dropped"
            )
            return [dropped]
        value = _routed_json(item, routing, record.value)
        if len(value) > self._max_bytes:
            failure = _Failure(f"the routed record is {len(value)} bytes, above the limit", "RecordTooLarge")
            return [self._dead_letter(record, failure)]
        headers: Headers = [(SCHEMA_HEADER, _ROUTED_SCHEMA), (MESSAGE_ID_HEADER, message_id)]
        route = self._routes.get(routing.department) or self._route(routing.department)
        # Positional: a NamedTuple built by keyword costs more, and this runs for every message.
        if result.destination == "triage":
            routed = Output(source, self._triage, key, value, headers, None, route.triaged)
        else:
            routed = Output(source, route.topic, key, value, headers, None, route.routed)
        state = Output(source, self._conversations, key, state_value, state_headers, changelog, None)
        if not routing.escalate:
            return [routed, state]
        copy = Output(source, self._escalations, key, value, headers, None, route.escalated)
        return [routed, copy, state]

    def _source(self, record: Record) -> tuple[TopicPartition, int]:
        source = self._sources[record.partition] = (
            TopicPartition(record.topic, record.partition),
            changelog_partition(record.partition, self.changelog_partitions),
        )
        return source

    def _route(self, department: str) -> _Route:
        route = self._routes[department] = _Route(
            self._topics.department(department),
            routed=f"routed:{department}",
            triaged=f"triaged:{department}",
            escalated=f"escalated:{department}",
        )
        return route

    def _dead_letter(self, record: Record, failure: _Failure) -> Output:
        headers: Headers = [(k, v) for k, v in record.headers or ()]
        extra = [
            ("sb-error", failure.error[:_MAX_ERROR_CHARS]),
            ("sb-error-class", failure.error_class),
            ("sb-source-topic", record.topic),
            ("sb-source-partition", str(record.partition)),
            ("sb-source-offset", str(record.offset)),
        ]
        value = record.value
        if value is not None and len(value) > self._max_bytes:
            extra.append(("sb-truncated-from", str(len(value))))
            value = value[: self._settings.kafka.max_record_bytes]
        headers += [(name, text.encode("utf-8", errors="replace")) for name, text in extra]
        self._log.warning(
            "record sent to the dead-letter queue",
            error_class=failure.error_class,
            error=failure.error[:200],
            partition=record.partition,
            offset=record.offset,
        )
        source = TopicPartition(record.topic, record.partition)
        return Output(source, self._topics.dlq, record.key, value, headers, tag=f"dlq:{failure.error_class}")


class RouterService:
    """``switchboard router run``: one member of the ``<prefix>.router`` consumer group.

    ``start()`` resolves the delivery mode (``kafka.delivery``), creates missing topics, joins
    the group and routes in the background; ``stop()`` commits the batch in hand, leaves the
    group and returns (idempotent).
    """

    name = "router"

    def __init__(
        self,
        settings: Settings,
        decider: Decider,
        *,
        registry: CollectorRegistry,
        health: Health,
        logger: Logger,
        tuning: RouterTuning = RouterTuning(),
    ) -> None:
        self._settings = settings
        self._health = health
        self._log = logger
        self._tuning = tuning
        self._topics = Topics(settings.kafka.topic_prefix)
        self.metrics = RouterMetrics(registry)
        self._processor = _RouterProcessor(settings, decider, self.metrics, logger, tuning)
        self._loop: TransactionalLoop | None = None
        self.exactly_once: bool | None = None
        self.metrics.conversations.set_function(lambda: len(self._processor.affinity))
        self.metrics.lag.set_function(self._lag)

    def owned_partitions(self) -> list[int]:
        """The ``sb.inbound`` partitions this router is routing now (empty before it is ready)."""
        return self._loop.owned() if self._loop is not None else []

    def _lag(self) -> float:
        return float(sum(self._loop.lag().values())) if self._loop is not None else 0.0

    async def start(self) -> None:
        if self._loop is not None:
            return
        kafka = self._settings.kafka
        exactly_once = await resolve_exactly_once(kafka, self._log)
        await ensure_topics(kafka, self._topics.all(self._settings.router.departments))
        counts = await partition_counts(kafka, [self._topics.inbound, self._topics.conversations])
        inbound, conversations = counts[self._topics.inbound], counts[self._topics.conversations]
        if conversations < inbound:
            self._log.warning(
                "sb.conversations has fewer partitions than sb.inbound: affinity may lag after rebalances",
                inbound=inbound,
                conversations=conversations,
            )
        self._processor.changelog_partitions = conversations
        self._processor.start()
        loop = TransactionalLoop(
            kafka,
            topic=self._topics.inbound,
            group_id=group_id(self._settings),
            processor=self._processor,
            exactly_once=exactly_once,
            logger=self._log,
            health=self._health,
            tuning=self._tuning.loop,
        )
        try:
            await loop.start()
        except BaseException:
            self._processor.stop()
            raise
        self._loop = loop
        self.exactly_once = exactly_once
        self._log.info(
            "router started",
            group=loop.group_id,
            delivery="exactly_once" if exactly_once else "at_least_once",
            departments=list(self._settings.router.departments),
        )

    async def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            await loop.stop()
        finally:
            self._processor.stop()
            self._log.info("router stopped")
