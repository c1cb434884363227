"""Conversation affinity: what the router remembers about each conversation.

The router keeps one small record per conversation (the department it was last routed to, how
many messages it has seen, when it last routed one, whether it is unresolved) and hands it to
the classifier with every follow-up, so a conversation stays with its department unless the new
message clearly belongs elsewhere. The records live in the compacted ``sb.conversations`` topic,
keyed by ``conversation_id``; the routing service writes each update in the same transaction as
the routed message and restores the records of the partitions it owns when it takes them over.

This module is pure: encoding, the update rule and the in-memory table. No Kafka.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Literal, NamedTuple

from models.messages import Routing, format_timestamp

__all__ = ["AffinityTable", "ConversationState", "Destination", "advance"]

_VERSION = 1

Destination = Literal["department", "triage", "dropped"]
"""Where a decided message went: its department's queue, ``sb.triage``, or nowhere (auto-reply)."""


class ConversationState(NamedTuple):  # one per message: cheaper to build than a frozen dataclass
    """What the router remembers about one conversation.

    ``department``: where the conversation was last routed with confidence (None: never).
    ``messages_seen``: messages of the conversation decided so far, dropped ones included.
    ``last_routed_at``: ``routed_at`` of the last message that was routed (not dropped).
    ``unresolved``: the last routed message was escalated or went to triage.
    """

    department: str | None = None
    messages_seen: int = 0
    last_routed_at: datetime | None = None
    unresolved: bool = False

    def to_bytes(self) -> bytes:
        """The ``sb.conversations`` value: compact JSON with a version field.

        Written for every routed message, so it is formatted directly (only the department needs
        escaping; the rest are numbers, booleans and RFC 3339 timestamps).
        """
        department = "null" if self.department is None else _json_string(self.department)
        routed = "null" if self.last_routed_at is None else f'"{format_timestamp(self.last_routed_at)}"'
        return (
            f'{{"v":{_VERSION},"department":{department},"messages_seen":{self.messages_seen},'
            f'"last_routed_at":{routed},"unresolved":{"true" if self.unresolved else "false"}}}'
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConversationState:
        """Parse a stored value; raises ``ValueError`` for anything this version cannot read."""
        fields = json.loads(data)
        if not isinstance(fields, dict) or fields.get("v") != _VERSION:
            raise ValueError("not a conversation state of version 1")
        department = fields.get("department")
        seen = fields.get("messages_seen", 0)
        last = fields.get("last_routed_at")
        if department is not None and not isinstance(department, str):
            raise ValueError("department must be a string or null")
        if not isinstance(seen, int) or seen < 0:
            raise ValueError("messages_seen must be a non-negative integer")
        when = datetime.fromisoformat(last) if isinstance(last, str) else None
        if when is not None and when.tzinfo is None:
            raise ValueError("last_routed_at must carry a time zone")
        return cls(department, seen, when, bool(fields.get("unresolved", False)))


@functools.lru_cache(maxsize=256)
def _json_string(value: str) -> str:
    # A desk has a handful of departments: escaping each once saves ~1 µs a message.
    return json.dumps(value)


def advance(state: ConversationState, routing: Routing, destination: Destination) -> ConversationState:
    """The state after one more message of the conversation was decided.

    A confident route moves the conversation to its department (and marks it unresolved when
    escalated); triage keeps the last confident department but marks it unresolved; a dropped
    auto-reply only counts.
    """
    seen = state.messages_seen + 1
    if destination == "dropped":
        return state._replace(messages_seen=seen)
    if destination == "triage":
        return state._replace(messages_seen=seen, last_routed_at=routing.routed_at, unresolved=True)
    return ConversationState(routing.department, seen, routing.routed_at, routing.escalate)


_FRESH = ConversationState()  # immutable, so every new conversation can start from this one


class AffinityTable:
    """The conversation states of the input partitions this process owns, by partition.

    Conversations are keyed like the input topic, so one conversation always arrives on one
    input partition; its state belongs to whoever owns that partition.
    """

    def __init__(self) -> None:
        self._partitions: dict[int, dict[str, ConversationState]] = {}

    def load(self, partition: int, snapshot: Mapping[bytes, bytes]) -> int:
        """Replace *partition*'s states with a changelog snapshot; returns how many were unreadable."""
        table: dict[str, ConversationState] = {}
        unreadable = 0
        for key, value in snapshot.items():
            try:
                table[key.decode("utf-8")] = ConversationState.from_bytes(value)
            except (ValueError, UnicodeDecodeError):
                unreadable += 1  # an older or foreign value: start that conversation afresh
        self._partitions[partition] = table
        return unreadable

    def forget(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def get(self, partition: int, conversation_id: str) -> ConversationState:
        """The conversation's state (a fresh one when it was never seen)."""
        table = self._partitions.get(partition)
        state = None if table is None else table.get(conversation_id)
        return _FRESH if state is None else state

    def put(self, partition: int, conversation_id: str, state: ConversationState) -> None:
        self._partitions.setdefault(partition, {})[conversation_id] = state

    def __len__(self) -> int:
        return sum(len(table) for table in self._partitions.values())
