"""Connector state survives a restart and stays private to its instance."""

from __future__ import annotations

from bus.producer import Producer
from bus.state import KafkaStateStore, read_compacted
from models.config import KafkaConfig
from models.topics import Topics


async def test_state_written_by_one_store_is_restored_by_the_next(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    try:
        first = KafkaStateStore(producer, created_topics.state, "helpdesk-imap")
        other = KafkaStateStore(producer, created_topics.state, "support-slack")
        await first.put("INBOX/uidvalidity", b"1700000000")
        await first.put("INBOX/last-uid", b"41")
        await first.put("INBOX/last-uid", b"42")
        await first.put("scratch", b"x")
        await first.put("scratch", None)
        await other.put("seen/Ev123", b"1")
    finally:
        await producer.stop()

    snapshot = await read_compacted(kafka_config, created_topics.state)
    restored = KafkaStateStore(producer, created_topics.state, "helpdesk-imap")
    restored.restore(snapshot)
    assert await restored.get("INBOX/last-uid") == b"42"
    assert await restored.get("INBOX/uidvalidity") == b"1700000000"
    assert await restored.get("scratch") is None
    assert await restored.get("seen/Ev123") is None, "another instance's keys must not leak in"
    assert sorted(restored.keys()) == ["INBOX/last-uid", "INBOX/uidvalidity"]
