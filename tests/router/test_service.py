"""The routing service on a real broker: every input gets exactly one explicit destination."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import CollectorRegistry

from bus.admin import partitions_of
from bus.consumer import behind
from bus.headers import header
from bus.options import client_options
from bus.producer import Producer
from models import InboundMessage, RoutedMessage
from models.config import DEFAULT_DEPARTMENTS, KafkaConfig, Settings
from models.topics import Topics
from router.service import RouterService, RouterTuning
from tests.router.router_worker import TEST_TUNING
from tests.router.standin import StandInDecider, inbound

Records = list[ConsumerRecord[bytes, bytes]]


class RecordingHealth:
    def __init__(self) -> None:
        self.states: list[str] = []

    def ok(self) -> None:
        self.states.append("ok")

    def failing(self, reason: str) -> None:
        self.states.append(f"failing: {reason}")


async def produce(
    config: KafkaConfig, topic: str, values: Sequence[tuple[bytes | None, bytes | None]]
) -> list[object]:
    """Produce (key, value) pairs in order; returns each record's metadata (partition, offset)."""
    producer = Producer(config, idempotent=False)
    await producer.start()
    try:
        futures = [await producer.kafka.send(topic, value, key=key) for key, value in values]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def publish(config: KafkaConfig, topics: Topics, messages: Sequence[InboundMessage]) -> None:
    producer = Producer(config, idempotent=False)
    await producer.start()
    try:
        futures = [
            await producer.kafka.send(
                topics.inbound,
                m.to_json_bytes(),
                key=m.conversation_id.encode(),
                headers=[("sb-schema", b"inbound/1"), ("sb-message-id", m.message_id.encode())],
            )
            for m in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def drain(config: KafkaConfig, topics: Sequence[str]) -> Records:
    """Every committed record of *topics*, read to their current end (read_committed)."""
    partitions = await partitions_of(config, topics)
    consumer = AIOKafkaConsumer(
        **client_options(config), enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    records: Records = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while await behind(consumer, ends):
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await asyncio.sleep(0)
        await consumer.stop()
    return records


def routed_topics(topics: Topics) -> list[str]:
    return [topics.department(d) for d in DEFAULT_DEPARTMENTS] + [topics.triage]


def message_ids(records: Records) -> list[str]:
    return [header(r.headers, "sb-message-id") or "" for r in records]


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def routed_count(config: KafkaConfig, topics: Topics) -> int:
    return len(await drain(config, routed_topics(topics)))


def router(
    config: KafkaConfig, decider: StandInDecider | None = None, *, max_records: int = 100, **options: object
) -> RouterService:
    settings = Settings(kafka=config, router=options)  # type: ignore[arg-type]
    return RouterService(
        settings,
        decider or StandInDecider(),
        registry=CollectorRegistry(),
        health=RecordingHealth(),
        logger=structlog.get_logger("test-router"),
        tuning=RouterTuning(loop=replace(TEST_TUNING, max_records=max_records)),
    )


@asynccontextmanager
async def running(service: RouterService) -> AsyncIterator[RouterService]:
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def decided(service: RouterService) -> float:
    metrics = service.metrics
    return sum(
        sample.value
        for family in (metrics.routed, metrics.triaged)
        for metric in family.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def spread(n: int) -> str:
    """A message text spreading the test load over departments, some below the threshold."""
    department = DEFAULT_DEPARTMENTS[n % len(DEFAULT_DEPARTMENTS)]
    return f"dept={department} conf={'0.3' if n % 10 == 0 else '0.9'}"


async def test_every_message_is_routed_exactly_once_across_a_sigkill_and_a_restart(
    kafka_config: KafkaConfig, created_topics: Topics, tmp_path: Path
) -> None:
    total = 2_000
    await publish(kafka_config, created_topics, [inbound(n, spread(n)) for n in range(total)])
    log = tmp_path / "routers.log"  # the workers' logs, for when this fails

    async def worker(*crash_at: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.router.router_worker",
            str(kafka_config.bootstrap),
            kafka_config.topic_prefix,
            "50",
            "0.02",  # 50 records per batch, 20 ms of "classification" each
            *crash_at,
            stdout=asyncio.subprocess.PIPE,
            stderr=log.open("ab"),
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert line.strip() == b"started"
        return process

    # The first router SIGKILLs itself inside its 10th commit: that transaction's records are
    # on the broker, uncommitted, and nobody will ever end it but the next owner.
    first = await worker("10")
    assert await asyncio.wait_for(first.wait(), timeout=30) == -signal.SIGKILL
    killed_at = await routed_count(kafka_config, created_topics)
    assert 0 < killed_at < total, "the kill lands mid-stream"

    second = await worker()
    await eventually(lambda: _at_least(kafka_config, created_topics, total))
    second.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.wait(), timeout=10) == 0, "SIGTERM drains and exits cleanly"
    assert second.stdout is not None
    assert b"exit decided=" in await second.stdout.read()

    ids = message_ids(await drain(kafka_config, routed_topics(created_topics)))
    assert len(set(ids)) == total, "every message routed"
    assert len(ids) == total, "no message routed twice"


async def _at_least(config: KafkaConfig, topics: Topics, count: int) -> bool:
    return await routed_count(config, topics) >= count


async def test_a_second_router_joining_and_leaving_loses_and_duplicates_nothing(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    total = 2_000
    messages = [inbound(n, spread(n)) for n in range(total)]
    first = router(kafka_config, StandInDecider(delay_per_batch=0.01), max_records=50)
    second = router(kafka_config, StandInDecider(delay_per_batch=0.01), max_records=50)
    async with running(first):
        await publish(kafka_config, created_topics, messages[:500])
        await second.start()

        async def second_owns_partitions() -> bool:
            return bool(second.owned_partitions())

        # Published only once the second owns partitions: the first may well have drained every
        # earlier record before the rebalance ends, and the second must get some of the stream.
        await eventually(second_owns_partitions, timeout=120)  # a rebalance on a loaded machine is slow
        await publish(kafka_config, created_topics, messages[500:1_200])

        async def second_has_worked() -> bool:
            return decided(second) > 0

        await eventually(second_has_worked, timeout=60)
        await second.stop()  # leaves the group mid-stream; its partitions go back to the first
        await second.stop()  # idempotent
        await publish(kafka_config, created_topics, messages[1_200:])
        await eventually(lambda: _at_least(kafka_config, created_topics, total), timeout=120)

    ids = message_ids(await drain(kafka_config, routed_topics(created_topics)))
    assert len(ids) == total and len(set(ids)) == total
    assert decided(first) > 0 and decided(second) > 0, "both routers shared the work"
    assert decided(first) + decided(second) == total, "committed work is counted once"


async def test_undecodable_and_invalid_records_go_to_the_dlq_with_their_headers_and_the_stream_goes_on(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    good = [inbound(n, "dept=billing", conversation="dlq") for n in range(3)]
    boom = inbound(10, "boom", conversation="dlq")
    nowhere = inbound(11, "dept=astrology", conversation="dlq")
    key = b"test-mail:dlq"
    sent = [
        (key, good[0].to_json_bytes()),
        (key, b"\xffnot json at all"),
        (key, b'{"schema": "inbound/1", "message_id": "x"}'),
        (key, None),
        (key, boom.to_json_bytes()),
        (key, nowhere.to_json_bytes()),
        (key, good[1].to_json_bytes()),
        (key, good[2].to_json_bytes()),
    ]
    metadata = await produce(kafka_config, created_topics.inbound, sent)
    service = router(kafka_config)
    async with running(service):
        await eventually(lambda: _at_least(kafka_config, created_topics, 3))

    billing = await drain(kafka_config, [created_topics.department("billing")])
    assert message_ids(billing) == [m.message_id for m in good], "the good records, in order"
    dlq = await drain(kafka_config, [created_topics.dlq])
    assert [(r.key, r.value) for r in dlq] == [sent[i] for i in (1, 2, 3, 4, 5)], "original key and bytes"
    classes = [header(r.headers, "sb-error-class") for r in dlq]
    assert classes == ["ValidationError", "ValidationError", "EmptyRecord", "ValueError", "UnknownDepartment"]
    for record, index in zip(dlq, (1, 2, 3, 4, 5), strict=True):
        origin = metadata[index]
        assert header(record.headers, "sb-source-topic") == created_topics.inbound
        assert header(record.headers, "sb-source-partition") == str(origin.partition)  # type: ignore[attr-defined]
        assert header(record.headers, "sb-source-offset") == str(origin.offset)  # type: ignore[attr-defined]
        assert header(record.headers, "sb-error")
    assert "astrology" in (header(dlq[4].headers, "sb-error") or "")
    samples = {
        s.labels["error_class"]: s.value
        for m in service.metrics.dlq.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert samples == {"ValidationError": 2, "EmptyRecord": 1, "ValueError": 1, "UnknownDepartment": 1}


async def test_low_confidence_goes_to_triage_escalations_are_copied_and_auto_replies_are_dropped(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    unsure = inbound(1, "dept=billing conf=0.2", conversation="a")
    angry = inbound(2, "dept=complaints escalate", conversation="b")
    unsure_angry = inbound(3, "dept=shipping conf=0.3 escalate", conversation="c")
    auto = inbound(4, "autoreply dept=sales", conversation="d")
    after = inbound(5, "dept=sales", conversation="d")
    await publish(kafka_config, created_topics, [unsure, angry, unsure_angry, auto, after])
    service = router(kafka_config, min_confidence=0.5)
    async with running(service):
        await eventually(lambda: _at_least(kafka_config, created_topics, 4))

    triage = [
        RoutedMessage.from_json_bytes(r.value) for r in await drain(kafka_config, [created_topics.triage])
    ]
    assert sorted(m.message_id for m in triage) == sorted([unsure.message_id, unsure_angry.message_id])
    assert {m.routing.department for m in triage} == {"billing", "shipping"}, (
        "triage keeps the best department"
    )
    complaints = await drain(kafka_config, [created_topics.department("complaints")])
    assert message_ids(complaints) == [angry.message_id]
    escalations = await drain(kafka_config, [created_topics.escalations])
    assert sorted(message_ids(escalations)) == sorted([angry.message_id, unsure_angry.message_id])
    assert all(header(r.headers, "sb-schema") == "routed/1" for r in escalations)
    sales = await drain(kafka_config, [created_topics.department("sales")])
    assert message_ids(sales) == [after.message_id], "the auto-reply is dropped, the next message routed"
    dropped = [
        s.value for m in service.metrics.dropped.collect() for s in m.samples if s.name.endswith("_total")
    ]
    assert dropped == [1]
    follow_up = RoutedMessage.from_json_bytes(sales[0].value)
    assert follow_up.routing.reasons == ("ctx:None:1:False",), "the dropped auto-reply still counts as seen"


async def test_conversation_affinity_survives_a_restart(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    opening = inbound(1, "dept=billing I was charged twice", conversation="refund")
    async with running(router(kafka_config)):
        await publish(kafka_config, created_topics, [opening])
        await eventually(lambda: _at_least(kafka_config, created_topics, 1))

    follow_up = inbound(2, "any news?", conversation="refund")
    async with running(router(kafka_config)):
        await publish(kafka_config, created_topics, [follow_up])
        await eventually(lambda: _at_least(kafka_config, created_topics, 2))

    routed = [
        RoutedMessage.from_json_bytes(r.value)
        for r in await drain(kafka_config, routed_topics(created_topics))
    ]
    seen = [(m.message_id, m.routing.department, m.routing.reasons) for m in routed]  # said on failure
    billing = [m for m in routed if m.routing.department == "billing"]
    assert [m.message_id for m in billing] == [opening.message_id, follow_up.message_id], seen
    assert billing[1].routing.reasons == ("ctx:billing:1:False",), "the restarted router remembered"
    states = await drain(kafka_config, [created_topics.conversations])
    latest = json.loads(states[-1].value)
    assert states[-1].key == b"test-mail:refund"
    assert (
        latest["department"] == "billing" and latest["messages_seen"] == 2 and latest["unresolved"] is False
    )


async def test_a_router_creating_the_topics_keeps_each_state_in_its_input_partitions_changelog(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    # No topics yet: the router creates them and counts their partitions at once, when a
    # broker may not describe them yet; a count of zero once sent every state to partition 0.
    messages = [inbound(n, spread(n)) for n in range(30)]
    async with running(router(kafka_config)):
        await publish(kafka_config, topics, messages)
        await eventually(lambda: _at_least(kafka_config, topics, len(messages)))

    input_partition = {r.key: r.partition for r in await drain(kafka_config, [topics.inbound])}
    assert len(set(input_partition.values())) == kafka_config.partitions, "every partition is used"
    states = await drain(kafka_config, [topics.conversations])
    assert {r.key for r in states} == set(input_partition)
    misplaced = [
        (r.key, r.partition, input_partition[r.key]) for r in states if r.partition != input_partition[r.key]
    ]
    assert misplaced == [], "a restarted router restores a state only from its input partition's changelog"


async def test_at_least_once_mode_routes_and_commits_without_transactions(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    config = kafka_config.model_copy(update={"delivery": "at_least_once"})
    total = 300
    await publish(config, created_topics, [inbound(n, spread(n)) for n in range(total)])
    first = router(config)
    async with running(first):
        assert first.exactly_once is False
        await eventually(lambda: _at_least(config, created_topics, total))
    again = router(config)
    async with running(again):
        await publish(config, created_topics, [inbound(total, "dept=orders")])
        await eventually(lambda: _at_least(config, created_topics, total + 1))
    ids = message_ids(await drain(config, routed_topics(created_topics)))
    assert len(ids) == total + 1 == len(set(ids))
    assert decided(again) == 1, "offsets were committed: a restart starts after them"
