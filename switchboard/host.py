"""The connector host: builds each configured channel with what it needs and runs it.

One failing channel does not stop the others: its start error is logged and ``/readyz``
reports it, while the rest keep serving.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from bus.producer import Producer
from bus.publisher import InboundPublisher
from bus.state import KafkaStateStore, read_compacted
from connectors.base import Connector, ConnectorContext, HttpConnector
from connectors.metrics import ChannelMetricFamilies
from connectors.registry import Registry
from models.config import ChannelConfig, HostPort, Settings
from models.topics import Topics
from switchboard.supervision import Readiness, Supervisor

__all__ = ["ConnectorHost"]


class ConnectorHost:
    def __init__(
        self,
        settings: Settings,
        channels: Sequence[ChannelConfig],
        registry: Registry,
        *,
        exactly_once: bool,
        readiness: Readiness,
        supervisor: Supervisor,
        metrics: CollectorRegistry,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.name = "connectors"
        self._settings = settings
        self._channels = list(channels)
        self._registry = registry
        self._readiness = readiness
        self._supervisor = supervisor
        self._families = ChannelMetricFamilies(metrics)
        self._log = logger
        self._topics = Topics(settings.kafka.topic_prefix)
        self.producer = Producer(settings.kafka, idempotent=exactly_once)
        self._publisher = InboundPublisher(self.producer, self._topics, settings.kafka.max_record_bytes)
        self._connectors: list[tuple[ChannelConfig, Connector]] = []
        self._stores: dict[str, KafkaStateStore] = {}

    def build(self) -> None:
        """Construct every connector (no I/O yet), so HTTP apps can be mounted before start."""
        for config in self._channels:
            store = KafkaStateStore(self.producer, self._topics.state, config.name)
            self._stores[config.name] = store
            channel_type = self._registry.get(config.type)
            context = ConnectorContext(
                publish=self._publisher.publish,
                quarantine=self._publisher.quarantine,
                state=store,
                health=self._readiness.component(f"channel:{config.name}"),
                metrics=self._families.bind(channel_type.channel, config.name),
                spawn=self._supervisor.spawn,
                logger=self._log.bind(channel=config.name, type=config.type),
            )
            self._connectors.append((config, self._registry.build(config, context)))

    def http_apps(self, default: HostPort) -> dict[HostPort, list[tuple[str, ASGIApp]]]:
        """HTTP channels' apps grouped by the address that serves them."""
        groups: dict[HostPort, list[tuple[str, ASGIApp]]] = {}
        for config, connector in self._connectors:
            if isinstance(connector, HttpConnector):
                groups.setdefault(config.listen or default, []).append((config.name, connector.asgi_app()))
        return groups

    async def start(self) -> None:
        await self.producer.start()
        snapshot = await read_compacted(self._settings.kafka, self._topics.state)
        for store in self._stores.values():
            store.restore(snapshot)
        for config, connector in self._connectors:
            health = self._readiness.component(f"channel:{config.name}")
            try:
                await connector.start()
            except Exception as error:  # one broken channel must not take the others down
                self._log.error("channel failed to start", channel=config.name, exc_info=error)
                health.failing(f"start failed: {error}")
            else:
                health.ok()
                self._log.info("channel started", channel=config.name, type=config.type)

    async def stop(self) -> None:
        for config, connector in reversed(self._connectors):
            try:
                await connector.stop()
            except Exception as error:
                self._log.error("channel failed to stop cleanly", channel=config.name, exc_info=error)
        await self.producer.stop()
