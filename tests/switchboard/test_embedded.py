"""The embedded development broker: starts, serves a round trip, dies with its parent."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): it has exited when /proc says so
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


async def test_embedded_broker_serves_a_round_trip_and_is_gone_after_the_parent_exits() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.switchboard.embedded_parent",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert parent.stdout is not None
    try:
        line: list[str] = []
        while not line or line[0] != "READY":  # structlog may print its own lines first
            raw = await asyncio.wait_for(parent.stdout.readline(), timeout=30)
            assert raw, "the parent exited before the broker was ready"
            line = raw.decode().split()
        bootstrap, broker_pid = line[1], int(line[2])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        await producer.send_and_wait("embedded.check", "வணக்கம்".encode(), key=b"k")
        await producer.stop()
        consumer = AIOKafkaConsumer(
            "embedded.check", bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        record = await asyncio.wait_for(consumer.getone(), timeout=20)
        await consumer.stop()
        assert (record.key, record.value.decode()) == (b"k", "வணக்கம்")
        assert _alive(broker_pid)
    finally:
        parent.send_signal(signal.SIGKILL)  # no clean-up code runs: only the kernel can stop it
        await parent.wait()
    for _ in range(50):
        if not _alive(broker_pid):
            break
        await asyncio.sleep(0.1)
    assert not _alive(broker_pid), "the embedded broker outlived its parent"
