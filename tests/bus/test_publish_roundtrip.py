"""Publishing through the bus: records land keyed by conversation, in order, with headers."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from bus.headers import header
from bus.producer import Producer
from bus.publisher import InboundPublisher
from models import InboundMessage, Sender
from models.config import KafkaConfig
from models.topics import Topics


def _message(conversation: str, sequence: int) -> InboundMessage:
    return InboundMessage(
        message_id=f"{conversation}-{sequence}",
        channel="webchat",
        channel_instance="site",
        native_id=str(sequence),
        received_at=datetime.now(UTC),
        sender=Sender(id="visitor-1"),
        conversation_id=conversation,
        text=f"message {sequence} — வணக்கம் 🙂",
    )


async def test_records_keep_order_per_conversation_across_partitions(
    kafka_config: KafkaConfig, created_topics: Topics, read: object
) -> None:
    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    publisher = InboundPublisher(producer, created_topics, kafka_config.max_record_bytes)
    conversations = [f"site:conv-{n}" for n in range(8)]
    try:
        for sequence in range(20):
            for conversation in conversations:
                await publisher.publish(_message(conversation, sequence))
    finally:
        await producer.stop()

    records = await read(kafka_config, created_topics.inbound, expected=160)  # type: ignore[operator]
    assert len(records) == 160
    seen: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        message = InboundMessage.from_json_bytes(record.value)
        assert record.key == message.conversation_id.encode()
        assert header(record.headers, "sb-schema") == "inbound/1"
        assert header(record.headers, "sb-message-id") == message.message_id
        seen[message.conversation_id].append(int(message.native_id))
        partitions[message.conversation_id].add(record.partition)
    assert all(sequence == list(range(20)) for sequence in seen.values())
    assert all(len(p) == 1 for p in partitions.values()), "a conversation must stay on one partition"
    assert len({p for ps in partitions.values() for p in ps}) > 1, "keys should spread over partitions"


async def test_oversized_body_is_cut_and_marked(
    kafka_config: KafkaConfig, created_topics: Topics, read: object
) -> None:
    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    publisher = InboundPublisher(producer, created_topics, max_record_bytes=50_000)
    huge = _message("site:big", 1).model_copy(update={"body": "ஆ" * 200_000})
    try:
        await publisher.publish(huge)
    finally:
        await producer.stop()
    (record,) = await read(kafka_config, created_topics.inbound, expected=1)  # type: ignore[operator]
    assert len(record.value) <= 50_000
    message = InboundMessage.from_json_bytes(record.value)
    assert message.metadata["body_truncated"] is True
    assert message.metadata["body_bytes"] == len(("ஆ" * 200_000).encode())
