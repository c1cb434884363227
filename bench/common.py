"""What the ingest benches share: a quiet logger, the host's connector context, percentiles.

The benches run as scripts (``python bench/<name>.py`` from the repository root) and import
this module as ``bench.common`` after putting the repository root on ``sys.path``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import structlog
from prometheus_client import CollectorRegistry

from bus.producer import Producer
from bus.publisher import InboundPublisher
from bus.state import KafkaStateStore
from connectors.base import ConnectorContext
from connectors.metrics import ChannelMetricFamilies
from models.topics import Topics
from switchboard.supervision import Readiness, Supervisor

__all__ = ["connector_context", "percentile", "quiet_logger"]


def quiet_logger() -> structlog.typing.FilteringBoundLogger:
    """A logger that prints warnings and errors only, so log lines do not cost the measured path."""
    logging.basicConfig(level=logging.WARNING)
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(), wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    return logger


def connector_context(
    producer: Producer,
    topics: Topics,
    *,
    max_record_bytes: int,
    readiness: Readiness,
    logger: structlog.typing.FilteringBoundLogger,
    channel: str,
    instance: str,
) -> ConnectorContext:
    """The context the host hands a connector: publishing through *producer* (started by the
    caller), its state in ``sb.state``, health in *readiness*, metrics in a registry of its own."""
    publisher = InboundPublisher(producer, topics, max_record_bytes)
    return ConnectorContext(
        publish=publisher.publish,
        quarantine=publisher.quarantine,
        state=KafkaStateStore(producer, topics.state, instance),
        health=readiness.component(instance),
        metrics=ChannelMetricFamilies(CollectorRegistry()).bind(channel, instance),
        spawn=Supervisor(readiness, logger).spawn,
        logger=logger,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The *q* quantile (0-1) of *values*, nearest rank; NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
