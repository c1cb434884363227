"""Group fencing for transactions (KIP-447): the protocol pieces aiokafka 0.14 lacks.

aiokafka commits a transaction's offsets with ``TxnOffsetCommit`` v0, which names the group but
not the member, so the group coordinator accepts offsets from anyone holding the transactional
id. KIP-447 (Kafka 2.5+) adds the consumer's group metadata to the request (v3): the coordinator
checks the generation, member id and group instance id like a plain offset commit and refuses a
stale member (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID), so one transactional
producer per process can commit for every partition it owns and a zombie's transaction aborts.
The other half is reading: ``OffsetFetch`` v7 with ``require_stable`` makes the coordinator answer
UNSTABLE_OFFSET_COMMIT for a partition while a transaction holding offsets for it is open, so a
new owner never starts from an offset that transaction is about to replace.

What is here:

- :class:`GroupFencedProducer`: an ``AIOKafkaProducer`` whose transaction offsets go out as
  ``TxnOffsetCommit`` v3 through :meth:`~GroupFencedProducer.send_offsets_with_group`. Only the
  producer's own sender is replaced (a subclass that swaps the offset-commit handler); aiokafka's
  modules are left as they are. A refusal by the group surfaces as :class:`GroupFenced` and
  leaves the transaction abortable, not the producer broken.
- :func:`fetch_stable_offsets`: ``OffsetFetch`` v7 ``require_stable`` to the consumer's group
  coordinator, retried while offsets are unstable, bounded by a timeout.
- :func:`missing_group_fencing`: which of the two request versions a broker lacks
  (``ApiVersions``), so a broker with transactions but without KIP-447 is not trusted with them.

Schemas: ``TxnOffsetCommitRequest/Response.json`` and ``OffsetFetchRequest/Response.json`` of
Apache Kafka 3.9 (in ``kafka-clients``'s ``common/message``). Both versions are flexible: compact
strings and arrays, tagged fields after every struct.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IllegalOperation,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.protocol.admin import ApiVersionRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

__all__ = [
    "GroupFenced",
    "GroupFencedProducer",
    "GroupMetadata",
    "OffsetsUnstable",
    "fetch_stable_offsets",
    "group_metadata",
    "missing_group_fencing",
]

_log = logging.getLogger(__name__)

TXN_OFFSET_COMMIT = 28
OFFSET_FETCH = 9
TXN_OFFSET_COMMIT_FENCED = 3  # adds generation_id, member_id, group_instance_id
OFFSET_FETCH_STABLE = 7  # adds require_stable

# Kafka error codes (org.apache.kafka.common.protocol.Errors) this module acts on.
_NONE = 0
_UNKNOWN_TOPIC_OR_PARTITION = 3
_REQUEST_TIMED_OUT = 7
_COORDINATOR_LOAD_IN_PROGRESS = 14
_COORDINATOR_NOT_AVAILABLE = 15
_NOT_COORDINATOR = 16
_ILLEGAL_GENERATION = 22
_UNKNOWN_MEMBER_ID = 25
_REBALANCE_IN_PROGRESS = 27
_GROUP_AUTHORIZATION_FAILED = 30
_INVALID_PRODUCER_EPOCH = 47
_TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
_FENCED_INSTANCE_ID = 82
_UNSTABLE_OFFSET_COMMIT = 88
_PRODUCER_FENCED = 90

# The group refused the offsets: the committer is not the current member (or a rebalance is
# under way). The transaction must abort; the partitions go to whoever owns them next.
_GROUP_FENCING = {_ILLEGAL_GENERATION, _UNKNOWN_MEMBER_ID, _FENCED_INSTANCE_ID, _REBALANCE_IN_PROGRESS}
_COORDINATOR_MOVED = {_COORDINATOR_NOT_AVAILABLE, _NOT_COORDINATOR, _REQUEST_TIMED_OUT}
_NO_COMMITTED_OFFSET = -1

# Backoff while offsets are unstable: a transaction usually completes within milliseconds, a
# crashed owner's only when the broker times it out, so start short and grow.
_UNSTABLE_FIRST_BACKOFF_S = 0.02
_UNSTABLE_MAX_BACKOFF_S = 0.5


class GroupFenced(KafkaError):  # type: ignore[misc]
    """The group coordinator refused a transaction's offsets: the committer is not the member.

    The transaction must be aborted; the partitions belong to whoever holds them now.
    """

    retriable = False

    def __init__(self, group_id: str, reason: str) -> None:
        super().__init__(f"group {group_id!r} fenced the commit: {reason}")
        self.group_id = group_id
        self.reason = reason


class OffsetsUnstable(TimeoutError):
    """Some partitions still had an open transaction holding offsets when the time ran out."""

    def __init__(
        self, stable: dict[TopicPartition, int | None], unstable: Collection[TopicPartition]
    ) -> None:
        super().__init__(f"offsets still unstable for {sorted(unstable)}")
        self.stable = stable
        self.unstable = frozenset(unstable)


@dataclass(frozen=True, slots=True)
class GroupMetadata:
    """Who commits: the consumer's membership when the offsets are sent."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None

    @property
    def is_member(self) -> bool:
        # Without a generation the coordinator would not check anything (a "simple" commit),
        # which is exactly the unfenced commit this module exists to avoid.
        return self.generation_id >= 0 and bool(self.member_id)


def group_metadata(consumer: AIOKafkaConsumer) -> GroupMetadata:
    """*consumer*'s current membership; read it at commit time, it changes on every rebalance."""
    coordinator = consumer._coordinator
    group_id = getattr(coordinator, "group_id", None)
    if group_id is None:
        raise ValueError("the consumer is not in a consumer group")
    return GroupMetadata(
        group_id=group_id,
        generation_id=coordinator.generation,
        member_id=coordinator.member_id,
        group_instance_id=coordinator._group_instance_id,
    )


# --------------------------------------------------------------------------- TxnOffsetCommit v3


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = TXN_OFFSET_COMMIT_FENCED
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(("partition_index", Int32), ("error_code", Int16), ("tags", TaggedFields)),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = TXN_OFFSET_COMMIT_FENCED
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),  # nullable
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),  # nullable
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _FencedTxnOffsetCommit(Request[TxnOffsetCommitRequest_v3]):  # type: ignore[misc]
    """Only v3: a broker that cannot check the group must not get the offsets at all."""

    API_KEY = TXN_OFFSET_COMMIT

    def __init__(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        member: GroupMetadata,
        offsets: Mapping[TopicPartition, Any],
    ) -> None:
        self._transactional_id = transactional_id
        self._producer_id = producer_id
        self._producer_epoch = producer_epoch
        self._member = member
        self._offsets = offsets  # OffsetAndMetadata per partition, as aiokafka validated them

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]) -> TxnOffsetCommitRequest_v3:
        by_topic: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = collections.defaultdict(list)
        for tp, offset in sorted(self._offsets.items()):
            # No leader epoch: we do not track it, and -1 tells the broker so.
            by_topic[tp.topic].append((tp.partition, offset.offset, -1, offset.metadata, {}))
        member = self._member
        return request_struct_class(
            self._transactional_id,
            member.group_id,
            self._producer_id,
            self._producer_epoch,
            member.generation_id,
            member.member_id,
            member.group_instance_id,
            [(topic, partitions, {}) for topic, partitions in by_topic.items()],
            {},
        )


class _FencedTxnOffsetCommitHandler(TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler, sending v3 and telling a fenced commit apart from a fenced producer.

    Raising from a handler kills the producer's sender (aiokafka's way for fatal errors such as
    ProducerFenced); a group refusal is not fatal, so it fails the transaction instead and the
    caller's ``send_offsets`` gets :class:`GroupFenced`.
    """

    def __init__(self, sender: Sender, offsets: Mapping[TopicPartition, Any], member: GroupMetadata) -> None:
        super().__init__(sender, offsets, member.group_id)
        self._member = member

    def create_request(self) -> _FencedTxnOffsetCommit:
        txn_manager = self._sender._txn_manager
        return _FencedTxnOffsetCommit(
            txn_manager.transactional_id,
            txn_manager.producer_id,
            txn_manager.producer_epoch,
            self._member,
            self._offsets,
        )

    def handle_response(self, resp: TxnOffsetCommitResponse_v3) -> float | None:
        txn_manager = self._sender._txn_manager
        group_id = self._member.group_id
        for topic, partitions, _tags in resp.topics:
            for partition, code, _partition_tags in partitions:
                tp = TopicPartition(topic, partition)
                if code == _NONE:
                    txn_manager.offset_committed(tp, self._offsets[tp].offset, group_id)
                elif code in _COORDINATOR_MOVED:
                    self._sender._coordinator_dead(CoordinationType.GROUP)
                    return float(self._default_backoff)
                elif code in (_COORDINATOR_LOAD_IN_PROGRESS, _UNKNOWN_TOPIC_OR_PARTITION):
                    return float(self._default_backoff)
                elif code in _GROUP_FENCING:
                    txn_manager.error_transaction(GroupFenced(group_id, _describe(code, self._member)))
                    return None
                elif code in (_INVALID_PRODUCER_EPOCH, _PRODUCER_FENCED):
                    raise ProducerFenced()
                elif code == _TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                    raise TransactionalIdAuthorizationFailed(txn_manager.transactional_id)
                elif code == _GROUP_AUTHORIZATION_FAILED:
                    txn_manager.error_transaction(GroupAuthorizationFailedError(group_id))
                    return None
                else:
                    txn_manager.error_transaction(KafkaError(f"TxnOffsetCommit failed with error {code}"))
                    return None
        return None


def _describe(code: int, member: GroupMetadata) -> str:
    name = {
        _ILLEGAL_GENERATION: "ILLEGAL_GENERATION",
        _UNKNOWN_MEMBER_ID: "UNKNOWN_MEMBER_ID",
        _FENCED_INSTANCE_ID: "FENCED_INSTANCE_ID",
        _REBALANCE_IN_PROGRESS: "REBALANCE_IN_PROGRESS",
    }.get(code, str(code))
    return f"{name} for generation {member.generation_id}, member {member.member_id!r}"


class _FencedSender(Sender):  # type: ignore[misc]
    """aiokafka's sender, committing transaction offsets with the group metadata."""

    @classmethod
    def replacing(cls, sender: Sender) -> _FencedSender:
        return cls(
            sender.client,
            acks=sender._acks,
            txn_manager=sender._txn_manager,
            message_accumulator=sender._message_accumulator,
            retry_backoff_ms=sender._retry_backoff * 1000,
            request_timeout_ms=sender._request_timeout_ms,
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The membership to send with the offsets of each group, set per send_offsets call.
        self.members: dict[str, GroupMetadata] = {}

    async def _do_txn_offset_commit(self, offsets: Mapping[TopicPartition, Any], group_id: str) -> None:
        if not offsets:
            return
        member = self.members.get(group_id)
        if member is None:
            # Sent through plain send_offsets_to_transaction: without a membership the commit
            # would be unfenced, so refuse it rather than fall back to v0 semantics.
            self._txn_manager.error_transaction(GroupFenced(group_id, "no group metadata given"))
            return
        try:
            node_id = await self._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as error:
            self._txn_manager.error_transaction(error)
            return
        await _FencedTxnOffsetCommitHandler(self, offsets, member).do(node_id)


class GroupFencedProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A transactional producer whose offset commits are fenced by the consumer group (KIP-447).

    Use :meth:`send_offsets_with_group`; ``send_offsets_to_transaction`` is refused, as it would
    commit unfenced.
    """

    _sender: Sender

    def __init__(self, **options: Any) -> None:
        if not options.get("transactional_id"):
            raise ValueError("a GroupFencedProducer needs a transactional_id")
        super().__init__(**options)
        # The constructor built a sender; swap it for ours before start() runs it.
        self._fenced_sender = _FencedSender.replacing(self._sender)
        self._sender = self._fenced_sender

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        raise IllegalOperation(
            "without the group metadata the commit is unfenced: use send_offsets_with_group"
        )

    async def send_offsets_with_group(
        self, offsets: Mapping[TopicPartition, int], member: GroupMetadata
    ) -> None:
        """Add *offsets* to the open transaction, to be accepted only from *member*.

        Raises :class:`GroupFenced` if the group refuses them; the transaction must then abort.
        """
        if not member.is_member:
            raise GroupFenced(member.group_id, "the consumer has no current generation")
        members = self._fenced_sender.members
        members[member.group_id] = member
        try:
            await super().send_offsets_to_transaction(dict(offsets), member.group_id)
        except GroupFenced:
            # The refusal also failed the transaction's own future; it is reported here, so
            # mark that one retrieved rather than have asyncio log it as lost.
            ending = self._txn_manager.wait_for_transaction_end()
            if ending.done():
                ending.exception()
            raise
        finally:
            if members.get(member.group_id) is member:
                del members[member.group_id]


# --------------------------------------------------------------------------- OffsetFetch v7


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    API_KEY = OFFSET_FETCH
    API_VERSION = OFFSET_FETCH_STABLE
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),  # nullable
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = OFFSET_FETCH
    API_VERSION = OFFSET_FETCH_STABLE
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(  # nullable: null asks for every topic, which we never do
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class _StableOffsetFetch(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    API_KEY = OFFSET_FETCH

    def __init__(self, group_id: str, partitions: Collection[TopicPartition]) -> None:
        self._group_id = group_id
        self._partitions = partitions

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        by_topic: dict[str, list[int]] = collections.defaultdict(list)
        for tp in sorted(self._partitions):
            by_topic[tp.topic].append(tp.partition)
        no_tags: dict[int, bytes] = {}
        topics = [(topic, partitions, no_tags) for topic, partitions in by_topic.items()]
        return request_struct_class(self._group_id, topics, True, no_tags)


class _Retry(Exception):
    """The coordinator cannot answer now (moved, or still loading): ask again after a backoff."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.moved = code in _COORDINATOR_MOVED


def _read_offsets(
    response: OffsetFetchResponse_v7, group_id: str
) -> tuple[dict[TopicPartition, int | None], set[TopicPartition]]:
    """The stable offsets of *response* (``None``: nothing committed) and the unstable partitions."""
    if response.error_code in (_COORDINATOR_LOAD_IN_PROGRESS, *_COORDINATOR_MOVED):
        raise _Retry(response.error_code)
    if response.error_code == _GROUP_AUTHORIZATION_FAILED:
        raise GroupAuthorizationFailedError(group_id)
    if response.error_code != _NONE:
        raise KafkaError(f"OffsetFetch for group {group_id!r} failed with error {response.error_code}")
    stable: dict[TopicPartition, int | None] = {}
    unstable: set[TopicPartition] = set()
    for topic, partitions, _tags in response.topics:
        for partition, offset, _epoch, _metadata, code, _partition_tags in partitions:
            tp = TopicPartition(topic, partition)
            if code == _UNSTABLE_OFFSET_COMMIT:
                unstable.add(tp)
            elif code in (_COORDINATOR_LOAD_IN_PROGRESS, *_COORDINATOR_MOVED):
                raise _Retry(code)
            elif code == _UNKNOWN_TOPIC_OR_PARTITION:
                stable[tp] = None  # as aiokafka's committed(): no offset to start from
            elif code != _NONE:
                raise KafkaError(f"OffsetFetch for {tp} failed with error {code}")
            else:
                stable[tp] = None if offset == _NO_COMMITTED_OFFSET else offset
    return stable, unstable


async def fetch_stable_offsets(
    consumer: AIOKafkaConsumer,
    partitions: Collection[TopicPartition],
    timeout: float,
    *,
    unstable_timeout: float | None = None,
) -> dict[TopicPartition, int | None]:
    """The committed offset of each of *partitions* (``None``: none), once no transaction holds it.

    Asks the consumer's group coordinator with ``require_stable``. Partitions whose offsets an
    open transaction is about to replace are asked again, with a growing backoff, for
    *unstable_timeout* seconds (default: *timeout*); then :class:`OffsetsUnstable` carries the
    stable part. No answer at all within *timeout* raises :class:`TimeoutError`.
    """
    coordinator = consumer._coordinator
    client: AIOKafkaClient = consumer._client
    group_id: str = coordinator.group_id
    stable: dict[TopicPartition, int | None] = {}
    asking = set(partitions)
    unstable: set[TopicPartition] = set()  # as of the last answer
    backoff = _UNSTABLE_FIRST_BACKOFF_S
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    patience = min(deadline, loop.time() + (timeout if unstable_timeout is None else unstable_timeout))
    async with asyncio.timeout_at(deadline):
        while asking:
            await coordinator.ensure_coordinator_known()
            try:
                response = await client.send(
                    coordinator.coordinator_id,
                    _StableOffsetFetch(group_id, asking),
                    group=ConnectionGroup.COORDINATION,
                )
            except KafkaError as error:  # no answer from that node: look the coordinator up again
                if not error.retriable:
                    raise
                coordinator.coordinator_dead()
                _log.debug("stable offset fetch failed, retrying: %r", error)
            else:
                try:
                    answered, unstable = _read_offsets(response, group_id)
                except _Retry as retry:
                    if retry.moved:
                        coordinator.coordinator_dead()
                else:
                    stable.update(answered)
                    asking = unstable | (asking - answered.keys())
            if not asking:
                break
            if unstable and loop.time() + backoff >= patience:
                raise OffsetsUnstable(stable, unstable)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _UNSTABLE_MAX_BACKOFF_S)
    return stable


# --------------------------------------------------------------------------- capability


async def missing_group_fencing(client: AIOKafkaClient) -> list[str]:
    """The KIP-447 request versions the broker lacks (empty: it fences through the group)."""
    response = await client.send(client.get_random_node(), ApiVersionRequest())
    versions = {key: maximum for key, _minimum, maximum in response.api_versions}
    needed = {
        "TxnOffsetCommit": (TXN_OFFSET_COMMIT, TXN_OFFSET_COMMIT_FENCED),
        "OffsetFetch": (OFFSET_FETCH, OFFSET_FETCH_STABLE),
    }
    return [
        f"{name} v{version} (broker has {versions.get(key, 'none')})"
        for name, (key, version) in needed.items()
        if versions.get(key, -1) < version
    ]
