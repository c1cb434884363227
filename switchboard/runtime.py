"""Running components in one process: start, serve until a signal, drain and stop.

A component is anything with ``name``, ``async start()`` and ``async stop()``. SIGINT and
SIGTERM begin a graceful stop: components stop in reverse order, each finishing and
committing what it holds, within a bounded time.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry

from bus.producer import Producer
from models.config import Settings
from switchboard.embedded import EmbeddedBroker
from switchboard.http import HttpServer, build_app
from switchboard.supervision import Readiness, Supervisor

__all__ = ["Component", "Process", "with_embedded_broker"]

_BROKER_PROBE_INTERVAL = 5.0


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def with_embedded_broker(
    settings: Settings, logger: structlog.typing.FilteringBoundLogger
) -> tuple[Settings, EmbeddedBroker | None]:
    """Start the embedded broker when no bootstrap is configured; return the settings to use."""
    if settings.kafka.bootstrap:
        return settings, None
    broker = EmbeddedBroker(logger)
    bootstrap = await broker.start()
    kafka = settings.kafka.model_copy(update={"bootstrap": bootstrap, "delivery": "at_least_once"})
    return settings.model_copy(update={"kafka": kafka}), broker


class Process:
    """One Switchboard process: its components, readiness, metrics and HTTP server."""

    def __init__(self, settings: Settings, logger: structlog.typing.FilteringBoundLogger) -> None:
        self.settings = settings
        self.log = logger
        self.readiness = Readiness()
        self.metrics = CollectorRegistry()
        self.supervisor = Supervisor(self.readiness, logger)
        self._components: list[Component] = []
        self._servers: list[HttpServer] = []
        self._stop = asyncio.Event()

    def add(self, component: Component) -> None:
        self._components.append(component)

    def add_http(self, server: HttpServer) -> None:
        self._servers.append(server)

    def http_server(self, channels: Sequence[tuple[str, object]] = ()) -> HttpServer:
        app = build_app(self.readiness, self.metrics, channels)  # type: ignore[arg-type]
        return HttpServer(app, self.settings.http.listen)

    def request_stop(self) -> None:
        self._stop.set()

    async def _watch_broker(self, probe: Producer) -> None:
        health = self.readiness.component("kafka")
        while True:
            if await probe.reachable():
                health.ok()
            else:
                health.failing(f"broker {self.settings.kafka.bootstrap} unreachable")
            await asyncio.sleep(_BROKER_PROBE_INTERVAL)

    async def run(self, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start everything, serve until SIGINT/SIGTERM, then stop everything."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
        probe = Producer(self.settings.kafka, idempotent=False)
        started: list[Component] = []
        try:
            for server in self._servers:
                await server.start()
                self.log.info("http listening", address=str(server.address))
            with suppress(Exception):
                await probe.start()
            await self.supervisor.spawn("kafka", self._watch_broker(probe))
            for component in self._components:
                health = self.readiness.component(component.name)
                try:
                    await component.start()
                except Exception as error:  # keep the others running; /readyz says why
                    self.log.error("component failed to start", component=component.name, exc_info=error)
                    health.failing(f"start failed: {error}")
                    continue
                started.append(component)
                health.ok()
            if on_ready is not None:
                await on_ready()
            await self._stop.wait()
            self.log.info("stopping")
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            for component in reversed(started):
                try:
                    await asyncio.wait_for(component.stop(), timeout=10)
                except Exception as error:
                    self.log.error("component did not stop cleanly", component=component.name, exc_info=error)
            await self.supervisor.stop()
            for server in self._servers:
                await server.stop()
            await probe.stop()
