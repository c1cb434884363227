"""The runtime: a SIGTERM drains and commits; the HTTP endpoints tell health and readiness."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import httpx
import pytest
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from bus.admin import ensure_topics
from bus.options import client_options
from bus.producer import Producer
from models.config import HostPort, KafkaConfig
from models.topics import TopicSpec
from switchboard.http import HttpServer, ListenError, build_app
from switchboard.supervision import Readiness, Supervisor


async def _committed(config: KafkaConfig, topic: str, group: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(**client_options(config), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for partition in range(partitions):
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


async def test_sigterm_during_a_consume_loop_commits_what_was_processed_and_exits_0(
    kafka_config: KafkaConfig, unique: str
) -> None:
    topic = f"{kafka_config.topic_prefix}.work"
    await ensure_topics(kafka_config, [TopicSpec(topic)])
    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    for n in range(2_000):
        await producer.kafka.send(topic, str(n).encode(), key=str(n % 7).encode())
    await producer.kafka.flush()
    await producer.stop()

    group = f"sigterm-{unique}"
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.switchboard.consume_worker",
        str(kafka_config.bootstrap),
        topic,
        group,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert worker.stdout is not None
    while True:  # wait until it is mid-stream
        line = (await asyncio.wait_for(worker.stdout.readline(), timeout=60)).decode()
        assert line, "the worker exited before consuming"
        if line.startswith("handled") and int(line.split()[1]) >= 100:
            break
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    output = (await asyncio.wait_for(worker.stdout.read(), timeout=10)).decode()
    code = await worker.wait()
    elapsed = time.monotonic() - started

    assert code == 0
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    handled = int(output.strip().splitlines()[-1].split("=")[1])
    assert 100 <= handled < 2_000
    assert await _committed(kafka_config, topic, group, kafka_config.partitions) == handled


async def test_readyz_reports_each_component_and_metrics_are_prometheus_text() -> None:
    readiness = Readiness()
    registry = CollectorRegistry()
    server = HttpServer(build_app(readiness, registry), HostPort("127.0.0.1", 0))
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            readiness.component("kafka").ok()
            readiness.component("channel:support-mail").failing("start failed: port in use")
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["components"]["channel:support-mail"] == {
                "ready": False,
                "reason": "start failed: port in use",
            }
            readiness.component("channel:support-mail").ok()
            assert (await client.get("/readyz")).status_code == 200
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    finally:
        await server.stop()


def test_a_port_in_use_is_one_clear_error() -> None:
    first = HttpServer(build_app(Readiness(), CollectorRegistry()), HostPort("127.0.0.1", 0))
    with pytest.raises(
        ListenError, match=rf"cannot listen on 127.0.0.1:{first.port}: Address already in use"
    ):
        HttpServer(build_app(Readiness(), CollectorRegistry()), HostPort("127.0.0.1", first.port))


async def test_a_crashing_background_task_is_logged_and_flips_readiness() -> None:
    readiness = Readiness()
    supervisor = Supervisor(readiness, structlog.get_logger("test"))
    readiness.component("poller").ok()

    async def crash() -> None:
        raise RuntimeError("mailbox vanished")

    await supervisor.spawn("poller", crash())
    await asyncio.sleep(0.05)
    assert readiness.snapshot()["poller"] == {
        "ready": False,
        "reason": "task failed: RuntimeError('mailbox vanished')",
    }
    await supervisor.stop()
