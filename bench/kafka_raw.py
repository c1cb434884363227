"""Raw aiokafka rates on a real broker: the ceiling every Switchboard component is measured against.

    python bench/kafka_raw.py [--bootstrap 127.0.0.1:9092] [--messages 200000] [--size 500] [--runs 3]

Prints produce (acks=1, acks=all, idempotent), consume (getmany) and a consume→produce pipe
with commits, best of --runs, as messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PARTITIONS = 6


async def create(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, count: int, payload: bytes, **options: object) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, compression_type="lz4", **options)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for n in range(count):
            pending.append(await producer.send(topic, payload, key=str(n % 1000).encode()))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count / (time.perf_counter() - started)


async def consume(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(b) for b in batches.values())
    finally:
        await consumer.stop()
    return count / (time.perf_counter() - started)


async def pipe(bootstrap: str, source: str, sink: str, count: int) -> float:
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"pipe-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type="lz4")
    await consumer.start()
    await producer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            futures = [
                await producer.send(sink, record.value, key=record.key)
                for records in batches.values()
                for record in records
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
            seen += len(futures)
    finally:
        await consumer.stop()
        await producer.stop()
    return count / (time.perf_counter() - started)


async def best(runs: int, measure: Callable[[], Awaitable[float]]) -> float:
    return max([await measure() for _ in range(runs)])


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=os.environ.get("SWITCHBOARD_TEST_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    payload = os.urandom(args.size // 2).hex().encode()[: args.size]
    run = uuid.uuid4().hex[:6]
    source, sink = f"bench.raw.{run}.in", f"bench.raw.{run}.out"
    await create(args.bootstrap, source, sink)
    rows = [
        (
            "produce acks=1",
            await best(args.runs, lambda: produce(args.bootstrap, sink, args.messages, payload, acks=1)),
        ),
        (
            "produce acks=all",
            await best(args.runs, lambda: produce(args.bootstrap, sink, args.messages, payload, acks="all")),
        ),
        (
            "produce idempotent",
            await best(
                args.runs,
                lambda: produce(args.bootstrap, source, args.messages, payload, enable_idempotence=True),
            ),
        ),
        ("consume getmany", await best(args.runs, lambda: consume(args.bootstrap, source, args.messages))),
        (
            "consume->produce+commit",
            await best(args.runs, lambda: pipe(args.bootstrap, source, sink, args.messages)),
        ),
    ]
    print(
        f"\nraw aiokafka on {args.bootstrap}: {args.messages} messages of {args.size} B, {PARTITIONS} partitions, best of {args.runs}"
    )
    print(f"{'what':28} {'messages/s':>12}")
    for name, rate in rows:
        print(f"{name:28} {rate:12,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
