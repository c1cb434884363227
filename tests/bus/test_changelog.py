"""Restoring a changelog waits for a transaction that is still writing to it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from bus.admin import ensure_topics
from bus.changelog import read_changelog
from bus.options import client_options
from models.config import KafkaConfig
from models.topics import TopicSpec


@pytest.mark.parametrize(
    ("commit", "restored_value"), [(True, b"orders"), (False, b"billing")], ids=["committed", "aborted"]
)
async def test_a_restore_waits_for_an_open_transaction_and_then_sees_its_outcome(
    kafka_config: KafkaConfig, commit: bool, restored_value: bytes
) -> None:
    topic = f"{kafka_config.topic_prefix}.conversations"
    await ensure_topics(kafka_config, [TopicSpec(topic, compacted=True)])
    writer = AIOKafkaProducer(**client_options(kafka_config), transactional_id=f"writer-{uuid.uuid4()}")
    await writer.start()
    try:
        async with writer.transaction():
            await writer.send_and_wait(topic, b"billing", key=b"conversation-1", partition=0)
        await writer.begin_transaction()
        await writer.send_and_wait(topic, b"orders", key=b"conversation-1", partition=0)
        restore = asyncio.create_task(read_changelog(kafka_config, topic, [0], timeout=30))
        await asyncio.sleep(1.5)
        assert not restore.done(), "the restore must not stop before the open transaction's records"
        await (writer.commit_transaction() if commit else writer.abort_transaction())
        restored = await asyncio.wait_for(restore, timeout=20)
    finally:
        await writer.stop()
    assert restored == {0: {b"conversation-1": restored_value}}
