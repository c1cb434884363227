"""IMAP backfill rate: how fast the IMAP connector drains a large folder into Kafka.

    python bench/imap_ingest.py [--bootstrap 127.0.0.1:9092] [--messages 20000] [--batch-size 50]
    python bench/imap_ingest.py --messages 100000          # the 100k-mailbox run

A private Dovecot (``tests/connectors/dovecot.py``) gets a folder of N mails, written straight
into its maildir (APPEND of 100k mails would take longer than the run itself); Dovecot indexes
them on the first SELECT, which is timed separately. The connector then follows the folder with
``backfill_since`` in the past, so it publishes every mail: UID windows, bounded FETCHes, a
checkpoint per batch, each after the broker confirmed (acks=all). The run ends when the
checkpoint reaches the newest UID; the topic is then counted to show nothing is missing or
repeated. Reported: mails/s, MB/s of mail, and the process's peak RSS growth (bounded batches
keep it flat whatever the folder size).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import structlog
from imapclient import IMAPClient
from prometheus_client import CollectorRegistry

from bus.admin import ensure_topics
from bus.producer import Producer
from bus.publisher import InboundPublisher
from bus.state import KafkaStateStore
from connectors.base import ConnectorContext
from connectors.imap import Checkpoint, ImapConfig, ImapConnector
from connectors.metrics import ChannelMetricFamilies
from models.config import KafkaConfig
from models.topics import Topics
from switchboard.supervision import Readiness, Supervisor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers: Dovecot, read_topic
from tests.conftest import read_topic
from tests.connectors.dovecot import Dovecot, running_dovecot

INSTANCE = "bench-imap"


def sample_mail(n: int, body_bytes: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"Customer {n % 500} <customer{n % 500}@example.org>"
    message["To"] = "help@example.com"
    message["Subject"] = f"Order {n} not delivered"
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = f"<bench-{n}-{uuid.uuid4().hex}@example.org>"
    line = "My parcel never arrived and the tracking page has not changed for a week.\n"
    message.set_content(line * max(1, body_bytes // len(line)))
    return message.as_bytes().replace(b"\n", b"\r\n")


def fill_maildir(server: Dovecot, count: int, body_bytes: int) -> int:
    """Write *count* mails into the user's INBOX maildir; returns the bytes written."""
    with server.client() as imap:  # the first login creates the maildir
        imap.select_folder("INBOX")
    maildir = server.directory / "mail" / server.user / "Maildir"
    owner = maildir.stat()
    written = 0
    stamp = int(time.time())
    for n in range(count):
        data = sample_mail(n, body_bytes)
        path = maildir / "cur" / f"{stamp}.M{n}P{os.getpid()}.bench,S={len(data)}:2,"
        path.write_bytes(data)
        os.chown(path, owner.st_uid, owner.st_gid)
        written += len(data)
    return written


def index_folder(server: Dovecot) -> float:
    """SELECT once so Dovecot indexes the new files; returns the seconds it took."""
    started = time.perf_counter()
    with IMAPClient(server.host, server.port, ssl=False, timeout=600) as imap:
        imap.login(server.user, server.password)
        imap.select_folder("INBOX", readonly=True)
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    kafka = KafkaConfig(bootstrap=args.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}", partitions=6)
    topics = Topics(kafka.topic_prefix)
    await ensure_topics(kafka, topics.all(["general"]))
    with running_dovecot() as server:
        started = time.perf_counter()
        size = await asyncio.to_thread(fill_maildir, server, args.messages, args.body_bytes)
        print(
            f"filled maildir: {args.messages} mails, {size / 1e6:.1f} MB in {time.perf_counter() - started:.1f}s"
        )
        print(f"dovecot indexed the folder in {await asyncio.to_thread(index_folder, server):.1f}s")

        producer = Producer(kafka, idempotent=True)
        await producer.start()
        state = KafkaStateStore(producer, topics.state, INSTANCE)
        logger = structlog.get_logger("bench")
        readiness = Readiness()
        supervisor = Supervisor(readiness, logger)
        publisher = InboundPublisher(producer, topics, kafka.max_record_bytes)
        context = ConnectorContext(
            publish=publisher.publish,
            quarantine=publisher.quarantine,
            state=state,
            health=readiness.component(INSTANCE),
            metrics=ChannelMetricFamilies(CollectorRegistry()).bind("email", INSTANCE),
            spawn=supervisor.spawn,
            logger=logger,
        )
        config = ImapConfig(
            name=INSTANCE,
            host=server.host,
            port=server.port,
            security="none",
            username=server.user,
            password=server.password,
            backfill_since="2000-01-01",
            batch_size=args.batch_size,
            attachment_dir=Path(server.directory) / "attachments",
        )
        connector = ImapConnector(config, context)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        await connector.start()
        last = 0
        while last < args.messages:
            await asyncio.sleep(0.2)
            stored = await state.get("folder/INBOX")
            last = Checkpoint.from_bytes(stored).uid if stored else 0
        seconds = time.perf_counter() - started
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        await connector.stop()
        await supervisor.stop()
        await producer.stop()

    records = await read_topic(kafka, topics.inbound, args.messages + 1, timeout=10)
    ids = {bytes(dict(r.headers)["sb-message-id"]) for r in records}  # type: ignore[attr-defined]
    print(
        f"published {len(records)} records ({len(ids)} distinct ids) in {seconds:.1f}s: "
        f"{args.messages / seconds:.0f} mails/s, {size / seconds / 1e6:.1f} MB/s; "
        f"batch_size {args.batch_size}; peak RSS grew {rss_growth / 1024:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("SWITCHBOARD_TEST_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--body-bytes", type=int, default=2_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
