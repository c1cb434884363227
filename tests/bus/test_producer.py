"""The producer absorbs a caller's retry of a record it is still delivering or just confirmed."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from bus.producer import Producer
from models.config import KafkaConfig
from models.topics import Topics


async def test_a_retry_of_a_confirmed_record_is_not_produced_again(
    kafka_config: KafkaConfig, created_topics: Topics, read: Callable[..., Coroutine[Any, Any, list[Any]]]
) -> None:
    producer = Producer(kafka_config, idempotent=True)
    await producer.start()
    try:
        headers = [("sb-message-id", b"m-1")]
        await producer.send(created_topics.inbound, b"first", key=b"k", headers=headers)
        await producer.send(created_topics.inbound, b"first", key=b"k", headers=headers)
        await producer.send(created_topics.inbound, b"other", key=b"k", headers=[("sb-message-id", b"m-2")])
    finally:
        await producer.stop()
    records = await read(kafka_config, created_topics.inbound, 2)
    assert [r.value for r in records] == [b"first", b"other"]


async def test_concurrent_sends_of_one_record_share_one_delivery(
    kafka_config: KafkaConfig, created_topics: Topics, read: Callable[..., Coroutine[Any, Any, list[Any]]]
) -> None:
    import asyncio

    producer = Producer(kafka_config, idempotent=True)
    await producer.start()
    try:
        headers = [("sb-message-id", b"m-9")]
        await asyncio.gather(
            *(producer.send(created_topics.inbound, b"once", key=b"k", headers=headers) for _ in range(5))
        )
    finally:
        await producer.stop()
    records = await read(kafka_config, created_topics.inbound, 1)
    assert [r.value for r in records] == [b"once"]
