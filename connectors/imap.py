"""IMAP mailbox (type ``imap``): follows folders of a mailbox and publishes every new mail once.

One connection per configured folder, each run by a synchronous imapclient session in a worker
thread of the connector's own pool (so idling folders never starve the process's default pool).
Its guarantees:

* Mail is fetched with ``BODY.PEEK[]``, so fetching never changes a flag. Without a post-action
  the folder is opened read-only (EXAMINE) and the mailbox is never changed. With one (flag
  ``\\Seen``, move to ``move_to``, or delete when ``allow_delete`` says so) the folder is opened
  read-write, and that action is the only change: applied to mail once it is published and
  checkpointed, never retried, so a failure (logged and counted) cannot cause a duplicate.
* Position is a checkpoint per folder in ``ctx.state`` (UIDVALIDITY, last UID handled). It is
  written only after every record up to that UID is confirmed by the broker (or quarantined),
  so a crash repeats at most one batch, and a repeat carries the same ``message_id``.
* First connection: with ``backfill_since``, mail of that date and later is published; without
  it, only mail arriving afterwards (the start is UIDNEXT, checkpointed at once).
* A changed UIDVALIDITY makes old UIDs meaningless: the folder is rescanned from two days before
  the last checkpoint (not before ``backfill_since``); repeats carry the same ``message_id``.
* Work is bounded: UIDs are searched in windows, fetched ``batch_size`` at a time and at most
  ``batch_bytes`` of mail per FETCH; a mail larger than ``max_message_size`` is not downloaded
  but quarantined with its header (it stays on the server). Every socket has a timeout.
* New mail is noticed with IDLE when the server offers it (re-issued every ``idle_renew``
  seconds, below the 29 minutes RFC 2177 allows), otherwise by polling every ``poll_interval``.
* A lost connection is re-opened with capped exponential backoff; health is failing, with the
  reason, while any folder is disconnected or has gone ``staleness`` seconds without a
  successful fetch (IDLE is renewed at least every ``staleness / 2`` seconds, which proves it
  alive). Passwords and tokens never reach a log or a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import imaplib
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from imapclient import DELETED, SEEN, IMAPClient, SocketTimeout
from imapclient.exceptions import CapabilityError, LoginError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.attachments import AttachmentStore, LocalAttachmentStore
from connectors.base import ConnectorContext
from connectors.mail import EmailEnvelope, UnparseableEmail, message_from_email, reparse
from connectors.registry import ChannelType
from models import InboundMessage
from models.config import ChannelConfig
from models.errors import PublishError, RecordRejected, SwitchboardError
from models.quarantine import QuarantineItem

__all__ = [
    "CHANNEL_TYPE",
    "Checkpoint",
    "ImapConfig",
    "ImapConnector",
    "ImapUnavailable",
    "MessageTooLarge",
    "OAuth2Settings",
    "build",
    "check",
    "failure_reason",
    "reprocess",
]

_T = TypeVar("_T")

_WINDOW_MIN = 1_000  # UIDs per SEARCH; grows over sparse UID ranges ...
_WINDOW_MAX = 100_000  # ... but a SEARCH answer stays well under imaplib's 1 MB line limit
_HEADER_LIMIT = 256 * 1024  # bytes of header kept when a mail is too large to download
_IDLE_SLICE = 1.0  # seconds per wait inside IDLE: how quickly a stop is noticed
_RESCAN_MARGIN = timedelta(days=2)  # SINCE is a date in the server's time zone


# ------------------------------------------------------------------------------ config


def _comparable(folder: str) -> str:
    """Folder names compare exactly, except INBOX, which is case-insensitive (RFC 3501)."""
    return "INBOX" if folder.upper() == "INBOX" else folder


class OAuth2Settings(BaseModel):
    """XOAUTH2 (or OAUTHBEARER) login with an access token that something else keeps fresh."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    access_token: SecretStr | None = Field(default=None, description="the token; use ${VAR}")
    token_file: Path | None = Field(
        default=None, description="file holding the token, read again at every connection"
    )
    mechanism: Literal["XOAUTH2", "OAUTHBEARER"] = "XOAUTH2"

    @model_validator(mode="after")
    def _one_source(self) -> OAuth2Settings:
        if (self.access_token is None) == (self.token_file is None):
            raise ValueError("set exactly one of access_token and token_file")
        return self


class ImapConfig(ChannelConfig):
    """``type: imap``: folders of one mailbox, followed with IDLE or polling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["imap"] = "imap"
    host: str = Field(min_length=1, max_length=253, description="IMAP server host name")
    port: int | None = Field(default=None, ge=1, le=65535, description="default 993 for tls, else 143")
    security: Literal["tls", "starttls", "none"] = Field(
        default="tls", description="implicit TLS, STARTTLS (required when chosen), or plain text"
    )
    username: str = Field(min_length=1, max_length=320)
    password: SecretStr | None = Field(default=None, description="use ${VAR}; or oauth2")
    oauth2: OAuth2Settings | None = Field(default=None, description="XOAUTH2 login instead of password")
    folders: tuple[str, ...] = Field(default=("INBOX",), min_length=1, max_length=50)
    idle: bool = Field(default=True, description="IDLE when the server offers it; polling otherwise")
    poll_interval: float = Field(default=60.0, ge=1, le=1500, description="seconds, when not idling")
    idle_renew: float = Field(
        default=1500.0, ge=10, le=1740, description="seconds before IDLE is re-issued (< 29 min)"
    )
    backfill_since: date | None = Field(
        default=None, description="first connection: publish mail of this date on; absent: only new mail"
    )
    batch_size: int = Field(default=50, ge=1, le=1000, description="mails per FETCH and per checkpoint")
    batch_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024 * 1024, le=1 << 30, description="bytes of mail per FETCH"
    )
    max_message_size: int = Field(
        default=50 * 1024 * 1024,
        ge=1024,
        le=1 << 30,
        description="bytes; a larger mail is quarantined with its header only and left on the server",
    )
    connect_timeout: float = Field(default=15.0, gt=0, le=300, description="seconds to connect")
    command_timeout: float = Field(
        default=60.0, gt=0, le=3600, description="seconds any read or write on the connection may take"
    )
    publish_deadline: float = Field(default=20.0, gt=0, le=300, description="seconds per broker confirm")
    reconnect_min: float = Field(default=1.0, gt=0, le=600, description="first reconnect delay (s)")
    reconnect_max: float = Field(default=300.0, gt=0, le=3600, description="reconnect delay cap (s)")
    drain_timeout: float = Field(default=5.0, ge=0, le=120, description="seconds stop() lets a batch finish")
    tls_verify: bool = Field(default=True, description="verify the server certificate and host name")
    tls_ca_file: Path | None = Field(default=None, description="PEM CA bundle instead of the system's")
    attachment_dir: Path = Field(
        default=Path("./switchboard-data/attachments"),
        description="where attachments and quarantined raw mail are kept",
    )
    post_action: Literal["none", "seen", "move", "delete"] = Field(
        default="none",
        description=(
            "after a mail is published and checkpointed: leave it (none), flag it \\Seen, move it "
            "to move_to, or delete it (only with allow_delete)"
        ),
    )
    move_to: str | None = Field(
        default=None, min_length=1, max_length=1000, description="target folder of post_action: move"
    )
    allow_delete: bool = Field(default=False, description="must be true for post_action: delete")
    staleness: float = Field(
        default=900.0,
        ge=1,
        le=86400,
        description="seconds a folder may go without a successful fetch before /readyz fails",
    )

    @field_validator("listen", mode="after")
    @classmethod
    def _listens_on_nothing(cls, value: object) -> object:
        if value is not None:
            raise ValueError("an imap channel connects to its server and listens on nothing")
        return value

    @field_validator("folders", mode="after")
    @classmethod
    def _unique_folders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not folder.strip() for folder in value):
            raise ValueError("folder names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("folders must be unique")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ImapConfig:
        if (self.password is None) == (self.oauth2 is None):
            raise ValueError("set exactly one of password and oauth2")
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        if self.post_action == "move":
            if self.move_to is None:
                raise ValueError("move_to is required for post_action: move (the target folder)")
            if _comparable(self.move_to) in {_comparable(folder) for folder in self.folders}:
                raise ValueError("move_to must not be a followed folder: moved mail would be taken again")
        elif self.move_to is not None:
            raise ValueError("move_to is only used with post_action: move")
        if self.post_action == "delete" and not self.allow_delete:
            raise ValueError("deleting mail on the server (post_action: delete) needs allow_delete: true")
        if self.staleness <= self.poll_interval:
            raise ValueError("staleness must exceed poll_interval, or polling alone would look stale")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.effective_port}"


# ----------------------------------------------------------------------------- failures


class ImapUnavailable(SwitchboardError):
    """The mailbox cannot be followed right now; the message says why (never a secret)."""

    retriable = True


class _StoreFailed(SwitchboardError):
    """The attachment store could not keep a mail's bytes: retried, nothing is checkpointed."""

    retriable = True


def failure_reason(error: BaseException) -> str:
    """One line saying why a session failed: the single place library errors are translated.

    Server texts are quoted as they come (servers do not echo credentials); nothing from the
    configuration but host, port and user name is ever part of a reason.
    """
    if isinstance(error, ImapUnavailable | _StoreFailed):
        return str(error)
    if isinstance(error, LoginError):
        return f"login refused: {_text(error)}"
    if isinstance(error, CapabilityError):
        return f"server lacks a needed capability: {_text(error)}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {error.verify_message or error.reason}"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    if isinstance(error, imaplib.IMAP4.abort):
        return f"connection lost: {_text(error)}"
    if isinstance(error, imaplib.IMAP4.error):
        return f"server refused a command: {_text(error)}"
    if isinstance(error, TimeoutError):
        return "timed out waiting for the server" if not str(error) else f"timed out: {error}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"host name not resolved: {error.strerror}"
    if isinstance(error, OSError):
        return f"network error: {error.strerror or error}"
    if isinstance(error, SwitchboardError):
        return f"broker did not confirm: {error}"
    return f"unexpected {error.__class__.__name__}: {error}"


def _text(error: BaseException) -> str:
    text = str(error)
    if text.startswith(("b'", 'b"')):  # imaplib quotes server bytes as a repr
        text = text[2:-1]
    return text[:300]


class _Backoff:
    """Capped exponential delays with jitter, so many connectors do not reconnect in step."""

    def __init__(self, first: float, cap: float) -> None:
        self._first, self._cap, self._attempt = first, cap, 0

    def next(self) -> float:
        delay = min(self._cap, self._first * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    def reset(self) -> None:
        self._attempt = 0


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where one folder stands: every UID up to ``uid`` of ``uidvalidity`` is handled.

    While a backfill or rescan is under way, ``since`` filters UIDs up to ``until_uid`` by
    date; mail filed after it started (higher UIDs) is published whatever its date.
    """

    uidvalidity: int
    uid: int
    at: datetime
    since: date | None = None
    until_uid: int = 0

    def advanced(self, uid: int, at: datetime) -> Checkpoint:
        if uid >= self.until_uid:
            return Checkpoint(self.uidvalidity, uid, at)
        return replace(self, uid=uid, at=at)

    def filtered(self, uid: int) -> bool:
        """Whether *uid* is still under the date filter."""
        return self.since is not None and uid <= self.until_uid

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "uidvalidity": self.uidvalidity,
                "uid": self.uid,
                "at": self.at.isoformat(),
                "since": self.since.isoformat() if self.since else None,
                "until_uid": self.until_uid,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse a stored checkpoint; raises ``ValueError`` on anything malformed."""
        try:
            tree = json.loads(data)
            since = tree.get("since")
            return cls(
                uidvalidity=int(tree["uidvalidity"]),
                uid=int(tree["uid"]),
                at=datetime.fromisoformat(tree["at"]),
                since=date.fromisoformat(since) if since else None,
                until_uid=int(tree.get("until_uid", 0)),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"malformed checkpoint: {error}") from error


# ------------------------------------------------------------------------ IMAP session


_MoveMethod = Literal["move", "copy-expunge", "copy-seen"]


@dataclass(frozen=True, slots=True)
class _Selected:
    uidvalidity: int
    uidnext: int
    idle: bool


@dataclass(frozen=True, slots=True)
class _Summary:
    size: int
    internaldate: datetime | None


def _tls_context(config: ImapConfig) -> ssl.SSLContext:
    cafile = config.tls_ca_file
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except ssl.SSLError:
        raise ImapUnavailable(f"tls_ca_file {cafile} holds no usable PEM certificate") from None
    except OSError as error:
        raise ImapUnavailable(f"cannot read tls_ca_file {cafile}: {error.strerror}") from None
    if not config.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _access_token(settings: OAuth2Settings) -> str:
    if settings.access_token is not None:
        return settings.access_token.get_secret_value()
    assert settings.token_file is not None
    try:
        token = settings.token_file.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ImapUnavailable(f"cannot read oauth2.token_file: {error.strerror}") from None
    if not token:
        raise ImapUnavailable("oauth2.token_file is empty")
    return token


def _login(config: ImapConfig) -> Any:
    """A connected, secured and logged-in IMAPClient (blocking; call from a worker thread)."""
    context = _tls_context(config) if config.security != "none" else None
    client = IMAPClient(
        config.host,
        config.effective_port,
        ssl=config.security == "tls",
        ssl_context=context,
        timeout=SocketTimeout(connect=config.connect_timeout, read=config.command_timeout),
    )
    try:
        client.normalise_times = False  # keep INTERNALDATE's zone: received_at is UTC
        if config.security == "starttls":
            if not client.has_capability("STARTTLS"):
                raise ImapUnavailable("server does not offer STARTTLS; not logging in without TLS")
            client.starttls(context)
        if config.oauth2 is not None:
            token = _access_token(config.oauth2)
            if config.oauth2.mechanism == "OAUTHBEARER":
                client.oauthbearer_login(config.username, token)
            else:
                client.oauth2_login(config.username, token)
        else:
            assert config.password is not None
            client.login(config.username, config.password.get_secret_value())
    except BaseException:
        _close(client)
        raise
    return client


def _close(client: Any) -> None:
    """Log out if the connection still works, else just close it; never raises."""
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):
            client.shutdown()


class _Mailbox:
    """One connection with one folder selected: read-only (EXAMINE), or read-write (SELECT)
    when a post-action is configured, which is then the only change ever made.

    Blocking, and used from worker threads: every step holds a lock, so a close issued while
    a cancelled step still runs waits for it. :meth:`interrupt` takes no lock: it exists to
    break a read that blocks another thread.
    """

    def __init__(self, config: ImapConfig, folder: str) -> None:
        self._config = config
        self._folder = folder
        self._client: Any = None
        self._idling = False
        self._lock = threading.Lock()
        self.move_method: _MoveMethod = "move"
        self.uid_expunge = True

    @property
    def read_only(self) -> bool:
        return self._config.post_action == "none"

    def open(self) -> _Selected:
        with self._lock:
            self._client = _login(self._config)
            info = self._client.select_folder(self._folder, readonly=self.read_only)
            uidvalidity = int(info[b"UIDVALIDITY"])
            uidnext = info.get(b"UIDNEXT")
            if uidnext is None:  # optional in the SELECT answer: derive it from the newest UID
                uidnext = self._highest_uid() + 1
            self._announced_mail()  # the SELECT answer's own count, not an arrival
            idle = self._config.idle and self._client.has_capability("IDLE")
            self.uid_expunge = bool(self._client.has_capability("UIDPLUS"))
            if self._client.has_capability("MOVE"):
                self.move_method = "move"
            else:
                self.move_method = "copy-expunge" if self.uid_expunge else "copy-seen"
            return _Selected(uidvalidity, int(uidnext), bool(idle))

    def highest_uid(self) -> int:
        """The newest UID in the folder, 0 when it is empty (one short SEARCH answer)."""
        with self._lock:
            return self._highest_uid()

    def _highest_uid(self) -> int:
        return max((int(uid) for uid in self._client.search(["UID", "*"])), default=0)

    def search(self, low: int, high: int, since: date | None) -> list[int]:
        """UIDs in ``low..high`` (and of ``since`` or later, when given), ascending."""
        criteria: list[Any] = ["UID", f"{low}:{high}"]
        if since is not None:
            criteria += ["SINCE", since]
        with self._lock:
            found = self._client.search(criteria)
        # "n:m" also matches the newest message when every UID is below n: filter.
        return sorted(int(uid) for uid in found if low <= uid <= high)

    def summaries(self, uids: Sequence[int]) -> dict[int, _Summary]:
        """Size and arrival time of each UID still present (expunged ones are left out)."""
        with self._lock:
            response = self._client.fetch(list(uids), ["RFC822.SIZE", "INTERNALDATE"])
        return {
            int(uid): _Summary(int(data.get(b"RFC822.SIZE", 0)), data.get(b"INTERNALDATE"))
            for uid, data in response.items()
        }

    def bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """Whole messages by UID, fetched with BODY.PEEK so ``\\Seen`` is left alone."""
        with self._lock:
            response = self._client.fetch(list(uids), ["BODY.PEEK[]"])
        return {int(uid): bytes(data[b"BODY[]"]) for uid, data in response.items() if b"BODY[]" in data}

    def header(self, uid: int) -> bytes:
        """The first bytes of a message's header, without setting ``\\Seen``."""
        with self._lock:
            response = self._client.fetch([uid], [f"BODY.PEEK[HEADER]<0.{_HEADER_LIMIT}>"])
        for data in response.values():
            for key, value in data.items():
                if key.startswith(b"BODY[HEADER]"):
                    return bytes(value)
        return b""

    def post_action(self, uids: Sequence[int]) -> None:
        """Apply the configured post-action to *uids*; raises what the server or the
        connection raised (the caller decides what a failure means).

        ``move`` is UID MOVE; without MOVE it is COPY, ``\\Deleted`` and UID EXPUNGE of
        exactly these UIDs (UIDPLUS); without UIDPLUS either it is COPY and ``\\Seen``, the
        original left in place: a plain EXPUNGE would also remove mail that other clients
        flagged ``\\Deleted``. ``delete`` without UIDPLUS likewise only flags ``\\Deleted``.
        """
        action, messages = self._config.post_action, list(uids)
        with self._lock:
            client = self._client
            if action == "seen":
                client.add_flags(messages, [SEEN], silent=True)
            elif action == "move":
                if self.move_method == "move":
                    client.move(messages, self._config.move_to)
                    return
                client.copy(messages, self._config.move_to)
                self._remove(client, messages, fallback=SEEN)
            elif action == "delete":
                self._remove(client, messages, fallback=None)

    def _remove(self, client: Any, messages: list[int], fallback: bytes | None) -> None:
        """``\\Deleted`` and UID EXPUNGE of *messages* only; without UIDPLUS, *fallback*
        (or ``\\Deleted`` alone) and no EXPUNGE at all."""
        if self.uid_expunge:
            client.add_flags(messages, [DELETED], silent=True)
            client.uid_expunge(messages)
        else:
            client.add_flags(messages, [fallback or DELETED], silent=True)

    def noop(self) -> None:
        with self._lock:
            self._client.noop()

    def idle_start(self) -> bool:
        """Enter IDLE; ``False`` (not idling) when the folder has new mail already."""
        with self._lock:
            if self._announced_mail():
                return False
            self._client.idle()
            self._idling = True
            return True

    def _announced_mail(self) -> bool:
        """Whether an answer since the last call announced messages (EXISTS); forgets it.

        A server announces a new message once per session, with the answer to whatever command
        is running when it arrives: mail delivered during a catch-up's SEARCH or FETCH is not
        announced again when IDLE starts. imaplib keeps untagged answers no command consumed.
        """
        return self._client._imap.untagged_responses.pop("EXISTS", None) is not None

    def idle_wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds in IDLE; ``True`` when the folder may have new mail.

        imapclient swallows end-of-file while idling, so an early return with nothing read
        also counts as ``True``: ending IDLE then tells a dead connection from a spurious wake.
        """
        with self._lock:
            if self._read_ahead():
                return True
            started = time.monotonic()
            responses = self._client.idle_check(timeout)
            elapsed = time.monotonic() - started
        for response in responses:
            if response and response[0] == b"BYE":
                raise ImapUnavailable(f"server closed the connection: {_text(response[-1])}")
            if len(response) >= 2 and response[1] == b"EXISTS":
                return True
        return not responses and elapsed < timeout * 0.9

    def _read_ahead(self) -> bool:
        """Whether the server has written something this client holds but has not parsed.

        imapclient's IDLE wait polls the socket, but a line that arrived in one read with the
        one before it (mail delivered just before IDLE, announced right after "+ idling") sits
        in imaplib's buffer or the TLS layer's, where no poll sees it until the server next
        writes, minutes later. Peeking without blocking finds it.
        """
        sock = self._client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            return bool(self._client._imap.file.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        finally:
            sock.settimeout(timeout)

    def idle_end(self) -> None:
        with self._lock:
            if self._idling:
                self._idling = False
                self._client.idle_done()

    def interrupt(self) -> None:
        """Break a read blocked in another thread (used by ``stop``)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Leave IDLE, log out and close; never raises."""
        with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            if self._idling:
                self._idling = False
                with contextlib.suppress(Exception):
                    client.idle_done()
            _close(client)

    def abort(self) -> None:
        """Drop a connection that failed, without a LOGOUT that could wait on a dead peer."""
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    client.shutdown()


# --------------------------------------------------------------------------- connector


def _batched(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _groups(
    uids: Sequence[int], summaries: dict[int, _Summary], budget: int, limit: int
) -> Iterator[tuple[bool, list[int]]]:
    """``(too_large, uids)`` in UID order: FETCHes of at most *budget* bytes; a mail over
    *limit* goes alone, flagged. UIDs expunged since the SEARCH are left out."""
    group: list[int] = []
    size = 0
    for uid in uids:
        summary = summaries.get(uid)
        if summary is None:
            continue
        if summary.size > limit:
            if group:
                yield False, group
                group, size = [], 0
            yield True, [uid]
            continue
        if group and size + summary.size > budget:
            yield False, group
            group, size = [], 0
        group.append(uid)
        size += summary.size
    if group:
        yield False, group


class MessageTooLarge(Exception):
    """A mail over ``max_message_size``: only its header was fetched; it stays on the server."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One fetched mail and what it became: a record, or the reason it cannot be one."""

    uid: int
    raw: bytes  # the whole mail; only the header for a MessageTooLarge
    received_at: datetime
    outcome: InboundMessage | Exception
    started: float  # perf_counter when the fetch began, for the publish latency metric


class ImapConnector:
    """The ``imap`` channel: one supervised task following every configured folder."""

    def __init__(
        self, config: ImapConfig, context: ConnectorContext, *, attachments: AttachmentStore | None = None
    ) -> None:
        self.name = config.name
        self.config = config
        self._context = context
        self._log = context.logger.bind(instance=config.name, server=config.address)
        self._attachments = attachments or LocalAttachmentStore(config.attachment_dir)
        self._executor: ThreadPoolExecutor | None = None
        self._mailboxes: dict[str, _Mailbox] = {}
        self._problems: dict[str, str] = {}
        self._undelivered: set[str] = set()  # folders whose last failure was the broker's or the store's
        self._fetched: dict[str, float] = {}  # folder -> monotonic time of its last successful fetch
        self._stale: dict[str, str] = {}  # folder -> why it counts as stale
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Future[None] | None = None

    # -------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start following the folders in the background; returns at once.

        Connecting is the background task's job: an unreachable server does not fail the
        start, it shows as failing health (with the reason) until a connection succeeds.
        """
        if self._executor is not None or self._stopping.is_set():
            return
        # Two threads per folder: its session, and the close of a broken one.
        self._executor = ThreadPoolExecutor(
            max_workers=2 * len(self.config.folders), thread_name_prefix=f"imap-{self.name}"
        )
        self._problems = {folder: "connecting" for folder in self.config.folders}
        now = time.monotonic()
        self._fetched = dict.fromkeys(self.config.folders, now)  # the staleness clock starts now
        await self._context.spawn(f"channel:{self.name}", self._run())
        self._log.info("imap starting", folders=list(self.config.folders), security=self.config.security)
        if self.config.security == "none":
            self._log.warning("imap without TLS: the login travels in clear text")

    async def stop(self) -> None:
        """Finish the batch in flight (within ``drain_timeout``), log out, stop. Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._stop_task)

    async def _shutdown(self) -> None:
        self._stopping.set()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.config.drain_timeout)
            if not done:
                for mailbox in list(self._mailboxes.values()):
                    mailbox.interrupt()
                task.cancel()
                await asyncio.wait({task}, timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._context.health.failing("stopped")
        self._log.info("imap stopped")

    async def _run(self) -> None:
        self._task = asyncio.current_task()
        async with asyncio.TaskGroup() as group:
            for folder in self.config.folders:
                group.create_task(self._follow(folder), name=f"channel:{self.name}:{folder}")
            group.create_task(self._watch_staleness(), name=f"channel:{self.name}:staleness")

    # ----------------------------------------------------------------------- health

    def _report(self, folder: str, problem: str | None) -> None:
        """Record *folder*'s session problem (``None``: connected) and publish health."""
        if problem is None:
            self._problems.pop(folder, None)
        else:
            self._problems[folder] = problem
        self._publish_health()

    def _publish_health(self) -> None:
        """Health is ok only while every folder is connected and fetched within ``staleness``;
        the error metric says the same (a publish elsewhere must not clear it)."""
        if self._stopping.is_set():
            return
        failing = sorted(set(self._problems) | set(self._stale))
        if not failing:
            self._context.health.ok()
            return
        self._context.metrics.errored()
        reasons = "; ".join(f"{folder}: {self._why(folder)}" for folder in failing)
        self._context.health.failing(f"imap {self.config.address}: {reasons}")

    def _why(self, folder: str) -> str:
        return "; ".join(why for why in (self._stale.get(folder), self._problems.get(folder)) if why)

    def _fetched_now(self, folder: str) -> None:
        """A fetch of *folder* worked (or it was caught up and idling): the staleness clock
        restarts, and ``/metrics`` gets the time."""
        self._fetched[folder] = time.monotonic()
        self._context.metrics.succeeded()
        self._stale.pop(folder, None)
        self._publish_health()

    async def _watch_staleness(self) -> None:
        """Every few seconds, mark folders stale that went ``staleness`` seconds without a
        successful fetch (and their reason's age current), until the connector stops."""
        limit = self.config.staleness
        while not self._stopping.is_set():
            await self._pause(min(5.0, limit / 4))
            now = time.monotonic()
            stale = {
                folder: f"no successful fetch for {now - fetched:.0f} s"
                for folder, fetched in self._fetched.items()
                if now - fetched > limit
            }
            if stale or self._stale:
                self._stale = stale
                self._publish_health()

    # ---------------------------------------------------------------------- helpers

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking IMAP step in this connector's own threads."""
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args))

    def _close_later(self, mailbox: _Mailbox) -> None:
        """Close *mailbox* in the background: a cancelled step may still hold it."""
        if self._executor is not None:
            with contextlib.suppress(RuntimeError):  # the pool is already shut down
                self._executor.submit(mailbox.close)

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early when the connector stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _key(self, folder: str) -> str:
        return f"folder/{folder}"

    async def _confirmed(self, step: Awaitable[None], what: str) -> None:
        """Await a broker write within ``publish_deadline``; a timeout is a :class:`PublishError`."""
        try:
            await asyncio.wait_for(step, timeout=self.config.publish_deadline)
        except TimeoutError:
            raise PublishError(f"{what} not confirmed within {self.config.publish_deadline:g}s") from None

    async def _save(self, folder: str, checkpoint: Checkpoint) -> None:
        """Make *checkpoint* durable; only ever called once what it covers is confirmed."""
        await self._confirmed(self._context.state.put(self._key(folder), checkpoint.to_bytes()), "checkpoint")

    # ----------------------------------------------------------------------- folder

    async def _follow(self, folder: str) -> None:
        """Follow one folder until stopped, reconnecting with capped exponential backoff."""
        log = self._log.bind(folder=folder)
        backoff = _Backoff(self.config.reconnect_min, self.config.reconnect_max)
        while not self._stopping.is_set():
            mailbox = _Mailbox(self.config, folder)
            self._mailboxes[folder] = mailbox
            try:
                await self._session(mailbox, folder, backoff, log)
            except asyncio.CancelledError:
                self._close_later(mailbox)
                raise
            except Exception as error:
                await self._call(mailbox.abort)
                if self._stopping.is_set():
                    break
                reason = failure_reason(error)
                if isinstance(error, SwitchboardError) and not isinstance(error, ImapUnavailable):
                    self._undelivered.add(folder)
                delay = backoff.next()
                self._context.metrics.errored()
                self._report(folder, f"{reason} (retrying in {delay:.0f}s)")
                log.warning(
                    "imap session failed",
                    reason=reason,
                    error_class=error.__class__.__name__,
                    retry_in=round(delay, 1),
                    exc_info=reason.startswith("unexpected"),
                )
                await self._pause(delay)
            else:
                await self._call(mailbox.close)
            finally:
                self._mailboxes.pop(folder, None)
        log.debug("imap folder released")

    async def _session(self, mailbox: _Mailbox, folder: str, backoff: _Backoff, log: Any) -> None:
        """One connection: open, resume from the checkpoint, then catch up after every wake."""
        selected = await self._call(mailbox.open)
        checkpoint = await self._start_position(folder, selected, log)
        log.info(
            "imap folder opened",
            uidvalidity=selected.uidvalidity,
            uidnext=selected.uidnext,
            resume_after=checkpoint.uid,
            idle=selected.idle,
            post_action=self.config.post_action,
            **({"move_method": mailbox.move_method} if self.config.post_action == "move" else {}),
        )
        self._warn_about_post_action(mailbox, log)
        if folder not in self._undelivered:  # connected: healthy, even in a long backfill
            self._report(folder, None)
        while not self._stopping.is_set():
            checkpoint = await self._catch_up(mailbox, folder, checkpoint, log)
            if self._stopping.is_set():
                return
            backoff.reset()
            self._undelivered.discard(folder)  # a broker failure clears only once mail flows again
            self._problems.pop(folder, None)
            self._fetched_now(folder)
            await self._wait_for_mail(mailbox, selected.idle)

    def _warn_about_post_action(self, mailbox: _Mailbox, log: Any) -> None:
        """Say so when the server cannot do the configured post-action fully."""
        action = self.config.post_action
        if action == "move" and mailbox.move_method == "copy-seen":
            log.warning(
                "imap server has neither MOVE nor UIDPLUS: moved mail is copied to move_to and "
                "flagged \\Seen, the original stays in the folder",
                move_to=self.config.move_to,
            )
        elif action == "delete" and not mailbox.uid_expunge:
            log.warning("imap server lacks UIDPLUS: deleted mail is only flagged \\Deleted, not expunged")

    async def _start_position(self, folder: str, selected: _Selected, log: Any) -> Checkpoint:
        """The checkpoint to resume from, written at once when it is new (so the start
        position of an only-new-mail folder survives a restart before any mail arrived)."""
        stored = await self._context.state.get(self._key(folder))
        previous: Checkpoint | None = None
        if stored is not None:
            try:
                previous = Checkpoint.from_bytes(stored)
            except ValueError as error:
                log.warning("imap checkpoint unreadable, starting afresh", error=str(error))
        if previous is not None and previous.uidvalidity == selected.uidvalidity:
            return previous
        now = self._context.clock()
        top = selected.uidnext - 1
        since: date | None
        if previous is not None:
            since = (previous.at - _RESCAN_MARGIN).date()
            if self.config.backfill_since is not None:
                since = max(since, self.config.backfill_since)
            log.warning(
                "imap UIDVALIDITY changed, rescanning",
                old_uidvalidity=previous.uidvalidity,
                new_uidvalidity=selected.uidvalidity,
                since=since.isoformat(),
            )
        else:
            since = self.config.backfill_since
        if since is None or top == 0:
            checkpoint = Checkpoint(selected.uidvalidity, top if since is None else 0, now)
        else:
            checkpoint = Checkpoint(selected.uidvalidity, 0, now, since, top)
        await self._save(folder, checkpoint)
        return checkpoint

    async def _catch_up(self, mailbox: _Mailbox, folder: str, checkpoint: Checkpoint, log: Any) -> Checkpoint:
        """Publish everything after *checkpoint*, in UID order, until the folder has no newer
        mail; returns the new checkpoint (already durable)."""
        window = _WINDOW_MIN
        while not self._stopping.is_set():
            top = await self._call(mailbox.highest_uid)
            if top <= checkpoint.uid:
                return checkpoint
            low = checkpoint.uid + 1
            while low <= top:
                filtered = checkpoint.filtered(low)
                high = min(top, low + window - 1)
                if filtered:
                    high = min(high, checkpoint.until_uid)
                since = checkpoint.since if filtered else None
                uids = await self._call(mailbox.search, low, high, since)
                if uids:
                    checkpoint = await self._take(mailbox, folder, uids, checkpoint)
                if self._stopping.is_set():
                    return checkpoint
                if filtered and high == checkpoint.until_uid and checkpoint.uid < high:
                    # The dated range is done; note it so no restart searches it again.
                    checkpoint = checkpoint.advanced(high, self._context.clock())
                    await self._save(folder, checkpoint)
                    log.info("imap backfill complete", uid=high)
                window = min(_WINDOW_MAX, window * 2) if len(uids) < self.config.batch_size else _WINDOW_MIN
                low = high + 1
        return checkpoint

    async def _take(
        self, mailbox: _Mailbox, folder: str, uids: Sequence[int], checkpoint: Checkpoint
    ) -> Checkpoint:
        """Fetch, publish and checkpoint *uids* in UID order, a bounded group at a time.

        A group is fetched and parsed while the one before it is being confirmed, but it is
        sent only once that one is confirmed and checkpointed: the checkpoint never passes an
        unconfirmed mail. Returns early, with the last durable checkpoint, when stopping.
        """
        config = self.config
        uidvalidity = checkpoint.uidvalidity
        sending: tuple[asyncio.Task[list[int]], int] | None = None
        try:
            for chunk in _batched(uids, config.batch_size):
                if self._stopping.is_set():
                    break
                summaries = await self._call(mailbox.summaries, chunk)
                for too_large, group in _groups(
                    chunk, summaries, config.batch_bytes, config.max_message_size
                ):
                    if self._stopping.is_set():
                        break
                    prepared = await self._prepare(mailbox, folder, uidvalidity, too_large, group, summaries)
                    checkpoint = await self._settle(sending, mailbox, folder, checkpoint)
                    sending = None
                    task = asyncio.create_task(self._send(prepared, folder, uidvalidity))
                    sending = (task, group[-1])
            checkpoint = await self._settle(sending, mailbox, folder, checkpoint)
            sending = None
            return checkpoint
        finally:
            if sending is not None and not sending[0].done():
                sending[0].cancel()  # not checkpointed: sent again later, with the same ids
                await asyncio.wait({sending[0]})

    async def _settle(
        self,
        sending: tuple[asyncio.Task[list[int]], int] | None,
        mailbox: _Mailbox,
        folder: str,
        checkpoint: Checkpoint,
    ) -> Checkpoint:
        """Wait for the group in flight, checkpoint its last UID, then apply the post-action:
        the post-action never runs for mail that could still be taken again."""
        if sending is None:
            return checkpoint
        task, last_uid = sending
        done = await task
        checkpoint = checkpoint.advanced(last_uid, self._context.clock())
        await self._save(folder, checkpoint)
        self._fetched_now(folder)
        await self._post_action(mailbox, folder, done)
        return checkpoint

    async def _post_action(self, mailbox: _Mailbox, folder: str, uids: list[int]) -> None:
        """Apply ``post_action`` to mail already published and checkpointed.

        A failure is normal and is not retried: the mail is on ``sb.inbound`` and the
        checkpoint is past it, so it is neither published again nor acted on again. It is
        logged and counted; a server refusal leaves the session running, a broken connection
        ends it (the session reconnects from the checkpoint).
        """
        action = self.config.post_action
        if action == "none" or not uids:
            return
        try:
            await self._call(mailbox.post_action, uids)
        except Exception as error:
            self._context.metrics.post_action_failed(action, len(uids))
            self._log.warning(
                "imap post-action failed; the mail stays published and is not taken again",
                folder=folder,
                action=action,
                uids=f"{uids[0]}:{uids[-1]}",
                count=len(uids),
                reason=failure_reason(error),
            )
            refused = isinstance(error, imaplib.IMAP4.error) and not isinstance(error, imaplib.IMAP4.abort)
            if not refused:
                raise
            return
        self._log.debug("imap post-action done", folder=folder, action=action, count=len(uids))

    async def _prepare(
        self,
        mailbox: _Mailbox,
        folder: str,
        uidvalidity: int,
        too_large: bool,
        uids: list[int],
        summaries: dict[int, _Summary],
    ) -> list[_Parsed]:
        """Fetch and parse one group. A mail over ``max_message_size`` is not downloaded: only
        its header is, to be quarantined; the mail itself stays on the server."""
        started = time.perf_counter()
        if too_large:
            uid = uids[0]
            summary = summaries[uid]
            header = await self._call(mailbox.header, uid)
            self._context.metrics.received()
            self._context.metrics.rejected("too_big")
            error = MessageTooLarge(
                f"mail of {summary.size} bytes exceeds max_message_size ({self.config.max_message_size}); "
                "left on the server"
            )
            return [_Parsed(uid, header, self._received_at(summary), error, started)]
        raws = await self._call(mailbox.bodies, uids)
        items = []
        for uid in uids:
            if uid in raws:  # else expunged since the SEARCH
                self._context.metrics.received()
                items.append((uid, raws[uid], self._received_at(summaries[uid])))
        return await self._call(self._parse, folder, uidvalidity, items, started)

    def _received_at(self, summary: _Summary) -> datetime:
        stamp = summary.internaldate
        if stamp is None:
            return self._context.clock().astimezone(UTC)
        return stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)

    def _parse(
        self, folder: str, uidvalidity: int, items: list[tuple[int, bytes, datetime]], started: float
    ) -> list[_Parsed]:
        """Records for fetched mail (worker thread). A mail that cannot become a record carries
        its error instead; a failing attachment store raises (retriable: nothing is lost)."""
        parsed = []
        for uid, raw, received_at in items:
            outcome: InboundMessage | Exception
            try:
                outcome = message_from_email(
                    raw,
                    channel_instance=self.name,
                    received_at=received_at,
                    envelope=EmailEnvelope(),
                    attachments=self._attachments,
                    extra_metadata={"imap": {"folder": folder, "uidvalidity": uidvalidity, "uid": uid}},
                )
            except OSError as error:  # the attachment store: retriable, nothing is checkpointed
                raise _StoreFailed(f"attachment store failed: {error.strerror or error}") from error
            except Exception as error:
                if not isinstance(error, UnparseableEmail):
                    self._log.error("mail parser failed unexpectedly", uid=uid, exc_info=error)
                outcome = error
            parsed.append(_Parsed(uid, raw, received_at, outcome, started))
        return parsed

    async def _send(self, parsed: list[_Parsed], folder: str, uidvalidity: int) -> list[int]:
        """Returns once every mail of a group is on ``sb.inbound`` or in quarantine, with the
        UIDs the post-action may touch: all but mail too large to fetch, which is kept by its
        header only and so must stay where it is. Sent together, confirmed together: the
        producer keeps their order per conversation."""
        results = await asyncio.gather(
            *(self._publish(item, folder, uidvalidity) for item in parsed), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [item.uid for item in parsed if not isinstance(item.outcome, MessageTooLarge)]

    async def _publish(self, item: _Parsed, folder: str, uidvalidity: int) -> None:
        outcome = item.outcome
        if isinstance(outcome, InboundMessage):
            try:
                await self._confirmed(self._context.publish(outcome), "record")
            except RecordRejected as error:
                await self._quarantine(item, error, folder, uidvalidity)
                return
            except Exception:
                self._context.metrics.publish_failed()
                raise
            self._context.metrics.published(time.perf_counter() - item.started)
            if self._problems or self._stale:  # published() clears the error state: keep it
                self._context.metrics.errored()
        else:
            await self._quarantine(item, outcome, folder, uidvalidity)

    async def _quarantine(self, item: _Parsed, error: Exception, folder: str, uidvalidity: int) -> None:
        """Keep a mail that cannot be a record. Its whole ``.eml`` goes to the attachment
        store (a quarantine record is cut at the broker's size), then a record saying why and
        where the mail is to quarantine. A mail too large to fetch is kept by its header."""
        where = f"imap {folder} uidvalidity {uidvalidity} uid {item.uid}"
        if isinstance(error, MessageTooLarge):
            reason, content_type = f"{error}: {where}", "text/rfc822-headers"
        else:
            digest = hashlib.sha256(item.raw).hexdigest()
            try:
                ref = await self._call(
                    lambda: self._attachments.put(
                        item.raw, sha256=digest, filename=f"{digest}.eml", content_type="message/rfc822"
                    )
                )
            except OSError as store_error:
                raise _StoreFailed(f"attachment store failed: {store_error.strerror}") from None
            reason, content_type = f"{error}; whole mail kept at {ref}; {where}", "message/rfc822"
        quarantined = QuarantineItem(
            channel_instance=self.name,
            raw=item.raw,
            reason=reason[:1000],
            error_class=error.__class__.__name__,
            content_type=content_type,
            received_at=item.received_at,
        )
        await self._confirmed(self._context.quarantine(quarantined), "quarantine record")
        self._context.metrics.quarantined()
        self._log.warning(
            "mail quarantined", uid=item.uid, error_class=quarantined.error_class, reason=reason
        )

    async def _wait_for_mail(self, mailbox: _Mailbox, idle: bool) -> None:
        """Return when the folder may have new mail, at the latest after ``idle_renew`` or
        ``staleness / 2`` (IDLE) or ``poll_interval`` (polling) seconds, or when the connector
        stops."""
        if not idle:
            await self._pause(self.config.poll_interval)
            if not self._stopping.is_set():
                await self._call(mailbox.noop)  # also proves the connection still works
            return
        if not await self._call(mailbox.idle_start):
            return
        loop = asyncio.get_running_loop()
        # Re-issued at least twice per staleness period: each renewal (DONE, a SEARCH, IDLE)
        # proves the session alive, so a live IDLE session never looks stale.
        deadline = loop.time() + min(self.config.idle_renew, self.config.staleness / 2)
        while not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0 or await self._call(mailbox.idle_wait, min(_IDLE_SLICE, remaining)):
                break
        await self._call(mailbox.idle_end)


# ------------------------------------------------------------------------- registry


def build(config: ImapConfig, context: ConnectorContext) -> ImapConnector:
    """The registry's factory: attachments under ``attachment_dir``. Opens nothing yet."""
    return ImapConnector(config, context)


def _check(config: ImapConfig) -> str:
    try:
        client = _login(config)
    except Exception as error:
        raise ImapUnavailable(f"{config.address} as {config.username}: {failure_reason(error)}") from None
    try:
        names = {str(name) for _flags, _delimiter, name in client.list_folders()}
        known = {_comparable(name) for name in names}
        wanted = [*config.folders, *([config.move_to] if config.move_to else [])]
        missing = [folder for folder in wanted if _comparable(folder) not in known]
        if missing:
            listed = ", ".join(sorted(names)[:20])
            raise ImapUnavailable(f"folder not found: {', '.join(missing)} (the server lists: {listed})")
        counts = []
        for folder in config.folders:
            messages = int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])
            counts.append(f"{folder} ({messages} message{'' if messages == 1 else 's'})")
        idle = config.idle and client.has_capability("IDLE")
    finally:
        _close(client)
    waiting = "IDLE" if idle else f"polling every {config.poll_interval:g}s"
    after = {"none": "", "seen": "; then flagged \\Seen", "delete": "; then deleted"}.get(
        config.post_action, f"; then moved to {config.move_to}"
    )
    return (
        f"logged in to {config.address} as {config.username} ({config.security}); {waiting}; "
        f"folders: {', '.join(counts)}{after}"
    )


async def check(config: ImapConfig) -> str:
    """``channels check``: logs in, lists the folders, and checks the configured ones exist."""
    return await asyncio.to_thread(_check, config)


def reprocess(config: ImapConfig, raw: bytes) -> InboundMessage:
    """``quarantine reprocess``: parse a kept mail again."""
    return reparse(raw, channel_instance=config.name, attachment_dir=config.attachment_dir)


CHANNEL_TYPE = ChannelType(
    type="imap",
    channel="email",
    config_model=ImapConfig,
    factory=build,
    summary="IMAP mailbox: follows folders with IDLE or polling, from a durable checkpoint",
    check=check,
    reprocess=reprocess,
)
