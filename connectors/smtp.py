"""Inbound SMTP (type ``smtp``): a receiving mail server whose every accepted mail is one record.

The server speaks ESMTP through aiosmtpd (SIZE, 8BITMIME, SMTPUTF8, PIPELINING, STARTTLS and
AUTH when configured). Its guarantees:

* Mail is accepted only for the configured ``domains``/``addresses``; any other recipient is
  refused with 550 5.7.1, authenticated or not: this server never relays.
* The final 250 to DATA is sent only after the record is durable on ``sb.inbound`` (or, for a
  mail that cannot be parsed, on ``sb.quarantine`` with its raw bytes kept in the attachment
  store). Anything short of that is 451 4.3.0, so the sending server retries; record ids are
  deterministic, so a retry repeats the same ``message_id``.
* One transaction is one record, whatever the number of accepted recipients.
* SPF, DKIM and DMARC are evaluated within ``auth_timeout`` and recorded in ``auth``; they
  never refuse mail.
* Every failure becomes an SMTP reply in one place: :data:`REPLIES` and :func:`failure_outcome`.
* Starting opens the listen socket and nothing else: DNS is first used by the first mail.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, AnyStr, Literal, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax
from pydantic import ConfigDict, Field, JsonValue, SecretStr, field_validator, model_validator

from connectors.attachments import AttachmentStore, LocalAttachmentStore
from connectors.base import ConnectorContext
from connectors.mail import EmailEnvelope, UnparseableEmail, message_from_email, reparse
from connectors.mailauth import DnsPythonResolver, MailAuthenticator, Resolver
from connectors.registry import ChannelType
from models import InboundMessage
from models.config import ChannelConfig, HostPort, ListenAddress
from models.errors import SwitchboardError
from models.quarantine import QuarantineItem

__all__ = [
    "CHANNEL_TYPE",
    "REPLIES",
    "SmtpConfig",
    "SmtpConnector",
    "build",
    "check",
    "failure_outcome",
    "reprocess",
]

DEFAULT_LISTEN = HostPort("127.0.0.1", 2525)
_T = TypeVar("_T")


def _domain(value: str) -> str:
    """A recipient domain in its comparable form: lower-case A-labels, no trailing dot."""
    domain = value.strip().rstrip(".").lower()
    if not domain or "@" in domain or any(c.isspace() for c in domain):
        raise ValueError(f"{value!r} is not a domain name")
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise ValueError(f"{value!r} is not a domain name") from error


def _address(value: str) -> str | None:
    """An address in comparable form (``local@domain``, lower-cased), or ``None`` if malformed."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local:
        return None
    try:
        return f"{local.lower()}@{_domain(domain)}"
    except ValueError:
        return None


class SmtpConfig(ChannelConfig):
    """``type: smtp``: a receiving mail server for the listed domains and addresses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["smtp"] = "smtp"
    listen: ListenAddress = Field(default=DEFAULT_LISTEN, description="address and port to listen on")
    hostname: str | None = Field(
        default=None,
        max_length=253,
        description="name in the greeting and EHLO reply; default: this machine's host name",
    )
    domains: tuple[str, ...] = Field(
        default=(), description="recipient domains accepted (exact match, case-insensitive)"
    )
    addresses: tuple[str, ...] = Field(
        default=(), description="single recipient addresses accepted in addition to domains"
    )
    max_message_size: int = Field(
        default=26_214_400,
        ge=1024,
        le=1 << 30,
        description="bytes; advertised as SIZE, larger mail gets 552 5.3.4",
    )
    max_recipients: int = Field(
        default=100, ge=1, le=10_000, description="per transaction; more get 452 4.5.3"
    )
    max_messages_per_connection: int = Field(
        default=100, ge=1, le=100_000, description="then 421 4.7.0 and the client reconnects"
    )
    max_sessions: int = Field(
        default=100, ge=1, le=10_000, description="concurrent connections; more get 421 4.7.0"
    )
    command_timeout: float = Field(
        default=300.0, gt=0, le=3600, description="seconds a client may stay silent between commands"
    )
    data_timeout: float = Field(
        default=600.0, gt=0, le=3600, description="seconds for a whole DATA phase, transfer and reply"
    )
    publish_deadline: float = Field(
        default=20.0, gt=0, le=300, description="seconds to wait for the broker before answering 451"
    )
    drain_timeout: float = Field(
        default=5.0, ge=0, le=120, description="seconds stop() lets in-flight DATA finish"
    )
    attachment_dir: Path = Field(
        default=Path("./switchboard-data/attachments"),
        description="where attachments and quarantined raw mail are kept",
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain; enables STARTTLS")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    require_tls: bool = Field(default=False, description="refuse mail until the client has used STARTTLS")
    auth_users: dict[str, SecretStr] = Field(
        default_factory=dict, description="AUTH PLAIN/LOGIN users and passwords; empty: no AUTH"
    )
    require_auth: bool = Field(default=False, description="refuse mail from unauthenticated clients")
    auth_require_tls: bool = Field(default=True, description="offer AUTH only after STARTTLS")
    verify_auth: bool = Field(default=True, description="evaluate SPF, DKIM and DMARC (never refuses)")
    auth_timeout: float = Field(
        default=5.0, gt=0, le=60, description="seconds SPF/DKIM/DMARC may take; then temperror"
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _default_listen(cls, value: object) -> object:
        return DEFAULT_LISTEN if value is None else value

    @field_validator("domains", mode="after")
    @classmethod
    def _normalize_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_domain(d) for d in value))

    @field_validator("addresses", mode="after")
    @classmethod
    def _normalize_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        normalized = []
        for address in value:
            comparable = _address(address)
            if comparable is None:
                raise ValueError(f"{address!r} is not an address (local@domain)")
            normalized.append(comparable)
        return tuple(dict.fromkeys(normalized))

    @model_validator(mode="after")
    def _consistent(self) -> SmtpConfig:
        if not self.domains and not self.addresses:
            raise ValueError("set domains and/or addresses: the recipients this server accepts")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("require_tls needs tls_cert and tls_key")
        if self.require_auth and not self.auth_users:
            raise ValueError("require_auth needs auth_users")
        if self.auth_users and self.auth_require_tls and self.tls_cert is None:
            raise ValueError(
                "auth_users: AUTH is offered only over TLS; set tls_cert/tls_key or auth_require_tls: false"
            )
        if self.data_timeout <= self.publish_deadline + self.auth_timeout:
            raise ValueError("data_timeout must exceed publish_deadline + auth_timeout")
        return self


# ----------------------------------------------------------------------------------- replies

REPLIES: Mapping[str, str] = {
    # outcome -> reply; the outcome is also the metric's reason label
    "relay_denied": "550 5.7.1 Relaying denied: not a recipient of this server",
    "too_many_recipients": "452 4.5.3 Too many recipients",
    "too_big": "552 5.3.4 Message too big for this system",
    "too_many_sessions": "421 4.7.0 Too many connections, try again later",
    "too_many_messages": "421 4.7.0 Too many messages on this connection, please reconnect",
    "too_many_auth_failures": "421 4.7.0 Too many authentication failures",
    "auth_unavailable": "502 5.5.1 AUTH is not available",
    "shutting_down": "421 4.3.2 Service shutting down, try again later",
    "publish_failed": "451 4.3.0 Message not stored, try again later",
    "record_rejected": "554 5.6.0 Message content cannot be accepted",
    "internal": "451 4.3.0 Local error, try again later",
}
ACCEPTED = "250 2.0.0 Ok: queued as {message_id}"
KEPT = "250 2.0.0 Ok: kept for review"
RECIPIENT_OK = "250 2.1.5 Ok"

# aiosmtpd's own replies that have a better-coded equivalent above.
_LIBRARY_REPLIES: Mapping[str, str] = {
    "552 Error: Too much mail data": "too_big",
    "552 Error: message size exceeds fixed maximum message size": "too_big",
}
_MAX_AUTH_FAILURES = 3


_INLINE_LIMIT = 256 * 1024  # bytes of mail parsed on the event loop; larger mail goes to a thread
# A part the parser will write to the attachment store: a non-text type, an attachment
# disposition or a file name. Writing means fsync, which must not stall the event loop.
_STORES_FILES = re.compile(
    rb"^content-type:[ \t]*+(?!text/|multipart/)|^content-disposition:[ \t]*+attachment|\b(?:file)?name\*?[0-9]*\*?=",
    re.IGNORECASE | re.MULTILINE,
)


async def _off_loop_if_heavy(raw: bytes, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run *function* (the parser) in a worker thread only for large mail or mail with files.

    Parsing a small mail costs less than a thread hand-off and the GIL contention it brings
    to every other session; a large one must not stall them while it is parsed, and neither
    must the disk writes (fsync) of storing attachments.
    """
    if len(raw) <= _INLINE_LIMIT and _STORES_FILES.search(raw) is None:
        return function(*args, **kwargs)
    return await asyncio.to_thread(function, *args, **kwargs)


def failure_outcome(error: BaseException) -> str:
    """The outcome (a key of :data:`REPLIES`) for a failure while taking a mail in.

    Retriable failures (broker unreachable or slow, local storage trouble, a bug) become 451
    so the sending server tries again and nothing is lost; a record the broker can never take
    becomes 554.
    """
    if isinstance(error, SwitchboardError):
        return "publish_failed" if error.retriable else "record_rejected"
    if isinstance(error, TimeoutError):
        return "publish_failed"
    return "internal"


# ------------------------------------------------------------------------------------ intake


class _Intake:
    """Turns one received mail into a durable record and says what to answer."""

    def __init__(
        self,
        config: SmtpConfig,
        context: ConnectorContext,
        attachments: AttachmentStore,
        authenticator: MailAuthenticator | None,
    ) -> None:
        self._config = config
        self._context = context
        self._attachments = attachments
        self._authenticator = authenticator
        self._log = context.logger.bind(channel="smtp", instance=config.name)

    def refuse(self, outcome: str, **details: object) -> str:
        """The reply for a refused command, counted under its outcome."""
        self._context.metrics.rejected(outcome)
        self._log.info("smtp refused", outcome=outcome, **details)
        return REPLIES[outcome]

    async def take(self, raw: bytes, envelope: EmailEnvelope, metadata: dict[str, JsonValue]) -> str:
        """The reply to DATA: 250 only once the mail is durable, else the mapped failure."""
        started = time.perf_counter()
        self._context.metrics.received()
        try:
            return await self._store(raw, envelope, metadata, started)
        except Exception as error:
            outcome = failure_outcome(error)
            if outcome == "record_rejected":
                self._context.metrics.rejected(outcome)
            else:
                self._context.metrics.publish_failed()
                self._context.metrics.errored()
            self._log.warning(
                "mail not accepted", outcome=outcome, error=repr(error), exc_info=outcome == "internal"
            )
            return REPLIES[outcome]

    async def _store(
        self, raw: bytes, envelope: EmailEnvelope, metadata: dict[str, JsonValue], started: float
    ) -> str:
        received_at = self._context.clock().astimezone(UTC)
        auth: dict[str, str] | None = None
        if self._authenticator is not None:
            results = await self._authenticator.evaluate(
                raw, peer_ip=envelope.peer_ip, mail_from=envelope.mail_from, helo=envelope.helo
            )
            auth = results.summary()
            metadata = {**metadata, "mail_auth": results.details()}
        try:
            message = await _off_loop_if_heavy(
                raw,
                message_from_email,
                raw,
                channel_instance=self._config.name,
                received_at=received_at,
                envelope=envelope,
                attachments=self._attachments,
                auth=auth,
                extra_metadata=metadata,
            )
        except OSError:
            raise  # the attachment store failed: retriable, answered 451
        except Exception as error:
            # Unparseable, or a parser bug: either way the same bytes fail again, so keep them.
            return await self._quarantine(raw, error, received_at)
        await asyncio.wait_for(self._context.publish(message), timeout=self._config.publish_deadline)
        self._context.metrics.published(time.perf_counter() - started)
        self._log.debug("mail accepted", message_id=message.message_id, size=len(raw))
        return ACCEPTED.format(message_id=message.message_id)

    async def _quarantine(self, raw: bytes, error: Exception, received_at: datetime) -> str:
        """Keep a mail that cannot become a record: raw bytes in the store, a record in quarantine.

        The whole ``.eml`` goes to the attachment store first because a quarantine record is
        cut at the broker's record size; the record's reason names where the whole mail is.
        """
        if not isinstance(error, UnparseableEmail):
            self._log.error("mail parser failed unexpectedly", exc_info=error)
        digest = hashlib.sha256(raw).hexdigest()
        ref = await asyncio.to_thread(
            self._attachments.put,
            raw,
            sha256=digest,
            filename=f"{digest}.eml",
            content_type="message/rfc822",
        )
        item = QuarantineItem(
            channel_instance=self._config.name,
            raw=raw,
            reason=f"{error}; whole mail kept at {ref}"[:1000],
            error_class=error.__class__.__name__,
            content_type="message/rfc822",
            received_at=received_at,
        )
        await asyncio.wait_for(self._context.quarantine(item), timeout=self._config.publish_deadline)
        self._context.metrics.quarantined()
        self._log.warning("mail quarantined", error_class=item.error_class, ref=ref, size=len(raw))
        return KEPT


# -------------------------------------------------------------------------------- protocol


class _Hooks:
    """aiosmtpd's handler: every ``handle_*`` method here is a protocol hook."""

    def __init__(self, connector: SmtpConnector) -> None:
        self._connector = connector

    async def handle_EHLO(
        self, server: _Session, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        answer = [responses[0], "250-PIPELINING"]
        for line in responses[1:]:
            if line.startswith("250-AUTH") and not self._connector.auth_enabled:
                continue
            answer.append(line)
        return answer

    async def handle_RCPT(
        self, server: _Session, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        connector = self._connector
        if not connector.accepts(address):
            return connector.intake.refuse("relay_denied", recipient=address)
        if address.lower() in (r.lower() for r in envelope.rcpt_tos):
            return RECIPIENT_OK
        if len(envelope.rcpt_tos) >= connector.config.max_recipients:
            return connector.intake.refuse("too_many_recipients")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return RECIPIENT_OK

    async def handle_DATA(self, server: _Session, session: Session, envelope: Envelope) -> str:
        peer = session.peer
        # "" is the null reverse-path (MAIL FROM:<>) of bounces and auto-replies.
        mail_from = "" if envelope.mail_from in (None, "", "<>") else envelope.mail_from
        email_envelope = EmailEnvelope(
            mail_from=mail_from,
            recipients=tuple(envelope.rcpt_tos),
            peer_ip=peer[0] if isinstance(peer, tuple) else None,
            helo=session.host_name,
        )
        metadata: dict[str, JsonValue] = {}
        if session.ssl is not None:
            metadata["smtp_tls"] = True
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            metadata["smtp_auth_user"] = session.auth_data.login.decode("utf-8", errors="replace")
        reply = await self._connector.intake.take(envelope.original_content or b"", email_envelope, metadata)
        if reply.startswith("250"):
            server.messages += 1
        return reply

    async def handle_exception(self, error: Exception) -> str:
        outcome = failure_outcome(error)
        self._connector.log.error("smtp session failed", exc_info=error)
        return REPLIES[outcome]


class _Session(SMTP):
    """One connection: aiosmtpd's protocol plus the limits and shutdown this server needs."""

    line_length_limit = 65_536  # liberal about long lines in DATA; still bounded per session

    def __init__(self, connector: SmtpConnector, **options: Any) -> None:
        # aiosmtpd keeps these limits in a class-level dict that every EHLO enlarges; give
        # each session its own so one client's EHLOs cannot widen another's limits.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(connector.hooks, **options)
        self._connector = connector
        self.messages = 0
        self.busy = False  # inside DATA: stop() waits for it to finish
        self._auth_failures = 0

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._connector.forget(self)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status in _LIBRARY_REPLIES:
            await super().push(self._connector.intake.refuse(_LIBRARY_REPLIES[status]))
        else:
            await super().push(status)

    def close_with(self, reply: str) -> None:
        """Send a final reply and hang up, without waiting for the client."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()

    async def _refuse_and_close(self, outcome: str) -> None:
        await self.push(self._connector.intake.refuse(outcome))
        if self.transport is not None:
            self.transport.close()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._connector.stopping:
            await self._refuse_and_close("shutting_down")
        elif self.messages >= self._connector.config.max_messages_per_connection:
            await self._refuse_and_close("too_many_messages")
        else:
            await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        # The whole DATA phase (transfer, checks, publish) gets its own, longer timeout.
        self._reset_timeout(self._connector.config.data_timeout)
        self.busy = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.busy = False
            if self.transport is not None:
                self._reset_timeout()

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        if not self._connector.auth_enabled:
            await self.push(REPLIES["auth_unavailable"])
            return
        await super().smtp_AUTH(arg)
        if self.session is not None and not self.session.authenticated:
            self._auth_failures += 1
            if self._auth_failures >= _MAX_AUTH_FAILURES:
                await self._refuse_and_close("too_many_auth_failures")


class _Refusal(asyncio.Protocol):
    """A connection over the session cap (or during shutdown): one 421 line, then closed."""

    def __init__(self, reply: str) -> None:
        self._reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._reply.encode("ascii") + b"\r\n")
        transport.close()


# ------------------------------------------------------------------------------- connector


class SmtpConnector:
    """The ``smtp`` channel: one listening server for one configured instance."""

    def __init__(
        self,
        config: SmtpConfig,
        context: ConnectorContext,
        *,
        resolver: Resolver | None = None,
        attachments: AttachmentStore | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self._context = context
        self.log = context.logger.bind(channel="smtp", instance=config.name)
        authenticator = None
        if config.verify_auth:
            authenticator = MailAuthenticator(
                resolver or DnsPythonResolver(timeout=min(2.0, config.auth_timeout)),
                timeout=config.auth_timeout,
                logger=self.log,
            )
        self.intake = _Intake(
            config, context, attachments or LocalAttachmentStore(config.attachment_dir), authenticator
        )
        self.hooks = _Hooks(self)
        self.auth_enabled = bool(config.auth_users)
        self._credentials = {
            user.encode("utf-8"): secret.get_secret_value().encode("utf-8")
            for user, secret in config.auth_users.items()
        }
        self._domains = frozenset(config.domains)
        self._addresses = frozenset(config.addresses)
        self._sessions: set[_Session] = set()
        self._server: asyncio.Server | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self.stopping = False
        self.address: HostPort | None = None  # bound address once started

    # ----------------------------------------------------------------------- policy

    def accepts(self, recipient: str) -> bool:
        """Whether *recipient* is ours; everything else is refused (no relaying)."""
        if recipient.strip().lower() == "postmaster":
            return True  # RFC 5321 §4.5.1: the bare postmaster must be accepted
        address = _address(recipient)
        if address is None:
            return False
        return address in self._addresses or address.rpartition("@")[2] in self._domains

    def _check_credentials(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self._credentials.get(data.login)
        # Compare even for unknown users so timing does not tell which users exist.
        matches = hmac.compare_digest(expected or b"\0" * 32, data.password) and expected is not None
        if not matches:
            self._context.metrics.rejected("auth_failed")
            self.log.info("smtp auth failed", mechanism=mechanism)
        return AuthResult(success=matches, handled=False, auth_data=data)

    # -------------------------------------------------------------------- lifecycle

    def _session_options(self, tls: ssl.SSLContext | None) -> dict[str, Any]:
        config = self.config
        return {
            "data_size_limit": config.max_message_size,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "hostname": config.hostname or socket.gethostname(),
            "ident": "ESMTP Switchboard",
            "tls_context": tls,
            "require_starttls": config.require_tls,
            "timeout": config.command_timeout,
            "auth_required": config.require_auth,
            "auth_require_tls": config.auth_require_tls,
            "authenticator": self._check_credentials,
        }

    def _new_connection(self, options: dict[str, Any]) -> asyncio.Protocol:
        if self.stopping:
            return _Refusal(REPLIES["shutting_down"])
        if len(self._sessions) >= self.config.max_sessions:
            return _Refusal(self.intake.refuse("too_many_sessions"))
        session = _Session(self, **options)
        self._sessions.add(session)
        return session

    def forget(self, session: _Session) -> None:
        self._sessions.discard(session)

    async def start(self) -> None:
        """Listen; returns once connections are accepted. Opens no other connection."""
        if self._server is not None:
            return
        options = self._session_options(_tls_context(self.config))
        listen = self.config.listen
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: self._new_connection(options), listen.host, listen.port, reuse_address=True
            )
        except OSError as error:
            raise OSError(error.errno, f"cannot listen on {listen}: {error.strerror}") from error
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = HostPort(host, port)
        self._context.health.ok()
        self.log.info("smtp listening", address=str(self.address), tls=self.config.tls_cert is not None)

    async def stop(self) -> None:
        """Stop accepting, let DATA in flight finish within ``drain_timeout``, close the rest.

        Idempotent and safe to call concurrently: every caller returns once the server is down.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._stop_task)

    async def _shutdown(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            if not session.busy:
                session.close_with(REPLIES["shutting_down"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        while any(s.busy for s in self._sessions) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for session in list(self._sessions):
            session.close_with(REPLIES["shutting_down"])
        if self._server is not None:
            await self._server.wait_closed()
        self._context.health.failing("stopped")
        self.log.info("smtp stopped")


def _tls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def build(config: SmtpConfig, context: ConnectorContext) -> SmtpConnector:
    """The registry's factory: DNS via the system resolver, attachments under ``attachment_dir``."""
    return SmtpConnector(config, context)


async def check(config: SmtpConfig) -> str:
    """``channels check``: the TLS files load and the attachment directory is writable."""
    tls = _tls_context(config)
    directory = config.attachment_dir
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".switchboard-check"
    probe.write_bytes(b"ok")
    probe.unlink()
    accepted = ", ".join([*config.domains, *config.addresses])
    return f"listen {config.listen}, accepts {accepted}, TLS {'on' if tls else 'off'}, storage {directory} writable"


def reprocess(config: SmtpConfig, raw: bytes) -> InboundMessage:
    """``quarantine reprocess``: parse a kept mail again (the SMTP envelope is not kept)."""
    return reparse(raw, channel_instance=config.name, attachment_dir=config.attachment_dir)


CHANNEL_TYPE = ChannelType(
    type="smtp",
    channel="email",
    config_model=SmtpConfig,
    factory=build,
    summary="Receiving mail server (ESMTP, STARTTLS, AUTH) for the configured domains",
    check=check,
    reprocess=reprocess,
)
