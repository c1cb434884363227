"""A consume loop hosted by the Switchboard runtime, for the SIGTERM test.

Usage: python -m tests.switchboard.consume_worker BOOTSTRAP TOPIC GROUP
Prints ``handled N`` after every batch and ``exit handled=N`` when it stops.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import structlog

from bus.consumer import BatchConsumer
from models.config import KafkaConfig, Settings
from switchboard.runtime import Process


async def main(bootstrap: str, topic: str, group: str) -> None:
    settings = Settings(kafka=KafkaConfig(bootstrap=bootstrap), http={"listen": "127.0.0.1:0"})  # type: ignore[arg-type]
    handled = 0

    async def handle(records: Sequence[object]) -> None:
        nonlocal handled
        await asyncio.sleep(0.05)  # slow work, so SIGTERM lands mid-stream
        handled += len(records)
        print(f"handled {handled}", flush=True)

    process = Process(settings, structlog.get_logger("worker"))
    process.add(BatchConsumer(settings.kafka, [topic], group, handle, max_records=20))
    await process.run()
    print(f"exit handled={handled}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
