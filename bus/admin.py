"""Topic administration behind ``switchboard topics init``: create what is missing, touch nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bus.options import client_options
from models.config import KafkaConfig
from models.topics import TopicSpec

__all__ = ["ensure_topics", "list_topics", "partitions_of"]

# Compacted topics hold connector checkpoints and conversation state: keep them small and
# never expire them; a short dirty ratio keeps restarts (which read the whole topic) quick.
_COMPACTED = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}


async def list_topics(config: KafkaConfig) -> set[str]:
    admin = AIOKafkaAdminClient(**client_options(config))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def ensure_topics(config: KafkaConfig, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics of *specs* that do not exist yet; return the names created.

    Idempotent: existing topics are left exactly as they are (partition counts included),
    and a topic created concurrently by another process counts as existing.
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


async def partitions_of(config: KafkaConfig, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of the existing topics among *topics* (missing topics are skipped)."""
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
