"""Topic names: one place that knows how the prefix and department names become topics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SPECIAL_QUEUES", "TopicSpec", "Topics"]

SPECIAL_QUEUES = ("inbound", "triage", "escalations", "dlq", "quarantine")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: compacted topics keep the newest value per key forever."""

    name: str
    compacted: bool = False


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic name under one prefix (``sb`` by default)."""

    prefix: str = "sb"

    def _named(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    @property
    def inbound(self) -> str:
        return self._named("inbound")

    @property
    def triage(self) -> str:
        return self._named("triage")

    @property
    def escalations(self) -> str:
        return self._named("escalations")

    @property
    def dlq(self) -> str:
        return self._named("dlq")

    @property
    def quarantine(self) -> str:
        return self._named("quarantine")

    @property
    def state(self) -> str:
        return self._named("state")

    @property
    def conversations(self) -> str:
        return self._named("conversations")

    def department(self, name: str) -> str:
        return self._named(f"dept.{name}")

    def queue(self, name: str) -> str:
        """The topic behind a queue name as users type it: ``billing``, ``triage``, ``dlq`` …"""
        if name in SPECIAL_QUEUES:
            return self._named(name)
        return self.department(name)

    def all(self, departments: Iterable[str]) -> list[TopicSpec]:
        """Every topic the pipeline uses, for ``topics init``."""
        plain = [self.inbound, self.triage, self.escalations, self.dlq, self.quarantine]
        plain += [self.department(d) for d in departments]
        specs = [TopicSpec(name) for name in plain]
        specs += [TopicSpec(self.state, compacted=True), TopicSpec(self.conversations, compacted=True)]
        return specs
