"""A real broker outage: clients get 451 4.3.0 while it is down, and after it is back every mail
that was answered 250 is on ``sb.inbound``: none missing, repeats only with the same id.

The test starts a broker of its own (``deploy/kafka/kafka.sh``) so it can stop and restart it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from connectors.mailauth import StaticResolver
from connectors.smtp import REPLIES, SmtpConfig, SmtpConnector
from models import InboundMessage
from models.config import KafkaConfig
from tests.brokers import OwnBroker, outage_rig, running_broker

DOMAIN = "example.com"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[OwnBroker]:
    async with running_broker(tmp_path / "kafka") as own:
        yield own


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
    broker: OwnBroker, tmp_path: Path, read: Read
) -> None:
    async with outage_rig(
        broker, topic_prefix="outage", channel="email", instance="outage-mail", idempotent=False
    ) as outage:
        config = SmtpConfig(
            name="outage-mail",
            type="smtp",
            listen="127.0.0.1:0",
            domains=[DOMAIN],
            attachment_dir=tmp_path / "attachments",
            publish_deadline=3.0,
        )
        connector = SmtpConnector(config, outage.context, resolver=StaticResolver({}))
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

    by_subject: dict[str, set[str]] = {}
    expected = len(accepted)
    for _ in range(5):  # repeats may fill the count before every distinct mail was read
        records = await read(outage.config, outage.topics.inbound, expected)
        by_subject = {}
        for message in (InboundMessage.from_json_bytes(r.value) for r in records):
            by_subject.setdefault(message.subject or "", set()).add(message.message_id)
        if len(by_subject) >= len(accepted) or len(records) < expected:
            break
        expected = len(records) + 1
    assert set(by_subject) == set(accepted)  # none missing, nothing unexpected
    assert all(ids == {accepted[subject]} for subject, ids in by_subject.items())  # repeats share the id
