"""Prometheus metrics every channel reports, labelled by channel kind and instance."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ChannelMetricFamilies", "ChannelMetrics"]


class ChannelMetricFamilies:
    """The metric families, created once per registry (one registry per process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["channel", "instance"]
        self.received = Counter(
            "switchboard_channel_received_total", "Native messages received", labels, registry=registry
        )
        self.published = Counter(
            "switchboard_channel_published_total",
            "Records confirmed by the broker",
            labels,
            registry=registry,
        )
        self.duplicates = Counter(
            "switchboard_channel_duplicates_total",
            "Redeliveries dropped at the edge",
            labels,
            registry=registry,
        )
        self.rejected = Counter(
            "switchboard_channel_rejected_total",
            "Inputs refused (bad signature, too large, relay attempt …)",
            [*labels, "reason"],
            registry=registry,
        )
        self.failures = Counter(
            "switchboard_channel_publish_failures_total",
            "Inputs answered with a retry because the broker did not confirm",
            labels,
            registry=registry,
        )
        self.quarantined = Counter(
            "switchboard_channel_quarantined_total", "Inputs sent to quarantine", labels, registry=registry
        )
        self.publish_seconds = Histogram(
            "switchboard_channel_publish_seconds",
            "Time from receiving an input to the broker's confirmation",
            labels,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.last_success = Gauge(
            "switchboard_channel_last_success_timestamp_seconds",
            "Unix time of the last successful fetch or publish",
            labels,
            registry=registry,
        )
        self.post_action_failures = Counter(
            "switchboard_channel_post_action_failures_total",
            "Published inputs whose follow-up at the source (mark read, move, delete) failed",
            [*labels, "action"],
            registry=registry,
        )
        self.error = Gauge(
            "switchboard_channel_error", "1 while the channel is in an error state", labels, registry=registry
        )

    def bind(self, channel: str, instance: str) -> ChannelMetrics:
        return ChannelMetrics(self, channel, instance)


class ChannelMetrics:
    """The families bound to one channel instance."""

    def __init__(self, families: ChannelMetricFamilies, channel: str, instance: str) -> None:
        self._f = families
        self._labels = (channel, instance)

    def received(self) -> None:
        self._f.received.labels(*self._labels).inc()

    def published(self, seconds: float) -> None:
        self._f.published.labels(*self._labels).inc()
        self._f.publish_seconds.labels(*self._labels).observe(seconds)
        self.succeeded()

    def duplicate(self) -> None:
        self._f.duplicates.labels(*self._labels).inc()

    def rejected(self, reason: str) -> None:
        self._f.rejected.labels(*self._labels, reason).inc()

    def publish_failed(self) -> None:
        self._f.failures.labels(*self._labels).inc()

    def quarantined(self) -> None:
        self._f.quarantined.labels(*self._labels).inc()

    def post_action_failed(self, action: str, count: int = 1) -> None:
        self._f.post_action_failures.labels(*self._labels, action).inc(count)

    def succeeded(self) -> None:
        """A fetch or publish worked: records the time and clears the error state."""
        self._f.last_success.labels(*self._labels).set(time.time())
        self._f.error.labels(*self._labels).set(0)

    def errored(self) -> None:
        self._f.error.labels(*self._labels).set(1)
