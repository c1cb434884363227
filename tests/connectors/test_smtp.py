"""The SMTP connector against real clients (smtplib, aiosmtplib, swaks) and the real broker.

Every accepted mail is read back from ``sb.inbound``; DNS for SPF/DKIM/DMARC comes from a
:class:`StaticResolver`, so no test touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import shutil
import smtplib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import aiosmtplib
import dkim  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from connectors.base import ConnectorContext
from connectors.mail import UnparseableEmail
from connectors.mailauth import RecordType, StaticResolver
from connectors.registry import Registry
from connectors.smtp import CHANNEL_TYPE, REPLIES, SmtpConfig, SmtpConnector
from models import Attachment, InboundMessage
from models.config import ChannelConfig, KafkaConfig
from models.errors import PublishError, RecordRejected
from models.quarantine import QuarantineItem
from models.topics import Topics

DOMAIN = "example.com"
SENDER = "kumar@customer.example"
DNS: dict[tuple[str, RecordType], list[str]] = {
    ("customer.example", "TXT"): ["v=spf1 ip4:127.0.0.0/8 -all"],
    ("_dmarc.customer.example", "TXT"): ["v=DMARC1; p=reject"],
}

Start = Callable[..., Awaitable[SmtpConnector]]
Read = Callable[[KafkaConfig, str, int], Awaitable[list[Any]]]


def mail(
    subject: str = "Order 4471 not delivered", body: str = "My parcel never arrived.", **headers: str
) -> bytes:
    message = EmailMessage()
    message["From"] = f"Kumar <{SENDER}>"
    message["To"] = f"support@{DOMAIN}"
    message["Subject"] = subject
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = headers.pop("message_id", f"<{time.monotonic_ns()}@customer.example>")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes().replace(b"\n", b"\r\n")


async def inbound(read: Read, config: KafkaConfig, topics: Topics, expected: int) -> list[InboundMessage]:
    records = await read(config, topics.inbound, expected)
    return [InboundMessage.from_json_bytes(r.value) for r in records]


def queued_id(reply: str) -> str:
    assert "queued as" in reply, reply
    return reply.rsplit(" ", 1)[1]


async def _servers(context: ConnectorContext, tmp_path: Path) -> AsyncIterator[Start]:
    started: list[SmtpConnector] = []

    async def start(
        context_: ConnectorContext | None = None, resolver: StaticResolver | None = None, **overrides: Any
    ) -> SmtpConnector:
        options: dict[str, Any] = {
            "name": "support-mail",
            "type": "smtp",
            "listen": "127.0.0.1:0",
            "domains": [DOMAIN],
            "hostname": "mx.test",
            "attachment_dir": tmp_path / "attachments",
        }
        options.update(overrides)
        connector = SmtpConnector(
            SmtpConfig(**options), context_ or context, resolver=resolver or StaticResolver(DNS)
        )
        await connector.start()
        started.append(connector)
        return connector

    yield start
    for connector in started:
        await connector.stop()


@pytest.fixture
async def server(connector_context: ConnectorContext, tmp_path: Path) -> AsyncIterator[Start]:
    async for start in _servers(connector_context, tmp_path):
        yield start


def port(connector: SmtpConnector) -> int:
    assert connector.address is not None
    return connector.address.port


class Dialog:
    """A bare SMTP conversation over a socket, for what real clients refuse to send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, connector: SmtpConnector) -> tuple[Dialog, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port(connector))
        dialog = cls(reader, writer)
        return dialog, await dialog.reply()

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 5)).decode().rstrip("\r\n")
            if not line:
                raise ConnectionError("closed by the server")
            lines.append(line)
            if line[3:4] != "-":
                return "\n".join(lines)

    async def send(self, *lines: str) -> str:
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode())
        await self.writer.drain()
        return await self.reply()

    async def closed(self, within: float = 5.0) -> bool:
        try:
            rest = await asyncio.wait_for(self.reader.read(), within)
        except (TimeoutError, ConnectionError):
            return False
        return rest == b"" or rest.endswith(b"\r\n")

    def close(self) -> None:
        self.writer.close()


# -------------------------------------------------------------------------------- clients


async def test_smtplib_mail_to_two_recipients_is_one_record(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    connector = await server()
    raw = mail()

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port(connector), timeout=10) as client:
            client.ehlo("client.customer.example")
            assert client.has_extn("pipelining") and client.has_extn("smtputf8")
            assert client.has_extn("8bitmime") and client.esmtp_features["size"] == "26214400"
            client.mail(SENDER)
            assert client.rcpt(f"support@{DOMAIN}")[0] == 250
            assert client.rcpt(f"Billing@{DOMAIN.upper()}")[0] == 250
            return client.data(raw)

    code, reply = await asyncio.to_thread(send)
    assert code == 250
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.message_id == queued_id(reply.decode())
    assert record.channel == "email" and record.channel_instance == "support-mail"
    assert record.recipients == (f"support@{DOMAIN}", f"Billing@{DOMAIN.upper()}")
    assert record.auth == {"spf": "pass", "dkim": "none", "dmarc": "pass"}
    assert record.metadata["mail_auth"] == {
        "spf_domain": "customer.example",
        "dkim_domains": [],
        "from_domain": "customer.example",
        "dmarc_policy": "reject",
    }


async def test_aiosmtplib_mail_is_published_with_the_reply_id(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    connector = await server()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(connector), start_tls=False)
    async with client:
        errors, reply = await client.sendmail(SENDER, [f"help@{DOMAIN}"], mail(subject="Düsseldorf"))
    assert errors == {}
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.message_id == queued_id(reply)
    assert record.subject == "Düsseldorf"
    assert record.text.startswith("My parcel never arrived.")


async def test_swaks_mail_is_published(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    swaks = shutil.which("swaks")
    assert swaks is not None, "swaks is required: apt-get install swaks"
    connector = await server()
    process = await asyncio.create_subprocess_exec(
        swaks,
        "--server", "127.0.0.1",
        "--port", str(port(connector)),
        "--helo", "client.customer.example",
        "--from", SENDER,
        "--to", f"orders@{DOMAIN},returns@{DOMAIN}",
        "--header", "Subject: Exchange for order 99",
        "--body", "Please exchange the size M shirt for an L.",
        "--pipeline",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
    assert process.returncode == 0, output
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert f"queued as {record.message_id}" in output
    assert record.subject == "Exchange for order 99"
    assert record.recipients == (f"orders@{DOMAIN}", f"returns@{DOMAIN}")
    assert "size M shirt" in record.text


async def test_dkim_signed_mail_records_dkim_pass(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    dns = {
        **DNS,
        ("s1._domainkey.customer.example", "TXT"): [f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"],
    }
    raw = mail()
    signed = dkim.sign(raw, b"s1", b"customer.example", pem, include_headers=[b"from", b"subject"]) + raw
    connector = await server(resolver=StaticResolver(dns))
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(connector), start_tls=False)
    async with client:
        # A bounce address elsewhere: SPF is about another domain, DKIM still aligns.
        await client.sendmail("bounce@elsewhere.example", [f"support@{DOMAIN}"], signed)
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.auth == {"spf": "none", "dkim": "pass", "dmarc": "pass"}


async def test_start_opens_no_connection_and_large_mail_is_accepted(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    resolver = StaticResolver(DNS)
    connector = await server(resolver=resolver)
    assert resolver.asked == []  # nothing looked up until a mail arrives
    body = "Line of a long complaint about a late delivery.\n" * 8000  # ~400 kB: parsed off the loop
    code, reply = await send_once(connector, mail(subject="long one", body=body))
    assert code == 250
    assert ("customer.example", "TXT") in resolver.asked
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.message_id == queued_id(reply) and record.subject == "long one"


def with_attachment(subject: str, text: str, data: bytes, *, content_type: str, filename: str) -> bytes:
    """A mail from the customer carrying *data* as its one attachment."""
    message = EmailMessage()
    message["From"] = f"Kumar <{SENDER}>"
    message["To"] = f"support@{DOMAIN}"
    message["Subject"] = subject
    message.set_content(text)
    maintype, subtype = content_type.split("/")
    message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def stored_bytes(attachment: Attachment, tmp_path: Path) -> bytes:
    """The bytes behind *attachment*, which must be stored in the test's attachment directory."""
    assert attachment.ref is not None
    stored = Path(url2pathname(urlparse(attachment.ref).path))
    assert stored.is_relative_to((tmp_path / "attachments").resolve())
    return stored.read_bytes()


async def test_attachments_are_stored_before_the_record_is_published(
    server: Start, tmp_path: Path, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    connector = await server()
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16
    raw = with_attachment(
        "Broken kettle", "Photo attached.", photo, content_type="image/png", filename="kettle.png"
    )
    assert (await send_once(connector, raw))[0] == 250
    [record] = await inbound(read, kafka_config, created_topics, 1)
    [attachment] = record.attachments
    assert attachment.filename == "kettle.png" and attachment.size == len(photo)
    assert stored_bytes(attachment, tmp_path) == photo


async def test_reprocess_parses_a_kept_mail_again_with_its_id_and_attachments(
    server: Start, tmp_path: Path, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    connector = await server()
    receipt = b"%PDF-1.4\n" + bytes(range(256)) * 8
    raw = with_attachment(
        "Receipt for order 4471",
        "The receipt is attached.",
        receipt,
        content_type="application/pdf",
        filename="receipt.pdf",
    )
    assert (await send_once(connector, raw))[0] == 250
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert CHANNEL_TYPE.reprocess is not None
    again = CHANNEL_TYPE.reprocess(connector.config, raw)
    assert (again.message_id, again.channel_instance) == (record.message_id, "support-mail")
    assert (again.subject, again.text) == (record.subject, record.text)
    assert again.auth == {} and again.received_at >= record.received_at  # no envelope, parsed now
    [attachment] = again.attachments
    assert attachment.sha256 == record.attachments[0].sha256
    assert stored_bytes(attachment, tmp_path) == receipt


async def test_a_null_sender_bounce_is_marked(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    connector = await server()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(connector), start_tls=False)
    async with client:
        await client.sendmail("", [f"support@{DOMAIN}"], mail(subject="Delivery failure"))
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.metadata["auto_submitted"] == "bounce"
    assert record.sender.id == SENDER  # From still names who wrote it


async def test_without_verification_no_dns_is_asked(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    resolver = StaticResolver(DNS)
    connector = await server(resolver=resolver, verify_auth=False)
    assert (await send_once(connector, mail()))[0] == 250
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert resolver.asked == []
    assert "mail_auth" not in record.metadata


# ------------------------------------------------------------------------------- refusals


async def test_relay_attempts_are_refused_and_never_recorded(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    connector = await server(addresses=["sales@partner.example"])
    dialog, banner = await Dialog.open(connector)
    assert banner == "220 mx.test ESMTP Switchboard"
    await dialog.send("EHLO client.test")
    assert (await dialog.send(f"MAIL FROM:<{SENDER}>")).startswith("250")
    assert await dialog.send("RCPT TO:<victim@elsewhere.example>") == REPLIES["relay_denied"]
    assert (await dialog.send(f"RCPT TO:<someone@sub.{DOMAIN}>")).startswith("550 5.7.1")
    assert (await dialog.send("RCPT TO:<other@partner.example>")).startswith("550 5.7.1")
    assert (await dialog.send("RCPT TO:<@relay.example:victim@elsewhere.example>")).startswith("550 5.7.1")
    assert (await dialog.send("DATA")).startswith("503")  # no accepted recipient yet
    assert (await dialog.send("RCPT TO:<Sales@Partner.example>")).startswith("250")
    assert (await dialog.send("RCPT TO:<postmaster>")).startswith("250")
    assert (await dialog.send("DATA")).startswith("354")
    reply = await dialog.send(*mail().decode().split("\r\n")[:-1], ".")
    assert reply.startswith("250 2.0.0")
    assert (await dialog.send("QUIT")).startswith("221")
    dialog.close()
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.recipients == ("Sales@Partner.example", "postmaster")


async def test_oversized_mail_gets_552_and_the_session_goes_on(
    server: Start, read: Read, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    connector = await server(max_message_size=4096)
    dialog, _ = await Dialog.open(connector)
    assert "250-SIZE 4096" in await dialog.send("EHLO client.test")
    assert await dialog.send(f"MAIL FROM:<{SENDER}> SIZE=5000") == REPLIES["too_big"]
    assert (await dialog.send(f"MAIL FROM:<{SENDER}>")).startswith("250")
    assert (await dialog.send(f"RCPT TO:<support@{DOMAIN}>")).startswith("250")
    assert (await dialog.send("DATA")).startswith("354")
    big = mail(body="x" * 70 + "\n" + ("y" * 70 + "\n") * 80).decode().split("\r\n")[:-1]
    assert await dialog.send(*big, ".") == REPLIES["too_big"]
    small = mail(subject="small one").decode().split("\r\n")[:-1]
    assert (await dialog.send(f"MAIL FROM:<{SENDER}>")).startswith("250")
    assert (await dialog.send(f"RCPT TO:<support@{DOMAIN}>")).startswith("250")
    assert (await dialog.send("DATA")).startswith("354")
    assert (await dialog.send(*small, ".")).startswith("250 2.0.0")
    dialog.close()
    records = await inbound(read, kafka_config, created_topics, 1)
    assert [r.subject for r in records] == ["small one"]


async def test_bad_commands_and_sequence_errors(server: Start) -> None:
    connector = await server()
    dialog, _ = await Dialog.open(connector)
    assert (await dialog.send("FROB")).startswith("500")
    assert (await dialog.send(f"MAIL FROM:<{SENDER}>")).startswith("503")  # no EHLO yet
    assert (await dialog.send("EHLO")).startswith("501")
    await dialog.send("EHLO client.test")
    assert (await dialog.send(f"RCPT TO:<support@{DOMAIN}>")).startswith("503")  # no MAIL yet
    assert (await dialog.send("DATA")).startswith("503")
    assert (await dialog.send("MAIL TO:<x@y.example>")).startswith("501")
    assert (await dialog.send("MAIL FROM:<<>>")).startswith("553")  # malformed address
    assert (await dialog.send("MAIL FROM:")).startswith("501")
    assert (await dialog.send("MAIL FROM:<>")).startswith("250")  # a bounce: null sender
    assert (await dialog.send(f"MAIL FROM:<{SENDER}>")).startswith("503")  # nested MAIL
    assert (await dialog.send("RSET")).startswith("250")
    assert (await dialog.send("VRFY support")).startswith("252")
    assert (await dialog.send("AUTH PLAIN AGZvbwBiYXI=")).startswith("502")  # no AUTH configured
    assert (await dialog.send("QUIT")).startswith("221")
    assert await dialog.closed()


async def test_pipelined_commands_are_answered_in_order(server: Start) -> None:
    connector = await server()
    dialog, _ = await Dialog.open(connector)
    assert "250-PIPELINING" in await dialog.send("EHLO client.test")
    dialog.writer.write(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@{DOMAIN}>\r\nRCPT TO:<b@relay.example>\r\nDATA\r\n".encode()
    )
    replies = [await dialog.reply() for _ in range(4)]
    assert [r[:3] for r in replies] == ["250", "250", "550", "354"]
    assert (await dialog.send(*mail().decode().split("\r\n")[:-1], ".")).startswith("250 2.0.0")
    dialog.close()


async def test_too_many_recipients_get_452(server: Start) -> None:
    connector = await server(max_recipients=2)
    dialog, _ = await Dialog.open(connector)
    await dialog.send("EHLO client.test")
    await dialog.send(f"MAIL FROM:<{SENDER}>")
    assert (await dialog.send(f"RCPT TO:<a@{DOMAIN}>")).startswith("250")
    assert (await dialog.send(f"RCPT TO:<A@{DOMAIN}>")).startswith("250")  # same mailbox: not counted
    assert (await dialog.send(f"RCPT TO:<b@{DOMAIN}>")).startswith("250")
    assert await dialog.send(f"RCPT TO:<c@{DOMAIN}>") == REPLIES["too_many_recipients"]
    dialog.close()


async def test_messages_per_connection_are_capped(server: Start) -> None:
    connector = await server(max_messages_per_connection=1)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(connector), start_tls=False)
    await client.connect()
    await client.sendmail(SENDER, [f"a@{DOMAIN}"], mail())
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await client.sendmail(SENDER, [f"a@{DOMAIN}"], mail())
    assert (refused.value.code, refused.value.message) == (421, REPLIES["too_many_messages"][4:])
    client.close()


async def test_idle_client_is_disconnected_after_command_timeout(server: Start) -> None:
    connector = await server(command_timeout=0.4)
    dialog, _ = await Dialog.open(connector)
    await dialog.send("EHLO client.test")
    started = time.monotonic()
    assert await dialog.closed(within=3)
    assert 0.3 < time.monotonic() - started < 2.0


async def test_slow_data_is_cut_at_data_timeout(server: Start) -> None:
    connector = await server(command_timeout=5, data_timeout=0.8, publish_deadline=0.3, auth_timeout=0.2)
    dialog, _ = await Dialog.open(connector)
    await dialog.send("EHLO client.test")
    await dialog.send(f"MAIL FROM:<{SENDER}>")
    await dialog.send(f"RCPT TO:<a@{DOMAIN}>")
    assert (await dialog.send("DATA")).startswith("354")
    started = time.monotonic()
    for _ in range(30):  # a line every 0.1 s keeps the stream alive but never ends the mail
        dialog.writer.write(b"still typing\r\n")
        try:
            await dialog.writer.drain()
        except ConnectionError:
            break
        if dialog.reader.at_eof():
            break
        await asyncio.sleep(0.1)
    assert await dialog.closed(within=3)
    assert time.monotonic() - started < 2.5


async def test_sessions_over_the_cap_get_421(server: Start) -> None:
    connector = await server(max_sessions=2)
    first, banner1 = await Dialog.open(connector)
    second, banner2 = await Dialog.open(connector)
    assert banner1.startswith("220") and banner2.startswith("220")
    third, banner3 = await Dialog.open(connector)
    assert banner3 == REPLIES["too_many_sessions"]
    assert await third.closed()
    await first.send("QUIT")
    first.close()
    await asyncio.sleep(0.1)
    fourth, banner4 = await Dialog.open(connector)
    assert banner4.startswith("220")
    for dialog in (second, fourth):
        dialog.close()


# ----------------------------------------------------------------------------- TLS and AUTH


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / mx.test."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def trusting(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


async def test_starttls_is_required_when_configured(
    server: Start,
    certificate: tuple[Path, Path],
    read: Read,
    kafka_config: KafkaConfig,
    created_topics: Topics,
) -> None:
    cert, key = certificate
    connector = await server(tls_cert=cert, tls_key=key, require_tls=True)
    dialog, _ = await Dialog.open(connector)
    assert "250-STARTTLS" in await dialog.send("EHLO client.test")
    assert (await dialog.send(f"MAIL FROM:<{SENDER}>")).startswith("530")
    dialog.close()

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port(connector), timeout=10) as client:
            client.starttls(context=trusting(cert))
            client.ehlo("client.test")
            client.mail(SENDER)
            client.rcpt(f"support@{DOMAIN}")
            return client.data(mail(subject="over tls"))

    code, _ = await asyncio.to_thread(send)
    assert code == 250
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.subject == "over tls" and record.metadata["smtp_tls"] is True


async def test_auth_over_tls(
    server: Start,
    certificate: tuple[Path, Path],
    read: Read,
    kafka_config: KafkaConfig,
    created_topics: Topics,
) -> None:
    cert, key = certificate
    connector = await server(tls_cert=cert, tls_key=key, auth_users={"agent": "s3cret"}, require_auth=True)
    dialog, _ = await Dialog.open(connector)
    assert "AUTH" not in await dialog.send("EHLO client.test")  # not offered in clear text
    assert (await dialog.send(f"MAIL FROM:<{SENDER}>")).startswith("530")
    dialog.close()

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(connector), tls_context=trusting(cert))
    async with client:
        await client.ehlo()
        assert client.is_ehlo_or_helo_needed is False and "plain" in client.server_auth_methods
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.login("agent", "wrong")
        await client.login("agent", "s3cret")
        await client.sendmail(SENDER, [f"support@{DOMAIN}"], mail(subject="authenticated"))
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.metadata["smtp_auth_user"] == "agent"


async def test_repeated_auth_failures_end_the_session(server: Start) -> None:
    connector = await server(auth_users={"agent": "s3cret"}, auth_require_tls=False)
    dialog, _ = await Dialog.open(connector)
    assert "250-AUTH LOGIN PLAIN" in await dialog.send("EHLO client.test")
    wrong = base64.b64encode(b"\0agent\0nope").decode()
    assert (await dialog.send(f"AUTH PLAIN {wrong}")).startswith("535")
    assert (await dialog.send(f"AUTH PLAIN {wrong}")).startswith("535")
    assert (await dialog.send(f"AUTH PLAIN {wrong}")).startswith("535")
    assert await dialog.reply() == REPLIES["too_many_auth_failures"]
    assert await dialog.closed()


# --------------------------------------------------------------------- failures and contract


class Recorder:
    """Wraps a publish: counts calls, fails the first *failures* of them, optionally stalls."""

    def __init__(
        self,
        publish: Callable[[InboundMessage], Awaitable[None]],
        failures: int = 0,
        error: Exception | None = None,
        stall: float = 0.0,
    ) -> None:
        self._publish = publish
        self.failures = failures
        self.error = error or PublishError("broker down")
        self.stall = stall
        self.calls: list[InboundMessage] = []

    async def __call__(self, message: InboundMessage) -> None:
        self.calls.append(message)
        if self.stall:
            await asyncio.sleep(self.stall)
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        await self._publish(message)


async def send_once(connector: SmtpConnector, raw: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(connector), start_tls=False)
    async with client:
        try:
            _, reply = await client.sendmail(SENDER, [f"support@{DOMAIN}"], raw)
        except aiosmtplib.SMTPDataError as error:
            return error.code, f"{error.code} {error.message}"
    return 250, f"250 {reply}"


async def test_publish_failure_answers_451_and_the_retry_keeps_the_id(
    server: Start,
    connector_context: ConnectorContext,
    read: Read,
    kafka_config: KafkaConfig,
    created_topics: Topics,
) -> None:
    recorder = Recorder(connector_context.publish, failures=1)
    connector = await server(dataclasses.replace(connector_context, publish=recorder))
    raw = mail()
    assert await send_once(connector, raw) == (451, REPLIES["publish_failed"])
    code, reply = await send_once(connector, raw)  # the sending server retries the same bytes
    assert code == 250
    first, second = recorder.calls
    assert first.message_id == second.message_id == queued_id(reply)
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.message_id == first.message_id


async def test_a_broker_slower_than_the_deadline_gets_451(
    server: Start, connector_context: ConnectorContext
) -> None:
    recorder = Recorder(connector_context.publish, stall=5.0)
    connector = await server(dataclasses.replace(connector_context, publish=recorder), publish_deadline=0.3)
    started = time.monotonic()
    assert await send_once(connector, mail()) == (451, REPLIES["publish_failed"])
    assert time.monotonic() - started < 3


async def test_a_record_the_broker_rejects_gets_554(
    server: Start, connector_context: ConnectorContext
) -> None:
    recorder = Recorder(connector_context.publish, failures=1, error=RecordRejected("too large"))
    connector = await server(dataclasses.replace(connector_context, publish=recorder))
    assert await send_once(connector, mail()) == (554, REPLIES["record_rejected"])


async def test_unparseable_mail_is_quarantined_whole_and_accepted(
    server: Start,
    connector_context: ConnectorContext,
    read: Read,
    kafka_config: KafkaConfig,
    created_topics: Topics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import connectors.smtp as smtp

    def unparseable(raw: bytes, **_: object) -> InboundMessage:
        raise UnparseableEmail("no usable header section")

    monkeypatch.setattr(smtp, "message_from_email", unparseable)
    connector = await server()
    raw = mail(body="z" * 50_000)
    code, reply = await send_once(connector, raw)
    assert (code, reply) == (250, smtp.KEPT)
    [record] = await read(kafka_config, created_topics.quarantine, 1)
    headers = dict(record.headers)
    assert headers["sb-error-class"] == b"UnparseableEmail"
    ref = headers["sb-error"].decode().rsplit(" ", 1)[1]
    assert Path(url2pathname(urlparse(ref).path)).read_bytes() == raw
    assert record.value == raw


async def test_a_failing_quarantine_gets_451(
    server: Start, connector_context: ConnectorContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.smtp as smtp

    def unparseable(raw: bytes, **_: object) -> InboundMessage:
        raise UnparseableEmail("broken")

    async def quarantine_down(item: QuarantineItem) -> None:
        raise PublishError("broker down")

    monkeypatch.setattr(smtp, "message_from_email", unparseable)
    connector = await server(dataclasses.replace(connector_context, quarantine=quarantine_down))
    assert await send_once(connector, mail()) == (451, REPLIES["publish_failed"])


async def test_contract_publishes_once_per_message(
    server: Start,
    connector_context: ConnectorContext,
    read: Read,
    kafka_config: KafkaConfig,
    created_topics: Topics,
) -> None:
    recorder = Recorder(connector_context.publish)
    connector = await server(dataclasses.replace(connector_context, publish=recorder))
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(connector), start_tls=False)
    async with client:
        for n in range(3):
            await client.sendmail(SENDER, [f"a@{DOMAIN}", f"b@{DOMAIN}"], mail(subject=f"n{n}"))
    assert [m.subject for m in recorder.calls] == ["n0", "n1", "n2"]
    records = await inbound(read, kafka_config, created_topics, 3)
    assert sorted(r.subject or "" for r in records) == ["n0", "n1", "n2"]


async def test_contract_stop_drains_in_flight_data_and_is_idempotent(
    connector_context: ConnectorContext,
    tmp_path: Path,
    read: Read,
    kafka_config: KafkaConfig,
    created_topics: Topics,
) -> None:
    recorder = Recorder(connector_context.publish, stall=0.5)
    config = SmtpConfig(
        name="draining", type="smtp", listen="127.0.0.1:0", domains=[DOMAIN], attachment_dir=tmp_path
    )
    connector = SmtpConnector(
        config, dataclasses.replace(connector_context, publish=recorder), resolver=StaticResolver(DNS)
    )
    await connector.start()
    idle, _ = await Dialog.open(connector)
    sending = asyncio.create_task(send_once(connector, mail(subject="in flight")))
    while not recorder.calls:
        await asyncio.sleep(0.01)
    await asyncio.gather(connector.stop(), connector.stop())
    code, _ = await sending
    assert code == 250
    assert (await idle.reply()) == REPLIES["shutting_down"]
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port(connector))
    await connector.stop()
    [record] = await inbound(read, kafka_config, created_topics, 1)
    assert record.subject == "in flight"


# ---------------------------------------------------------------------------------- config


def test_registry_builds_the_smtp_type_with_defaults() -> None:
    generic = ChannelConfig.model_validate({"name": "support-mail", "type": "smtp", "domains": [DOMAIN]})
    config = Registry.default().validate(generic, 0)
    assert isinstance(config, SmtpConfig)
    assert str(config.listen) == "127.0.0.1:2525"
    assert config.max_message_size == 26_214_400 and config.publish_deadline == 20.0
    assert CHANNEL_TYPE.channel == "email" and CHANNEL_TYPE.factory is not None


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"domains": []}, "set domains and/or addresses"),
        ({"addresses": ["not-an-address"]}, "is not an address"),
        ({"tls_cert": "/x.pem"}, "tls_cert and tls_key go together"),
        ({"require_tls": True}, "require_tls needs tls_cert"),
        ({"require_auth": True}, "require_auth needs auth_users"),
        ({"auth_users": {"a": "b"}}, "AUTH is offered only over TLS"),
        ({"data_timeout": 10}, "data_timeout must exceed"),
        ({"max_message_size": 0}, "greater than or equal to 1024"),
        ({"relay": True}, "Extra inputs are not permitted"),
    ],
)
def test_bad_configuration_is_refused(overrides: dict[str, Any], complaint: str) -> None:
    options: dict[str, Any] = {"name": "m", "type": "smtp", "domains": [DOMAIN], **overrides}
    with pytest.raises(ValidationError, match=complaint):
        SmtpConfig(**options)


def test_secrets_do_not_show_in_the_config() -> None:
    config = SmtpConfig(
        name="m", type="smtp", domains=[DOMAIN], auth_users={"agent": "s3cret"}, auth_require_tls=False
    )
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.model_dump())
