"""The three kinds of process: everything (``up``), one channel, the router."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog

from bus.admin import ensure_topics
from bus.transactional import resolve_exactly_once
from connectors.registry import Registry
from models.config import ChannelConfig, Settings
from models.inbound_json import warm_up as warm_up_reader
from models.topics import Topics
from switchboard.host import ConnectorHost
from switchboard.http import HttpServer, build_app
from switchboard.runtime import Process, with_embedded_broker
from switchboard.settings import ConfigFileRules

__all__ = ["run_connector", "run_router", "run_up", "settle_garbage_collector"]

Logger = structlog.typing.FilteringBoundLogger


async def _create_topics(settings: Settings, logger: Logger) -> None:
    created = await ensure_topics(
        settings.kafka, Topics(settings.kafka.topic_prefix).all(settings.router.departments)
    )
    if created:
        logger.info("created topics", topics=created)


def _host(
    process: Process, channels: Sequence[ChannelConfig], registry: Registry, exactly_once: bool
) -> None:
    """Add the connector host and the HTTP servers its channels need to *process*."""
    host = ConnectorHost(
        process.settings,
        channels,
        registry,
        exactly_once=exactly_once,
        readiness=process.readiness,
        supervisor=process.supervisor,
        metrics=process.metrics,
        logger=process.log,
    )
    host.build()
    groups = host.http_apps(process.settings.http.listen)
    main_address = process.settings.http.listen
    process.add_http(process.http_server(groups.pop(main_address, [])))
    for address, apps in groups.items():
        process.add_http(HttpServer(build_app(process.readiness, process.metrics, apps), address))
    process.add(host)


def settle_garbage_collector() -> None:
    """Keep the loaded models out of garbage collection and collect young objects less often.

    A router allocates a few short-lived objects per message and holds every long-lived one
    (models, tables, conversation states) from start-up on. Measured with the router alone on
    20,000 records: collection took a tenth of its CPU at Python's defaults; frozen start-up
    objects and a gen-0 threshold of 20,000 cut its CPU per message by 10 %.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(20_000, middle, oldest)


def _router(process: Process, config_path: Path | None) -> None:
    try:
        from router.pipeline import build_decider
        from router.service import RouterService
    except ImportError as error:  # a build without the router still hosts its channels
        process.log.error("the router is not available in this installation", error=str(error))
        process.readiness.component("router").failing(f"not installed: {error}")
        return

    rules = ConfigFileRules(config_path) if config_path is not None else None
    decider = build_decider(
        process.settings.router,
        lambda: datetime.now(UTC),
        rules=rules,
        logger=process.log.bind(component="rules"),
    )
    decider.warm_up()
    warm_up_reader()
    settle_garbage_collector()
    process.add(
        RouterService(
            process.settings,
            decider,
            registry=process.metrics,
            health=process.readiness.component("router"),
            logger=process.log.bind(component="router"),
        )
    )


async def run_up(settings: Settings, logger: Logger, *, config_path: Path | None = None) -> None:
    settings, broker = await with_embedded_broker(settings, logger)
    try:
        await _create_topics(settings, logger)
        exactly_once = await resolve_exactly_once(settings.kafka, logger)
        process = Process(settings, logger)
        _host(process, settings.channels, Registry.default(), exactly_once)
        _router(process, config_path)

        async def announce() -> None:
            logger.info(
                "switchboard is up",
                kafka=settings.kafka.bootstrap,
                http=f"http://{settings.http.listen}",
                channels=[c.name for c in settings.channels],
            )

        await process.run(on_ready=announce)
    finally:
        if broker is not None:
            await broker.stop()


async def run_connector(settings: Settings, channel: ChannelConfig, logger: Logger) -> None:
    if not settings.kafka.bootstrap:
        raise_missing_bootstrap()
    await _create_topics(settings, logger)
    exactly_once = await resolve_exactly_once(settings.kafka, logger)
    process = Process(settings, logger.bind(channel=channel.name))
    _host(process, [channel], Registry.default(), exactly_once)
    await process.run()


async def run_router(settings: Settings, logger: Logger, *, config_path: Path | None = None) -> None:
    if not settings.kafka.bootstrap:
        raise_missing_bootstrap()
    await _create_topics(settings, logger)
    process = Process(settings, logger)
    process.add_http(process.http_server())
    _router(process, config_path)
    await process.run()


def raise_missing_bootstrap() -> None:
    from models.config import ConfigError

    raise ConfigError(["kafka.bootstrap: required here (the embedded broker is only for `switchboard up`)"])
