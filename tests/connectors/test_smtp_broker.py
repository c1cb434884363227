"""A real broker outage: clients get 451 4.3.0 while it is down, and after it is back every mail
that was answered 250 is on ``sb.inbound``: none missing, repeats only with the same id.

The test starts a broker of its own (``deploy/kafka/kafka.sh``) so it can stop and restart it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import structlog
from prometheus_client import CollectorRegistry

from bus.admin import ensure_topics
from bus.producer import Producer
from bus.publisher import InboundPublisher
from bus.state import KafkaStateStore
from connectors.base import ConnectorContext
from connectors.mailauth import StaticResolver
from connectors.metrics import ChannelMetricFamilies
from connectors.smtp import REPLIES, SmtpConfig, SmtpConnector
from models import InboundMessage
from models.config import KafkaConfig
from models.topics import Topics
from switchboard.supervision import Readiness, Supervisor

KAFKA_SH = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"
DOMAIN = "example.com"


def free_port_pair() -> int:
    """A port whose successor is free too (the broker's controller listens on PORT+1)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65535:
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no free port pair")


async def kafka(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "bash", str(KAFKA_SH), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output = (await asyncio.wait_for(process.communicate(), 120))[0].decode()
    assert process.returncode == 0, output


class Broker:
    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory

    async def start(self) -> None:
        await kafka("start", str(self.port), str(self.directory))

    async def stop(self) -> None:
        await kafka("stop", str(self.directory))


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    own = Broker(free_port_pair(), tmp_path / "kafka")
    await own.start()
    try:
        yield own
    finally:
        await own.stop()


def mail(n: int) -> bytes:
    message = EmailMessage()
    message["From"] = "kumar@customer.example"
    message["To"] = f"support@{DOMAIN}"
    message["Subject"] = f"outage mail {n}"
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = f"<outage-{n}@customer.example>"
    message.set_content(f"Mail number {n}.")
    return message.as_bytes()


async def send(port: int, raw: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    async with client:
        try:
            _, reply = await client.sendmail("kumar@customer.example", [f"support@{DOMAIN}"], raw)
        except aiosmtplib.SMTPDataError as error:
            return error.code, f"{error.code} {error.message}"
    return 250, reply


Read = Callable[[KafkaConfig, str, int], Awaitable[list[Any]]]


async def test_broker_outage_answers_451_and_loses_no_accepted_mail(
    broker: Broker, tmp_path: Path, read: Read
) -> None:
    kafka_config = KafkaConfig(
        bootstrap=f"127.0.0.1:{broker.port}",
        topic_prefix="outage",
        partitions=2,
        publish_timeout_s=2.0,
        request_timeout_ms=3000,
    )
    topics = Topics(kafka_config.topic_prefix)
    await ensure_topics(kafka_config, topics.all(["general"]))
    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    readiness = Readiness()
    logger = structlog.get_logger("test")
    publisher = InboundPublisher(producer, topics, kafka_config.max_record_bytes)
    context = ConnectorContext(
        publish=publisher.publish,
        quarantine=publisher.quarantine,
        state=KafkaStateStore(producer, topics.state, "outage-mail"),
        health=readiness.component("outage-mail"),
        metrics=ChannelMetricFamilies(CollectorRegistry()).bind("email", "outage-mail"),
        spawn=Supervisor(readiness, logger).spawn,
        logger=logger,
    )
    config = SmtpConfig(
        name="outage-mail",
        type="smtp",
        listen="127.0.0.1:0",
        domains=[DOMAIN],
        attachment_dir=tmp_path / "attachments",
        publish_deadline=3.0,
    )
    connector = SmtpConnector(config, context, resolver=StaticResolver({}))
    await connector.start()
    assert connector.address is not None
    port = connector.address.port
    accepted: dict[str, str] = {}  # subject -> message_id of every mail answered 250
    try:
        for n in range(5):
            code, reply = await send(port, mail(n))
            assert code == 250, reply
            accepted[f"outage mail {n}"] = reply.rsplit(" ", 1)[1]

        await broker.stop()
        during = await asyncio.gather(*(send(port, mail(n)) for n in range(5, 10)))
        assert during == [(451, REPLIES["publish_failed"])] * 5

        await broker.start()
        pending = list(range(5, 10))
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:  # the sending servers retry
            retried = await asyncio.gather(*(send(port, mail(n)) for n in pending))
            for n, (code, reply) in zip(list(pending), retried, strict=True):
                if code == 250:
                    accepted[f"outage mail {n}"] = reply.rsplit(" ", 1)[1]
                    pending.remove(n)
                else:
                    assert (code, reply) == (451, REPLIES["publish_failed"])
            if pending:
                await asyncio.sleep(1)
        assert pending == []
    finally:
        await connector.stop()
        await producer.stop()

    by_subject: dict[str, set[str]] = {}
    expected = len(accepted)
    for _ in range(5):  # repeats may fill the count before every distinct mail was read
        records = await read(kafka_config, topics.inbound, expected)
        by_subject = {}
        for message in (InboundMessage.from_json_bytes(r.value) for r in records):
            by_subject.setdefault(message.subject or "", set()).add(message.message_id)
        if len(by_subject) >= len(accepted) or len(records) < expected:
            break
        expected = len(records) + 1
    assert set(by_subject) == set(accepted)  # none missing, nothing unexpected
    assert all(ids == {accepted[subject]} for subject, ids in by_subject.items())  # repeats share the id
