"""SPF, DKIM and DMARC evaluation of one received mail, recorded, never used to refuse it.

Results use the vocabulary of RFC 8601 (``pass``, ``fail``, ``softfail``, ``neutral``, ``none``,
``temperror``, ``permerror``). Every DNS question goes through an injectable :class:`Resolver`,
and :meth:`MailAuthenticator.evaluate` is bounded by one overall timeout: whatever has not
finished by then is recorded as ``temperror``, so evaluation never holds up acceptance longer.

SPF (RFC 7208) is implemented here, asynchronously, because the checkers on PyPI resolve DNS
synchronously through module-level functions: ``ip4``/``ip6``/``a``/``mx``/``include``/
``exists``/``all`` with dual CIDR lengths, ``redirect``, macros, the limit of 10 DNS-querying
terms and of 2 void lookups. ``ptr`` (deprecated by the RFC) never matches; it still counts as a
lookup. DKIM signatures are verified by dkimpy with keys fetched beforehand through the
resolver. DMARC (RFC 7489) checks that a passing SPF or DKIM domain aligns with the From domain
(strict or relaxed, relaxed comparing organizational domains from the Public Suffix List) and
reads the ``_dmarc`` policy of the From domain or, failing that, of its organizational domain.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, Literal, Protocol, TypeVar

import dkim  # type: ignore[import-untyped]
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import structlog
from publicsuffixlist import PublicSuffixList
from pydantic import JsonValue
from structlog.typing import FilteringBoundLogger

__all__ = [
    "AuthResults",
    "DkimResult",
    "DmarcResult",
    "DnsError",
    "DnsPythonResolver",
    "MailAuthenticator",
    "RecordType",
    "Resolver",
    "SpfResult",
    "StaticResolver",
    "check_dkim",
    "check_spf",
]

_T = TypeVar("_T")

RecordType = Literal["TXT", "A", "AAAA", "MX"]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsError(Exception):
    """A DNS question got no usable answer (timeout, SERVFAIL, no resolver): a temporary error."""


class Resolver(Protocol):
    """Asynchronous DNS, as the checks need it.

    ``query`` returns the answers for *name*: TXT records as text (their strings joined), A and
    AAAA records as addresses, MX records as exchange host names in order of preference. It
    returns ``[]`` when the name or the record does not exist and raises :class:`DnsError` when
    the question could not be answered. Names come without a trailing dot.
    """

    async def query(self, name: str, rtype: RecordType) -> list[str]: ...


class DnsPythonResolver:
    """The default :class:`Resolver`: dnspython's asynchronous stub resolver.

    Nothing is read or sent until the first question (the system's resolver configuration is
    loaded then); each question is bounded by *timeout* seconds.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def query(self, name: str, rtype: RecordType) -> list[str]:
        try:
            if self._resolver is None:
                self._resolver = dns.asyncresolver.Resolver()
            answer = await self._resolver.resolve(
                name, rtype, lifetime=self._timeout, search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as error:
            raise DnsError(f"{rtype} {name}: {error.__class__.__name__}") from error
        if answer.rrset is None:
            return []
        if rtype == "TXT":
            return [b"".join(r.strings).decode("utf-8", errors="replace") for r in answer.rrset]
        if rtype == "MX":
            exchanges = sorted(answer.rrset, key=lambda r: r.preference)
            return [str(r.exchange).rstrip(".") for r in exchanges]
        return [r.address for r in answer.rrset]


class StaticResolver:
    """A :class:`Resolver` answering from a fixed table, for tests and offline runs.

    *records* maps ``(name, type)`` to answers; names listed in *failing* raise
    :class:`DnsError` for every type. Every question asked is kept in :attr:`asked`.
    """

    def __init__(
        self,
        records: Mapping[tuple[str, RecordType], Sequence[str]] | None = None,
        *,
        failing: Iterable[str] = (),
        delay: float = 0.0,
    ) -> None:
        self._records = {(_fold(name), rtype): list(v) for (name, rtype), v in (records or {}).items()}
        self._failing = {_fold(name) for name in failing}
        self._delay = delay
        self.asked: list[tuple[str, RecordType]] = []

    async def query(self, name: str, rtype: RecordType) -> list[str]:
        self.asked.append((name, rtype))
        if self._delay:
            await asyncio.sleep(self._delay)
        if _fold(name) in self._failing:
            raise DnsError(f"{rtype} {name}: SERVFAIL")
        return list(self._records.get((_fold(name), rtype), []))


_INLINE_LIMIT = 256 * 1024  # bytes of mail hashed on the event loop; larger mail goes to a thread


async def _off_loop_if_large(size: int, function: Callable[..., _T], *args: Any) -> _T:
    """Run *function* in a worker thread only for large mail.

    A thread hand-off costs more than hashing a small mail, and its GIL contention delays
    every other session; a large mail, though, must not stall them for its whole hashing.
    """
    if size <= _INLINE_LIMIT:
        return function(*args)
    return await asyncio.to_thread(function, *args)


def _header_section(raw: bytes) -> bytes:
    """The header section of a mail (up to the first empty line)."""
    ends = [end + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (end := raw.find(sep)) >= 0]
    return raw[: min(ends)] if ends else raw


def _fold(name: str) -> str:
    return name.rstrip(".").lower()


def _ascii_domain(domain: str) -> str | None:
    """The A-label form of *domain*, or ``None`` when it is not a usable host name."""
    domain = domain.strip().rstrip(".")
    try:
        ascii_name = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2:
        return None
    if any(not label or len(label) > 63 for label in labels):
        return None
    return ascii_name


# --------------------------------------------------------------------------- SPF (RFC 7208)

SpfValue = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]

_QUALIFIERS: Mapping[str, SpfValue] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_LOOKUP_LIMIT = 10  # DNS-querying terms per evaluation (RFC 7208 §4.6.4)
_VOID_LIMIT = 2  # lookups answered with nothing (RFC 7208 §4.6.4)
_MX_LIMIT = 10
_MACRO = re.compile(
    r"%(?:\{(?P<letter>[a-zA-Z])(?P<digits>\d*)(?P<reverse>[rR]?)(?P<delims>[.\-+,/_=]*)\}|(?P<esc>[%_-]))"
)
_MODIFIER = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<value>.*)")
_MECHANISM = re.compile(r"(?P<name>[A-Za-z0-9]+)(?P<rest>.*)")
_DUAL_CIDR = re.compile(r"(?P<spec>[^/]*)(?:/(?P<v4>\d+))?(?://(?P<v6>\d+))?")


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The SPF verdict and the domain it is about (MAIL FROM's, or HELO's for a null sender)."""

    result: SpfValue
    domain: str | None = None


class _SpfPermError(Exception):
    pass


class _SpfTempError(Exception):
    pass


@dataclass(slots=True)
class _SpfSession:
    """State shared by one evaluation and all of its includes and redirects."""

    resolver: Resolver
    ip: IpAddress
    sender: str
    helo: str
    lookups: int = 0
    voids: int = 0

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > _LOOKUP_LIMIT:
            raise _SpfPermError("more than 10 DNS-querying terms")

    async def query(self, name: str, rtype: RecordType) -> list[str]:
        try:
            answers = await self.resolver.query(name, rtype)
        except DnsError as error:
            raise _SpfTempError(str(error)) from error
        if not answers:
            self.voids += 1
            if self.voids > _VOID_LIMIT:
                raise _SpfPermError("more than 2 void lookups")
        return answers

    async def txt(self, domain: str) -> list[str]:
        """TXT answers of *domain*; not counted as void (a missing record is "none", not abuse)."""
        try:
            return await self.resolver.query(domain, "TXT")
        except DnsError as error:
            raise _SpfTempError(str(error)) from error

    async def addresses(self, name: str) -> list[IpAddress]:
        rtype: RecordType = "A" if self.ip.version == 4 else "AAAA"
        found = []
        for text in await self.query(name, rtype):
            try:
                found.append(ipaddress.ip_address(text))
            except ValueError:
                continue
        return found


def _client_ip(peer_ip: str) -> IpAddress | None:
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def check_spf(
    resolver: Resolver, *, peer_ip: str | None, mail_from: str | None, helo: str | None
) -> SpfResult:
    """SPF for the envelope sender; the HELO name stands in for a null sender (RFC 7208 §2.4)."""
    ip = _client_ip(peer_ip) if peer_ip else None
    helo_name = (helo or "").strip()
    if mail_from and "@" in mail_from:
        local, _, raw_domain = mail_from.rpartition("@")
        sender_domain = _ascii_domain(raw_domain)
        sender = f"{local or 'postmaster'}@{sender_domain}"
    else:
        sender_domain = _ascii_domain(helo_name) if helo_name else None
        sender = f"postmaster@{sender_domain}"
    if ip is None or sender_domain is None:
        return SpfResult("none", sender_domain)
    session = _SpfSession(resolver, ip, sender, helo_name or "unknown")
    try:
        result = await _check_host(session, sender_domain)
    except _SpfTempError:
        return SpfResult("temperror", sender_domain)
    except _SpfPermError:
        return SpfResult("permerror", sender_domain)
    return SpfResult(result, sender_domain)


async def _spf_record(session: _SpfSession, domain: str) -> str | None:
    records = [
        text
        for text in await session.txt(domain)
        if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")
    ]
    if len(records) > 1:
        raise _SpfPermError(f"{domain} publishes more than one SPF record")
    return records[0] if records else None


async def _check_host(session: _SpfSession, domain: str) -> SpfValue:
    """RFC 7208 §4: the result of *domain*'s policy for the session's client address."""
    if _ascii_domain(domain) is None:
        return "none"
    record = await _spf_record(session, domain)
    if record is None:
        return "none"
    directives, redirect = _parse_spf(record)
    for qualifier, name, argument in directives:
        if await _matches(session, domain, name, argument):
            return _QUALIFIERS[qualifier]
    if redirect is not None:
        session.count_lookup()
        target = _expand_domain(session, redirect, domain)
        result = await _check_host(session, target)
        if result == "none":
            raise _SpfPermError(f"redirect target {target} has no SPF record")
        return result
    return "neutral"


def _parse_spf(record: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """Split a record into (qualifier, mechanism, argument) directives and the redirect target."""
    directives: list[tuple[str, str, str]] = []
    seen_modifiers: set[str] = set()
    redirect: str | None = None
    for term in record.split()[1:]:
        modifier = _MODIFIER.fullmatch(term)
        if modifier is not None:
            name = modifier["name"].lower()
            if name in seen_modifiers and name in {"redirect", "exp"}:
                raise _SpfPermError(f"{name}= appears twice")
            seen_modifiers.add(name)
            if name == "redirect":
                redirect = modifier["value"]
            continue
        qualifier = "+"
        if term[0] in _QUALIFIERS:
            qualifier, term = term[0], term[1:]
        mechanism = _MECHANISM.fullmatch(term)
        if mechanism is None:
            raise _SpfPermError(f"bad term {term!r}")
        name = mechanism["name"].lower()
        if name not in {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}:
            raise _SpfPermError(f"unknown mechanism {name!r}")
        directives.append((qualifier, name, mechanism["rest"]))
    if any(name == "all" for _, name, _ in directives):
        redirect = None  # RFC 7208 §6.1: redirect is ignored when the record has "all"
    return directives, redirect


async def _matches(session: _SpfSession, domain: str, name: str, argument: str) -> bool:
    if name == "all":
        if argument:
            raise _SpfPermError("all takes no argument")
        return True
    if name in {"ip4", "ip6"}:
        return _ip_matches(session.ip, name, argument)
    session.count_lookup()
    if name in {"include", "exists"}:
        if not argument.startswith(":") or len(argument) < 2:
            raise _SpfPermError(f"{name} needs a domain")
        target = _expand_domain(session, argument[1:], domain)
        if name == "exists":
            return bool(await session.query(target, "A"))
        result = await _check_host(session, target)
        if result in {"temperror"}:
            raise _SpfTempError(f"include:{target}")
        if result in {"permerror", "none"}:
            raise _SpfPermError(f"include:{target} gave {result}")
        return result == "pass"
    parts = _DUAL_CIDR.fullmatch(argument)
    if parts is None:
        raise _SpfPermError(f"bad {name} argument {argument!r}")
    spec = parts["spec"]
    if spec and not spec.startswith(":"):
        raise _SpfPermError(f"bad {name} argument {argument!r}")
    target = _expand_domain(session, spec[1:], domain) if spec else domain
    if name == "ptr":
        return False  # deprecated (RFC 7208 §5.5): never matches here, still counted above
    prefix = _prefix_length(session.ip, parts["v4"], parts["v6"])
    if name == "a":
        hosts = [target]
    else:
        hosts = await session.query(target, "MX")
        if len(hosts) > _MX_LIMIT:
            raise _SpfPermError(f"{target} has more than 10 MX records")
    for host in hosts:
        for address in await session.addresses(host):
            if session.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                return True
    return False


def _prefix_length(ip: IpAddress, v4: str | None, v6: str | None) -> int:
    if ip.version == 4:
        length = int(v4) if v4 is not None else 32
        if length > 32:
            raise _SpfPermError(f"bad IPv4 prefix length {length}")
        return length
    length = int(v6) if v6 is not None else 128
    if length > 128:
        raise _SpfPermError(f"bad IPv6 prefix length {length}")
    return length


def _ip_matches(ip: IpAddress, name: str, argument: str) -> bool:
    if not argument.startswith(":"):
        raise _SpfPermError(f"{name} needs a network")
    try:
        network = ipaddress.ip_network(argument[1:], strict=False)
    except ValueError as error:
        raise _SpfPermError(f"bad {name} network {argument[1:]!r}") from error
    if network.version != (4 if name == "ip4" else 6):
        raise _SpfPermError(f"{name} with a network of the other family")
    return ip.version == network.version and ip in network


def _expand_domain(session: _SpfSession, spec: str, domain: str) -> str:
    """Expand macros in a domain-spec (RFC 7208 §7), cut to 253 characters from the left."""
    expanded = _expand_macros(session, spec, domain).rstrip(".")
    if not expanded:
        raise _SpfPermError("empty domain-spec")
    while len(expanded) > 253 and "." in expanded:
        expanded = expanded.split(".", 1)[1]
    return expanded


def _expand_macros(session: _SpfSession, spec: str, domain: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escape = match["esc"]
        if escape is not None:
            return {"%": "%", "_": " ", "-": "%20"}[escape]
        letter = match["letter"]
        value = _macro_value(session, letter.lower(), domain)
        parts = re.split("[" + re.escape(match["delims"] or ".") + "]", value)
        if match["reverse"]:
            parts.reverse()
        if match["digits"]:
            keep = int(match["digits"])
            if keep == 0:
                raise _SpfPermError("macro keeps zero labels")
            parts = parts[-keep:]
        text = ".".join(parts)
        return urllib.parse.quote(text, safe="") if letter.isupper() else text

    checked = _MACRO.sub("", spec)
    if "%" in checked:
        raise _SpfPermError(f"bad macro in {spec!r}")
    return _MACRO.sub(replace, spec)


def _macro_value(session: _SpfSession, letter: str, domain: str) -> str:
    local, _, sender_domain = session.sender.rpartition("@")
    ip = session.ip
    values = {
        "s": session.sender,
        "l": local,
        "o": sender_domain,
        "d": domain,
        "i": str(ip) if ip.version == 4 else ".".join(ip.exploded.replace(":", "")),
        "p": "unknown",
        "v": "in-addr" if ip.version == 4 else "ip6",
        "h": session.helo,
    }
    if letter not in values:
        raise _SpfPermError(f"macro letter {letter!r} is not allowed here")
    return values[letter]


# --------------------------------------------------------------------------- DKIM (RFC 6376)

DkimValue = Literal["pass", "fail", "none", "temperror", "permerror"]
_MAX_SIGNATURES = 5  # evaluated per message; more are ignored (bounded work per mail)
_DKIM_HEADER = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class DkimResult:
    """``pass`` when any signature verifies; ``domains`` are the ``d=`` of those that did."""

    result: DkimValue
    domains: tuple[str, ...] = ()


@dataclass(slots=True)
class _Signature:
    index: int
    key_name: bytes | None = None  # "selector._domainkey.domain." as dkimpy asks for it
    domain: str = ""
    key: bytes | None = None
    outcome: DkimValue | None = None  # decided before verification (malformed, DNS failure)


async def check_dkim(resolver: Resolver, raw: bytes) -> DkimResult:
    """Verify up to five DKIM signatures of *raw*; keys come from *resolver*.

    Parsing and the RSA work run in a worker thread, so a large message does not stall the
    event loop. The best outcome wins: pass › temperror › fail › permerror.
    """
    if _DKIM_HEADER.search(_header_section(raw)) is None:
        return DkimResult("none")
    verifier, signatures = await _off_loop_if_large(len(raw), _prepare_signatures, raw)
    if not signatures:
        return DkimResult("none")
    pending = [s for s in signatures if s.outcome is None and s.key_name is not None]
    answers = await asyncio.gather(
        *(resolver.query(s.key_name.decode("ascii").rstrip("."), "TXT") for s in pending if s.key_name),
        return_exceptions=True,
    )
    for signature, answer in zip(pending, answers, strict=True):
        if isinstance(answer, DnsError):
            signature.outcome = "temperror"
        elif isinstance(answer, BaseException):
            raise answer
        elif not answer:
            signature.outcome = "permerror"  # no key published (RFC 6376 §6.1.2)
        else:
            signature.key = answer[0].encode("utf-8", errors="replace")
    await _off_loop_if_large(len(raw), _verify_signatures, verifier, signatures)
    passed = tuple(dict.fromkeys(s.domain for s in signatures if s.outcome == "pass"))
    if passed:
        return DkimResult("pass", passed)
    for value in ("temperror", "fail"):
        if any(s.outcome == value for s in signatures):
            return DkimResult(value)
    return DkimResult("permerror")


def _prepare_signatures(raw: bytes) -> tuple[object, list[_Signature]]:
    try:
        verifier = dkim.DKIM(raw, minkey=1024)
    except dkim.DKIMException:
        return None, []
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    signatures = []
    for index in range(min(count, _MAX_SIGNATURES)):
        signature = _Signature(index)
        try:
            prepared = verifier.verify_headerprep(index)
        except dkim.DKIMException:
            signature.outcome = "permerror"
        else:
            fields = prepared[0]
            signature.domain = fields[b"d"].decode("ascii", errors="replace").lower()
            signature.key_name = fields[b"s"] + b"._domainkey." + fields[b"d"] + b"."
        signatures.append(signature)
    return verifier, signatures


def _verify_signatures(verifier: object, signatures: list[_Signature]) -> None:
    assert isinstance(verifier, dkim.DKIM)
    for signature in signatures:
        if signature.outcome is not None:
            continue
        key = signature.key

        def published(name: bytes, timeout: float = 5, key: bytes | None = key) -> bytes | None:
            return key

        try:
            dkim.evaluate_pk(signature.key_name, key)
        except (dkim.DKIMException, ValueError):
            signature.outcome = "permerror"  # an unusable key record
            continue
        try:
            verified = verifier.verify(signature.index, dnsfunc=published)
        except dkim.MessageFormatError:
            signature.outcome = "permerror"
        except dkim.DKIMException:
            signature.outcome = "fail"  # e.g. the body hash does not match: the mail was altered
        else:
            signature.outcome = "pass" if verified else "fail"


# --------------------------------------------------------------------------- DMARC (RFC 7489)

DmarcValue = Literal["pass", "fail", "none", "temperror", "permerror"]


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """``pass`` when an aligned SPF or DKIM pass exists; ``policy`` is what the domain asks for.

    The policy is recorded only: Switchboard never refuses mail because of it.
    """

    result: DmarcValue
    from_domain: str | None = None
    policy: str | None = None


def _from_domains(raw: bytes) -> list[str] | None:
    """The domains of the From header's addresses; ``None`` when one is unusable."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(_header_section(raw))
    values = [str(v) for v in headers.get_all("From", [])]
    domains = []
    for _, address in getaddresses(values):
        if not address:
            continue
        if "@" not in address:
            return None
        domain = _ascii_domain(address.rpartition("@")[2])
        if domain is None:
            return None
        domains.append(domain)
    return list(dict.fromkeys(domains))


def _dmarc_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


# --------------------------------------------------------------------------- all together


@dataclass(frozen=True, slots=True)
class AuthResults:
    spf: SpfResult = field(default_factory=lambda: SpfResult("none"))
    dkim: DkimResult = field(default_factory=lambda: DkimResult("none"))
    dmarc: DmarcResult = field(default_factory=lambda: DmarcResult("none"))

    def summary(self) -> dict[str, str]:
        """The record's ``auth`` object: ``{"spf": …, "dkim": …, "dmarc": …}``."""
        return {"spf": self.spf.result, "dkim": self.dkim.result, "dmarc": self.dmarc.result}

    def details(self) -> dict[str, JsonValue]:
        """The domains behind each verdict, for ``metadata.mail_auth``."""
        return {
            "spf_domain": self.spf.domain,
            "dkim_domains": list(self.dkim.domains),
            "from_domain": self.dmarc.from_domain,
            "dmarc_policy": self.dmarc.policy,
        }


class MailAuthenticator:
    """Evaluates SPF, DKIM and DMARC of one mail within *timeout* seconds, never raising."""

    def __init__(
        self, resolver: Resolver, *, timeout: float = 5.0, logger: FilteringBoundLogger | None = None
    ) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._log = logger or structlog.get_logger(__name__)
        self._suffixes: PublicSuffixList | None = None  # parsed on first need (~0.1 s)

    async def evaluate(
        self, raw: bytes, *, peer_ip: str | None, mail_from: str | None, helo: str | None
    ) -> AuthResults:
        """SPF and DKIM run side by side; DMARC follows with the time left.

        Whatever is unfinished at the deadline is ``temperror``; an unexpected failure inside
        a check is ``temperror`` too, so the caller always gets a complete result.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        spf_task = asyncio.create_task(
            check_spf(self._resolver, peer_ip=peer_ip, mail_from=mail_from, helo=helo), name="spf"
        )
        dkim_task = asyncio.create_task(check_dkim(self._resolver, raw), name="dkim")
        await asyncio.wait({spf_task, dkim_task}, timeout=max(0.0, deadline - loop.time()))
        spf = _outcome(spf_task, SpfResult("temperror"), self._log)
        dkim_result = _outcome(dkim_task, DkimResult("temperror"), self._log)
        dmarc_task = asyncio.create_task(self._dmarc(raw, spf, dkim_result), name="dmarc")
        await asyncio.wait({dmarc_task}, timeout=max(0.0, deadline - loop.time()))
        dmarc = _outcome(dmarc_task, DmarcResult("temperror"), self._log)
        return AuthResults(spf, dkim_result, dmarc)

    def _organizational_domain(self, domain: str) -> str:
        if self._suffixes is None:
            self._suffixes = PublicSuffixList()
        private = self._suffixes.privatesuffix(domain)
        return str(private) if private else domain

    def _aligned(self, domain: str, from_domain: str, mode: str) -> bool:
        if mode == "s":
            return domain == from_domain
        return self._organizational_domain(domain) == self._organizational_domain(from_domain)

    async def _dmarc(self, raw: bytes, spf: SpfResult, dkim_result: DkimResult) -> DmarcResult:
        domains = _from_domains(raw)
        if domains is None or len(domains) > 1:
            return DmarcResult("permerror")
        if not domains:
            return DmarcResult("none")
        from_domain = domains[0]
        organizational = self._organizational_domain(from_domain)
        try:
            tags = await self._policy(from_domain)
            subdomain_policy = tags is None and organizational != from_domain
            if subdomain_policy:
                tags = await self._policy(organizational)
        except DnsError:
            return DmarcResult("temperror", from_domain)
        if tags is None:
            return DmarcResult("none", from_domain)
        policy = tags.get("p", "none").lower()
        if subdomain_policy:
            policy = tags.get("sp", policy).lower()
        if policy not in {"none", "quarantine", "reject"}:
            policy = "none"
        spf_aligned = (
            spf.result == "pass"
            and spf.domain is not None
            and self._aligned(spf.domain, from_domain, tags.get("aspf", "r").lower())
        )
        dkim_aligned = any(
            self._aligned(d, from_domain, tags.get("adkim", "r").lower()) for d in dkim_result.domains
        )
        return DmarcResult("pass" if spf_aligned or dkim_aligned else "fail", from_domain, policy)

    async def _policy(self, domain: str) -> dict[str, str] | None:
        records = [
            text
            for text in await self._resolver.query(f"_dmarc.{domain}", "TXT")
            if re.match(r"v\s*=\s*DMARC1\s*(;|$)", text)
        ]
        if len(records) != 1:
            return None  # none, or ambiguous: RFC 7489 §6.6.3 says DMARC does not apply
        return _dmarc_tags(records[0])


def _outcome(task: asyncio.Task[_T], fallback: _T, logger: FilteringBoundLogger) -> _T:
    if not task.done():
        task.cancel()
        logger.info("mail authentication timed out", check=task.get_name())
        return fallback
    error = task.exception()
    if error is not None:
        logger.warning("mail authentication failed", check=task.get_name(), exc_info=error)
        return fallback
    return task.result()
