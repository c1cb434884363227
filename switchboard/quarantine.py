"""``switchboard quarantine``: list raw inputs kept in ``sb.quarantine`` and reprocess them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from bus.admin import partitions_of
from bus.consumer import behind
from bus.headers import header
from bus.options import client_options
from bus.producer import Producer
from bus.publisher import InboundPublisher
from connectors.registry import Registry
from models.config import ConfigError, Settings
from models.topics import Topics

__all__ = ["list_quarantine", "reprocess_quarantine"]


async def _records(settings: Settings) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every quarantined record, oldest first per partition, read without a consumer group."""
    topic = Topics(settings.kafka.topic_prefix).quarantine
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(settings.kafka, [topic])
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while await behind(consumer, ends):
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                break
            for records in batches.values():
                for record in records:
                    yield record
    finally:
        await consumer.stop()


def _item_id(record: ConsumerRecord[bytes, bytes]) -> str:
    return f"{record.partition}:{record.offset}"


async def list_quarantine(settings: Settings, *, out: TextIO) -> None:
    count = 0
    async for record in _records(settings):
        count += 1
        instance = header(record.headers, "sb-channel-instance") or "?"
        error_class = header(record.headers, "sb-error-class") or "?"
        reason = header(record.headers, "sb-error") or ""
        out.write(
            f"{_item_id(record):12} {instance:20} {error_class:24} {len(record.value or b''):>9} B  {reason}\n"
        )
    out.write(f"{count} quarantined input(s)\n")


async def reprocess_quarantine(
    settings: Settings, registry: Registry, item: str | None, *, out: TextIO
) -> None:
    """Re-run each channel's parser on its quarantined input and publish what now parses.

    Reprocessing twice is harmless: ids are deterministic, so a second run repeats the same
    ``message_id``, which consumers drop.
    """
    producer = Producer(settings.kafka, idempotent=False)
    await producer.start()
    publisher = InboundPublisher(
        producer, Topics(settings.kafka.topic_prefix), settings.kafka.max_record_bytes
    )
    done = failed = 0
    try:
        async for record in _records(settings):
            if item is not None and _item_id(record) != item:
                continue
            instance = header(record.headers, "sb-channel-instance") or ""
            try:
                channel = settings.channel(instance)
            except ConfigError:
                out.write(f"{_item_id(record)}: channel {instance!r} is not configured here; skipped\n")
                failed += 1
                continue
            reprocess = registry.get(channel.type).reprocess
            if reprocess is None:
                out.write(f"{_item_id(record)}: the {channel.type} type cannot reprocess input\n")
                failed += 1
                continue
            try:
                message = reprocess(channel, record.value or b"")
            except Exception as error:
                out.write(f"{_item_id(record)}: still fails: {error}\n")
                failed += 1
                continue
            await publisher.publish(message)
            out.write(f"{_item_id(record)}: published as {message.message_id}\n")
            done += 1
    finally:
        await producer.stop()
    if item is not None and done + failed == 0:
        raise ConfigError([f"quarantine: no item {item!r}"])
    out.write(f"{done} reprocessed, {failed} not\n")
