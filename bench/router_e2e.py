"""The routing service end to end against a bare aiokafka consume→produce pipe, side by side.

    python bench/router_e2e.py [--bootstrap 127.0.0.1:9092] [--messages 20000] [--rounds 1] [--full]
                               [--decider auto|real|standin] [--modes eos,alo] [--routers 1,2]
                               [--rate 1000] [--seconds 10] [--warmup 3] [--only throughput|latency]

For each delivery mode (exactly once with transactions, at least once) it measures:

- throughput: *messages* realistic inbound records (~1 KB of JSON, multilingual texts from the
  corpus) pre-filled into ``sb.inbound``, drained by one bare pipe process (no work: copy the
  bytes) and by one router process, then by as many router processes as ``--routers`` says
  sharing the group (decode, decide, affinity, routed JSON, one transaction per
  batch). The rate is read from the group's committed offsets over the last 90 % of the
  records (the first tenth covers joining and rebalancing); the ratio is router / pipe (target
  >= 60 % for one process against one). Beside each rate: the CPU time the draining processes
  spent per message over the same window and the cores they kept busy (from /proc; blank
  elsewhere), steadier than the rate on a shared machine. With ``--rounds N`` the pipe and
  the routers take turns N times, on fresh topics each round: a row per round, then the best
  pipe beside the best routers and the median of the rounds' ratios;
- latency: records produced at a fixed *rate*, time from the producer's send to a
  ``read_committed`` reader receiving the output, p50/p99 for pipe and router, and the router's
  added latency (target p99 < 50 ms). Each starts once its consumer owns every partition (the
  router: fenced and restored too); the first *warmup* seconds are not counted, then *seconds*
  are. With ``--rounds N``, N rounds of pipe then router on fresh topics, a row per round and
  the median of each column (the broker's own transaction latency drifts from minute to minute,
  so one pair of runs says little).

The pipe and the routers run in child processes, as they do in production; this process only
fills, paces, reads and times. The decider is the real one (``router.pipeline.build_decider``)
when importable (``auto``), else a stand-in that costs nothing. ``--full`` means 200,000
messages and 30 s of latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from bus.admin import ensure_topics, partitions_of
from bus.options import client_options
from bus.producer import COMPRESSION
from models import InboundMessage, Routing, Sender
from models.config import KafkaConfig, RouterConfig, Settings
from models.ids import message_id
from models.topics import Topics, TopicSpec
from router.service import RouterService, group_id

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


def decider_label(choice: str) -> str:
    """What the router processes will decide with (each child loads its own decider)."""
    if choice == "standin":
        return "stand-in"
    try:
        import router.pipeline  # noqa: F401
    except ImportError:
        if choice == "real":
            raise
        return "stand-in"
    return "real (router.pipeline)"


def build_decider(choice: str, router: RouterConfig) -> tuple[Any, str]:
    if choice in ("auto", "real"):
        try:
            from router.pipeline import build_decider as real
        except ImportError:
            if choice == "real":
                raise
        else:
            from models.inbound_json import warm_up as warm_up_reader
            from switchboard.processes import settle_garbage_collector

            pipeline = real(router, lambda: datetime.now(UTC))
            pipeline.warm_up()  # as `switchboard router run` does before joining the group
            warm_up_reader()
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
    producer = AIOKafkaProducer(
        **client_options(config), acks="all", linger_ms=5, compression_type=COMPRESSION
    )
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
        self.group = pipe_group(config)
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
            **client_options(config), acks="all", linger_ms=2, compression_type=COMPRESSION, **extra
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
    )


class _Quiet:
    def ok(self) -> None:
        return None

    def failing(self, reason: str) -> None:
        print(f"  router health: {reason}")


def pipe_group(config: KafkaConfig) -> str:
    return f"{config.topic_prefix}.bare"


class Drain(NamedTuple):
    rate: float  # messages per second
    cpu_us: float  # CPU time of the draining processes per message, µs (NaN: no /proc)
    cores: float  # their CPU time per second of the window: 1.0 is one core busy (NaN: no /proc)


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU time of *pids* so far, from /proc (Linux); None elsewhere."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


async def drain_rate(config: KafkaConfig, group: str, topic: str, count: int, pids: Sequence[int]) -> Drain:
    """How fast *group* commits its way through *count* records of *topic*, and at what CPU cost.

    Read from the group's committed offsets every 50 ms, over the last 90 % of the records: the
    first tenth covers joining, fencing and restoring, and with several routers the rebalances
    while they all join. The CPU time of *pids* over the same window, per message, does not
    depend on what else the machine is doing as much as the rate does.
    """
    admin = AIOKafkaAdminClient(**client_options(config))
    await admin.start()
    try:
        start: tuple[float, int, float | None] | None = None
        deadline = time.perf_counter() + 600
        while time.perf_counter() < deadline:
            offsets = await admin.list_consumer_group_offsets(group)
            now, cpu = time.perf_counter(), cpu_seconds(pids)
            done = sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)
            if start is None and done >= count // 10:
                start = (now, done, cpu)
            if start is not None and done >= count:
                seconds, messages = now - start[0], done - start[1]
                used = math.nan if cpu is None or start[2] is None else cpu - start[2]
                return Drain(messages / seconds, used / messages * 1e6, used / seconds)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{group} did not drain {topic}")
    finally:
        await admin.close()


# --------------------------------------------------------------------------- latency


async def paced_latency(
    config: KafkaConfig,
    sinks: Sequence[str],
    rate: int,
    seconds: float,
    corpus: list[tuple[str, str]],
    warmup: float,
) -> list[float]:
    """Produce to sb.inbound at *rate*/s; milliseconds from send to read_committed receipt.

    The first *warmup* seconds are not counted: a freshly started reader and router take a
    second or two to fetch metadata for every partition, and that backlog is not steady state.
    """
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
    producer = AIOKafkaProducer(
        **client_options(config), acks="all", linger_ms=0, compression_type=COMPRESSION
    )
    await producer.start()
    run = uuid.uuid4().hex[:6]
    total = int(rate * (warmup + seconds))
    counted_from = time.perf_counter() + warmup

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
    deadline = time.perf_counter() + warmup + seconds + 30
    try:
        while received < total and time.perf_counter() < deadline:
            batches = await reader.getmany(timeout_ms=20)
            now = time.perf_counter()
            for batch in batches.values():
                for record in batch:
                    received += 1
                    ident = dict(record.headers).get("sb-message-id", b"").decode()
                    start = sent.get(ident)
                    if start is not None and start >= counted_from:
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


@contextlib.asynccontextmanager
async def children(
    role: str, config: KafkaConfig, args: argparse.Namespace, count: int = 1
) -> AsyncIterator[list[int]]:
    """Run *count* pipe or router processes until the block ends; enter once each owns its share.

    Yields their process ids."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            role,
            "--share",
            str(PARTITIONS // count),
            "--prefix",
            config.topic_prefix,
            "--modes",
            "eos" if config.delivery == "exactly_once" else "alo",
            "--bootstrap",
            config.bootstrap or "",
            "--decider",
            args.decider,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            if line.strip() != b"ready":
                raise RuntimeError(f"a {role} process did not get ready: {line!r}")
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            await asyncio.wait_for(process.wait(), timeout=60)


async def serve(args: argparse.Namespace) -> None:
    """The child's side: run *role* on the given topics; say ``ready`` once it owns *share* partitions."""
    exactly_once = args.modes == "eos"
    config = KafkaConfig(
        bootstrap=args.bootstrap,
        topic_prefix=args.prefix,
        partitions=PARTITIONS,
        delivery="exactly_once" if exactly_once else "at_least_once",
    )
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    if args.serve == "pipe":
        pipe = BarePipe(config, Topics(args.prefix).inbound, f"{args.prefix}.bare", exactly_once)
        await pipe.start()
        try:
            await until(lambda: len(pipe.consumer.assignment()) >= args.share)
            print("ready", flush=True)
            await stopped.wait()
        finally:
            await pipe.stop()
        return
    decider, _ = build_decider(args.decider, RouterConfig())
    service = router_service(config, decider)
    await service.start()
    try:
        await until(lambda: len(service.owned_partitions()) >= args.share)
        print("ready", flush=True)
        await stopped.wait()
    finally:
        await service.stop()


class ModeResult(NamedTuple):
    rounds: list[dict[str, float]]  # throughput: one per round, pipe and routers side by side
    latency: list[dict[str, float]]  # one per round: pipe then router, p50 and p99


async def run_mode(bootstrap: str, mode: str, args: argparse.Namespace) -> ModeResult:
    run = uuid.uuid4().hex[:6]
    try:
        return await measure_mode(bootstrap, mode, run, args)
    finally:
        await delete_topics(bootstrap, f"bench{run}{mode}")


async def measure_mode(bootstrap: str, mode: str, run: str, args: argparse.Namespace) -> ModeResult:
    delivery = "exactly_once" if mode == "eos" else "at_least_once"
    corpus = texts()
    departments = Settings().router.departments
    serial = iter(range(1_000))

    async def topics_for(tag: str) -> KafkaConfig:
        config = KafkaConfig(
            bootstrap=bootstrap,
            topic_prefix=f"bench{run}{mode}{tag}{next(serial)}",
            partitions=PARTITIONS,
            delivery=delivery,
        )
        await ensure_topics(config, Topics(config.topic_prefix).all(departments))
        await ensure_topics(config, [TopicSpec(f"{config.topic_prefix}.bare")])
        return config

    async def drained(role: str, count: int) -> Drain:
        config = await topics_for("t")
        inbound = Topics(config.topic_prefix).inbound
        await fill(config, inbound, [inbound_record(n, corpus, run) for n in range(args.messages)])
        async with children(role, config, args, count) as pids:
            group = pipe_group(config) if role == "pipe" else group_id(Settings(kafka=config))
            return await drain_rate(config, group, inbound, args.messages, pids)

    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds if args.only != "latency" else 0):
        drain = await drained("pipe", 1)
        results = {"pipe": drain.rate, "pipe_cpu_us": drain.cpu_us, "pipe_cores": drain.cores}
        for count in args.routers:
            drain = await drained("router", count)
            results[f"router{count}"] = drain.rate
            results[f"router{count}_cpu_us"] = drain.cpu_us
            results[f"router{count}_cores"] = drain.cores
        rounds.append(results)
        # Each round, and latency after them, on a broker holding only its own topics.
        await delete_topics(bootstrap, f"bench{run}{mode}t")
    latency: list[dict[str, float]] = []
    for _ in range(args.rounds if args.only != "throughput" else 0):
        config = await topics_for("l")
        async with children("pipe", config, args):
            sink = f"{config.topic_prefix}.bare"
            bare = await paced_latency(config, [sink], args.rate, args.seconds, corpus, args.warmup)
        config = await topics_for("l")
        async with children("router", config, args):
            names = Topics(config.topic_prefix)
            sinks = [names.department(d) for d in departments] + [names.triage]
            routed = await paced_latency(config, sinks, args.rate, args.seconds, corpus, args.warmup)
        latency.append(
            {
                f"{name}_p{q}": percentile(values, q)
                for name, values in (("pipe", bare), ("router", routed))
                for q in (50, 99)
            }
        )
        await delete_topics(bootstrap, f"bench{run}{mode}l")
    return ModeResult(rounds, latency)


def best_round(rounds: Sequence[dict[str, float]], routers: Sequence[int]) -> dict[str, float]:
    """The fastest pipe and the fastest routers of all rounds, each with its own CPU columns."""
    best = dict(max(rounds, key=lambda r: r["pipe"]))
    for n in routers:
        fastest = max(rounds, key=lambda r: r[f"router{n}"])
        best.update({key: value for key, value in fastest.items() if key.startswith(f"router{n}")})
    return best


def with_added(latency: dict[str, float]) -> dict[str, float]:
    """*latency* and the router's added latency: its percentile minus the pipe's of the same round."""
    added = {f"added_p{q}": latency[f"router_p{q}"] - latency[f"pipe_p{q}"] for q in (50, 99)}
    return {**latency, **added}


def report(args: argparse.Namespace, label: str, results: dict[str, ModeResult]) -> None:
    print(
        f"\nrouter end to end on {args.bootstrap}: {args.messages} messages (~1 KB JSON), "
        f"{PARTITIONS} partitions, decider: {label}; latency at {args.rate} msg/s for {args.seconds:g} s"
    )
    if args.only != "latency":
        routers = "".join(
            f" {f'{n} router(s)':>12} {'ratio':>6} {'CPU µs':>7} {'cores':>5}" for n in args.routers
        )
        print(f"{'mode':10} {'pipe msg/s':>11} {'CPU µs':>7} {'cores':>5}{routers}")
        for mode, result in results.items():
            rows = [(f"{mode} #{i}", r) for i, r in enumerate(result.rounds, 1)] if args.rounds > 1 else []
            rows.append(
                (f"{mode} best" if args.rounds > 1 else mode, best_round(result.rounds, args.routers))
            )
            for name, r in rows:
                cells = "".join(
                    f" {r[f'router{n}']:12,.0f} {r[f'router{n}'] / r['pipe']:6.0%}"
                    f" {r[f'router{n}_cpu_us']:7.0f} {r[f'router{n}_cores']:5.2f}"
                    for n in args.routers
                )
                print(f"{name:10} {r['pipe']:11,.0f} {r['pipe_cpu_us']:7.0f} {r['pipe_cores']:5.2f}{cells}")
            if args.rounds > 1:
                medians = "  ".join(
                    f"{n} router(s) {statistics.median(r[f'router{n}'] / r['pipe'] for r in result.rounds):.0%}"
                    for n in args.routers
                )
                print(f"{mode} median of the rounds' ratios: {medians}")
        print("CPU µs: CPU time of the draining process(es) per message; cores: their CPU time per second")
        if args.rounds > 1:
            print("best: the fastest pipe and the fastest router(s) of the rounds, and their ratio")
    if args.only != "throughput":
        print(f"{'mode':10} {'pipe p50/p99 ms':>16} {'router p50/p99 ms':>18} {'added p50/p99 ms':>17}")
        for mode, result in results.items():
            measured = [with_added(each) for each in result.latency]
            lines = [(mode, measured[0])]
            if args.rounds > 1:
                middle = {key: statistics.median(each[key] for each in measured) for key in measured[0]}
                lines = [(f"{mode} #{i}", each) for i, each in enumerate(measured, 1)]
                lines.append((f"{mode} median", middle))
            for title, cell in lines:
                print(
                    f"{title:10} {cell['pipe_p50']:7.1f}/{cell['pipe_p99']:<8.1f} "
                    f"{cell['router_p50']:9.1f}/{cell['router_p99']:<8.1f} "
                    f"{cell['added_p50']:8.1f}/{cell['added_p99']:<8.1f}"
                )
        if args.rounds > 1:
            print("median: of each column over the rounds (pipe and router take turns, fresh topics)")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=os.environ.get("SWITCHBOARD_TEST_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of each measurement, pipe and routers alternating: throughput reports the best, "
        "latency the median",
    )
    parser.add_argument("--routers", default="1,2", help="router process counts for throughput, e.g. 1,2")
    parser.add_argument("--rate", type=int, default=1_000, help="messages/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of latency load not counted")
    parser.add_argument("--decider", choices=["auto", "real", "standin"], default="auto")
    parser.add_argument("--modes", default="eos,alo", help="comma-separated: eos, alo")
    parser.add_argument("--only", choices=["throughput", "latency"], help="measure one of the two")
    parser.add_argument("--full", action="store_true", help="200,000 messages and 30 s of latency")
    parser.add_argument("--serve", choices=["pipe", "router"], help=argparse.SUPPRESS)
    parser.add_argument("--share", type=int, default=PARTITIONS, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve(args)
        return
    args.routers = [int(n) for n in args.routers.split(",")]
    if args.full:
        args.messages, args.seconds = 200_000, 30.0
    label = decider_label(args.decider)
    results = {mode: await run_mode(args.bootstrap, mode, args) for mode in args.modes.split(",")}
    report(args, label, results)


if __name__ == "__main__":
    asyncio.run(main())
