"""SMTP ingest rate: mails accepted per second through the SMTP connector into Kafka.

    python bench/smtp_ingest.py [--bootstrap 127.0.0.1:9092] [--messages 2000] [--concurrency 1,10,50]
    python bench/smtp_ingest.py --messages 10000          # the full run

The connector runs in this process with a real producer (acks=all, the host's options); the
aiosmtplib clients run in a child process so they do not share the connector's core. Each
client holds one connection and sends one mail at a time; a mail's latency is MAIL to the 250
after DATA, which the connector sends only once the broker confirmed the record. SPF and DMARC
are evaluated against an in-memory resolver, so no DNS leaves the machine.

Beside it, in the same run, the raw aiokafka producer sends the same record bytes: awaiting
each send with the same number of concurrent senders (what SMTP does per connection), and
batched (all sends in flight, then one wait). Ratios are SMTP rate / raw rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from aiokafka import AIOKafkaProducer

from bus.admin import ensure_topics
from bus.producer import Producer, producer_options
from connectors.attachments import LocalAttachmentStore
from connectors.mail import EmailEnvelope, message_from_email
from connectors.mailauth import RecordType, StaticResolver
from connectors.smtp import SmtpConfig, SmtpConnector
from models.config import KafkaConfig
from models.topics import Topics, TopicSpec
from switchboard.supervision import Readiness

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.common, when run as a script
from bench.common import connector_context, percentile, quiet_logger

SENDER = "kumar@customer.example"
RECIPIENT = "support@example.com"
DNS: dict[tuple[str, RecordType], list[str]] = {
    ("customer.example", "TXT"): ["v=spf1 ip4:127.0.0.0/8 -all"],
    ("_dmarc.customer.example", "TXT"): ["v=DMARC1; p=none"],
}


def sample_mail(n: int, body_bytes: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"Kumar <{SENDER}>"
    message["To"] = RECIPIENT
    message["Subject"] = f"Order {n} not delivered"
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = f"<bench-{n}-{uuid.uuid4().hex}@customer.example>"
    line = "My parcel never arrived and the tracking page has not changed for a week.\n"
    message.set_content(line * max(1, body_bytes // len(line)))
    return message.as_bytes()


# ------------------------------------------------------------------------- clients (child)


def run_clients(port: int, count: int, concurrency: int, body_bytes: int) -> tuple[float, list[float]]:
    """In a child process: send *count* mails over *concurrency* connections; (seconds, latencies)."""
    return asyncio.run(_clients(port, count, concurrency, body_bytes))


async def _clients(port: int, count: int, concurrency: int, body_bytes: int) -> tuple[float, list[float]]:
    mails = [sample_mail(n, body_bytes) for n in range(count)]
    latencies: list[float] = []
    queue = iter(mails)

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        async with smtp:
            for raw in queue:
                started = time.perf_counter()
                _, reply = await smtp.sendmail(SENDER, [RECIPIENT], raw)
                latencies.append(time.perf_counter() - started)
                assert "queued as" in reply, reply

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


# ------------------------------------------------------------------------------ raw kafka


async def raw_awaited(
    config: KafkaConfig, topic: str, payload: bytes, count: int, concurrency: int
) -> tuple[float, list[float]]:
    producer = AIOKafkaProducer(**producer_options(config, idempotent=True))
    await producer.start()
    latencies: list[float] = []
    remaining = iter(range(count))
    try:

        async def sender() -> None:
            for n in remaining:
                started = time.perf_counter()
                await (await producer.send(topic, payload, key=str(n % 1000).encode()))
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies
    finally:
        await producer.stop()


async def raw_batched(config: KafkaConfig, topic: str, payload: bytes, count: int) -> float:
    producer = AIOKafkaProducer(**producer_options(config, idempotent=True))
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, payload, key=str(n % 1000).encode()) for n in range(count)]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


# ---------------------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=os.environ.get("SWITCHBOARD_TEST_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--messages", type=int, default=2000, help="mails per concurrency level")
    parser.add_argument("--concurrency", default="1,10,50", help="comma-separated client counts")
    parser.add_argument("--body", type=int, default=1500, help="approximate body bytes per mail")
    parser.add_argument("--no-verify", action="store_true", help="skip SPF/DKIM/DMARC evaluation")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    logger = quiet_logger()
    config = KafkaConfig(bootstrap=args.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}")
    topics = Topics(config.topic_prefix)
    await ensure_topics(config, topics.all(["general"]))
    producer = Producer(config, idempotent=True)
    await producer.start()
    context = connector_context(
        producer,
        topics,
        max_record_bytes=config.max_record_bytes,
        readiness=Readiness(),
        logger=logger,
        channel="email",
        instance="bench-mail",
    )
    attachments = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    smtp_config = SmtpConfig(
        name="bench-mail",
        type="smtp",
        listen="127.0.0.1:0",
        domains=["example.com"],
        hostname="bench.test",
        attachment_dir=attachments,
        max_sessions=max(levels) + 10,
        max_messages_per_connection=100_000,
        verify_auth=not args.no_verify,
    )
    connector = SmtpConnector(smtp_config, context, resolver=StaticResolver(DNS))
    await connector.start()
    assert connector.address is not None
    sample = sample_mail(0, args.body)
    record = message_from_email(
        sample,
        channel_instance="bench-mail",
        received_at=datetime.now(UTC),
        envelope=EmailEnvelope(mail_from=SENDER, recipients=(RECIPIENT,), peer_ip="127.0.0.1"),
        attachments=LocalAttachmentStore(attachments),
        auth={"spf": "pass", "dkim": "none", "dmarc": "pass"},
    )
    payload = record.to_json_bytes()
    rows: list[tuple[str, int, float, list[float]]] = []
    loop = asyncio.get_running_loop()
    try:
        with ProcessPoolExecutor(max_workers=1) as pool:
            await loop.run_in_executor(pool, run_clients, connector.address.port, 20, 2, args.body)  # warm-up
            for level in levels:
                seconds, latencies = await loop.run_in_executor(
                    pool, run_clients, connector.address.port, args.messages, level, args.body
                )
                rows.append(
                    ("smtp (aiosmtplib -> connector -> kafka)", level, args.messages / seconds, latencies)
                )
    finally:
        await connector.stop()
        await producer.stop()
    raw_topic = f"{config.topic_prefix}.raw"
    await ensure_topics(config, [TopicSpec(raw_topic)])
    raw_rows: dict[int, float] = {}
    for level in levels:
        seconds, latencies = await raw_awaited(config, raw_topic, payload, args.messages, level)
        raw_rows[level] = args.messages / seconds
        rows.append(("raw aiokafka, each send awaited", level, raw_rows[level], latencies))
    batched = args.messages / await raw_batched(config, raw_topic, payload, args.messages)
    rows.append(("raw aiokafka, batched", 0, batched, []))

    print(
        f"\nSMTP ingest on {args.bootstrap}: {args.messages} mails per row, mail {len(sample)} B, "
        f"record {len(payload)} B, acks=all idempotent, {config.partitions} partitions"
    )
    header = f"{'what':42} {'clients':>7} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs raw awaited':>15} {'vs batched':>11}"
    print(header)
    print("-" * len(header))
    for name, level, rate, latencies in rows:
        p50 = percentile(latencies, 0.50) * 1000 if latencies else float("nan")
        p99 = percentile(latencies, 0.99) * 1000 if latencies else float("nan")
        versus = f"{rate / raw_rows[level]:.2f}" if name.startswith("smtp") else ""
        versus_batched = f"{rate / batched:.3f}" if name.startswith("smtp") else ""
        clients = str(level) if level else "-"
        print(f"{name:42} {clients:>7} {rate:9,.0f} {p50:8.2f} {p99:8.2f} {versus:>15} {versus_batched:>11}")
    if rows and rows[0][3]:
        print(f"\n(mean SMTP latency at {rows[0][1]} client(s): {statistics.mean(rows[0][3]) * 1000:.2f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
