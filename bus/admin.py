"""Topic administration behind ``switchboard topics init``: create what is missing, touch nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bus.options import client_options
from models.config import KafkaConfig
from models.errors import TopicMissing
from models.topics import TopicSpec

__all__ = ["ensure_topics", "list_topics", "partition_counts", "partitions_of"]

# Compacted topics hold connector checkpoints and conversation state: keep them small and
# never expire them; a short dirty ratio keeps restarts (which read the whole topic) quick.
_COMPACTED = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}
# A broker answers metadata from a cache that follows its controller. Measured on the KRaft
# broker of deploy/: right after `ensure_topics` created a dozen topics, a new client's request
# found none of them in 14 of 15 tries, and all tens of milliseconds later. Ask again at this
# pace until a deadline.
_METADATA_RETRY_S = 0.05
TOPICS_TIMEOUT_S = 30.0


async def list_topics(config: KafkaConfig) -> set[str]:
    admin = AIOKafkaAdminClient(**client_options(config))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def ensure_topics(
    config: KafkaConfig, specs: Sequence[TopicSpec], *, timeout: float = TOPICS_TIMEOUT_S
) -> list[str]:
    """Create the topics of *specs* that do not exist yet; return the names created.

    Idempotent: existing topics are left exactly as they are (partition counts included),
    and a topic created concurrently by another process counts as existing. Returns once the
    broker describes the topics it had to create (:class:`TopicMissing` after *timeout* seconds).
    """
    admin = AIOKafkaAdminClient(**client_options(config))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        new_topics = [
            NewTopic(
                name=spec.name,
                num_partitions=config.partitions,
                replication_factor=config.replication_factor,
                topic_configs=dict(_COMPACTED) if spec.compacted else {},
            )
            for spec in missing
        ]
        response = await admin.create_topics(new_topics)
        created = []
        for name, code, message in _topic_errors(response):
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                raise RuntimeError(f"could not create topic {name}: error {code} {message or ''}".strip())
        # Returned topics are usable: a caller counting their partitions next must not miss them.
        await _described(admin, [spec.name for spec in missing], timeout)
        return created
    finally:
        await admin.close()


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    """(topic, error code, message) from any CreateTopics response version."""
    rows = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        rows.append((name, code, message))
    return rows


async def partition_counts(
    config: KafkaConfig, topics: Sequence[str], *, timeout: float = TOPICS_TIMEOUT_S
) -> dict[str, int]:
    """How many partitions each of *topics* has; they must exist.

    For counts that decide where data goes (which changelog partition holds a state) or what is
    read back: a topic the broker does not describe yet is asked for again until *timeout*
    seconds, then :class:`TopicMissing` names the missing ones. Never a count of zero.
    """
    admin = AIOKafkaAdminClient(**client_options(config))
    await admin.start()
    try:
        return await _described(admin, topics, timeout)
    finally:
        await admin.close()


async def _described(admin: AIOKafkaAdminClient, topics: Sequence[str], timeout: float) -> dict[str, int]:
    """Each topic's partition count, asking again for those the broker does not describe yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    counts: dict[str, int] = {}
    missing = list(dict.fromkeys(topics))
    while missing:
        for entry in await admin.describe_topics(missing):
            if entry.get("error_code", 0) == 0 and entry.get("partitions"):
                counts[entry["topic"]] = len(entry["partitions"])
        missing = [topic for topic in missing if topic not in counts]
        if missing:
            if loop.time() >= deadline:
                raise TopicMissing(
                    f"topics not found on the broker: {', '.join(sorted(missing))} "
                    "(`switchboard topics init` creates them)"
                )
            await asyncio.sleep(_METADATA_RETRY_S)
    return counts


async def partitions_of(config: KafkaConfig, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of the topics among *topics* that exist now (others are skipped).

    For looking around (what is there to read); where a missing topic would be a mistake, as
    in a count that routes data, use :func:`partition_counts`.
    """
    admin = AIOKafkaAdminClient(**client_options(config))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(entry["topic"], partition["partition"])
        for entry in described
        if entry.get("error_code", 0) == 0
        for partition in entry.get("partitions", [])
    ]
