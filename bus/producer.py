"""Producing with production defaults: acks=all, lz4, bounded waits, errors translated.

Every wait on the broker is bounded: a caller learns within ``publish_timeout_s`` whether its
record is durable, and gets :class:`models.errors.PublishError` (retriable) otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from bus.options import client_options
from models.config import KafkaConfig
from models.errors import PublishError, RecordRejected

__all__ = ["Producer", "supports_transactions"]

_log = structlog.get_logger(__name__)

# Headroom above the largest record for the batch and request framing.
_REQUEST_OVERHEAD = 64 * 1024


def producer_options(config: KafkaConfig, *, idempotent: bool) -> dict[str, Any]:
    return {
        **client_options(config),
        "acks": "all",
        "enable_idempotence": idempotent,
        "compression_type": "lz4",
        "linger_ms": 2,
        "max_request_size": config.max_record_bytes + _REQUEST_OVERHEAD,
        "retry_backoff_ms": 200,
    }


class Producer:
    """One aiokafka producer for the life of a process component."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        idempotent: bool,
        transactional_id: str | None = None,
    ) -> None:
        options = producer_options(config, idempotent=idempotent or transactional_id is not None)
        if transactional_id is not None:
            options["transactional_id"] = transactional_id
        self._timeout = config.publish_timeout_s
        self.kafka = AIOKafkaProducer(**options)

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self.kafka.start(), timeout=self._timeout * 3)
        except (TimeoutError, KafkaError, OSError) as error:
            await self.kafka.stop()
            raise PublishError(f"cannot reach the Kafka broker: {error!r}") from error

    async def stop(self) -> None:
        await self.kafka.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Produce one record and return once the broker confirmed it (acks=all)."""
        try:
            future = await asyncio.wait_for(
                self.kafka.send(topic, value, key=key, headers=list(headers)), timeout=self._timeout
            )
            await asyncio.wait_for(future, timeout=self._timeout)
        except MessageSizeTooLargeError as error:
            raise RecordRejected(f"record too large for {topic}") from error
        except TimeoutError as error:
            raise PublishError(
                f"the broker did not confirm a record on {topic} in {self._timeout:g}s"
            ) from error
        except KafkaError as error:
            raise PublishError(f"the broker refused a record on {topic}: {error!r}") from error

    async def reachable(self, timeout: float = 5.0) -> bool:
        """Whether the broker answers a metadata request now (for ``/readyz``)."""
        try:
            await asyncio.wait_for(self.kafka.client.fetch_all_metadata(), timeout=timeout)
        except (TimeoutError, KafkaError, OSError):
            return False
        return True


async def supports_transactions(config: KafkaConfig, timeout: float = 10.0) -> bool:
    """Whether the broker grants a transactional producer (Apache Kafka does, Tansu does not)."""
    probe = AIOKafkaProducer(
        **client_options(config), transactional_id=f"{config.client_id}-capability-probe"
    )
    try:
        await asyncio.wait_for(probe.start(), timeout=timeout)
    except (TimeoutError, KafkaError, OSError) as error:
        _log.info("broker has no transactions", reason=repr(error))
        return False
    finally:
        await probe.stop()
    return True
