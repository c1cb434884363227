"""Raw input that a connector could not turn into a record."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["QuarantineItem"]


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """Kept whole in ``sb.quarantine`` so it is never lost and can be reprocessed later."""

    channel_instance: str
    raw: bytes
    reason: str
    error_class: str
    content_type: str = "application/octet-stream"
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
