"""Starts the embedded broker, prints ``READY <bootstrap> <pid>`` and waits to be killed."""

from __future__ import annotations

import asyncio

import structlog

from switchboard.embedded import EmbeddedBroker


async def main() -> None:
    broker = EmbeddedBroker(structlog.get_logger("embedded-test"))
    bootstrap = await broker.start()
    print("READY", bootstrap, broker.pid, flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
