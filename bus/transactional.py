"""Consume → transform → produce, with every input record's effects committed once.

:class:`TransactionalLoop` reads one topic in a consumer group, hands each batch to a
:class:`Processor` and commits what it returned together with the input offsets:

- **Exactly once** (brokers with transactions and KIP-447 group fencing): one transactional
  producer per loop, ``transactional.id = "<group>.<topic>.<random uuid>"``, new at every process
  start (as Kafka Streams' eos-v2). Each batch is one transaction over every input partition in
  it: its outputs, then the next offset of each partition, then the commit, so either all of the
  batch becomes visible to ``read_committed`` readers or none of it does. The id does not fence
  anything; the consumer group does (:mod:`bus.fencing`): the offsets go out as
  ``TxnOffsetCommit`` v3 with the consumer's generation, member id and group instance id, read
  at commit time, and the group coordinator refuses them from a member that is no longer the
  owner, so a zombie's transaction aborts. A new owner reads the committed offset with
  ``OffsetFetch`` v7 ``require_stable``: while another transaction holding offsets for the
  partition is open the broker answers "unstable" and the partition waits (paused, the others
  keep going), so it never starts from an offset that transaction is about to replace. A router
  that crashed leaves its transaction open until ``transaction_timeout_ms`` (nobody re-uses its
  random id), so that is kept short and the new owner waits at most about that long plus the
  broker's abort scan interval.
- **At least once** (no transactions, e.g. the embedded Tansu broker): one plain producer; the
  outputs are produced and acknowledged (acks=all) before the offsets are committed. A crash in
  between repeats records, never loses them.

Batches: one is committing at most; the next gathers whatever arrives meanwhile (up to
``max_records``) and goes out as soon as the first has landed. Under load, processing overlaps
committing (the loop lets a sent batch leave before processing the next, and a processor lets
the commit's round trips advance between its stages with :func:`let_io_progress`); at a low
rate, a record waits for the commit in progress and its own.

Rebalances: a revoked partition's batch in hand is committed before the revoke callback returns
(with the generation it was fetched in, still current then). A partition is handed to the
processor only after :meth:`Processor.assigned` has run for it (state restore) and the consumer
was positioned at its committed offset. A failed or fenced commit fails every partition of the
batch, which is re-initialized the same way: committed offset (stable), fresh state. The
producer is replaced after any failed transaction: aiokafka forgets a failed transaction's
partitions, so its abort would not reach the broker and the next commit could carry the failed
batch's records; a new producer with the same id (InitProducerId, new epoch) aborts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from typing import Any, NamedTuple, Protocol, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from bus.consumer import consumer_options
from bus.fencing import GroupFencedProducer, OffsetsUnstable, fetch_stable_offsets, group_metadata
from bus.headers import Headers
from bus.partitioning import positive_hashes
from bus.producer import producer_options, supports_transactions
from models.config import KafkaConfig

__all__ = [
    "LoopTuning",
    "Output",
    "Processor",
    "Record",
    "TransactionalLoop",
    "let_io_progress",
    "resolve_exactly_once",
]

Record: TypeAlias = ConsumerRecord[bytes, bytes]
_PARTITIONER = DefaultPartitioner()
# Batches are built here, a partition's records at a time: room for many records per request.
_BATCH_BYTES = 512 * 1024
# Right after a commit the coordinator answers CONCURRENT_TRANSACTIONS (error 51) until its
# markers are written, and aiokafka retries the next transaction's AddPartitionsToTxn after the
# retry backoff. Measured with bench/router_e2e.py: about one transaction in six met it, and at
# the general 200 ms backoff those waits were most of the router's idle time.
_TXN_BACKOFF_MS = 20
# The loop hands its producers whole batches (send_batch): lingering for more records only
# delays them.
_LINGER_MS = 0
# Event-loop turns per let_io_progress. A broker's answer reaches the task awaiting it through a
# few hand-offs (socket reader, connection, request, batch futures, gather), one per turn; with
# bench/router_e2e.py, 4 turns left the flight one hand-off short, 8 let it finish.
_IO_TURNS = 8
Logger = structlog.typing.FilteringBoundLogger
_TOPIC_PARTITION = attrgetter("topic", "partition")


def _count_and_last(run: Iterable[Record]) -> tuple[int, Record]:
    """How many records *run* holds, and its last one (at C speed: a batch is hundreds)."""
    count, last = deque(enumerate(run, 1), maxlen=1).pop()
    return count, last


class Output(NamedTuple):  # a NamedTuple: built per record, 4x cheaper than a frozen dataclass
    """One record to produce for a record of input partition *source*, committed with its batch."""

    source: TopicPartition
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None = None
    tag: str | None = None
    """What the output stands for, handed back to :meth:`Processor.committed` for accounting."""


class Processor(Protocol):
    """What the loop drives. All methods run on the loop's task, never concurrently."""

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """*partitions* are ours from their committed offset on: restore their state.

        Runs before any record of them is handed to :meth:`process`.
        """

    def released(self, partitions: Collection[TopicPartition]) -> None:
        """*partitions* are no longer ours (or will be re-initialized): forget their state."""

    async def process(self, records: Sequence[Record]) -> Sequence[Output]:
        """The outputs of *records* (in order per partition). Must not raise for a bad record.

        The batch before is committing meanwhile, on the same event loop: a processor that
        computes for long should ``await let_io_progress()`` between its stages.
        """

    def committed(self, outputs: Sequence[Output], seconds: float) -> None:
        """*outputs* are committed (durable, visible); *seconds* since their batch was fetched."""


class Health(Protocol):
    def ok(self) -> None: ...

    def failing(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LoopTuning:
    """Knobs with production defaults; tests shorten the group timings."""

    max_records: int = 500
    fetch_timeout_ms: int = 100
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    # A crashed router's open transaction blocks its partitions' new owner until the broker
    # aborts it after this long (Kafka Streams' eos default); a commit gives up well before.
    transaction_timeout_ms: int = 10_000
    commit_timeout_s: float = 8.0
    retry_backoff_s: float = 1.0
    # While a batch commits and the next one waits, new records are taken in this often.
    commit_poll_ms: int = 5


async def resolve_exactly_once(config: KafkaConfig, logger: Logger) -> bool:
    """``kafka.delivery``: ``auto`` is exactly once where the broker grants transactions."""
    if config.delivery == "at_least_once":
        return False
    supported = await supports_transactions(config)
    if config.delivery == "exactly_once" and not supported:
        raise RuntimeError(
            "kafka.delivery is exactly_once but the broker does not support transactions "
            "fenced through the consumer group (KIP-447, Kafka 2.5+)"
        )
    if not supported:
        logger.warning(
            "the broker has no transactions with group fencing (KIP-447): delivery is at least once "
            "(duplicates keep their message_id)"
        )
    return supported


@dataclass(slots=True)
class _PartitionWork:
    outputs: list[Output]
    next_offset: int
    records: int


@dataclass(frozen=True, slots=True)
class _Flight:
    """A batch being committed: its task returns the partitions that failed."""

    task: asyncio.Task[dict[TopicPartition, BaseException]]
    work: dict[TopicPartition, _PartitionWork]
    started: float


class _Delivery(Protocol):
    async def start(self) -> None: ...

    async def open(self, partitions: Sequence[TopicPartition]) -> None: ...

    async def deliver(
        self, consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, _PartitionWork]
    ) -> dict[TopicPartition, BaseException]: ...

    async def stop(self) -> None: ...


async def _partitions(producer: AIOKafkaProducer, outputs: Sequence[Output]) -> list[int]:
    """Each output's partition: its own, else Kafka's default partitioner's pick for its key.

    Keys go through murmur2 as the Java client computes it, all the batch's keys in one call
    whatever their topic, so a conversation keeps its partition; a record without a key may go
    to any partition.
    """
    chosen = [output.partition for output in outputs]
    pending = [i for i, output in enumerate(outputs) if output.partition is None]
    known: dict[str, list[int]] = {}
    for i in pending:
        topic = outputs[i].topic
        if topic not in known:
            known[topic] = sorted(await producer.partitions_for(topic))
    keyed = [i for i in pending if outputs[i].key is not None]
    for i, hashed in zip(keyed, positive_hashes([outputs[i].key or b"" for i in keyed]), strict=True):
        partitions = known[outputs[i].topic]
        chosen[i] = partitions[hashed % len(partitions)]
    for i in pending:
        if chosen[i] is None:
            partitions = known[outputs[i].topic]
            chosen[i] = _PARTITIONER(None, partitions, partitions)
    return [partition for partition in chosen if partition is not None]


async def let_io_progress() -> None:
    """Give the event loop a few turns, so that I/O under way moves on before the caller computes.

    The loop processes the next batch while the one before commits, on one event loop: a
    processor that computes for tens of milliseconds at a stretch holds up each of the commit's
    round trips (acks, offsets, end of transaction) until its batch is done. Measured with
    bench/router_e2e.py, the router then waited for every commit, a sixth of its time. A turn
    costs a few microseconds when nothing is ready.
    """
    for _ in range(_IO_TURNS):
        await asyncio.sleep(0)


async def _send_all(producer: AIOKafkaProducer, outputs: Sequence[Output]) -> None:
    """Produce *outputs* in order per partition and wait until the broker has them all.

    Records are grouped into one batch per (topic, partition) through aiokafka's batch API,
    which costs a third of ``send()`` per record.
    """
    groups: dict[tuple[str, int], list[Output]] = {}
    for output, partition in zip(outputs, await _partitions(producer, outputs), strict=True):
        groups.setdefault((output.topic, partition), []).append(output)
    futures = []
    for (topic, partition), items in groups.items():
        batch = producer.create_batch()
        for output in items:
            if (
                batch.append(key=output.key, value=output.value, timestamp=None, headers=output.headers)
                is None
            ):
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()  # an empty batch always takes its first record
                batch.append(key=output.key, value=output.value, timestamp=None, headers=output.headers)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await _acknowledged(futures)


async def _acknowledged(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every batch; when one fails, the others' outcomes are still retrieved (not logged
    as lost) before its error is raised."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _stop_quietly(producer: AIOKafkaProducer, timeout: float, log: Logger) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=timeout)
    except Exception as error:  # a broken producer is replaced either way
        log.warning("producer did not stop cleanly", error=repr(error))


class _ExactlyOnce:
    """One transactional producer, one transaction per batch, fenced by the group (KIP-447)."""

    def __init__(
        self, config: KafkaConfig, group_id: str, topic: str, tuning: LoopTuning, log: Logger
    ) -> None:
        self._config = config
        self._tuning = tuning
        self._log = log
        # Random per process start: the group fences, not this id, so it only has to differ
        # from every other live producer's (a restarted router's old transaction times out).
        self.transactional_id = f"{group_id}.{topic}.{uuid.uuid4()}"
        self._producer: GroupFencedProducer | None = None

    async def start(self) -> None:
        return None  # the producer is opened with the first partitions

    async def _ready_producer(self) -> GroupFencedProducer:
        if self._producer is not None:
            return self._producer
        producer = GroupFencedProducer(
            **{
                **producer_options(self._config, idempotent=True),
                "retry_backoff_ms": _TXN_BACKOFF_MS,
                "linger_ms": _LINGER_MS,
            },
            max_batch_size=_BATCH_BYTES,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=self._tuning.transaction_timeout_ms,
        )
        try:
            # InitProducerId: bumps the epoch, so a transaction the previous producer under this
            # id left open is aborted (and completed) before this one starts.
            await asyncio.wait_for(producer.start(), timeout=self._tuning.commit_timeout_s)
        except BaseException:
            await _stop_quietly(producer, 5.0, self._log)
            raise
        self._producer = producer
        return producer

    async def open(self, partitions: Sequence[TopicPartition]) -> None:
        await self._ready_producer()

    async def _discard(self, producer: GroupFencedProducer) -> None:
        """Drop *producer* after a failed transaction; its successor's InitProducerId aborts it."""
        if self._producer is producer:
            self._producer = None
        await _stop_quietly(producer, 5.0, self._log)

    async def deliver(
        self, consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, _PartitionWork]
    ) -> dict[TopicPartition, BaseException]:
        producer = await self._ready_producer()
        try:
            async with asyncio.timeout(self._tuning.commit_timeout_s):
                await producer.begin_transaction()
                # The offsets go after the acks. Sent while the records travel (as Kafka's Java
                # client does), they drew dozens of retriable NOT_ENOUGH_REPLICAS answers to the
                # records' produce per bench run on Kafka 3.9, each retried after the backoff;
                # most likely the broker's check that the partitions are in the transaction
                # (KIP-890) meeting the coordinator busy with the offsets.
                await _send_all(producer, [output for w in work.values() for output in w.outputs])
                offsets = {tp: w.next_offset for tp, w in work.items()}
                # The membership now, not at fetch time: a rebalance in between must fence us.
                await producer.send_offsets_with_group(offsets, group_metadata(consumer))
                await producer.commit_transaction()
        except asyncio.CancelledError:
            await self._discard(producer)
            raise
        except Exception as error:
            self._log.warning(
                "transaction failed; the producer is replaced", transactional_id=self.transactional_id
            )
            await self._discard(producer)
            return dict.fromkeys(work, error)
        return {}

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer, 5.0, self._log)


class _AtLeastOnce:
    """One plain producer: produce, wait for acks=all, then commit the consumer offsets."""

    def __init__(self, config: KafkaConfig, tuning: LoopTuning) -> None:
        self._producer = AIOKafkaProducer(
            **{**producer_options(config, idempotent=False), "linger_ms": _LINGER_MS},
            max_batch_size=_BATCH_BYTES,
        )
        self._tuning = tuning

    async def start(self) -> None:
        await asyncio.wait_for(self._producer.start(), timeout=self._tuning.commit_timeout_s)

    async def open(self, partitions: Sequence[TopicPartition]) -> None:
        return None

    async def deliver(
        self, consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, _PartitionWork]
    ) -> dict[TopicPartition, BaseException]:
        try:
            async with asyncio.timeout(self._tuning.commit_timeout_s):
                await _send_all(self._producer, [o for w in work.values() for o in w.outputs])
                await consumer.commit({tp: w.next_offset for tp, w in work.items()})
        except Exception as error:
            return dict.fromkeys(work, error)
        return {}

    async def stop(self) -> None:
        await self._producer.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: TransactionalLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._loop._on_assigned(assigned)


class TransactionalLoop:
    """Consume *topic* in group *group_id*, process batches, commit outputs with offsets.

    ``start()`` joins the group and runs in the background; ``stop()`` lets the batch in hand
    commit, leaves the group and closes the producers. Idempotent.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        topic: str,
        group_id: str,
        processor: Processor,
        exactly_once: bool,
        logger: Logger,
        health: Health | None = None,
        tuning: LoopTuning = LoopTuning(),
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.exactly_once = exactly_once
        self._config = config
        self._processor = processor
        self._log = logger
        self._health = health
        self._tuning = tuning
        self._consumer: AIOKafkaConsumer | None = None
        self._delivery: _Delivery = (
            _ExactlyOnce(config, group_id, topic, tuning, logger)
            if exactly_once
            else _AtLeastOnce(config, tuning)
        )
        # Partitions handed to the processor; each became ready right after a seek to _next.
        self._ready: set[TopicPartition] = set()
        # Assigned partitions still to initialize (committed offset, state).
        self._pending: set[TopicPartition] = set()
        # Revoked partitions whose state is kept in case they come back.
        self._retained: set[TopicPartition] = set()
        # The offset after the last record whose effects are committed, per partition.
        self._next: dict[TopicPartition, int] = {}
        # Pending partitions last seen held by an open transaction (to log changes only).
        self._unstable: frozenset[TopicPartition] = frozenset()
        self._flight: _Flight | None = None
        # The next batch: processed, waiting for the one in flight to land (see _step).
        self._open: dict[TopicPartition, _PartitionWork] = {}
        self._open_started = 0.0
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._healthy: bool | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Join the group and consume in the background until :meth:`stop`."""
        await self._delivery.start()
        try:
            self._consumer = await self._subscribe()
        except BaseException:
            await self._delivery.stop()
            raise
        self._task = asyncio.create_task(self._run(self._consumer), name=f"loop:{self.group_id}")

    async def _subscribe(self) -> AIOKafkaConsumer:
        options: dict[str, Any] = {
            **consumer_options(self._config, self.group_id, read_committed=True),
            "session_timeout_ms": self._tuning.session_timeout_ms,
            "heartbeat_interval_ms": self._tuning.heartbeat_interval_ms,
            "max_poll_records": self._tuning.max_records,
        }
        consumer = AIOKafkaConsumer(**options)
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        return consumer

    async def stop(self) -> None:
        """Commit the batch in hand, leave the group, close producers. Safe to call twice."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    def owned(self) -> list[int]:
        """The partitions this loop processes now (assigned, fenced, restored), sorted."""
        return sorted(tp.partition for tp in self._ready)

    def lag(self) -> dict[int, int]:
        """Records not yet committed per owned partition, from the last fetch (no request)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for tp in self._ready:
            end = consumer.last_stable_offset(tp)
            if end is not None and tp in self._next:
                lags[tp.partition] = max(0, end - self._next[tp])
        return lags

    # ------------------------------------------------------------------ rebalance

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # The lock and the landing let the batches in hand commit before the partitions move.
        async with self._lock:
            if self._consumer is not None:
                await self._flush(self._consumer)
            self._retained |= self._ready
            self._ready.clear()
            self._pending.clear()
        self._log.info("partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        kept = self._retained & assigned
        gone = self._retained - assigned
        fresh = assigned - kept
        self._retained = set()
        for tp in kept:
            # Our own last commit may not be readable yet from the group coordinator; we know it.
            consumer.seek(tp, self._next[tp])
        self._ready |= kept
        if fresh:
            consumer.pause(*fresh)
            self._pending |= fresh
        if gone:
            self._forget(gone)
        self._log.info(
            "partitions assigned",
            kept=sorted(tp.partition for tp in kept),
            new=sorted(tp.partition for tp in fresh),
        )

    def _forget(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self._next.pop(tp, None)
            self._open.pop(tp, None)
        self._processor.released(partitions)

    async def _open_pending(self, consumer: AIOKafkaConsumer) -> None:
        """Initialize assigned partitions: committed offset, seek, restore state.

        In exactly-once mode a partition whose offset an open transaction still holds stays
        pending (paused) and is asked again at the next step; the other partitions go on.
        """
        partitions = sorted(self._pending)
        await self._delivery.open(partitions)
        committed = await self._committed(consumer, partitions)
        partitions = [tp for tp in partitions if tp in committed]
        if not partitions:
            return
        missing = [tp for tp in partitions if committed[tp] is None]
        beginnings = await consumer.beginning_offsets(missing) if missing else {}
        for tp in partitions:
            offset = committed[tp]
            start = beginnings[tp] if offset is None else offset
            consumer.seek(tp, start)
            self._next[tp] = start
        await self._processor.assigned(partitions)
        consumer.resume(*partitions)
        self._pending.difference_update(partitions)
        self._ready.update(partitions)
        self._log.info("partitions ready", partitions=[tp.partition for tp in partitions])

    async def _committed(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        """Committed offsets of *partitions*; in exactly-once mode only those no transaction holds."""
        if not self.exactly_once:
            committed = await asyncio.gather(*(consumer.committed(tp) for tp in partitions))
            return dict(zip(partitions, committed, strict=True))
        try:
            # Waiting on an open transaction is bounded like a fetch: while a crashed owner's
            # transaction times out, the partitions already ready keep going between attempts.
            offsets = await fetch_stable_offsets(
                consumer,
                partitions,
                timeout=self._tuning.commit_timeout_s,
                unstable_timeout=self._tuning.fetch_timeout_ms / 1000,
            )
        except OffsetsUnstable as waiting:
            if waiting.unstable != self._unstable:
                self._log.info(
                    "waiting for an open transaction to end",
                    partitions=sorted(tp.partition for tp in waiting.unstable),
                )
            self._unstable = waiting.unstable
            return waiting.stable
        self._unstable = frozenset()
        return offsets

    def _reinitialize(self, consumer: AIOKafkaConsumer, partitions: Collection[TopicPartition]) -> None:
        """Treat *partitions* as newly assigned: their uncommitted work is redone from scratch."""
        partitions = [tp for tp in partitions if tp in self._ready or tp in self._pending]
        if not partitions:
            return
        self._ready.difference_update(partitions)
        self._pending.update(partitions)
        for tp in partitions:
            self._open.pop(tp, None)  # processed from a position that is no longer ours
        consumer.pause(*partitions)
        self._processor.released(partitions)

    # ------------------------------------------------------------------ the loop

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while not self._stopping.is_set():
                batches = await self._fetch(consumer)
                async with self._lock:
                    failure = await self._step(consumer, batches)
                self._report(failure)
                if failure is not None:
                    await self._pause(self._tuning.retry_backoff_s)
            async with self._lock:
                await self._flush(consumer)  # the batches in hand
        except Exception as error:
            self._report(f"loop crashed: {error!r}")
            raise
        finally:
            await self._shutdown(consumer)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Record]]:
        """The next records: as soon as any arrive or, while a batch commits and the next one
        waits, as soon as the commit ends (what arrived meanwhile is taken along)."""
        room = self._tuning.max_records - self._open_records()
        flight = self._flight
        timeout_ms = self._tuning.fetch_timeout_ms
        if flight is not None:
            # getmany returns records in hand without suspending: without this, the batch just
            # sent would not leave before the next one is processed.
            await let_io_progress()
        if self._open and flight is not None:
            await asyncio.wait({flight.task}, timeout=self._tuning.commit_poll_ms / 1000)
            timeout_ms = 0
        batches: dict[TopicPartition, list[Record]] = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=room
        )
        return batches

    async def _step(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, list[Record]]
    ) -> str | None:
        """Process fetched records into the next batch; send it off once the one in flight lands.

        One batch is in flight at most. While it commits, the next one grows by whatever
        arrives (up to ``max_records``), and goes out as soon as the first has landed (offsets
        advanced, failed partitions re-initialized): under load processing overlaps committing,
        and at a low rate a record waits for the commit in progress and its own, not for a
        third. Returns a failure.
        """
        failure = None
        if self._pending:
            failure = await self._land(consumer)
            try:
                await self._open_pending(consumer)
            except (KafkaError, OSError, TimeoutError) as error:
                # The ready partitions' records are in hand (the consumer has moved past them):
                # they go on; the pending ones are asked again after the backoff.
                self._log.warning("partition initialization failed; retrying", error=repr(error))
                failure = f"cannot initialize partitions: {error!r}"
        records = self._accepted(batches)
        if records:
            if not self._open:
                self._open_started = time.perf_counter()
            try:
                outputs = await self._processor.process(records)
            except Exception as error:  # a processor bug: redo the batch later rather than die
                await self._land(consumer)
                self._log.error("batch processing failed; retrying", exc_info=error)
                self._reinitialize(consumer, {TopicPartition(r.topic, r.partition) for r in records})
                self._send_open(consumer)
                return f"batch processing failed: {error!r}"
            self._gather(records, outputs)
        flight = self._flight
        if flight is not None and not flight.task.done() and self._open_records() < self._tuning.max_records:
            return failure
        failure = await self._land(consumer) or failure
        self._send_open(consumer)
        return failure

    def _accepted(self, batches: Mapping[TopicPartition, list[Record]]) -> list[Record]:
        """Records of ready partitions at or after the committed position, in fetch order."""
        records: list[Record] = []
        for tp, batch in batches.items():
            if tp not in self._ready:
                continue  # repositioned by a seek before it becomes ready again
            start = self._next[tp]
            if batch and batch[0].offset >= start:  # the common case: no record before it
                records.extend(batch)
            else:
                records.extend(r for r in batch if r.offset >= start)
        return records

    def _gather(self, records: Sequence[Record], outputs: Sequence[Output]) -> None:
        """Add *records* and their *outputs* to the next batch, per input partition."""
        work = self._open
        # Records come in runs of one partition (see _accepted): one look-up a run, not a record.
        for (topic, partition), run in groupby(records, key=_TOPIC_PARTITION):
            count, last = _count_and_last(run)
            tp = TopicPartition(topic, partition)
            entry = work.get(tp)
            if entry is None:
                work[tp] = _PartitionWork([], last.offset + 1, count)
            else:
                entry.next_offset = last.offset + 1
                entry.records += count
        for output in outputs:
            entry = work.get(output.source)
            if entry is not None:
                entry.outputs.append(output)

    def _open_records(self) -> int:
        return sum(work.records for work in self._open.values())

    def _send_open(self, consumer: AIOKafkaConsumer) -> None:
        """Start committing the next batch, without the partitions no longer ready."""
        assert self._flight is None, "one batch in flight at most"
        open_, self._open = self._open, {}
        work = {tp: entry for tp, entry in open_.items() if tp in self._ready}
        if work:
            task = asyncio.create_task(self._delivery.deliver(consumer, work))
            self._flight = _Flight(task, work, self._open_started)

    async def _flush(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the batch in flight and then the next one (on stop and before a revoke)."""
        await self._land(consumer)
        self._send_open(consumer)
        await self._land(consumer)

    async def _land(self, consumer: AIOKafkaConsumer) -> str | None:
        """Wait for the batch in flight; advance committed partitions, re-initialize failed ones."""
        flight, self._flight = self._flight, None
        if flight is None:
            return None
        try:
            failed = await flight.task
        except Exception as crash:
            failed = dict.fromkeys(flight.work, crash)
        done = [tp for tp in flight.work if tp not in failed]
        for tp in done:
            self._next[tp] = flight.work[tp].next_offset
        if done:
            outputs = [output for tp in done for output in flight.work[tp].outputs]
            self._processor.committed(outputs, time.perf_counter() - flight.started)
        if not failed:
            return None
        self._log.warning(
            "commit failed; partitions are re-initialized",
            partitions=sorted(tp.partition for tp in failed),
            error=repr(next(iter(failed.values()))),
        )
        self._reinitialize(consumer, failed)
        first = next(iter(failed.values()))
        return f"commit failed on {len(failed)} partition(s): {first!r}"

    def _report(self, failure: str | None) -> None:
        healthy = failure is None
        if self._health is None or healthy == self._healthy:
            return
        self._healthy = healthy
        if failure is None:
            self._health.ok()
        else:
            self._health.failing(failure)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        started = time.monotonic()
        try:
            await consumer.stop()  # leaves the group: the partitions move at once
        finally:
            self._ready.clear()
            self._pending.clear()
            self._retained.clear()
            await self._delivery.stop()
            self._log.info("router loop stopped", seconds=round(time.monotonic() - started, 3))
