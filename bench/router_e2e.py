"""The routing service end to end against a bare aiokafka consume→produce pipe, side by side.

    python bench/router_e2e.py [--bootstrap 127.0.0.1:9092] [--messages 20000] [--full]
                               [--decider auto|real|standin] [--modes eos,alo]
                               [--rate 1000] [--seconds 10]

For each delivery mode (exactly once with transactions, at least once) it measures:

- throughput: *messages* realistic inbound records (~1 KB of JSON, multilingual texts from the
  corpus) pre-filled into ``sb.inbound``, drained by the bare pipe (no work: copy the bytes) and
  by the router (decode, decide, affinity, routed JSON, one transaction per input partition and
  batch), in messages per second from the first committed batch to the last; the ratio is
  router / pipe (target >= 60 %);
- latency: records produced at a fixed *rate* for *seconds*, time from the producer's send to a
  ``read_committed`` reader receiving the output, p50/p99 for pipe and router, and the router's
  added latency (target p99 < 50 ms). Each starts once its consumer owns every partition (the
  router: fenced and restored too), and the first second is not counted.

The decider is the real one (``router.pipeline.build_decider``) when importable (``auto``), else a
stand-in that costs nothing. ``--full`` means 200,000 messages and 30 s of latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from bus.admin import ensure_topics, partitions_of
from bus.options import client_options
from bus.transactional import LoopTuning
from models import InboundMessage, Routing, Sender
from models.config import KafkaConfig, RouterConfig, Settings
from models.ids import message_id
from models.topics import Topics, TopicSpec
from router.service import RouterService, RouterTuning

CORPUS = Path(__file__).resolve().parent.parent / "router" / "corpus"
PARTITIONS = 6
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up


class StandInDecider:
    """Costs (almost) nothing: the router's own overhead is what is measured."""

    def __init__(self, departments: Sequence[str]) -> None:
        self._departments = list(departments)

    def decide_batch(self, messages: Sequence[InboundMessage], context: Sequence[Any]) -> list[Any]:
        from router.pipeline import Decision

        now = datetime.now(UTC)
        return [
            Decision(
                routing=Routing(
                    department=self._departments[hash(m.message_id) % len(self._departments)],
                    confidence=0.9,
                    language="en",
                    model="stand-in",
                    routed_at=now,
                ),
                drop=False,
            )
            for m in messages
        ]


def build_decider(choice: str, router: RouterConfig) -> tuple[Any, str]:
    if choice in ("auto", "real"):
        try:
            from router.pipeline import build_decider as real
        except ImportError:
            if choice == "real":
                raise
        else:
            from switchboard.processes import settle_garbage_collector

            pipeline = real(router, lambda: datetime.now(UTC))
            pipeline.warm_up()  # as `switchboard router run` does before joining the group
            settle_garbage_collector()
            return pipeline, "real (router.pipeline)"
    return StandInDecider(router.departments), "stand-in"


def texts() -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            pairs.append((row.get("subject") or "", row["text"]))
    return pairs or [("Order 4471", "My parcel for order 4471 has not arrived yet, can you check?")]


def inbound_record(n: int, corpus: list[tuple[str, str]], run: str) -> InboundMessage:
    subject, text = corpus[n % len(corpus)]
    native = f"<{run}-{n}@bench.example>"
    return InboundMessage(
        message_id=message_id("bench-mail", native),
        channel="email",
        channel_instance="bench-mail",
        native_id=native,
        received_at=datetime.now(UTC),
        sender=Sender(id=f"customer{n % 5000}@example.org", name="Customer"),
        recipients=("support@example.com",),
        conversation_id=f"bench-mail:{run}:{n % 20_000}",
        subject=subject,
        text=text,
        body=text,
        auth={"spf": "pass", "dkim": "pass", "dmarc": "pass"},
    )


async def fill(config: KafkaConfig, topic: str, records: Sequence[InboundMessage]) -> None:
    producer = AIOKafkaProducer(**client_options(config), acks="all", linger_ms=5, compression_type="lz4")
    await producer.start()
    try:
        pending = []
        for message in records:
            pending.append(
                await producer.send(
                    topic,
                    message.to_json_bytes(),
                    key=message.conversation_id.encode(),
                    headers=[("sb-schema", b"inbound/1"), ("sb-message-id", message.message_id.encode())],
                )
            )
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# --------------------------------------------------------------------------- the bare pipe


class BarePipe:
    """consume → produce with no work: copies key, value and headers; commits like the router.

    Exactly once: one transactional producer; each fetched batch is one transaction with the
    consumer's offsets. At least once: produce, wait for acks, commit.
    """

    def __init__(self, config: KafkaConfig, source: str, sink: str, exactly_once: bool) -> None:
        self.source, self.sink, self.exactly_once = source, sink, exactly_once
        self.group = f"bare-{uuid.uuid4().hex[:6]}"
        self.consumer = AIOKafkaConsumer(
            source,
            **client_options(config),
            group_id=self.group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        extra: dict[str, Any] = {"transactional_id": f"{self.group}-tx"} if exactly_once else {}
        self.producer = AIOKafkaProducer(
            **client_options(config), acks="all", linger_ms=2, compression_type="lz4", **extra
        )
        self.done = 0
        self.first: float | None = None
        self.first_count = 0
        self.last = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=500)
            records = [r for batch in batches.values() for r in batch]
            if not records:
                continue
            offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}
            if self.exactly_once:
                await self.producer.begin_transaction()
            futures = [
                await self.producer.send(self.sink, r.value, key=r.key, headers=list(r.headers))
                for r in records
            ]
            await asyncio.gather(*futures)
            if self.exactly_once:
                await self.producer.send_offsets_to_transaction(offsets, self.group)
                await self.producer.commit_transaction()
            else:
                await self.consumer.commit(offsets)
            self._count(len(records))

    def _count(self, n: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_count = now, n
        self.done += n
        self.last = now


def router_service(config: KafkaConfig, decider: Any) -> RouterService:
    return RouterService(
        Settings(kafka=config),
        decider,
        registry=CollectorRegistry(),
        health=_Quiet(),
        logger=structlog.get_logger("bench-router"),
        tuning=RouterTuning(loop=LoopTuning(max_records=int(os.environ.get("MAXREC", "500")))),
    )


class _Quiet:
    def ok(self) -> None:
        return None

    def failing(self, reason: str) -> None:
        print(f"  router health: {reason}")


def decided(service: RouterService) -> int:
    total = 0.0
    for family in (service.metrics.routed, service.metrics.triaged, service.metrics.dlq):
        for metric in family.collect():
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return int(total)


async def router_throughput(config: KafkaConfig, count: int, decider: Any) -> float:
    service = router_service(config, decider)
    await service.start()
    try:
        first: tuple[float, int] | None = None
        while (done := decided(service)) < count:
            if first is None and done:
                first = (time.perf_counter(), done)
            await asyncio.sleep(0.05)  # collecting the metrics is work for the router's loop too
        end = time.perf_counter()
    finally:
        await service.stop()
    assert first is not None
    return (count - first[1]) / (end - first[0])


async def pipe_throughput(config: KafkaConfig, source: str, count: int, exactly_once: bool) -> float:
    sink = f"{config.topic_prefix}.bare"
    await ensure_topics(config, [TopicSpec(sink)])
    pipe = BarePipe(config, source, sink, exactly_once)
    await pipe.start()
    try:
        while pipe.done < count:
            await asyncio.sleep(0.05)
    finally:
        await pipe.stop()
    assert pipe.first is not None
    return (count - pipe.first_count) / (pipe.last - pipe.first)


# --------------------------------------------------------------------------- latency


async def paced_latency(
    config: KafkaConfig, sinks: Sequence[str], rate: int, seconds: float, corpus: list[tuple[str, str]]
) -> list[float]:
    """Produce to sb.inbound at *rate*/s; milliseconds from send to read_committed receipt."""
    topics = Topics(config.topic_prefix)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    reader = AIOKafkaConsumer(
        **client_options(config), enable_auto_commit=False, isolation_level="read_committed"
    )
    await reader.start()
    partitions = await partitions_of(config, sinks)
    while len(partitions) < len(sinks) * config.partitions:  # just created: metadata catches up
        await asyncio.sleep(0.1)
        partitions = await partitions_of(config, sinks)
    reader.assign(partitions)
    await reader.seek_to_beginning(*partitions)
    producer = AIOKafkaProducer(**client_options(config), acks="all", linger_ms=0, compression_type="lz4")
    await producer.start()
    run = uuid.uuid4().hex[:6]
    total = int(rate * seconds)
    warmup = time.perf_counter() + 1.0

    async def generate() -> None:
        started = time.perf_counter()
        for n in range(total):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message = inbound_record(n, corpus, run)
            sent[message.message_id] = time.perf_counter()
            await producer.send(
                topics.inbound,
                message.to_json_bytes(),
                key=message.conversation_id.encode(),
                headers=[("sb-schema", b"inbound/1"), ("sb-message-id", message.message_id.encode())],
            )

    generator = asyncio.create_task(generate())
    received = 0
    deadline = time.perf_counter() + seconds + 30
    try:
        while received < total and time.perf_counter() < deadline:
            batches = await reader.getmany(timeout_ms=20)
            now = time.perf_counter()
            for batch in batches.values():
                for record in batch:
                    received += 1
                    ident = dict(record.headers).get("sb-message-id", b"").decode()
                    start = sent.get(ident)
                    if start is not None and start >= warmup:
                        latencies.append((now - start) * 1000)
        await generator
    finally:
        await producer.stop()
        await reader.stop()
    if received < total:
        print(f"  warning: only {received} of {total} records arrived")
    return latencies


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until *condition* holds: latency is measured from a ready consumer, not its start-up."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the consumer did not get its partitions")
        await asyncio.sleep(0.05)


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Remove this run's topics: repeated runs would otherwise pile thousands of partitions onto
    the broker, and a broker with that many slows down every later measurement."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if ours:
            await admin.delete_topics(ours, timeout_ms=30_000)
    finally:
        await admin.close()


async def run_mode(bootstrap: str, mode: str, args: argparse.Namespace, decider: Any) -> dict[str, float]:
    run = uuid.uuid4().hex[:6]
    try:
        return await measure_mode(bootstrap, mode, run, args, decider)
    finally:
        await delete_topics(bootstrap, f"bench{run}{mode}")


async def measure_mode(
    bootstrap: str, mode: str, run: str, args: argparse.Namespace, decider: Any
) -> dict[str, float]:
    exactly_once = mode == "eos"
    delivery = "exactly_once" if exactly_once else "at_least_once"
    corpus = texts()

    def config(tag: str) -> KafkaConfig:
        return KafkaConfig(
            bootstrap=bootstrap,
            topic_prefix=f"bench{run}{mode}{tag}",
            partitions=PARTITIONS,
            delivery=delivery,
        )

    departments = Settings().router.departments
    throughput = config("t")
    topics = Topics(throughput.topic_prefix)
    await ensure_topics(throughput, topics.all(departments))
    await fill(throughput, topics.inbound, [inbound_record(n, corpus, run) for n in range(args.messages)])
    pipe_rate = await pipe_throughput(throughput, topics.inbound, args.messages, exactly_once)
    router_rate = await router_throughput(throughput, args.messages, decider)

    pipe_latency = config("lp")
    await ensure_topics(pipe_latency, Topics(pipe_latency.topic_prefix).all(departments))
    sink = f"{pipe_latency.topic_prefix}.bare"
    await ensure_topics(pipe_latency, [TopicSpec(sink)])
    pipe = BarePipe(pipe_latency, Topics(pipe_latency.topic_prefix).inbound, sink, exactly_once)
    await pipe.start()
    try:
        await until(lambda: len(pipe.consumer.assignment()) == PARTITIONS)
        bare = await paced_latency(pipe_latency, [sink], args.rate, args.seconds, corpus)
    finally:
        await pipe.stop()

    router_latency = config("lr")
    router_topics = Topics(router_latency.topic_prefix)
    await ensure_topics(router_latency, router_topics.all(departments))
    service = router_service(router_latency, decider)
    await service.start()
    try:
        await until(lambda: len(service.owned_partitions()) == PARTITIONS)
        sinks = [router_topics.department(d) for d in departments] + [router_topics.triage]
        routed = await paced_latency(router_latency, sinks, args.rate, args.seconds, corpus)
    finally:
        await service.stop()
    return {
        "pipe": pipe_rate,
        "router": router_rate,
        "pipe_p50": percentile(bare, 50),
        "pipe_p99": percentile(bare, 99),
        "router_p50": percentile(routed, 50),
        "router_p99": percentile(routed, 99),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=os.environ.get("SWITCHBOARD_TEST_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=1_000, help="messages/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--decider", choices=["auto", "real", "standin"], default="auto")
    parser.add_argument("--modes", default="eos,alo", help="comma-separated: eos, alo")
    parser.add_argument("--full", action="store_true", help="200,000 messages and 30 s of latency")
    args = parser.parse_args()
    if args.full:
        args.messages, args.seconds = 200_000, 30.0
    decider, label = build_decider(args.decider, RouterConfig())
    results = {mode: await run_mode(args.bootstrap, mode, args, decider) for mode in args.modes.split(",")}

    print(
        f"\nrouter end to end on {args.bootstrap}: {args.messages} messages (~1 KB JSON), "
        f"{PARTITIONS} partitions, decider: {label}; latency at {args.rate} msg/s for {args.seconds:g} s"
    )
    header = f"{'mode':6} {'pipe msg/s':>11} {'router msg/s':>13} {'ratio':>6}  {'pipe p50/p99 ms':>16} {'router p50/p99 ms':>18} {'added p50/p99 ms':>17}"
    print(header)
    for mode, r in results.items():
        print(
            f"{mode:6} {r['pipe']:11,.0f} {r['router']:13,.0f} {r['router'] / r['pipe']:6.0%}  "
            f"{r['pipe_p50']:7.1f}/{r['pipe_p99']:<8.1f} {r['router_p50']:9.1f}/{r['router_p99']:<8.1f} "
            f"{r['router_p50'] - r['pipe_p50']:8.1f}/{r['router_p99'] - r['pipe_p99']:<8.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
