"""SPF, DKIM and DMARC evaluation against DNS records held in memory (no network)."""

from __future__ import annotations

import base64
import time

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors.mailauth import (
    DnsError,
    MailAuthenticator,
    RecordType,
    StaticResolver,
    check_dkim,
    check_spf,
)

PEER = "192.0.2.10"


Records = dict[tuple[str, RecordType], list[str]]


async def spf(records: Records, **kwargs: object) -> str:
    options: dict[str, object] = {"peer_ip": PEER, "mail_from": "kumar@example.org", "helo": "mx.example.org"}
    options.update(kwargs)
    failing = options.pop("failing", ())
    resolver = StaticResolver(records, failing=failing)  # type: ignore[arg-type]
    return (await check_spf(resolver, **options)).result  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ SPF


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
        ("v=spf1 ip4:198.51.100.1 -all", "fail"),
        ("v=spf1 ip4:198.51.100.1 ~all", "softfail"),
        ("v=spf1 ip4:198.51.100.1 ?all", "neutral"),
        ("v=spf1 ip4:198.51.100.1", "neutral"),
        ("v=spf1 -ip4:192.0.2.10 +all", "fail"),
        ("v=spf1 ip6:2001:db8::/32 -all", "fail"),
        ("v=spf1 frobnicate:example.org -all", "permerror"),
        ("v=spf1 ip4:192.0.2.300 -all", "permerror"),
        ("v=spf1 unknown-modifier=whatever ip4:192.0.2.10 -all", "pass"),
    ],
)
async def test_spf_direct_mechanisms(record: str, expected: str) -> None:
    assert await spf({("example.org", "TXT"): ["some other text", record]}) == expected


async def test_spf_without_record_is_none_and_dns_failure_is_temperror() -> None:
    assert await spf({}) == "none"
    assert await spf({}, failing=["example.org"]) == "temperror"


async def test_spf_two_records_is_permerror() -> None:
    records = {("example.org", "TXT"): ["v=spf1 -all", "v=spf1 +all"]}
    assert await spf(records) == "permerror"


async def test_spf_a_and_mx_with_cidr() -> None:
    a_record = {
        ("example.org", "TXT"): ["v=spf1 a:web.example.org/24 -all"],
        ("web.example.org", "A"): ["192.0.2.99"],
    }
    assert await spf(a_record) == "pass"
    exact = {**a_record, ("example.org", "TXT"): ["v=spf1 a:web.example.org -all"]}
    assert await spf(exact) == "fail"
    mx = {
        ("example.org", "TXT"): ["v=spf1 mx -all"],
        ("example.org", "MX"): ["mx1.example.org", "mx2.example.org"],
        ("mx2.example.org", "A"): [PEER],
    }
    assert await spf(mx) == "pass"


async def test_spf_ipv6_client_uses_aaaa_and_ip6() -> None:
    records = {
        ("example.org", "TXT"): ["v=spf1 a:v6.example.org//64 -all"],
        ("v6.example.org", "AAAA"): ["2001:db8:1:2::1"],
    }
    assert await spf(records, peer_ip="2001:db8:1:2::abcd") == "pass"
    assert await spf(records, peer_ip="2001:db8:1:3::abcd") == "fail"


async def test_spf_ipv4_mapped_peer_is_treated_as_ipv4() -> None:
    records = {("example.org", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"]}
    assert await spf(records, peer_ip="::ffff:192.0.2.10") == "pass"


async def test_spf_include_and_redirect() -> None:
    records = {
        ("example.org", "TXT"): ["v=spf1 include:_spf.provider.test -all"],
        ("_spf.provider.test", "TXT"): ["v=spf1 ip4:192.0.2.0/28 ~all"],
    }
    assert await spf(records) == "pass"
    outside = await spf(records, peer_ip="203.0.113.5")
    assert outside == "fail"  # the include's softfail is "no match"; the outer -all decides
    redirect = {
        ("example.org", "TXT"): ["v=spf1 redirect=_spf.provider.test"],
        ("_spf.provider.test", "TXT"): ["v=spf1 ip4:203.0.113.0/24 ~all"],
    }
    assert await spf(redirect) == "softfail"


async def test_spf_include_or_redirect_to_nothing_is_permerror() -> None:
    assert await spf({("example.org", "TXT"): ["v=spf1 include:missing.test -all"]}) == "permerror"
    assert await spf({("example.org", "TXT"): ["v=spf1 redirect=missing.test"]}) == "permerror"


async def test_spf_include_temperror_propagates() -> None:
    records = {("example.org", "TXT"): ["v=spf1 include:flaky.test -all"]}
    assert await spf(records, failing=["flaky.test"]) == "temperror"


async def test_spf_more_than_ten_lookups_is_permerror() -> None:
    chain: Records = {("example.org", "TXT"): ["v=spf1 include:l1.test -all"]}
    for n in range(1, 12):
        chain[(f"l{n}.test", "TXT")] = [f"v=spf1 include:l{n + 1}.test -all"]
    chain[("l12.test", "TXT")] = ["v=spf1 +all"]
    assert await spf(chain) == "permerror"
    short = {key: value for key, value in chain.items() if key[0] not in {"l10.test", "l11.test"}}
    short[("l9.test", "TXT")] = ["v=spf1 ip4:192.0.2.10 -all"]
    assert await spf(short) == "pass"


async def test_spf_more_than_two_void_lookups_is_permerror() -> None:
    records = {("example.org", "TXT"): ["v=spf1 a:n1.test a:n2.test a:n3.test ip4:192.0.2.10 -all"]}
    assert await spf(records) == "permerror"
    two = {("example.org", "TXT"): ["v=spf1 a:n1.test a:n2.test ip4:192.0.2.10 -all"]}
    assert await spf(two) == "pass"


async def test_spf_exists_with_macros() -> None:
    records = {
        ("example.org", "TXT"): ["v=spf1 exists:%{ir}.%{l1r-}.%{d2}.allow.test -all"],
        ("10.2.0.192.kumar.example.org.allow.test", "A"): ["127.0.0.2"],
    }
    assert await spf(records) == "pass"
    assert await spf(records, mail_from="someone-else@example.org") == "fail"


async def test_spf_null_sender_checks_the_helo_name() -> None:
    records = {("mx.example.org", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"]}
    result = await check_spf(StaticResolver(records), peer_ip=PEER, mail_from=None, helo="mx.example.org")
    assert (result.result, result.domain) == ("pass", "mx.example.org")


async def test_spf_without_usable_identity_is_none() -> None:
    resolver = StaticResolver({})
    assert (await check_spf(resolver, peer_ip=None, mail_from="a@example.org", helo=None)).result == "none"
    assert (await check_spf(resolver, peer_ip=PEER, mail_from="a@localhost", helo=None)).result == "none"
    assert resolver.asked == []


# ----------------------------------------------------------------------------------------- DKIM


@pytest.fixture(scope="module")
def signing_key() -> tuple[bytes, str]:
    """An RSA key as PEM and its DKIM key record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


MESSAGE = (
    b"From: Kumar <kumar@mail.example.org>\r\n"
    b"To: support@example.com\r\n"
    b"Subject: Order 4471 not delivered\r\n"
    b"Message-ID: <abc@mail.example.org>\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"My parcel never arrived.\r\n"
)


def sign(pem: bytes, domain: str = "mail.example.org", message: bytes = MESSAGE) -> bytes:
    signature: bytes = dkim.sign(
        message, b"sel", domain.encode(), pem, include_headers=[b"from", b"to", b"subject"]
    )
    return signature + message


async def test_dkim_valid_signature_passes(signing_key: tuple[bytes, str]) -> None:
    pem, key_record = signing_key
    resolver = StaticResolver({("sel._domainkey.mail.example.org", "TXT"): [key_record]})
    result = await check_dkim(resolver, sign(pem))
    assert (result.result, result.domains) == ("pass", ("mail.example.org",))


async def test_dkim_verifies_a_large_mail_off_the_event_loop(signing_key: tuple[bytes, str]) -> None:
    pem, key_record = signing_key
    resolver = StaticResolver({("sel._domainkey.mail.example.org", "TXT"): [key_record]})
    large = MESSAGE + b"More detail about the parcel.\r\n" * 20_000  # ~600 kB
    assert (await check_dkim(resolver, sign(pem, message=large))).result == "pass"


async def test_dkim_tampered_body_fails(signing_key: tuple[bytes, str]) -> None:
    pem, key_record = signing_key
    resolver = StaticResolver({("sel._domainkey.mail.example.org", "TXT"): [key_record]})
    tampered = sign(pem).replace(b"never arrived", b"arrived fine")
    assert (await check_dkim(resolver, tampered)).result == "fail"


async def test_dkim_unsigned_missing_key_and_dns_failure(signing_key: tuple[bytes, str]) -> None:
    pem, _ = signing_key
    assert (await check_dkim(StaticResolver({}), MESSAGE)).result == "none"
    assert (await check_dkim(StaticResolver({}), sign(pem))).result == "permerror"
    flaky = StaticResolver({}, failing=["sel._domainkey.mail.example.org"])
    assert (await check_dkim(flaky, sign(pem))).result == "temperror"


async def test_dkim_malformed_signature_is_permerror() -> None:
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org\r\n" + MESSAGE
    assert (await check_dkim(StaticResolver({}), broken)).result == "permerror"


# ---------------------------------------------------------------------------------------- DMARC


async def test_dmarc_passes_on_aligned_dkim_with_relaxed_alignment(signing_key: tuple[bytes, str]) -> None:
    pem, key_record = signing_key
    resolver = StaticResolver(
        {
            ("sel._domainkey.example.org", "TXT"): [key_record],
            ("_dmarc.mail.example.org", "TXT"): ["v=DMARC1; p=reject"],
        }
    )
    results = await MailAuthenticator(resolver).evaluate(
        sign(pem, domain="example.org"), peer_ip=PEER, mail_from="bounce@elsewhere.test", helo="mx"
    )
    assert results.summary() == {"spf": "none", "dkim": "pass", "dmarc": "pass"}
    assert results.details()["dmarc_policy"] == "reject"
    assert results.details()["from_domain"] == "mail.example.org"


async def test_dmarc_strict_alignment_fails_for_a_parent_domain(signing_key: tuple[bytes, str]) -> None:
    pem, key_record = signing_key
    resolver = StaticResolver(
        {
            ("sel._domainkey.example.org", "TXT"): [key_record],
            ("_dmarc.mail.example.org", "TXT"): ["v=DMARC1; p=quarantine; adkim=s"],
        }
    )
    results = await MailAuthenticator(resolver).evaluate(
        sign(pem, domain="example.org"), peer_ip=PEER, mail_from=None, helo=None
    )
    assert results.summary()["dmarc"] == "fail"
    assert results.dmarc.policy == "quarantine"


async def test_dmarc_spf_alignment_and_organizational_fallback() -> None:
    resolver = StaticResolver(
        {
            ("example.org", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
            ("_dmarc.example.org", "TXT"): ["v=DMARC1; p=reject; sp=quarantine"],
        }
    )
    results = await MailAuthenticator(resolver).evaluate(
        MESSAGE, peer_ip=PEER, mail_from="bounce@example.org", helo="mx.example.org"
    )
    assert results.summary() == {"spf": "pass", "dkim": "none", "dmarc": "pass"}
    assert results.dmarc.policy == "quarantine"  # the From domain is a subdomain: sp= applies
    spoofed = await MailAuthenticator(resolver).evaluate(
        MESSAGE, peer_ip="203.0.113.9", mail_from="bounce@example.org", helo="mx"
    )
    assert spoofed.summary() == {"spf": "fail", "dkim": "none", "dmarc": "fail"}


async def test_dmarc_none_temperror_and_permerror() -> None:
    nothing = await MailAuthenticator(StaticResolver({})).evaluate(
        MESSAGE, peer_ip=PEER, mail_from="a@example.org", helo="mx"
    )
    assert nothing.summary() == {"spf": "none", "dkim": "none", "dmarc": "none"}
    flaky = StaticResolver({}, failing=["_dmarc.mail.example.org"])
    failed = await MailAuthenticator(flaky).evaluate(MESSAGE, peer_ip=PEER, mail_from=None, helo=None)
    assert failed.dmarc.result == "temperror"
    two_from = b"From: a@one.example\r\nFrom: b@two.example\r\n\r\nbody\r\n"
    ambiguous = await MailAuthenticator(StaticResolver({})).evaluate(
        two_from, peer_ip=PEER, mail_from=None, helo=None
    )
    assert ambiguous.dmarc.result == "permerror"


async def test_evaluation_is_bounded_by_its_timeout() -> None:
    slow = StaticResolver({("example.org", "TXT"): ["v=spf1 -all"]}, delay=5.0)
    started = time.monotonic()
    results = await MailAuthenticator(slow, timeout=0.3).evaluate(
        MESSAGE, peer_ip=PEER, mail_from="a@example.org", helo="mx"
    )
    assert time.monotonic() - started < 1.5
    assert results.summary() == {"spf": "temperror", "dkim": "none", "dmarc": "temperror"}


async def test_a_failing_resolver_never_escapes() -> None:
    class Broken:
        async def query(self, name: str, rtype: str) -> list[str]:
            raise RuntimeError("resolver bug")

    results = await MailAuthenticator(Broken(), timeout=1.0).evaluate(
        MESSAGE, peer_ip=PEER, mail_from="a@example.org", helo="mx"
    )
    assert results.summary() == {"spf": "temperror", "dkim": "none", "dmarc": "temperror"}


async def test_static_resolver_reports_failures_as_dns_errors() -> None:
    with pytest.raises(DnsError):
        await StaticResolver({}, failing=["x.test"]).query("X.test.", "A")


async def test_dkim_unusable_key_record_is_permerror(signing_key: tuple[bytes, str]) -> None:
    pem, _ = signing_key
    resolver = StaticResolver({("sel._domainkey.mail.example.org", "TXT"): ["v=DKIM1; k=rsa; p=!!!"]})
    assert (await check_dkim(resolver, sign(pem))).result == "permerror"
