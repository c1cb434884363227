"""The connector interface: what every channel implements and what the host hands it.

A connector turns one channel's native traffic into :class:`models.InboundMessage` records.
It never talks to Kafka: it gets a ``publish`` that returns only once the broker confirmed
the record, and answers its source (SMTP 250, HTTP 200, an IMAP checkpoint) only after that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from starlette.types import ASGIApp

from connectors.metrics import ChannelMetrics
from models import InboundMessage
from models.quarantine import QuarantineItem

if TYPE_CHECKING:  # importing structlog pulls in rich: config loading should not pay for it
    from structlog.typing import FilteringBoundLogger

__all__ = [
    "Connector",
    "ConnectorContext",
    "Health",
    "HttpConnector",
    "Publish",
    "Quarantine",
    "QuarantineItem",
    "Spawn",
    "StateStore",
    "utc_now",
]

Publish = Callable[[InboundMessage], Awaitable[None]]
"""Publishes one record to ``sb.inbound``; returns once the broker acknowledged it (acks=all).

Raises :class:`models.errors.PublishError` (retriable) when the broker is unreachable or slower
than the configured deadline, :class:`models.errors.RecordRejected` when it can never succeed.
"""


Quarantine = Callable[[QuarantineItem], Awaitable[None]]
"""Stores a :class:`QuarantineItem` durably (``sb.quarantine``); same guarantees as ``Publish``."""

Spawn = Callable[[str, Coroutine[Any, Any, None]], Awaitable[None]]
"""Runs a background task under the process supervisor: a crash is logged and flips readiness."""


class StateStore(Protocol):
    """Durable key → bytes memory private to one connector instance (checkpoints, seen ids).

    Survives restarts and pod moves (backed by the compacted ``sb.state`` topic). ``put``
    returns once the value is durable; ``None`` deletes the key.
    """

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes | None) -> None: ...


class Health(Protocol):
    """Readiness of one component as ``/readyz`` reports it."""

    def ok(self) -> None: ...

    def failing(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectorContext:
    """Everything a connector may use from its host; nothing is global."""

    publish: Publish
    quarantine: Quarantine
    state: StateStore
    health: Health
    metrics: ChannelMetrics
    spawn: Spawn
    logger: FilteringBoundLogger
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@runtime_checkable
class Connector(Protocol):
    """One running channel instance.

    ``start`` returns once the connector accepts traffic. ``stop`` is idempotent: it stops
    taking new input, lets in-flight messages finish within a few seconds, then returns.
    A connector runs once: ``start`` after ``stop`` takes no traffic and acknowledges nothing
    (the host builds a new instance to restart a channel).
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class HttpConnector(Connector, Protocol):
    """A connector served over HTTP: its app is mounted at ``/channels/<name>``."""

    def asgi_app(self) -> ASGIApp: ...


def utc_now() -> datetime:
    return datetime.now(UTC)
