"""Drivers for the shared connector contract test (``test_contract.py``): one per channel type.

A driver knows three things about its channel and nothing else: the smallest valid config
(on free ports, touching no network beyond 127.0.0.1), how a customer message reaches the
connector through the channel's real protocol, and how to read the source's answer to it:

* ``smtp`` — aiosmtplib sends the mail; 250 accepts it, 451 asks to retry.
* ``imap`` — the mail is filed in a private Dovecot with IMAP APPEND; it is accepted when the
  folder's checkpoint passes its UID, and held (retry) while a publish of it failed and the
  checkpoint stays before it. The "retry" is the connector's own next attempt.
* ``slack``, ``telegram``, ``whatsapp``, ``sms``, ``webhook`` — a signed request to the
  connector's app, served as the process serves it (``switchboard.http``) on a free port;
  200 accepts it, 503 asks to retry.
* ``webchat`` — a real WebSocket session; ``ack`` accepts a message, an ``unavailable`` error
  frame asks to retry.

:func:`running` builds the connector through :class:`connectors.registry.Registry` on a
context whose publish is a :class:`Recorder` in front of the real broker.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import copy
import dataclasses
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode

import aiosmtplib
import httpx
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Origin

from connectors.base import Connector, ConnectorContext, HttpConnector
from connectors.imap import Checkpoint
from connectors.registry import Registry
from connectors.signatures import sign_hmac_sha256, sign_hub_sha256, sign_slack, sign_twilio
from connectors.telegram import SECRET_HEADER as TELEGRAM_SECRET_HEADER
from connectors.webhook import SIGNATURE_HEADER as WEBHOOK_SIGNATURE_HEADER
from models import InboundMessage
from models.config import ChannelConfig, HostPort, KafkaConfig
from models.errors import PublishError
from models.topics import Topics
from switchboard.http import HttpServer, build_app
from switchboard.supervision import Readiness
from tests.connectors.dovecot import Dovecot, running_dovecot
from tests.connectors.fixtures.harness import Gate, Harness, channel_context, fixture_bytes, fixture_json
from tests.connectors.test_smtp import DOMAIN, SENDER, mail

__all__ = [
    "DRIVERS",
    "Answer",
    "Driver",
    "HealthLog",
    "Recorder",
    "Rig",
    "running",
]

Verdict = Literal["accepted", "retry", "refused", "silent"]
"""What the source was told: stored; try again later; no (other reason); nothing in time."""

ANSWER_TIMEOUT = 15.0  # seconds a delivery may take before it counts as unanswered
_POLL = 0.05  # seconds between looks at a checkpoint


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """The source's answer to one delivery, as the channel's protocol expressed it."""

    verdict: Verdict
    detail: str


class Recorder:
    """The publish a connector under contract is handed: it keeps every call and its outcome.

    Calls pass through the harness's :class:`Gate` to the real broker; while :meth:`fail` is in
    force every call raises :class:`PublishError` like an unreachable broker.
    """

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self.calls: list[InboundMessage] = []
        self.confirmed: list[InboundMessage] = []
        self.failed: list[InboundMessage] = []

    async def publish(self, message: InboundMessage) -> None:
        self.calls.append(message)
        try:
            await self._gate.publish(message)
        except PublishError:
            self.failed.append(message)
            raise
        self.confirmed.append(message)

    def fail(self) -> None:
        self._gate.close()

    def recover(self) -> None:
        self._gate.open()


class HealthLog:
    """A :class:`connectors.base.Health` that remembers the connector's last report."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "starting"

    def ok(self) -> None:
        self.ready, self.reason = True, "ok"

    def failing(self, reason: str) -> None:
        self.ready, self.reason = False, reason


@dataclasses.dataclass
class Rig:
    """One channel instance under contract: its validated config, context and connector."""

    driver: Driver
    config: ChannelConfig
    channel: str  # the ``channel`` its records must carry
    harness: Harness
    recorder: Recorder
    health: HealthLog
    context: ConnectorContext
    connector: Connector

    @property
    def name(self) -> str:
        return self.config.name

    async def rebuild(self) -> Connector:
        """A new connector from the same config and state, as a restarted host builds it."""
        await self.driver.detach()
        self.connector = Registry.default().build(self.config, self.context)
        await self.driver.attach(self.connector)
        return self.connector

    async def ready(self) -> None:
        await self.driver.ready(self)

    async def deliver(self, n: int, *, timeout: float = ANSWER_TIMEOUT) -> Answer:
        """The platform sends customer message *n* (again, if it was sent before)."""
        return await self.driver.deliver(self, n, timeout=timeout)

    async def redeliver(self, n: int, *, timeout: float = ANSWER_TIMEOUT) -> Answer:
        """The source retries message *n* after it was told to."""
        return await self.driver.redeliver(self, n, timeout=timeout)


class Driver(abc.ABC):
    """How the contract test reaches one channel type. One instance serves one test."""

    type: ClassVar[str]
    name: ClassVar[str]  # the channel instance name
    remembers_ids: ClassVar[bool] = True
    """Whether the channel keeps a processed-id memory, so a platform's repeat is not published again."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.token = uuid.uuid4().hex[:10]  # makes this test's platform ids its own
        self.sent: collections.Counter[int] = collections.Counter()

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[None]:
        """The platform side the connector connects to, running for the whole test."""
        yield

    @abc.abstractmethod
    def tree(self) -> dict[str, Any]:
        """The smallest valid ``channels[i]`` entry for this type, as a YAML file would hold it."""

    async def attach(self, connector: Connector) -> None:
        """Make a freshly built connector reachable (the HTTP channels mount it on a server)."""
        return None

    async def detach(self) -> None:
        """Undo :meth:`attach`; idempotent."""
        return None

    async def ready(self, rig: Rig) -> None:
        """Return once a started connector takes traffic (``start`` returning is enough by default)."""
        return None

    async def deliver(self, rig: Rig, n: int, *, timeout: float) -> Answer:
        self.sent[n] += 1
        try:
            async with asyncio.timeout(timeout):
                return await self.send(rig, n, repeat=self.sent[n] - 1)
        except TimeoutError:
            return Answer("silent", f"no answer within {timeout:g}s")

    async def redeliver(self, rig: Rig, n: int, *, timeout: float) -> Answer:
        return await self.deliver(rig, n, timeout=timeout)

    @abc.abstractmethod
    async def send(self, rig: Rig, n: int, *, repeat: int) -> Answer:
        """Deliver message *n* for the *repeat*-th time over the real protocol; return the answer."""

    def text(self, n: int) -> str:
        return f"Contract message {n} ({self.token}): where is my order?"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------- email


def contract_mail(driver: Driver, n: int) -> bytes:
    """Mail *n* of this test; the same bytes every time (a resend is the same message)."""
    return mail(
        subject=f"Contract {n}",
        body=driver.text(n),
        message_id=f"<contract-{driver.token}-{n}@customer.example>",
    )


class SmtpDriver(Driver):
    type = "smtp"
    name = "contract-smtp"
    remembers_ids = False  # a resend is published again with the same message_id

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()  # fixed, so a rebuilt connector proves the socket was released

    def tree(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "smtp",
            "listen": f"127.0.0.1:{self.port}",
            "domains": [DOMAIN],
            "verify_auth": False,  # SPF/DKIM would ask DNS servers beyond 127.0.0.1
            "attachment_dir": str(self.workdir / "attachments"),
        }

    async def send(self, rig: Rig, n: int, *, repeat: int) -> Answer:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, timeout=10)
        try:
            async with client:
                _, reply = await client.sendmail(SENDER, [f"support@{DOMAIN}"], contract_mail(self, n))
        except aiosmtplib.SMTPResponseException as error:
            verdict: Verdict = "retry" if error.code == 451 else "refused"
            return Answer(verdict, f"{error.code} {error.message}")
        except (aiosmtplib.SMTPException, OSError) as error:
            return Answer("refused", f"{type(error).__name__}: {error}")
        return Answer("accepted", f"250 {reply}")


class ImapDriver(Driver):
    type = "imap"
    name = "contract-imap"
    remembers_ids = False  # a second copy of a mail is published again with the same message_id
    folder = "INBOX"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._server: Dovecot | None = None
        self.uids: dict[int, int] = {}  # message -> UID of its newest copy

    @property
    def server(self) -> Dovecot:
        assert self._server is not None, "the Dovecot peer is not running"
        return self._server

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[None]:
        with contextlib.ExitStack() as stack:
            self._server = await asyncio.to_thread(stack.enter_context, running_dovecot())
            try:
                yield
            finally:
                await asyncio.to_thread(stack.close)

    def tree(self) -> dict[str, Any]:
        server = self.server
        return {
            "name": self.name,
            "type": "imap",
            "host": server.host,
            "port": server.port,
            "security": "starttls",
            "tls_ca_file": str(server.ca_file),
            "username": server.user,
            "password": server.password,
            "folders": [self.folder],
            "reconnect_min": 0.2,  # the retry after a failed publish comes within a second
            "reconnect_max": 1.0,
            "attachment_dir": str(self.workdir / "attachments"),
        }

    async def ready(self, rig: Rig) -> None:
        """The folder is followed: anything filed from now on is new mail."""
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while not rig.health.ready:
                await asyncio.sleep(_POLL)

    async def checkpoint(self, rig: Rig) -> Checkpoint | None:
        stored = await rig.context.state.get(f"folder/{self.folder}")
        return None if stored is None else Checkpoint.from_bytes(stored)

    async def send(self, rig: Rig, n: int, *, repeat: int) -> Answer:
        uid = await asyncio.to_thread(self.server.append, contract_mail(self, n), self.folder)
        self.uids[n] = uid
        return await self._outcome(rig, uid, held_counts=True)

    async def redeliver(self, rig: Rig, n: int, *, timeout: float) -> Answer:
        """No new copy: the connector's next attempt at the mail it could not publish."""
        try:
            async with asyncio.timeout(timeout):
                return await self._outcome(rig, self.uids[n], held_counts=False)
        except TimeoutError:
            return Answer("silent", f"checkpoint not past uid {self.uids[n]} within {timeout:g}s")

    async def _outcome(self, rig: Rig, uid: int, *, held_counts: bool) -> Answer:
        """Accepted once the checkpoint passes *uid*; held (retry) once a publish of it failed."""
        while True:
            checkpoint = await self.checkpoint(rig)
            position = -1 if checkpoint is None else checkpoint.uid
            if position >= uid:
                return Answer("accepted", f"checkpoint at uid {position}")
            if held_counts and any(_imap_uid(m) == uid for m in rig.recorder.failed):
                return Answer("retry", f"publish of uid {uid} failed; checkpoint held at uid {position}")
            await asyncio.sleep(_POLL)


def _imap_uid(record: InboundMessage) -> object:
    position = record.metadata.get("imap")
    return position.get("uid") if isinstance(position, dict) else None


# ----------------------------------------------------------------------------------- HTTP


class ServedDriver(Driver):
    """A channel served by the process's HTTP server at ``/channels/<name>``."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._server: HttpServer | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.port is not None, "no server attached"
        return self._server.port

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "no server attached"
        return self._client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/channels/{self.name}/"

    async def attach(self, connector: Connector) -> None:
        assert isinstance(connector, HttpConnector), f"{self.type} is an HTTP channel"
        app = build_app(Readiness(), CollectorRegistry(), [(connector.name, connector.asgi_app())])
        self._server = HttpServer(app, HostPort("127.0.0.1", 0))  # 0: a free port
        await self._server.start()
        self._client = httpx.AsyncClient(timeout=10)

    async def detach(self) -> None:
        client, self._client = self._client, None
        server, self._server = self._server, None
        if client is not None:
            await client.aclose()
        if server is not None:
            await server.stop()


class HttpDriver(ServedDriver):
    """A channel whose platform POSTs each message: 200 accepts it, 503 asks to retry."""

    async def send(self, rig: Rig, n: int, *, repeat: int) -> Answer:
        body, headers = self.request(n, repeat=repeat)
        try:
            response = await self.client.post(self.url, content=body, headers=headers)
        except httpx.TransportError as error:
            return Answer("refused", f"{type(error).__name__}: {error}")
        detail = f"{response.status_code} {response.text[:300]}"
        if response.status_code == 200:
            return Answer("accepted", detail)
        return Answer("retry" if response.status_code == 503 else "refused", detail)

    @abc.abstractmethod
    def request(self, n: int, *, repeat: int) -> tuple[bytes, dict[str, str]]:
        """Body and headers of the platform's request carrying message *n*, signed."""


class SlackDriver(HttpDriver):
    type = "slack"
    name = "contract-slack"
    secret = "8f742231b10e8888abcd99yyyzzz85a5"

    def tree(self) -> dict[str, Any]:
        return {"name": self.name, "type": "slack", "signing_secret": self.secret}

    def request(self, n: int, *, repeat: int) -> tuple[bytes, dict[str, str]]:
        callback = copy.deepcopy(fixture_json("slack_message_channel.json"))
        ts = f"1700000{n:03d}.000100"
        callback["event_id"] = f"Ev{self.token}{n}"
        callback["event"].update(
            ts=ts, event_ts=ts, text=self.text(n), client_msg_id=str(uuid.uuid5(uuid.NAMESPACE_URL, ts))
        )
        body = json.dumps(callback).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign_slack(self.secret, stamp, body),
        }
        if repeat:  # Slack marks its own retries
            headers |= {"X-Slack-Retry-Num": str(repeat), "X-Slack-Retry-Reason": "http_timeout"}
        return body, headers


class TelegramDriver(HttpDriver):
    type = "telegram"
    name = "contract-telegram"
    secret = "contract_Secret-token"

    def tree(self) -> dict[str, Any]:
        return {"name": self.name, "type": "telegram", "secret_token": self.secret}

    def request(self, n: int, *, repeat: int) -> tuple[bytes, dict[str, str]]:
        update = copy.deepcopy(fixture_json("telegram_message.json"))
        update["update_id"] = 900_000_000 + n
        update["message"].update(message_id=5000 + n, text=self.text(n))
        headers = {"Content-Type": "application/json", TELEGRAM_SECRET_HEADER: self.secret}
        return json.dumps(update).encode(), headers


class WhatsAppDriver(HttpDriver):
    type = "whatsapp"
    name = "contract-whatsapp"
    app_secret = "6d1d4a8b0e2f4c7a9b3e5f7a1c2d3e4f"

    def tree(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "whatsapp",
            "app_secret": self.app_secret,
            "verify_token": "contract-verify",
        }

    def request(self, n: int, *, repeat: int) -> tuple[bytes, dict[str, str]]:
        notification = copy.deepcopy(fixture_json("whatsapp_text.json"))
        [message] = notification["entry"][0]["changes"][0]["value"]["messages"]
        message.update(id=f"wamid.{self.token}{n:04d}", text={"body": self.text(n)})
        body = json.dumps(notification).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign_hub_sha256(self.app_secret, body),
        }
        return body, headers


class SmsDriver(HttpDriver):
    type = "sms"
    name = "contract-sms"
    auth_token = "9f3c2b1a0d8e7f6a5b4c3d2e1f0a9b8c"

    def tree(self) -> dict[str, Any]:
        return {"name": self.name, "type": "sms", "auth_token": self.auth_token}

    def request(self, n: int, *, repeat: int) -> tuple[bytes, dict[str, str]]:
        sid = f"SM{self.token}{n:022d}"
        replaced = {"MessageSid": sid, "SmsMessageSid": sid, "SmsSid": sid, "Body": self.text(n)}
        fields = [
            (key, replaced.get(key, value))
            for key, value in parse_qsl(
                fixture_bytes("sms_inbound.form").decode().strip(), keep_blank_values=True
            )
        ]
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign_twilio(self.auth_token, self.url, fields),
        }
        return urlencode(fields).encode(), headers


class WebhookDriver(HttpDriver):
    type = "webhook"
    name = "contract-webhook"
    secret = "a-long-shared-webhook-secret-contract"

    def tree(self) -> dict[str, Any]:
        return {"name": self.name, "type": "webhook", "secret": self.secret}

    def request(self, n: int, *, repeat: int) -> tuple[bytes, dict[str, str]]:
        message = {"id": f"gw-{self.token}-{n}", "sender": {"id": "+14155550100"}, "text": self.text(n)}
        body = json.dumps(message).encode()
        headers = {
            "Content-Type": "application/json",
            WEBHOOK_SIGNATURE_HEADER: sign_hmac_sha256(self.secret, body),
        }
        return body, headers


class _Refused(Exception):
    """The chat server would not start a session (an error frame or a close instead of welcome)."""


class WebchatDriver(ServedDriver):
    """One visitor: one session token kept across reconnects, message *n* has client id ``m-<n>``."""

    type = "webchat"
    name = "contract-webchat"
    origin = "https://shop.example.com"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._socket: ClientConnection | None = None
        self._session: str | None = None

    def tree(self) -> dict[str, Any]:
        return {"name": self.name, "type": "webchat", "allowed_origins": [self.origin]}

    async def detach(self) -> None:
        await self._hang_up()
        await super().detach()

    async def _hang_up(self) -> None:
        socket_, self._socket = self._socket, None
        if socket_ is not None:
            await socket_.close()

    async def _connected(self) -> ClientConnection:
        """The open session, (re)connecting and saying hello with the kept token when needed."""
        if self._socket is not None:
            return self._socket
        url = f"ws://127.0.0.1:{self.port}/channels/{self.name}/ws"
        self._socket = await connect(url, origin=Origin(self.origin), open_timeout=5, close_timeout=2)
        await self._socket.send(json.dumps({"type": "hello", "session": self._session}))
        welcome = json.loads(await self._socket.recv())
        if welcome.get("type") != "welcome":
            await self._hang_up()
            raise _Refused(f"{welcome.get('type')} {welcome.get('code')}")
        self._session = welcome["session"]
        return self._socket

    async def send(self, rig: Rig, n: int, *, repeat: int) -> Answer:
        client_id = f"m-{n}"  # a resend repeats the client id: the widget's retry
        try:
            chat = await self._connected()
            await chat.send(json.dumps({"type": "message", "id": client_id, "text": self.text(n)}))
            while True:
                frame: Mapping[str, Any] = json.loads(await chat.recv())
                if frame.get("type") == "ack" and frame.get("id") == client_id:
                    return Answer("accepted", f"ack {frame['message_id']} duplicate={frame['duplicate']}")
                if frame.get("type") == "error" and frame.get("id") in (client_id, None):
                    verdict: Verdict = "retry" if frame.get("code") == "unavailable" else "refused"
                    return Answer(verdict, f"error {frame.get('code')}: {frame.get('message')}")
        except _Refused as refusal:
            return Answer("refused", f"no session: {refusal}")
        except ConnectionClosed as closed:
            self._socket = None
            code = closed.rcvd.code if closed.rcvd is not None else None
            return Answer("refused", f"closed ({code})")
        except (InvalidHandshake, OSError) as error:
            self._socket = None
            return Answer("refused", f"{type(error).__name__}: {error}")


DRIVERS: Mapping[str, type[Driver]] = {
    driver.type: driver
    for driver in (
        SmtpDriver,
        ImapDriver,
        SlackDriver,
        TelegramDriver,
        WhatsAppDriver,
        SmsDriver,
        WebhookDriver,
        WebchatDriver,
    )
}
"""Channel type -> its driver. ``test_contract`` fails for a built-in type missing here."""


@contextlib.asynccontextmanager
async def running(driver: Driver, kafka: KafkaConfig, topics: Topics) -> AsyncIterator[Rig]:
    """The driver's peer, and a connector built through the registry on a real-broker context.

    The connector is reachable but not started; it is stopped (again) on the way out.
    """
    registry = Registry.default()
    async with driver.peer():
        config = registry.validate(ChannelConfig.model_validate(driver.tree()), 0)
        channel = registry.get(driver.type).channel
        async with channel_context(kafka, topics, config.name, channel) as harness:
            recorder, health = Recorder(harness.gate), HealthLog()
            context = dataclasses.replace(harness.context, publish=recorder.publish, health=health)
            connector = registry.build(config, context)
            assert isinstance(connector, Connector) and connector.name == config.name
            rig = Rig(driver, config, channel, harness, recorder, health, context, connector)
            await driver.attach(connector)
            try:
                yield rig
            finally:
                await rig.connector.stop()
                await driver.detach()
