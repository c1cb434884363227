"""The department queue SDK and ``switchboard tail`` on a real broker."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from bus.headers import record_headers
from bus.producer import Producer
from models import ROUTED_SCHEMA, RoutedMessage, Routing
from models.config import KafkaConfig, Settings
from models.topics import Topics
from router.queue import DepartmentQueue, QueueMessage, tail
from tests.router.standin import inbound


def routed(n: int, department: str = "billing") -> RoutedMessage:
    routing = Routing(
        department=department,
        confidence=0.9,
        language="en",
        model="test",
        routed_at=datetime.now(UTC),
        escalate=n % 2 == 0,
    )
    return RoutedMessage.from_inbound(inbound(n, f"refund number {n}"), routing)


async def put(config: KafkaConfig, topic: str, messages: Sequence[RoutedMessage]) -> None:
    producer = Producer(config, idempotent=False)
    await producer.start()
    try:
        for message in messages:
            await producer.send(
                topic,
                message.to_json_bytes(),
                key=message.conversation_id.encode(),
                headers=record_headers(ROUTED_SCHEMA, message.message_id),
            )
    finally:
        await producer.stop()


async def take(queue: DepartmentQueue, count: int) -> list[QueueMessage]:
    return [await asyncio.wait_for(anext(queue), timeout=20) for _ in range(count)]


def one_conversation(count: int) -> list[RoutedMessage]:
    """Messages of one conversation: one partition, so their order is the queue's order."""
    return [
        RoutedMessage.from_inbound(inbound(n, f"message {n}", conversation="order"), routed(n).routing)
        for n in range(count)
    ]


async def test_a_worker_that_fails_mid_message_hands_that_message_to_the_next_worker(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    messages = one_conversation(10)
    await put(kafka_config, created_topics.department("billing"), messages)

    with pytest.raises(RuntimeError, match="desk crashed"):
        async with DepartmentQueue(kafka_config, "billing", group="billing-desk") as queue:
            async for message in queue:
                if message.routed().message_id == messages[4].message_id:
                    raise RuntimeError("desk crashed")  # messages 0-3 were handled

    async with DepartmentQueue(kafka_config, "billing", group="billing-desk") as queue:
        again = await take(queue, 6)  # a clean exit commits everything handed out
    assert [m.routed().message_id for m in again] == [m.message_id for m in messages[4:]]

    async with DepartmentQueue(kafka_config, "billing", group="billing-desk") as queue:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(queue), timeout=3)


async def test_explicit_commit_covers_the_message_in_hand_and_nothing_later(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    messages = one_conversation(5)
    await put(kafka_config, created_topics.department("billing"), messages)
    with pytest.raises(RuntimeError):
        async with DepartmentQueue(kafka_config, "billing", group="ledger", auto_commit=False) as queue:
            await take(queue, 2)
            await queue.commit()  # the first two are done
            await take(queue, 2)  # handed out, never committed
            raise RuntimeError("stop")
    async with DepartmentQueue(kafka_config, "billing", group="ledger", auto_commit=False) as queue:
        rest = await take(queue, 3)
    assert [m.routed().message_id for m in rest] == [m.message_id for m in messages[2:]]


async def test_a_repeated_message_id_is_flagged_as_a_duplicate(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    message, other = one_conversation(2)
    # As an at-least-once router's re-delivery would: the repeat comes from another producer
    # (one producer absorbs a repeat of a message id it has just delivered).
    await put(kafka_config, created_topics.department("billing"), [message, other])
    await put(kafka_config, created_topics.department("billing"), [message])
    async with DepartmentQueue(kafka_config, "billing", group=None, from_beginning=True) as queue:
        seen = await take(queue, 3)
    assert [m.duplicate for m in seen] == [False, False, True]
    assert seen[2].message_id == message.message_id


async def test_an_observer_sees_everything_commits_nothing_and_takes_no_partitions(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    messages = [routed(n) for n in range(12)]
    await put(kafka_config, created_topics.triage, messages)
    async with (
        DepartmentQueue(kafka_config, "triage", group="triage-desk") as worker,
        DepartmentQueue(kafka_config, "triage", group=None, from_beginning=True) as observer,
    ):
        observed = await take(observer, 12)
        handled = await take(worker, 12)
        assert len(worker._running().assignment()) == kafka_config.partitions, (
            "the worker owns every partition"
        )
        with pytest.raises(RuntimeError, match="never commits"):
            await observer.commit()
    assert {m.message_id for m in observed} == {m.message_id for m in messages}
    assert {m.message_id for m in handled} == {m.message_id for m in messages}


async def test_observing_from_the_end_shows_only_new_records(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    await put(kafka_config, created_topics.department("sales"), [routed(n, "sales") for n in range(5)])
    async with DepartmentQueue(kafka_config, "sales", group=None) as queue:
        fresh = [routed(n, "sales") for n in range(100, 103)]
        await put(kafka_config, created_topics.department("sales"), fresh)
        seen = await take(queue, 3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(queue), timeout=1)
    assert sorted(m.message_id or "" for m in seen) == sorted(m.message_id for m in fresh)


async def _tail_lines(settings: Settings, queue: str, count: int, *, as_json: bool) -> list[str]:
    out = io.StringIO()
    task = asyncio.create_task(tail(settings, queue, from_beginning=True, as_json=as_json, out=out))
    try:
        async with asyncio.timeout(20):
            while out.getvalue().count("\n") < count:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return out.getvalue().splitlines()


async def test_tail_json_prints_each_value_as_one_compact_line(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    message = routed(7)
    await put(kafka_config, created_topics.escalations, [message])
    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    await producer.send(
        created_topics.dlq, b"garbage\nbytes", key=b"k", headers=[("sb-error-class", b"ValidationError")]
    )
    await producer.stop()
    settings = Settings(kafka=kafka_config)

    [line] = await _tail_lines(settings, "escalations", 1, as_json=True)
    assert json.loads(line) == json.loads(message.to_json_bytes())
    assert line == json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":"))
    [dead] = await _tail_lines(settings, "dlq", 1, as_json=True)
    assert json.loads(dead) == "garbage\nbytes", "a value that is not JSON prints as one JSON string"


async def test_tail_summaries_are_one_readable_line_per_record(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    message = routed(4)  # even: escalated
    await put(kafka_config, created_topics.department("billing"), [message])
    [line] = await _tail_lines(Settings(kafka=kafka_config), "billing", 1, as_json=False)
    assert line.startswith("billing 0.90 en normal ESCALATE")
    assert message.sender.id in line and '"message 4"' in line and "refund number 4" in line
