"""Readiness of every component and supervised background tasks.

No background task dies unnoticed: a task started through :meth:`Supervisor.spawn` that
raises is logged with its traceback and marks its component not ready; ``stop`` cancels
and awaits every task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

__all__ = ["ComponentHealth", "Readiness", "Supervisor"]


@dataclass
class _State:
    ready: bool = False
    reason: str = "starting"


class Readiness:
    """What ``/readyz`` reports: every component's state, ready only when all are."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}

    def component(self, name: str) -> ComponentHealth:
        self._states.setdefault(name, _State())
        return ComponentHealth(self, name)

    def set(self, name: str, ready: bool, reason: str) -> None:
        self._states[name] = _State(ready, reason)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {name: {"ready": s.ready, "reason": s.reason} for name, s in sorted(self._states.items())}

    @property
    def ready(self) -> bool:
        return bool(self._states) and all(s.ready for s in self._states.values())


class ComponentHealth:
    """A :class:`connectors.base.Health` for one component."""

    def __init__(self, readiness: Readiness, name: str) -> None:
        self._readiness = readiness
        self.name = name

    def ok(self) -> None:
        self._readiness.set(self.name, True, "ok")

    def failing(self, reason: str) -> None:
        self._readiness.set(self.name, False, reason)


class Supervisor:
    def __init__(self, readiness: Readiness, logger: structlog.typing.FilteringBoundLogger) -> None:
        self._readiness = readiness
        self._log = logger
        self._tasks: set[asyncio.Task[None]] = set()

    async def spawn(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._log.error("background task failed", task=task.get_name(), exc_info=error)
            self._readiness.set(task.get_name(), False, f"task failed: {error!r}")

    async def stop(self, timeout: float = 5.0) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
