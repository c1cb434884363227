"""One error hierarchy for the whole pipeline. ``retriable`` tells an edge what to answer:
a retriable failure becomes "try again later" (SMTP 451, HTTP 503), a final one a refusal."""

from __future__ import annotations

__all__ = ["InvalidInput", "PublishError", "RecordRejected", "SwitchboardError", "TopicMissing"]


class SwitchboardError(Exception):
    retriable: bool = False


class PublishError(SwitchboardError):
    """The broker did not confirm a record in time, or is unreachable: the source should retry."""

    retriable = True


class RecordRejected(SwitchboardError):
    """The record can never be published as it is (too large, invalid): retrying will not help."""

    retriable = False


class InvalidInput(SwitchboardError, ValueError):
    """A file or value the user gave cannot be used (a bad model file, a bad examples file)."""


class TopicMissing(SwitchboardError, LookupError):
    """A topic the operation needs is not on the broker (or not described by it yet)."""

    retriable = True
