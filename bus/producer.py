"""Producing with production defaults: acks=all, zstd, bounded waits, errors translated.

Every wait on the broker is bounded: a caller learns within ``publish_timeout_s`` whether its
record is durable, and gets :class:`models.errors.PublishError` (retriable) otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from bus.fencing import missing_group_fencing
from bus.options import client_options
from models.config import KafkaConfig
from models.errors import PublishError, RecordRejected

__all__ = ["COMPRESSION", "Producer", "producer_options", "supports_transactions"]

_log = structlog.get_logger(__name__)

CONFIRMED_MEMORY = 100_000
CONFIRMED_TTL_S = 600.0
"""How many confirmed message ids, and for how long, a producer remembers to absorb retries."""

# Headroom above the largest record for the batch and request framing.
_REQUEST_OVERHEAD = 64 * 1024


def _identity(topic: str, headers: Sequence[tuple[str, bytes]]) -> tuple[str, bytes] | None:
    for name, value in headers:
        if name == "sb-message-id":
            return (topic, value)
    return None


def _settle(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error if isinstance(error, Exception) else PublishError("send cancelled"))
        future.exception()  # retrieved here: nobody else may be waiting for it


def _copy_outcome(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        _settle(target, PublishError("delivery cancelled"))
    elif (error := source.exception()) is not None:
        _settle(target, error)
    else:
        target.set_result(source.result())


COMPRESSION = "zstd"
"""Every Switchboard producer's codec. zstd at the broker's default level (3) compresses the
corpus's JSON a little smaller than aiokafka's lz4, which it runs at level 9 (LZ4-HC), and ten
times faster (~240 against ~22 MB/s on this machine): lz4 had been a tenth of the router's CPU."""


def producer_options(config: KafkaConfig, *, idempotent: bool) -> dict[str, Any]:
    return {
        **client_options(config),
        "acks": "all",
        "enable_idempotence": idempotent,
        "compression_type": COMPRESSION,
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
        self._in_flight: dict[tuple[str, bytes], asyncio.Future[Any]] = {}
        self._confirmed: OrderedDict[tuple[str, bytes], float] = OrderedDict()

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
        """Produce one record and return once the broker confirmed it (acks=all).

        A record that carries an ``sb-message-id`` header is produced at most once per process
        while a send of it is still pending or was confirmed in the last ``CONFIRMED_TTL_S``: a
        caller that gave up on a slow broker and retries waits for the first attempt instead of
        producing a second copy (aiokafka still delivers a record whose wait timed out).
        """
        identity = _identity(topic, headers)
        if identity is not None and self._recently_confirmed(identity):
            return
        try:
            pending = self._in_flight.get(identity) if identity is not None else None
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                if identity is not None:
                    self._track(identity, pending)  # before any await: a concurrent retry joins it
                try:
                    send = self.kafka.send(topic, value, key=key, headers=list(headers))
                    delivery = await asyncio.wait_for(send, timeout=self._timeout)
                except BaseException as error:
                    _settle(pending, error)
                    raise
                delivery.add_done_callback(lambda done: _copy_outcome(done, pending))
            await asyncio.wait_for(asyncio.shield(pending), timeout=self._timeout)
        except MessageSizeTooLargeError as error:
            raise RecordRejected(f"record too large for {topic}") from error
        except TimeoutError as error:
            raise PublishError(
                f"the broker did not confirm a record on {topic} in {self._timeout:g}s"
            ) from error
        except KafkaError as error:
            raise PublishError(f"the broker refused a record on {topic}: {error!r}") from error

    def _track(self, identity: tuple[str, bytes], pending: asyncio.Future[Any]) -> None:
        self._in_flight[identity] = pending

        def settled(future: asyncio.Future[Any]) -> None:
            if self._in_flight.get(identity) is future:
                del self._in_flight[identity]
            if not future.cancelled() and future.exception() is None:
                self._confirmed[identity] = time.monotonic()
                self._confirmed.move_to_end(identity)
                while len(self._confirmed) > CONFIRMED_MEMORY:
                    self._confirmed.popitem(last=False)

        pending.add_done_callback(settled)

    def _recently_confirmed(self, identity: tuple[str, bytes]) -> bool:
        confirmed_at = self._confirmed.get(identity)
        return confirmed_at is not None and time.monotonic() - confirmed_at < CONFIRMED_TTL_S

    async def reachable(self, timeout: float = 5.0) -> bool:
        """Whether the broker answers a metadata request now (for ``/readyz``)."""
        try:
            await asyncio.wait_for(self.kafka.client.fetch_all_metadata(), timeout=timeout)
        except (TimeoutError, KafkaError, OSError):
            return False
        return True


async def supports_transactions(config: KafkaConfig, timeout: float = 10.0) -> bool:
    """Whether the broker grants transactions fenced through the consumer group (KIP-447).

    Apache Kafka 2.5+ does; Tansu has no transactions at all. A broker with transactions but
    without ``TxnOffsetCommit`` v3 / ``OffsetFetch`` v7 counts as one without: the exactly-once
    loop shares one transactional producer between partitions, which only group fencing makes
    safe (see :mod:`bus.fencing`).
    """
    probe = AIOKafkaProducer(
        **client_options(config), transactional_id=f"{config.client_id}-capability-probe"
    )
    try:
        await asyncio.wait_for(probe.start(), timeout=timeout)
        missing = await asyncio.wait_for(missing_group_fencing(probe.client), timeout=timeout)
    except (TimeoutError, KafkaError, OSError) as error:
        _log.info("broker has no transactions", reason=repr(error))
        return False
    finally:
        await probe.stop()
    if missing:
        _log.warning("broker has transactions but no group fencing (KIP-447)", missing=missing)
        return False
    return True
