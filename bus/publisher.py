"""What connectors are handed: publish a record to ``sb.inbound``, quarantine raw input."""

from __future__ import annotations

from bus.headers import record_headers
from bus.producer import Producer
from models import InboundMessage
from models.messages import fit_to_size
from models.quarantine import QuarantineItem
from models.topics import Topics

__all__ = ["InboundPublisher"]


class InboundPublisher:
    """Turns records into Kafka records keyed by conversation, with the standard headers."""

    def __init__(self, producer: Producer, topics: Topics, max_record_bytes: int) -> None:
        self._producer = producer
        self._topics = topics
        self._max_record_bytes = max_record_bytes

    async def publish(self, message: InboundMessage) -> None:
        """Publish to ``sb.inbound``; returns once durable. A too-long body is cut first."""
        message = fit_to_size(message, self._max_record_bytes)
        await self._producer.send(
            self._topics.inbound,
            message.to_json_bytes(),
            key=message.conversation_id.encode(),
            headers=record_headers(message.schema_, message.message_id),
        )

    async def quarantine(self, item: QuarantineItem) -> None:
        """Keep raw input that could not become a record, with why, in ``sb.quarantine``."""
        raw = item.raw[: self._max_record_bytes]
        headers = [
            ("sb-error", item.reason[:1000].encode("utf-8", errors="replace")),
            ("sb-error-class", item.error_class.encode()),
            ("sb-content-type", item.content_type.encode()),
            ("sb-received-at", item.received_at.isoformat().encode()),
            ("sb-channel-instance", item.channel_instance.encode()),
        ]
        if len(item.raw) > len(raw):
            headers.append(("sb-truncated-from", str(len(item.raw)).encode()))
        await self._producer.send(
            self._topics.quarantine, raw, key=item.channel_instance.encode(), headers=headers
        )
