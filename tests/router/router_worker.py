"""A router process with the stand-in decider, for the kill/restart and SIGTERM tests.

Usage: python -m tests.router.router_worker BOOTSTRAP TOPIC_PREFIX [MAX_RECORDS] [DELAY_PER_BATCH] [CRASH_AT]
Prints ``started`` once it joined, and ``exit decided=N`` after a SIGTERM drained it. With
CRASH_AT=n > 0 the process SIGKILLs itself inside its n-th transaction commit: the records of
that transaction are on the broker, uncommitted, and the transaction is left open.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import replace

import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from bus.transactional import LoopTuning
from models.config import KafkaConfig, Settings
from router.service import RouterService, RouterTuning
from tests.router.standin import StandInDecider

# Short group timings so a killed member is replaced quickly (6 s is the broker's minimum).
TEST_TUNING = LoopTuning(session_timeout_ms=6_000, heartbeat_interval_ms=500, retry_backoff_s=0.2)


class _Health:
    def ok(self) -> None:
        print("healthy", flush=True)

    def failing(self, reason: str) -> None:
        print(f"failing {reason}", flush=True)


def crash_inside_commit(number: int) -> None:
    commits = 0
    commit = AIOKafkaProducer.commit_transaction

    async def commit_or_die(producer: AIOKafkaProducer) -> None:
        nonlocal commits
        commits += 1
        if commits == number:
            os.kill(os.getpid(), signal.SIGKILL)
        await commit(producer)

    AIOKafkaProducer.commit_transaction = commit_or_die


async def main(bootstrap: str, prefix: str, max_records: int, delay: float, crash_at: int) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the protocol
    settings = Settings(kafka=KafkaConfig(bootstrap=bootstrap, topic_prefix=prefix, partitions=3))
    registry = CollectorRegistry()
    tuning = RouterTuning(loop=replace(TEST_TUNING, max_records=max_records))
    decider = StandInDecider(delay_per_batch=delay)
    service = RouterService(
        settings,
        decider,
        registry=registry,
        health=_Health(),
        logger=structlog.get_logger("router-worker"),
        tuning=tuning,
    )
    if crash_at:
        crash_inside_commit(crash_at)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await service.start()
    print("started", flush=True)
    await stop.wait()
    await service.stop()
    decided = sum(
        sample.value
        for metric in registry.collect()
        if metric.name in ("switchboard_router_routed", "switchboard_router_triaged")
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    print(f"exit decided={int(decided)}", flush=True)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    asyncio.run(
        main(
            arguments[0],
            arguments[1],
            int(arguments[2]) if len(arguments) > 2 else 100,
            float(arguments[3]) if len(arguments) > 3 else 0.0,
            int(arguments[4]) if len(arguments) > 4 else 0,
        )
    )
