"""Deterministic identifiers: the same input always yields the same id, on every process."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["conversation_id", "message_id", "stable_digest"]

_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in the parts we hash
_MAX_READABLE_THREAD = 120


def stable_digest(parts: Iterable[str], length: int = 32) -> str:
    """Hex SHA-256 of *parts* joined unambiguously, cut to *length* characters."""
    joined = _SEPARATOR.join(parts).encode("utf-8", errors="surrogatepass")
    return hashlib.sha256(joined).hexdigest()[:length]


def message_id(channel_instance: str, native_id: str, *extra: str) -> str:
    """The record id of one customer message.

    Derived from the channel instance and the platform's own id, plus any *extra* parts a
    channel needs to tell apart two messages that reuse a native id (email hashes From, Date
    and body here, so a resend is the same id but a reused Message-ID is not). A redelivery
    of the same input therefore always yields the same id, which is what lets consumers
    drop duplicates under at-least-once delivery.
    """
    return stable_digest((channel_instance, native_id, *extra))


def conversation_id(channel_instance: str, thread: str) -> str:
    """A conversation key namespaced by the channel instance.

    Short thread keys stay readable (``support-slack:C024BE91L:1700000000.000100``); long ones
    (email Message-IDs can be hundreds of characters) are replaced by their digest so that
    Kafka keys stay small.
    """
    if len(thread) <= _MAX_READABLE_THREAD and _SEPARATOR not in thread:
        return f"{channel_instance}:{thread}"
    return f"{channel_instance}:{stable_digest((thread,))}"
