"""Request signature checks of the chat platforms: pure functions, no I/O, no clock of their own.

Every ``verify_*`` function returns ``None`` when the request is authentic and raises
:class:`SignatureError` otherwise; every comparison of secret-derived values is constant-time
(:func:`hmac.compare_digest`). Secrets may be given as :class:`pydantic.SecretStr`, ``str`` or
``bytes``; they are never put into an error message. The matching ``sign_*`` functions compute
what a platform would send, for tests, tools and outbound signing.

Public API (stable; other connectors import it):

* :class:`SignatureError` — ``reason`` is one of ``missing_signature``, ``bad_signature``,
  ``stale_timestamp``; :mod:`connectors.webedge` answers it with HTTP 401.
* Slack (Events API, signing secret, ``v0``): :func:`sign_slack`, :func:`verify_slack`
  (``X-Slack-Signature`` over ``v0:{X-Slack-Request-Timestamp}:{raw body}``; the timestamp must
  be within ``tolerance`` seconds of ``now``, either way, which bounds replays).
* Meta / WhatsApp Cloud API: :func:`sign_hub_sha256`, :func:`verify_hub_sha256`
  (``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with the app secret>``).
* Twilio: :func:`sign_twilio`, :func:`verify_twilio` (``X-Twilio-Signature``: base64
  HMAC-SHA1 of the full request URL followed by every form parameter name and value, sorted by
  name; a URL on the scheme's default port is also tried with the port written out and vice
  versa, because proxies and Twilio disagree on it).
* Generic HMAC-SHA256 header: :func:`sign_hmac_sha256`, :func:`verify_hmac_sha256`
  (``<prefix><hex HMAC-SHA256 of the raw body>``, prefix ``sha256=`` by default; used by the
  ``webhook`` channel's ``X-Switchboard-Signature``).
* Telegram: :func:`verify_telegram_secret` (``X-Telegram-Bot-Api-Secret-Token`` equals the
  ``secret_token`` given to ``setWebhook``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from models.errors import SwitchboardError

__all__ = [
    "DEFAULT_SLACK_TOLERANCE",
    "Secret",
    "SignatureError",
    "sign_hmac_sha256",
    "sign_hub_sha256",
    "sign_slack",
    "sign_twilio",
    "verify_hmac_sha256",
    "verify_hub_sha256",
    "verify_slack",
    "verify_telegram_secret",
    "verify_twilio",
]

Secret = SecretStr | str | bytes
SignatureFailure = Literal["missing_signature", "bad_signature", "stale_timestamp"]

DEFAULT_SLACK_TOLERANCE = 300.0
"""Seconds a Slack request timestamp may differ from now (Slack's documented five minutes)."""

_MAX_SIGNATURE_CHARS = 512  # no legitimate signature header is longer; refuse before hashing


class SignatureError(SwitchboardError):
    """The request is not authentic (or not provably so); answered 401, never retried by us."""

    retriable = False

    def __init__(self, reason: SignatureFailure, detail: str) -> None:
        super().__init__(detail)
        self.reason: SignatureFailure = reason
        self.detail = detail


def _key(secret: Secret) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _header(value: str | None, name: str) -> str:
    """The header's value, or :class:`SignatureError` when it is absent, empty or absurdly long."""
    if value is None or not value.strip():
        raise SignatureError("missing_signature", f"{name} header is missing")
    value = value.strip()
    if len(value) > _MAX_SIGNATURE_CHARS:
        raise SignatureError("bad_signature", f"{name} header is malformed")
    return value


def _same(expected: str, given: str, name: str) -> None:
    # Compare as bytes: compare_digest on str refuses non-ASCII input with a TypeError.
    if not hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8")):
        raise SignatureError("bad_signature", f"{name} does not match")


# ------------------------------------------------------------------------------------ Slack


def sign_slack(signing_secret: Secret, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack sends for *body* at *timestamp* (``v0=<hex>``)."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(_key(signing_secret), base, hashlib.sha256).hexdigest()


def verify_slack(
    signing_secret: Secret,
    *,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_SLACK_TOLERANCE,
) -> None:
    """Check a Slack request: fresh ``X-Slack-Request-Timestamp`` and matching ``X-Slack-Signature``.

    *now* is the current Unix time (the caller's clock). The timestamp is checked first, so a
    replayed request older than *tolerance* is refused whatever its signature.
    """
    stamp = _header(timestamp, "X-Slack-Request-Timestamp")
    given = _header(signature, "X-Slack-Signature")
    if not stamp.isascii() or not stamp.isdigit():
        raise SignatureError("bad_signature", "X-Slack-Request-Timestamp is not a Unix time")
    if abs(now - int(stamp)) > tolerance:
        raise SignatureError("stale_timestamp", "X-Slack-Request-Timestamp is too far from now")
    _same(sign_slack(signing_secret, stamp, body), given, "X-Slack-Signature")


# --------------------------------------------------------------------------- generic / Meta


def sign_hmac_sha256(secret: Secret, body: bytes, prefix: str = "sha256=") -> str:
    """``<prefix><hex HMAC-SHA256 of body>``."""
    return prefix + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify_hmac_sha256(
    secret: Secret, *, header: str | None, body: bytes, prefix: str = "sha256=", name: str = "signature"
) -> None:
    """Check a ``<prefix><hex HMAC-SHA256>`` header over the raw *body*.

    The hex digits are compared case-insensitively (some senders upper-case them); *name* is
    the header's name, used in the error.
    """
    given = _header(header, name)
    if not given.lower().startswith(prefix.lower()):
        raise SignatureError("bad_signature", f"{name} must start with {prefix!r}")
    digits = given[len(prefix) :].lower()
    _same(sign_hmac_sha256(secret, body, prefix=""), digits, name)


def sign_hub_sha256(app_secret: Secret, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for *body*."""
    return sign_hmac_sha256(app_secret, body)


def verify_hub_sha256(app_secret: Secret, *, header: str | None, body: bytes) -> None:
    """Check Meta's ``X-Hub-Signature-256`` (WhatsApp Cloud API webhooks) over the raw body."""
    verify_hmac_sha256(app_secret, header=header, body=body, name="X-Hub-Signature-256")


# ------------------------------------------------------------------------------------ Twilio

FormParams = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(params: FormParams) -> list[tuple[str, str]]:
    return list(params.items()) if isinstance(params, Mapping) else list(params)


def sign_twilio(auth_token: Secret, url: str, params: FormParams) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for a form POST of *params* to *url*.

    Parameters are sorted by name (then value, for a repeated name) and appended as
    ``name + value`` to the URL; the HMAC-SHA1 of that with the auth token, base64-encoded.
    """
    data = url + "".join(name + value for name, value in sorted(_pairs(params)))
    digest = hmac.new(_key(auth_token), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _url_variants(url: str) -> list[str]:
    """*url* itself, then with its scheme's default port added or removed."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        netloc = f"{prefix}{host}:{default}"
    elif parts.port == default:
        netloc = f"{prefix}{host}"
    else:
        return variants
    variants.append(urlunsplit(parts._replace(netloc=netloc)))
    return variants


def verify_twilio(auth_token: Secret, *, header: str | None, url: str, params: FormParams) -> None:
    """Check ``X-Twilio-Signature`` for a form POST of *params* to *url*.

    *url* must be the URL Twilio requested, query string included: behind a proxy, the
    public URL, not the one this process saw.
    """
    given = _header(header, "X-Twilio-Signature")
    pairs = _pairs(params)
    matched = False
    for candidate in _url_variants(url):
        # Every variant is computed and compared, so timing does not tell which one matched.
        matched |= hmac.compare_digest(
            sign_twilio(auth_token, candidate, pairs).encode("ascii"), given.encode("utf-8")
        )
    if not matched:
        raise SignatureError("bad_signature", "X-Twilio-Signature does not match")


# ---------------------------------------------------------------------------------- Telegram


def verify_telegram_secret(secret_token: Secret, header: str | None) -> None:
    """Check ``X-Telegram-Bot-Api-Secret-Token`` against the webhook's ``secret_token``."""
    given = _header(header, "X-Telegram-Bot-Api-Secret-Token")
    _same(_key(secret_token).decode("utf-8"), given, "X-Telegram-Bot-Api-Secret-Token")
