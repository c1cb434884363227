"""Reading a queue: the consumer SDK for department workers, and ``switchboard tail``.

Worker mode (``group="billing-desk"``) reads a queue in a consumer group, at least once::

    async with DepartmentQueue(settings.kafka, "billing", group="billing-desk") as queue:
        async for message in queue:
            ticket = message.routed()          # the RoutedMessage
            if message.duplicate:              # same message_id already handed out here
                continue
            await open_ticket(ticket)

A message counts as handled when the loop asks for the next one (or when ``commit()`` is
called), and handled messages are committed every ``commit_interval_s``, when partitions move to
another worker, and when the ``async with`` block ends without an exception. A crash therefore
repeats at most the messages handled since the last commit, never skips one; a repeated record
carries the same ``message_id``. Records are read ``read_committed``: a router's aborted
transaction is never seen. A new group starts at the oldest record of the queue.

Observe mode (``group=None``) assigns every partition, joins no group and never commits, so it
never takes work from workers; it starts at the end (new records only) or, with
``from_beginning``, at the oldest record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from pydantic import ValidationError

from bus.admin import partition_counts
from bus.consumer import consumer_options
from bus.headers import header
from models import RoutedMessage
from models.config import KafkaConfig, Settings
from models.messages import InboundMessage, format_timestamp
from models.topics import Topics

__all__ = ["DepartmentQueue", "QueueMessage", "as_json_line", "summarize", "tail"]

# Records stamped this long before an observer started are not "new" (see _skip_old).
_START_GRACE_MS = 2_000
# Reading without a group needs the topic's partitions; one created a moment ago gets this long.
_TOPIC_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """One record of a queue, with where it came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    message_id: str | None
    """The ``sb-message-id`` header: the same for every copy of one customer message."""
    duplicate: bool
    """This queue object already handed out a record with this ``message_id`` (a hint; the
    window is the last ``dedup_window`` ids, and other processes' deliveries are not known)."""

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    def routed(self) -> RoutedMessage:
        """The value as a :class:`RoutedMessage` (department, triage and escalation queues)."""
        if self.value is None:
            raise ValueError(f"{self.topic}[{self.partition}]@{self.offset} has no value")
        return RoutedMessage.from_json_bytes(self.value)


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, queue: DepartmentQueue) -> None:
        self._queue = queue

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._queue._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


class DepartmentQueue:
    """An async iterator over one queue: a department (``billing``), ``triage``, ``escalations``,
    ``dlq``, ``inbound`` or ``quarantine``."""

    def __init__(
        self,
        kafka: KafkaConfig,
        queue: str,
        *,
        group: str | None,
        from_beginning: bool = False,
        auto_commit: bool = True,
        commit_interval_s: float = 5.0,
        max_records: int = 100,
        dedup_window: int = 10_000,
    ) -> None:
        """*group*: the workers' consumer group, or None to observe.

        *auto_commit*: commit handled messages periodically and at a clean exit; with False only
        :meth:`commit` commits. *from_beginning* applies to observe mode (a new group always
        starts at the oldest record).
        """
        if max_records < 1 or dedup_window < 0 or commit_interval_s <= 0:
            raise ValueError("max_records >= 1, dedup_window >= 0 and commit_interval_s > 0 are required")
        self.topic = Topics(kafka.topic_prefix).queue(queue)
        self.group = group
        self._kafka = kafka
        self._from_beginning = from_beginning
        self._auto_commit = auto_commit
        self._commit_interval = commit_interval_s
        self._max_records = max_records
        self._dedup_window = dedup_window
        self._consumer: AIOKafkaConsumer | None = None
        self._buffer: deque[ConsumerRecord[bytes, bytes]] = deque()
        self._current: TopicPartition | None = None
        self._current_next = 0
        self._handled: dict[TopicPartition, int] = {}  # offset after the last handled message
        self._yielded: dict[TopicPartition, int] = {}  # offset after the last message handed out
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._not_before_ms: dict[TopicPartition, int] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        options: dict[str, Any] = consumer_options(self._kafka, self.group, read_committed=True)
        consumer = AIOKafkaConsumer(**options)
        await consumer.start()
        try:
            if self.group is None:
                await self._observe(consumer)
            else:
                consumer.subscribe([self.topic], listener=_Revocations(self))
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def _observe(self, consumer: AIOKafkaConsumer) -> None:
        count = (await partition_counts(self._kafka, [self.topic], timeout=_TOPIC_WAIT_S))[self.topic]
        partitions = [TopicPartition(self.topic, p) for p in range(count)]
        started_ms = int(time.time() * 1000)
        consumer.assign(partitions)
        if self._from_beginning:
            await consumer.seek_to_beginning(*partitions)
            return
        for tp, end in (await consumer.end_offsets(partitions)).items():
            consumer.seek(tp, end)
            self._not_before_ms[tp] = started_ms - _START_GRACE_MS

    async def stop(self, *, commit: bool = False) -> None:
        """Leave the group (committing what was handed out when *commit*) and close."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            if commit and self.group is not None:
                await self._commit(consumer, self._yielded)
        finally:
            await asyncio.sleep(0)  # let a just-created coordinator task run before stopping
            await consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            await self.stop(commit=self._auto_commit)
            return
        # The message in hand was not handled: commit only what was, then leave.
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            if self._auto_commit and self.group is not None:
                await self._commit(consumer, self._handled)
        finally:
            await consumer.stop()

    # ------------------------------------------------------------------ iteration

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> QueueMessage:
        consumer = self._running()
        self._mark_handled()
        due = time.monotonic() - self._last_commit >= self._commit_interval
        if due and self._auto_commit and self.group is not None:
            await self._commit(consumer, self._handled)
        while not self._buffer:
            batches = await consumer.getmany(timeout_ms=1_000, max_records=self._max_records)
            for tp, records in batches.items():
                self._buffer.extend(self._skip_old(tp, records))
        record = self._buffer.popleft()
        tp = TopicPartition(record.topic, record.partition)
        self._current, self._current_next = tp, record.offset + 1
        self._yielded[tp] = record.offset + 1
        return self._message(record)

    async def commit(self) -> None:
        """Commit every message handed out so far, the current one included."""
        if self.group is None:
            raise RuntimeError("an observing queue (group=None) never commits")
        self._mark_handled()
        await self._commit(self._running(), self._yielded)

    # ------------------------------------------------------------------ internals

    def _running(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the queue is not started: use `async with DepartmentQueue(...)`")
        return self._consumer

    def _mark_handled(self) -> None:
        if self._current is not None:
            self._handled[self._current] = self._current_next
            self._current = None

    def _skip_old(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> Sequence[ConsumerRecord[bytes, bytes]]:
        """Observing from the end: drop records stamped before the start.

        Some brokers (the embedded Tansu) report an end offset inside the last batch and then
        re-deliver that batch's tail; those records are older than the observer. Skipping stops
        at the first record stamped after the start, so later clock noise drops nothing.
        """
        not_before = self._not_before_ms.get(tp)
        if not_before is None:
            return records
        for index, record in enumerate(records):
            if record.timestamp >= not_before:
                del self._not_before_ms[tp]
                return records[index:]
        return []

    def _message(self, record: ConsumerRecord[bytes, bytes]) -> QueueMessage:
        message_id = header(record.headers, "sb-message-id")
        duplicate = False
        if message_id is not None and self._dedup_window:
            duplicate = message_id in self._seen
            self._seen[message_id] = None
            self._seen.move_to_end(message_id)
            while len(self._seen) > self._dedup_window:
                self._seen.popitem(last=False)
        return QueueMessage(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
            message_id=message_id,
            duplicate=duplicate,
        )

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        due = {tp: o for tp, o in offsets.items() if tp in assigned and self._committed.get(tp) != o}
        if due:
            await consumer.commit(due)
            self._committed.update(due)
        self._last_commit = time.monotonic()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what was handled on partitions that move, and drop what we fetched of them."""
        consumer = self._consumer
        if consumer is not None and self._auto_commit:
            handled = {tp: o for tp, o in self._handled.items() if tp in revoked}
            with contextlib.suppress(Exception):  # else the new owner repeats them: still at least once
                await self._commit(consumer, handled)
        self._buffer = deque(r for r in self._buffer if TopicPartition(r.topic, r.partition) not in revoked)
        for table in (self._handled, self._yielded, self._committed):
            for tp in revoked:
                table.pop(tp, None)


# ---------------------------------------------------------------------- switchboard tail


def _one_line(text: str | None, limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _summarize_error(message: QueueMessage) -> str:
    size = len(message.value) if message.value is not None else 0
    source = message.header("sb-source-topic")
    where = (
        f" from {source}[{message.header('sb-source-partition')}]@{message.header('sb-source-offset')}"
        if source
        else ""
    )
    instance = message.header("sb-channel-instance")
    return (
        f"{message.partition}@{message.offset}  {message.header('sb-error-class')}: "
        f"{_one_line(message.header('sb-error'), 120)}{where}"
        f"{f'  channel={instance}' if instance else ''}  {size} bytes"
    )


def _summarize_inbound(record: InboundMessage) -> str:
    subject = f'"{_one_line(record.subject, 60)}" ' if record.subject else ""
    return (
        f"{format_timestamp(record.received_at)}  {record.channel_instance}  "
        f"{record.sender.id}  {subject}— {_one_line(record.text, 100)}"
    )


def _summarize_routed(record: RoutedMessage) -> str:
    routing = record.routing
    escalated = " ESCALATE" if routing.escalate else ""
    return (
        f"{routing.department} {routing.confidence:.2f} {routing.language} {routing.priority}{escalated}  "
        + _summarize_inbound(record)
    )


def summarize(message: QueueMessage) -> str:
    """A readable one-line summary of any queue's record."""
    if message.header("sb-error-class") is not None:
        return _summarize_error(message)
    if message.value is None:
        return f"{message.partition}@{message.offset}  (no value)"
    try:
        schema = json.loads(message.value).get("schema")
        if schema == "routed/1":
            return _summarize_routed(RoutedMessage.from_json_bytes(message.value))
        if schema == "inbound/1":
            return _summarize_inbound(InboundMessage.from_json_bytes(message.value))
    except (ValueError, AttributeError, ValidationError):
        pass
    text = message.value.decode("utf-8", errors="replace")
    return f"{message.partition}@{message.offset}  {len(message.value)} bytes  {_one_line(text, 100)}"


def as_json_line(message: QueueMessage) -> str:
    """The value as one compact line: JSON re-encoded compactly, anything else as a JSON string."""
    if message.value is None:
        return "null"
    try:
        value = json.loads(message.value)
    except ValueError:
        value = message.value.decode("utf-8", errors="replace")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def tail(
    settings: Settings, queue_name: str, *, from_beginning: bool, as_json: bool, out: TextIO
) -> None:
    """``switchboard tail``: print every record of a queue as one line, flushed per record.

    Observes without a consumer group. Runs until cancelled (Ctrl-C) or the output is closed.
    """
    render = as_json_line if as_json else summarize
    async with DepartmentQueue(
        settings.kafka, queue_name, group=None, from_beginning=from_beginning
    ) as queue:
        async for message in queue:
            try:
                out.write(render(message) + "\n")
                out.flush()
            except BrokenPipeError:  # `switchboard tail billing | head`
                return
