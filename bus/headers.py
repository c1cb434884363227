"""Record headers: every record says its schema and message id."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["MESSAGE_ID", "SCHEMA", "Headers", "header", "record_headers"]

Headers = list[tuple[str, bytes]]

SCHEMA = "sb-schema"
MESSAGE_ID = "sb-message-id"


def record_headers(schema: str, message_id: str, extra: Iterable[tuple[str, str]] = ()) -> Headers:
    headers = [(SCHEMA, schema.encode()), (MESSAGE_ID, message_id.encode())]
    headers += [(name, value.encode("utf-8", errors="replace")) for name, value in extra]
    return headers


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    """The first value of header *name*, decoded, or None."""
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", errors="replace")
    return None
