"""The IMAP connector against a real Dovecot (``tests/connectors/dovecot.py``) and the real broker.

Mail is filed with IMAP APPEND, as a mail server or another client would; every published
record is read back from ``sb.inbound``. Each test gets its own Dovecot and its own topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from bus.producer import Producer
from bus.publisher import InboundPublisher
from bus.state import KafkaStateStore, read_compacted
from connectors.base import ConnectorContext, Publish
from connectors.imap import (
    CHANNEL_TYPE,
    Checkpoint,
    ImapConfig,
    ImapConnector,
    ImapUnavailable,
    _Mailbox,
    check,
)
from connectors.metrics import ChannelMetricFamilies
from connectors.registry import Registry
from models import InboundMessage
from models.config import ChannelConfig, ConfigError, KafkaConfig
from models.errors import PublishError
from models.topics import Topics
from switchboard.supervision import Readiness, Supervisor
from tests.conftest import read_topic
from tests.connectors.dovecot import Dovecot, running_dovecot

pytestmark = [pytest.mark.dovecot, pytest.mark.kafka]

INSTANCE = "helpdesk-imap"


def mail(subject: str, body: str = "Where is my parcel?", *, sender: str = "kumar@customer.example") -> bytes:
    message = EmailMessage()
    message["From"] = f"Kumar <{sender}>"
    message["To"] = "help@example.com"
    message["Subject"] = subject
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@customer.example>"
    message.set_content(body)
    return message.as_bytes()


# ----------------------------------------------------------------------------- harness


class Health:
    """A :class:`connectors.base.Health` that remembers every state it was put in."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "starting"
        self.history: list[tuple[bool, str]] = []

    def ok(self) -> None:
        self.ready, self.reason = True, "ok"
        self.history.append((True, "ok"))

    def failing(self, reason: str) -> None:
        self.ready, self.reason = False, reason
        self.history.append((False, reason))


@dataclass
class Harness:
    """Builds connectors the way the host does: state restored from ``sb.state`` at start."""

    kafka: KafkaConfig
    topics: Topics
    producer: Producer
    server: Dovecot
    directory: Path
    supervisor: Supervisor = field(default_factory=lambda: Supervisor(Readiness(), structlog.get_logger("t")))
    running: list[ImapConnector] = field(default_factory=list)
    published: list[str] = field(default_factory=list)  # ids the connector had confirmed, in order
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)  # one per "process"

    def __post_init__(self) -> None:
        self.families = ChannelMetricFamilies(self.registry)

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of this channel's metrics as ``/metrics`` would show it."""
        return self.registry.get_sample_value(name, {"channel": "email", "instance": INSTANCE, **labels})

    def config(self, **overrides: Any) -> ImapConfig:
        values: dict[str, Any] = {
            "name": INSTANCE,
            "type": "imap",
            "host": self.server.host,
            "port": self.server.port,
            "security": "starttls",
            "tls_ca_file": self.server.ca_file,
            "username": self.server.user,
            "password": self.server.password,
            "reconnect_min": 0.2,
            "reconnect_max": 1.0,
            "attachment_dir": self.directory / "attachments",
        }
        values.update(overrides)
        return ImapConfig.model_validate(values)

    async def context(self, *, publish: Publish | None = None) -> tuple[ConnectorContext, Health]:
        publisher = InboundPublisher(self.producer, self.topics, self.kafka.max_record_bytes)

        async def counted(message: InboundMessage) -> None:
            # The producer absorbs repeats of a recent id: count what the connector asks for.
            await publisher.publish(message)
            self.published.append(message.message_id)

        store = KafkaStateStore(self.producer, self.topics.state, INSTANCE)
        store.restore(await read_compacted(self.kafka, self.topics.state))
        health = Health()
        context = ConnectorContext(
            publish=publish or counted,
            quarantine=publisher.quarantine,
            state=store,
            health=health,
            metrics=self.families.bind("email", INSTANCE),
            spawn=self.supervisor.spawn,
            logger=structlog.get_logger("test-imap"),
        )
        return context, health

    async def start(
        self, config: ImapConfig | None = None, *, publish: Publish | None = None
    ) -> tuple[ImapConnector, Health, ConnectorContext]:
        context, health = await self.context(publish=publish)
        connector = CHANNEL_TYPE.factory(config or self.config(), context)
        assert isinstance(connector, ImapConnector)
        await connector.start()
        self.running.append(connector)
        return connector, health, context

    async def new_process(self) -> None:
        """A fresh producer, as after a process restart (a producer absorbs its own repeats)."""
        await self.producer.stop()
        self.producer = Producer(self.kafka, idempotent=False)
        await self.producer.start()

    async def inbound(self, expected: int, timeout: float = 20.0) -> list[InboundMessage]:
        records = await read_topic(self.kafka, self.topics.inbound, expected, timeout)
        return [InboundMessage.from_json_bytes(r.value) for r in records]  # type: ignore[attr-defined]

    async def exactly(self, count: int, settle: float = 3.0) -> list[InboundMessage]:
        """The records on ``sb.inbound`` once *count* arrived, after checking no more follow."""
        records = await self.inbound(count)
        assert len(records) == count, f"expected {count} records, got {len(records)}"
        extra = await self.inbound(count + 1, timeout=settle)
        assert len(extra) == count, f"expected exactly {count} records, got {len(extra)}"
        assert len(self.published) in (0, count), f"the connector published {len(self.published)} times"
        return extra

    async def quarantined(self, expected: int, timeout: float = 20.0) -> list[Any]:
        return await read_topic(self.kafka, self.topics.quarantine, expected, timeout)

    async def append(self, raw: bytes, folder: str = "INBOX", **options: Any) -> int:
        return await asyncio.to_thread(self.server.append, raw, folder, **options)

    async def uids(self, folder: str = "INBOX") -> list[int]:
        """The UIDs in *folder* now, as another client sees them."""

        def search() -> list[int]:
            with self.server.client() as imap:
                imap.select_folder(folder, readonly=True)
                return sorted(int(uid) for uid in imap.search("ALL"))

        return await asyncio.to_thread(search)

    async def flag(self, uid: int, flag: bytes, folder: str = "INBOX") -> None:
        """Set *flag* on *uid* as another client would (a bystander's mark)."""

        def store() -> None:
            with self.server.client() as imap:
                imap.select_folder(folder)
                imap.add_flags([uid], [flag])

        await asyncio.to_thread(store)

    async def subjects(self, folder: str) -> list[str]:
        def fetch() -> list[str]:
            with self.server.client() as imap:
                imap.select_folder(folder, readonly=True)
                found = imap.fetch(imap.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
                headers = [bytes(data[b"BODY[HEADER.FIELDS (SUBJECT)]"]) for data in found.values()]
            return sorted(h.decode().removeprefix("Subject:").strip() for h in headers)

        return await asyncio.to_thread(fetch)

    async def restart_server(self, capabilities: str) -> None:
        """Restart Dovecot announcing only *capabilities* after login (e.g. no MOVE)."""
        await asyncio.to_thread(self.server.stop)
        with self.server.config_file.open("a") as config:
            config.write(f"imap_capability = {capabilities}\n")
        await asyncio.to_thread(self.server.start)

    @contextlib.contextmanager
    def frozen_server(self) -> Iterator[None]:
        """Dovecot stopped dead (SIGSTOP): connections stay open, nothing answers."""
        group = int((self.server.directory / "run" / "master.pid").read_text())
        os.killpg(group, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(group, signal.SIGCONT)

    async def checkpoint(self, folder: str = "INBOX") -> Checkpoint | None:
        store = KafkaStateStore(self.producer, self.topics.state, INSTANCE)
        store.restore(await read_compacted(self.kafka, self.topics.state))
        value = await store.get(f"folder/{folder}")
        return None if value is None else Checkpoint.from_bytes(value)


def in_mailbox_order(records: list[InboundMessage]) -> list[InboundMessage]:
    """Records sorted by IMAP position (the topic's partitions keep order only per conversation)."""

    def position(record: InboundMessage) -> tuple[int, int]:
        imap = record.metadata["imap"]
        assert isinstance(imap, dict)
        return int(str(imap["uidvalidity"])), int(str(imap["uid"]))

    return sorted(records, key=position)


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "it"
) -> None:
    """Wait until the async *condition* holds (checks that talk to the server themselves)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


async def until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> float:
    """Wait until *condition* holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@pytest.fixture
async def harness(
    kafka_config: KafkaConfig, created_topics: Topics, dovecot: Dovecot, tmp_path: Path
) -> AsyncIterator[Harness]:
    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    harness = Harness(kafka_config, created_topics, producer, dovecot, tmp_path)
    try:
        yield harness
    finally:
        for connector in harness.running:
            await connector.stop()
        await harness.supervisor.stop()
        await producer.stop()


# ------------------------------------------------------------------------------- tests


async def test_new_mail_is_published_once_and_left_unseen(harness: Harness) -> None:
    await harness.append(mail("Old mail from before the channel existed"))
    _, health, _ = await harness.start()
    await until(lambda: health.ready, what="the folder to be followed")

    first = await harness.append(mail("Order 4471 not delivered"))
    second = await harness.append(mail("Invoice 88 charged twice", "I was charged twice."))
    records = in_mailbox_order(await harness.exactly(2))

    assert [r.subject for r in records] == ["Order 4471 not delivered", "Invoice 88 charged twice"]
    checkpoint = await harness.checkpoint()
    assert checkpoint is not None and checkpoint.uid == second
    for record, uid in zip(records, (first, second), strict=True):
        assert record.channel == "email" and record.channel_instance == INSTANCE
        assert record.sender.id == "kumar@customer.example"
        assert record.metadata["imap"] == {
            "folder": "INBOX",
            "uidvalidity": checkpoint.uidvalidity,
            "uid": uid,
        }
        assert record.received_at.tzinfo is not None
    assert records[1].text.startswith("I was charged twice.")
    stored = await asyncio.to_thread(harness.server.raw, first)
    assert CHANNEL_TYPE.reprocess is not None
    again = CHANNEL_TYPE.reprocess(harness.config(), stored)
    assert again.message_id == records[0].message_id, "reprocessing repeats the id"
    assert b"\\Seen" not in await asyncio.to_thread(harness.server.flags, first), (
        "fetching must not mark read"
    )


async def test_a_restart_resumes_from_the_checkpoint_without_duplicates(harness: Harness) -> None:
    connector, health, _ = await harness.start()
    await until(lambda: health.ready, what="the folder to be followed")
    for n in range(2):
        await harness.append(mail(f"Before restart {n}"))
    await harness.exactly(2, settle=0.5)
    await connector.stop()

    for n in range(3):
        await harness.append(mail(f"While stopped {n}"))
    _, health, _ = await harness.start()
    records = in_mailbox_order(await harness.exactly(5))

    assert [r.subject for r in records] == [
        "Before restart 0",
        "Before restart 1",
        "While stopped 0",
        "While stopped 1",
        "While stopped 2",
    ]
    assert len({r.message_id for r in records}) == 5
    assert health.ready


async def test_backfill_since_publishes_older_mail_of_that_date_on(harness: Harness) -> None:
    def at(day: str) -> dt.datetime:
        return dt.datetime.fromisoformat(f"{day}T12:00:00+00:00")

    await harness.append(mail("Too old"), when=at("2025-12-30"))
    await harness.append(mail("Backfilled 1"), when=at("2026-01-02"))
    await harness.append(mail("Too old, filed later"), when=at("2025-06-01"))
    await harness.append(mail("Backfilled 2", "read already"), when=at("2026-02-01"), seen=True)
    config = harness.config(backfill_since="2026-01-01", batch_size=1)
    _, health, _ = await harness.start(config)
    await until(lambda: health.ready, what="the backfill")
    # Ready means connected, which can be before the backfill's search: wait for its records,
    # so the next mail is certainly filed after the backfill began.
    assert len(await harness.inbound(2)) == 2
    await harness.append(mail("Arrived after the start"), when=at("2020-01-01"))

    records = in_mailbox_order(await harness.exactly(3))
    assert [r.subject for r in records] == ["Backfilled 1", "Backfilled 2", "Arrived after the start"]
    assert records[0].received_at == at("2026-01-02")
    checkpoint = await harness.checkpoint()
    assert checkpoint is not None and checkpoint.since is None, "the dated range is finished"


async def test_idle_notices_mail_appended_while_idling_within_seconds(harness: Harness) -> None:
    # Polling every 25 minutes: only IDLE can explain a quick pickup.
    _, health, _ = await harness.start(harness.config(poll_interval=1500, staleness=1600))
    await until(lambda: health.ready, what="the folder to be followed")
    await asyncio.sleep(1.0)  # well inside IDLE by now

    appended = time.monotonic()
    await harness.append(mail("Are you there?"))
    records = await harness.inbound(1)
    latency = time.monotonic() - appended

    assert [r.subject for r in records] == ["Are you there?"]
    assert latency < 5, f"IDLE pickup took {latency:.1f}s"


async def test_polling_when_idle_is_off(harness: Harness) -> None:
    _, health, _ = await harness.start(harness.config(idle=False, poll_interval=1))
    await until(lambda: health.ready, what="the folder to be followed")
    await harness.append(mail("Polled"))
    assert [r.subject for r in await harness.inbound(1, timeout=10)] == ["Polled"]


async def test_a_bad_password_fails_health_with_a_clear_reason_and_no_secret_in_logs(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Wr0ng-but-secret-P4ss"
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        _, health, _ = await harness.start(harness.config(password=secret))
        await until(lambda: len(health.history) >= 2, timeout=20, what="two login attempts")

    assert not health.ready
    assert "login refused" in health.reason and "AUTHENTICATIONFAILED" in health.reason, health.reason
    assert "INBOX" in health.reason and harness.server.address in health.reason
    events = [e for e in logs if e.get("event") == "imap session failed"]
    assert events and all("login refused" in e["reason"] for e in events)
    everything = repr(logs) + caplog.text + repr(health.history)
    assert secret not in everything


@pytest.mark.parametrize("security", ["starttls", "tls", "none"])
async def test_mail_arrives_over_starttls_implicit_tls_and_plain_text(
    harness: Harness, security: str
) -> None:
    port = harness.server.tls_port if security == "tls" else harness.server.port
    _, health, _ = await harness.start(harness.config(security=security, port=port))
    await until(lambda: health.ready, what=f"a {security} session")
    await harness.append(mail(f"Over {security}"))
    assert [r.subject for r in await harness.inbound(1)] == [f"Over {security}"]


async def test_an_untrusted_certificate_is_refused(harness: Harness) -> None:
    config = harness.config(security="tls", port=harness.server.tls_port, tls_ca_file=None)
    _, health, _ = await harness.start(config)
    await until(lambda: bool(health.history), what="the first attempt")
    assert not health.ready and "TLS certificate not trusted" in health.reason, health.reason

    # An operator can opt out of verification (a lab server); the connection then works.
    _, unverified, _ = await harness.start(config.model_copy(update={"name": "lab", "tls_verify": False}))
    await until(lambda: unverified.ready, what="an unverified TLS session")


class OneDelivery:
    """Appends one mail to the inbox the first time it is called, and says whether it did."""

    def __init__(self, harness: Harness, subject: str) -> None:
        self.harness, self.subject, self.done = harness, subject, False

    def __call__(self) -> bool:
        if self.done:
            return False
        self.done = True
        self.harness.server.append(mail(self.subject), "INBOX")
        return True


async def subjects_only_an_announcement_delivers(harness: Harness) -> list[str | None]:
    """Start the connector with IDLE renewal, staleness and polling far beyond the wait, so that
    only the server's announcement can wake the folder; the subjects of what arrives."""
    await harness.start(harness.config(idle_renew=1500, staleness=3600, poll_interval=1500))
    return [r.subject for r in await harness.inbound(1, timeout=15)]


async def test_mail_announced_during_a_catch_up_is_taken_before_idling(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server announces a new message once, with the answer to the command running when it
    # arrives. Here it arrives while the catch-up asks for the newest UID: announced in that
    # answer, missing from its result, and not announced again when IDLE starts.
    real = _Mailbox.highest_uid
    deliver = OneDelivery(harness, "Arrived mid-search")

    def highest_uid_while_mail_arrives(mailbox: _Mailbox) -> int:
        top = real(mailbox)
        if deliver():
            real(mailbox)  # its answer carries the announcement; the result is dropped
        return top

    monkeypatch.setattr(_Mailbox, "highest_uid", highest_uid_while_mail_arrives)
    assert await subjects_only_an_announcement_delivers(harness) == ["Arrived mid-search"]
    assert deliver.done


async def test_mail_announced_as_idle_starts_is_taken_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mail delivered just before IDLE starts is announced right after the server's "+ idling",
    # often in the same packet: the client reads both lines into its buffer, consumes the first,
    # and a wait that only polls the socket would not see the announcement until the server
    # next writes (minutes).
    real = _Mailbox.idle_start
    deliver = OneDelivery(harness, "Just before IDLE")

    def idle_start_just_after_delivery(mailbox: _Mailbox) -> bool:
        deliver()
        return real(mailbox)

    monkeypatch.setattr(_Mailbox, "idle_start", idle_start_just_after_delivery)
    assert await subjects_only_an_announcement_delivers(harness) == ["Just before IDLE"]
    assert deliver.done


@pytest.mark.parametrize("source", ["access_token", "token_file"])
async def test_xoauth2_login(harness: Harness, source: str) -> None:
    token_file = harness.directory / "token"
    token_file.write_text(harness.server.oauth_token + "\n")
    token = (
        {"access_token": harness.server.oauth_token}
        if source == "access_token"
        else {"token_file": token_file}
    )
    config = harness.config(username=harness.server.oauth_user, password=None, oauth2=token)
    _, health, _ = await harness.start(config)
    await until(lambda: health.ready, what="an XOAUTH2 session")
    with harness.server.client(harness.server.oauth_user, harness.server.oauth_token) as imap:
        imap.append("INBOX", mail("Via OAuth"))
    assert [r.subject for r in await harness.inbound(1)] == ["Via OAuth"]


async def test_a_server_restart_is_survived(harness: Harness) -> None:
    _, health, _ = await harness.start()
    await until(lambda: health.ready, what="the folder to be followed")
    await harness.append(mail("Before the outage"))
    await harness.inbound(1)

    await asyncio.to_thread(harness.server.stop)
    await until(lambda: not health.ready, what="health to notice the outage")
    assert "INBOX" in health.reason
    await asyncio.to_thread(harness.server.start)
    await until(lambda: health.ready, timeout=20, what="the reconnection")

    await harness.append(mail("After the outage"))
    records = in_mailbox_order(await harness.exactly(2))
    assert [r.subject for r in records] == ["Before the outage", "After the outage"]


async def test_a_new_uidvalidity_rescans_with_the_same_ids(harness: Harness) -> None:
    folder = "Support"
    kept = [mail("Kept 1"), mail("Kept 2")]
    await asyncio.to_thread(harness.server.recreate, folder)
    connector, health, _ = await harness.start(harness.config(folders=[folder]))
    await until(lambda: health.ready, what="the folder to be followed")
    for raw in kept:
        await harness.append(raw, folder)
    before = in_mailbox_order(await harness.exactly(2, settle=0.5))
    old = await harness.checkpoint(folder)
    await connector.stop()
    await harness.new_process()

    await asyncio.to_thread(harness.server.recreate, folder)  # new UIDVALIDITY, same mail
    for raw in kept:
        await harness.append(raw, folder)
    await harness.append(mail("New after the change"), folder)
    _, health, _ = await harness.start(harness.config(folders=[folder]))
    after = in_mailbox_order(await harness.exactly(5))

    new = await harness.checkpoint(folder)
    assert old is not None and new is not None and new.uidvalidity != old.uidvalidity
    assert [r.subject for r in after[2:]] == ["Kept 1", "Kept 2", "New after the change"]
    assert [r.message_id for r in after[2:4]] == [r.message_id for r in before]
    assert len({r.message_id for r in after}) == 3


async def test_mail_that_cannot_be_parsed_is_quarantined_and_passed(harness: Harness) -> None:
    _, health, _ = await harness.start()
    await until(lambda: health.ready, what="the folder to be followed")
    junk = bytes(range(1, 256)) * 4
    uid = await harness.append(junk)
    await harness.append(mail("After the junk"))

    assert [r.subject for r in await harness.inbound(1)] == ["After the junk"]
    [kept] = await harness.quarantined(1)
    headers = dict(kept.headers)
    assert kept.key == INSTANCE.encode()
    assert kept.value == await asyncio.to_thread(harness.server.raw, uid)
    assert f"uid {uid}" in headers["sb-error"].decode()
    assert headers["sb-error-class"] == b"UnparseableEmail"


async def test_mail_over_the_size_limit_is_quarantined_by_header_and_left_on_the_server(
    harness: Harness,
) -> None:
    _, health, _ = await harness.start(harness.config(max_message_size=4096))
    await until(lambda: health.ready, what="the folder to be followed")
    uid = await harness.append(mail("Huge attachment", "x" * 20_000))
    await harness.append(mail("Small"))

    assert [r.subject for r in await harness.inbound(1)] == ["Small"]
    [kept] = await harness.quarantined(1)
    assert b"Subject: Huge attachment" in kept.value and b"x" * 100 not in kept.value
    assert dict(kept.headers)["sb-error-class"] == b"MessageTooLarge"
    assert f"uid {uid}" in dict(kept.headers)["sb-error"].decode()


async def test_a_failed_publish_is_retried_and_the_checkpoint_waits_for_it(harness: Harness) -> None:
    publisher = InboundPublisher(harness.producer, harness.topics, harness.kafka.max_record_bytes)
    failures = 2

    async def flaky_publish(message: InboundMessage) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise PublishError("broker unreachable (test)")
        await publisher.publish(message)

    _, health, _ = await harness.start(publish=flaky_publish)
    await until(lambda: health.ready, what="the folder to be followed")
    start = await harness.checkpoint()
    await harness.append(mail("Needs a retry"))
    await until(lambda: not health.ready, what="the failed publish")
    assert "broker did not confirm" in health.reason
    assert await harness.checkpoint() == start, "no checkpoint before the broker confirmed"

    records = await harness.exactly(1)
    assert records[0].subject == "Needs a retry"
    await until(lambda: health.ready, what="recovery")
    checkpoint = await harness.checkpoint()
    assert start is not None and checkpoint is not None and checkpoint.uid == start.uid + 1


async def test_a_large_folder_is_taken_in_bounded_batches_in_order(harness: Harness) -> None:
    def fill() -> None:
        with harness.server.client() as imap:
            for n in range(120):
                imap.append("INBOX", mail(f"Bulk {n:03}"))

    await asyncio.to_thread(fill)
    config = harness.config(backfill_since="2000-01-01", batch_size=7, batch_bytes=1024 * 1024)
    await harness.start(config)
    records = in_mailbox_order(await harness.exactly(120))
    assert [r.subject for r in records] == [f"Bulk {n:03}" for n in range(120)]


async def test_stop_while_idling_is_prompt(harness: Harness) -> None:
    connector, health, _ = await harness.start()
    await until(lambda: health.ready, what="the folder to be followed")
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await connector.stop()
    await connector.stop()  # idempotent
    assert time.monotonic() - started < 3
    assert health.reason == "stopped"
    await until(lambda: "Logged out" in harness.server.log(), timeout=5, what="a clean LOGOUT")


async def test_post_action_seen_flags_mail_only_after_it_is_published(harness: Harness) -> None:
    publisher = InboundPublisher(harness.producer, harness.topics, harness.kafka.max_record_bytes)
    flags_when_published: dict[int, tuple[bytes, ...]] = {}

    async def publish(message: InboundMessage) -> None:
        imap = message.metadata["imap"]
        assert isinstance(imap, dict)
        uid = int(str(imap["uid"]))
        flags_when_published[uid] = await asyncio.to_thread(harness.server.flags, uid)
        await publisher.publish(message)

    config = harness.config(post_action="seen", max_message_size=4096)
    _, health, _ = await harness.start(config, publish=publish)
    await until(lambda: health.ready, what="the folder to be followed")
    first = await harness.append(mail("Please call me back"))
    huge = await harness.append(mail("Scanned contract", "x" * 20_000))
    last = await harness.append(mail("Also: my address changed"))

    records = in_mailbox_order(await harness.exactly(2))
    assert [r.subject for r in records] == ["Please call me back", "Also: my address changed"]

    async def published_mail_seen() -> bool:
        flags = [await asyncio.to_thread(harness.server.flags, uid) for uid in (first, last)]
        return all(b"\\Seen" in found for found in flags)

    await eventually(published_mail_seen, what="\\Seen on the published mail")
    assert flags_when_published == {first: (), last: ()}, "fetching (BODY.PEEK) must not mark read"
    assert b"\\Seen" not in await asyncio.to_thread(harness.server.flags, huge), (
        "mail kept by its header only is left as it is"
    )
    checkpoint = await harness.checkpoint()
    assert checkpoint is not None and checkpoint.uid == last
    assert await harness.uids() == [first, huge, last]


@pytest.mark.parametrize(
    ("method", "capabilities", "stays_in_inbox"),
    [
        ("move", None, False),  # Dovecot's own list: UID MOVE
        ("copy-expunge", "IMAP4rev1 IDLE UIDPLUS", False),  # COPY, \Deleted, UID EXPUNGE of those UIDs
        ("copy-seen", "IMAP4rev1 IDLE", True),  # COPY and \Seen; the original stays
    ],
)
async def test_post_action_move_files_published_mail_in_another_folder(
    harness: Harness, method: str, capabilities: str | None, stays_in_inbox: bool
) -> None:
    await asyncio.to_thread(harness.server.recreate, "Handled")
    bystander = await harness.append(mail("Someone else's deleted mail"))
    await harness.flag(bystander, b"\\Deleted")
    if capabilities is not None:
        await harness.restart_server(capabilities)
    with structlog.testing.capture_logs() as logs:
        _, health, _ = await harness.start(harness.config(post_action="move", move_to="Handled"))
        await until(lambda: health.ready, what="the folder to be followed")
    [opened] = [e for e in logs if e.get("event") == "imap folder opened"]
    assert opened["move_method"] == method
    warned = any("neither MOVE nor UIDPLUS" in str(e.get("event")) for e in logs)
    assert warned == (method == "copy-seen")
    first = await harness.append(mail("Refund for order 9912"))
    second = await harness.append(mail("Wrong size delivered"))

    records = in_mailbox_order(await harness.exactly(2))
    assert [r.subject for r in records] == ["Refund for order 9912", "Wrong size delivered"]

    async def filed() -> bool:
        return await harness.subjects("Handled") == ["Refund for order 9912", "Wrong size delivered"]

    await eventually(filed, what="the mail in Handled")
    if stays_in_inbox:
        assert await harness.uids() == [bystander, first, second]
        for uid in (first, second):
            assert b"\\Seen" in await asyncio.to_thread(harness.server.flags, uid)
    else:

        async def gone() -> bool:
            return await harness.uids() == [bystander]

        await eventually(gone, what="the originals to leave INBOX")
    assert b"\\Seen" not in await asyncio.to_thread(harness.server.flags, bystander), "only ours are touched"

    # The emptied folder is still followed from its checkpoint: no mail is taken twice.
    third = await harness.append(mail("One more thing"))
    records = await harness.exactly(3)
    checkpoint = await harness.checkpoint()
    assert checkpoint is not None and checkpoint.uid == third
    assert len({r.message_id for r in records}) == 3


async def test_post_action_delete_needs_allow_delete_and_expunges_only_published_mail(
    harness: Harness,
) -> None:
    with pytest.raises(ValidationError, match="allow_delete"):
        harness.config(post_action="delete")
    bystander = await harness.append(mail("Someone else's deleted mail"))
    await harness.flag(bystander, b"\\Deleted")
    _, health, _ = await harness.start(harness.config(post_action="delete", allow_delete=True))
    await until(lambda: health.ready, what="the folder to be followed")
    await harness.append(mail("Delete me once you have it"))

    [record] = await harness.exactly(1)
    assert record.subject == "Delete me once you have it"

    async def gone() -> bool:
        return await harness.uids() == [bystander]

    await eventually(gone, what="the published mail to be expunged")


async def test_a_failing_post_action_leaves_one_record_and_the_checkpoint_advanced(
    harness: Harness,
) -> None:
    config = harness.config(post_action="move", move_to="Does-Not-Exist")
    with pytest.raises(ImapUnavailable, match="folder not found: Does-Not-Exist"):
        await check(config)
    failures = "switchboard_channel_post_action_failures_total"
    with structlog.testing.capture_logs() as logs:
        connector, health, _ = await harness.start(config)
        await until(lambda: health.ready, what="the folder to be followed")
        first = await harness.append(mail("Where is my refund?"))
        second = await harness.append(mail("Second try"))
        records = in_mailbox_order(await harness.exactly(2))
        await until(lambda: harness.metric(failures, action="move") == 2, what="the failures counted")

    assert [r.subject for r in records] == ["Where is my refund?", "Second try"]
    checkpoint = await harness.checkpoint()
    assert checkpoint is not None and checkpoint.uid == second
    assert await harness.uids() == [first, second], "the mail stays where it was"
    assert health.ready, "a failed post-action is normal, not an outage"
    events = [e for e in logs if str(e.get("event", "")).startswith("imap post-action failed")]
    assert events and all("server refused a command" in e["reason"] for e in events), events

    # The session goes on, and a restart does not take the mail again.
    third = await harness.append(mail("Third"))
    await harness.exactly(3)
    await connector.stop()
    await harness.new_process()
    _, health, _ = await harness.start(config)
    await until(lambda: health.ready, what="the restarted folder")
    assert len(await harness.exactly(3)) == 3
    checkpoint = await harness.checkpoint()
    assert checkpoint is not None and checkpoint.uid == third


async def test_a_folder_not_fetched_within_staleness_fails_health_until_it_is_again(
    harness: Harness,
) -> None:
    last_success = "switchboard_channel_last_success_timestamp_seconds"
    error = "switchboard_channel_error"
    _, health, _ = await harness.start(harness.config(staleness=3, poll_interval=1, command_timeout=30))
    await until(lambda: health.ready, what="the folder to be followed")

    # A live IDLE session counts as fetching: quiet for well past the staleness, still ready.
    ready_at = len(health.history)
    await asyncio.sleep(7)
    assert health.ready and all(ok for ok, _ in health.history[ready_at:]), health.history
    before = harness.metric(last_success)
    assert before is not None and time.time() - before < 3
    assert harness.metric(error) == 0

    with harness.frozen_server():  # the connection stays open; nothing answers
        await until(lambda: not health.ready, timeout=10, what="staleness to be noticed")
        assert "INBOX: no successful fetch for" in health.reason, health.reason
        assert harness.server.address in health.reason
        assert harness.metric(error) == 1
        frozen_at = harness.metric(last_success)
        await asyncio.sleep(1)
        assert harness.metric(last_success) == frozen_at
    await until(lambda: health.ready, timeout=20, what="health to recover once fetching works")
    assert harness.metric(error) == 0
    after = harness.metric(last_success)
    assert after is not None and frozen_at is not None and after > frozen_at

    await harness.append(mail("After the freeze"))
    assert [r.subject for r in await harness.inbound(1)] == ["After the freeze"]


async def test_check_logs_in_and_lists_the_folders(harness: Harness) -> None:
    await harness.append(mail("One"))
    summary = await check(harness.config())
    assert "INBOX (1 message)" in summary and harness.server.user in summary

    with pytest.raises(ImapUnavailable, match="folder not found: Nope"):
        await check(harness.config(folders=["INBOX", "Nope"]))
    with pytest.raises(ImapUnavailable, match="login refused"):
        await check(harness.config(password="wrong"))


def test_config_is_validated_before_any_io() -> None:
    base = {"name": "helpdesk", "type": "imap", "host": "imap.example.com", "username": "u"}
    config = ImapConfig.model_validate({**base, "password": "p"})
    assert config.effective_port == 993 and config.folders == ("INBOX",) and config.idle
    assert ImapConfig.model_validate({**base, "password": "p", "security": "starttls"}).effective_port == 143
    assert "p" not in repr(config.password)

    registry = Registry.default()
    cases = [
        ({**base}, "exactly one of password and oauth2"),
        ({**base, "password": "p", "oauth2": {"access_token": "t"}}, "exactly one of password and oauth2"),
        ({**base, "password": "p", "idle_renew": 1800}, "idle_renew"),
        ({**base, "password": "p", "folders": []}, "folders"),
        ({**base, "password": "p", "folders": ["INBOX", "INBOX"]}, "unique"),
        ({**base, "password": "p", "security": "ssl"}, "security"),
        ({**base, "password": "p", "pasword": "typo"}, "pasword"),
        ({**base, "password": "p", "listen": "0.0.0.0:993"}, "listen"),
        ({**base, "oauth2": {}}, "exactly one of access_token and token_file"),
        ({**base, "password": "p", "post_action": "move"}, "move_to is required"),
        ({**base, "password": "p", "move_to": "Done"}, "only used with post_action: move"),
        ({**base, "password": "p", "post_action": "move", "move_to": "inbox"}, "followed folder"),
        ({**base, "password": "p", "post_action": "delete"}, "allow_delete"),
        ({**base, "password": "p", "post_action": "archive"}, "post_action"),
        ({**base, "password": "p", "poll_interval": 900}, "staleness must exceed poll_interval"),
    ]
    for tree, needle in cases:
        with pytest.raises(ConfigError) as error:
            registry.validate(ChannelConfig.model_validate(tree), 2)
        assert any(line.startswith("channels[2]") and needle in line for line in error.value.lines), (
            error.value.lines
        )
    with pytest.raises(ValidationError):
        ImapConfig.model_validate({**base, "password": "p", "backfill_since": "yesterday"})


def test_checkpoints_round_trip_and_reject_garbage() -> None:
    now = dt.datetime(2026, 11, 23, 10, tzinfo=dt.UTC)
    dated = Checkpoint(7, 0, now, dt.date(2026, 1, 1), until_uid=40)
    assert Checkpoint.from_bytes(dated.to_bytes()) == dated
    assert dated.filtered(40) and not dated.filtered(41)
    assert dated.advanced(39, now).since is not None and dated.advanced(40, now).since is None
    for garbage in (b"", b"{}", b"[1]", b'{"uidvalidity": "x", "uid": 1, "at": "now"}'):
        with pytest.raises(ValueError):
            Checkpoint.from_bytes(garbage)
