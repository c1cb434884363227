"""Email to InboundMessage, without a network: charsets, HTML, quoting, ids, threads, attachments."""

from __future__ import annotations

import base64
import hashlib
import unicodedata
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.attachments import LocalAttachmentStore
from connectors.mail import (
    MAX_ATTACHMENTS,
    EmailEnvelope,
    UnparseableEmail,
    decode_bytes,
    decode_header_value,
    html_to_text,
    message_from_email,
    reply_text,
)
from models import InboundMessage

RECEIVED = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
HEADERS = (
    "From: Kumar <kumar@customer.example>\r\n"
    "To: support@example.com\r\n"
    "Subject: Order 4471 not delivered\r\n"
    "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <4471@customer.example>\r\n"
)


@pytest.fixture
def store(tmp_path: Path) -> LocalAttachmentStore:
    return LocalAttachmentStore(tmp_path / "attachments")


def parse(
    raw: bytes | str,
    store: LocalAttachmentStore,
    *,
    instance: str = "support-mail",
    envelope: EmailEnvelope | None = None,
    **options: object,
) -> InboundMessage:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return message_from_email(
        data,
        channel_instance=instance,
        received_at=RECEIVED,
        envelope=envelope or EmailEnvelope(),
        attachments=store,
        **options,  # type: ignore[arg-type]
    )


def plain(body: bytes, content_type: str = "text/plain; charset=utf-8", headers: str = HEADERS) -> bytes:
    return (
        headers.encode("utf-8")
        + f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".encode()
        + body
    )


def file_at(ref: str | None) -> bytes:
    assert ref is not None
    return Path(url2pathname(urlparse(ref).path)).read_bytes()


# ----------------------------------------------------------------------------- the basics


def test_a_plain_mail_becomes_a_complete_record(store: LocalAttachmentStore) -> None:
    envelope = EmailEnvelope(
        mail_from="kumar@customer.example", recipients=("support@example.com",), peer_ip="192.0.2.1"
    )
    record = parse(
        plain(b"My parcel never arrived.\r\n"),
        store,
        envelope=envelope,
        auth={"spf": "pass", "dkim": "none", "dmarc": "pass"},
        extra_metadata={"smtp_tls": True},
    )
    assert record.channel == "email" and record.channel_instance == "support-mail"
    assert record.native_id == "<4471@customer.example>"
    assert record.sender.id == "kumar@customer.example" and record.sender.name == "Kumar"
    assert record.recipients == ("support@example.com",)
    assert record.subject == "Order 4471 not delivered"
    assert record.text == record.body == "My parcel never arrived."
    assert record.conversation_id == "support-mail:<4471@customer.example>"
    assert record.in_reply_to is None
    assert record.received_at == RECEIVED
    assert record.auth == {"spf": "pass", "dkim": "none", "dmarc": "pass"}
    assert record.metadata == {"sent_at": "2026-11-23T10:00:00Z", "smtp_tls": True}
    assert InboundMessage.from_json_bytes(record.to_json_bytes()) == record


def test_without_an_envelope_recipients_come_from_to_and_cc(store: LocalAttachmentStore) -> None:
    headers = HEADERS.replace(
        "To: support@example.com",
        "To: Support <support@example.com>, billing@example.com\r\nCc: ops@example.com",
    )
    record = parse(plain(b"hi", headers=headers), store)
    assert record.recipients == ("support@example.com", "billing@example.com", "ops@example.com")


def test_reply_to_and_language_are_kept_as_metadata(store: LocalAttachmentStore) -> None:
    headers = HEADERS + "Reply-To: orders@customer.example\r\nContent-Language: es-MX\r\n"
    record = parse(plain(b"Hola", headers=headers), store)
    assert record.metadata["reply_to"] == "orders@customer.example"
    assert record.metadata["language_hint"] == "es"


# ---------------------------------------------------------------------------- charsets


@pytest.mark.parametrize(
    ("declared", "payload", "expected"),
    [
        ("utf-8", "Düsseldorf café".encode(), "Düsseldorf café"),
        ("iso-8859-1", "Düsseldorf café".encode("latin-1"), "Düsseldorf café"),
        ("us-ascii", "Düsseldorf".encode(), "Düsseldorf"),  # UTF-8 mislabelled as ASCII
        ("iso-8859-1", "क्या हुआ".encode(), "क्या हुआ"),  # UTF-8 mislabelled as Latin-1
        ("us-ascii", "smart “quotes”".encode("cp1252"), "smart “quotes”"),
        ("x-unknown-charset", "வணக்கம்".encode(), "வணக்கம்"),
        ("x-unknown-charset", "naïve".encode("cp1252"), "naïve"),
        ("base64", b"plain words", "plain words"),  # a codec that is no charset
        ("unicode_escape", b"C:\\new\\x41", "C:\\new\\x41"),
        ('"UTF-8"', "ok ✓".encode(), "ok ✓"),
        ("koi8-r", "Привет".encode("koi8-r"), "Привет"),
        ("shift_jis", "配達".encode("shift_jis"), "配達"),
        ("iso-2022-jp", "配達".encode("iso-2022-jp"), "配達"),
        ("ks_c_5601-1987", "배송".encode("cp949"), "배송"),
        ("gb2312", "快递".encode("gb2312"), "快递"),
        ("utf-8", b"broken \xff\xfe bytes", "broken \ufffd\ufffd bytes"),
    ],
)
def test_every_charset_decodes(declared: str, payload: bytes, expected: str) -> None:
    assert decode_bytes(payload, declared) == expected


def test_a_body_in_an_unknown_charset_still_becomes_text(store: LocalAttachmentStore) -> None:
    record = parse(plain("Mi pedido no llegó".encode(), "text/plain; charset=x-mac-klingon"), store)
    assert record.text == "Mi pedido no llegó"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("=?utf-8?q?D=C3=BCsseldorf?=", "Düsseldorf"),
        ("=?UTF-8?B?4K6k4K6u4K6/4K604K+N?=", "தமிழ்"),
        ("=?iso-8859-1?q?caf=E9?= =?utf-8?q?_ol=C3=A9?= end", "café olé end"),
        ("Re: =?utf-8?b?4KSG4KSq4KSV4KS+?= order", "Re: आपका order"),
        ("=?utf-8?b?4KSG4KSq?= =?utf-8?b?4KSV4KS+?=", "आपका"),  # a character split across words
        ("=?x-bogus?q?caf=C3=A9?=", "café"),
        ("=?utf-8*es?q?se=C3=B1or?=", "señor"),
        ("=?utf-8?b?not base64!?=", "=?utf-8?b?not base64!?="),
        ("folded\r\n subject", "folded subject"),
    ],
)
def test_encoded_words_in_headers(raw: str, expected: str) -> None:
    assert " ".join(decode_header_value(raw).split()) == expected


def test_raw_utf8_headers_decode(store: LocalAttachmentStore) -> None:
    headers = HEADERS.replace("Subject: Order 4471 not delivered", "Subject: আমার অর্ডার কোথায়").replace(
        "From: Kumar", "From: কুমার"
    )
    record = parse(plain("অর্ডার ৪৪৭১".encode(), headers=headers), store)
    assert record.subject == "আমার অর্ডার কোথায়"
    assert record.sender.name == "কুমার"


def test_text_is_nfc(store: LocalAttachmentStore) -> None:
    decomposed = unicodedata.normalize("NFD", "Señor, mi café")
    record = parse(plain(decomposed.encode()), store)
    assert record.text == "Señor, mi café" and unicodedata.is_normalized("NFC", record.body)


# -------------------------------------------------------------------------------- HTML


def test_html_only_mail_is_rendered_to_text(store: LocalAttachmentStore) -> None:
    html = (
        "<html><head><title>t</title><style>p {color: red}</style><script>alert('x')</script></head>"
        "<body><p>Hello&nbsp;team,</p><p>The <b>blue</b> kettle<br>arrived broken.</p>"
        "<ul><li>order 4471</li><li>box crushed</li></ul>"
        "<table><tr><td>Total</td><td>&euro;42</td></tr></table></body></html>"
    )
    record = parse(plain(html.encode(), "text/html; charset=utf-8"), store)
    assert record.body == (
        "Hello team,\n\nThe blue kettle\narrived broken.\n\n- order 4471\n- box crushed\n\nTotal €42"
    )
    assert "alert" not in record.body and "color" not in record.body


def test_html_charset_comes_from_meta_when_the_part_has_none(store: LocalAttachmentStore) -> None:
    html = '<meta http-equiv="Content-Type" content="text/html; charset=windows-1251"><p>Привет</p>'
    record = parse(plain(html.encode("cp1251"), "text/html"), store)
    assert record.text == "Привет"


def test_html_blockquotes_become_quoted_lines_and_are_not_the_customers_words() -> None:
    html = (
        '<div dir="ltr">Still waiting for a refund.</div><br>'
        '<div class="gmail_quote"><div class="gmail_attr">On Mon, Nov 23, 2026 at 9:00 AM Shop '
        '&lt;help@shop.example&gt; wrote:<br></div><blockquote class="gmail_quote">'
        "<div>We refunded you.</div><blockquote>Where is my money?</blockquote></blockquote></div>"
    )
    text = html_to_text(html)
    assert "> We refunded you." in text and "> > Where is my money?" in text
    assert reply_text(text) == "Still waiting for a refund."


def test_multipart_alternative_prefers_text_plain(store: LocalAttachmentStore) -> None:
    message = EmailMessage()
    message["From"] = "kumar@customer.example"
    message["Subject"] = "alt"
    message.set_content("plain version")
    message.add_alternative("<p>html version</p>", subtype="html")
    assert parse(message.as_bytes(), store).body == "plain version"


def test_an_empty_text_plain_alternative_falls_back_to_html(store: LocalAttachmentStore) -> None:
    message = EmailMessage()
    message["From"] = "kumar@customer.example"
    message["Subject"] = "alt"
    message.set_content("\n")
    message.add_alternative("<p>only the html says something</p>", subtype="html")
    assert parse(message.as_bytes(), store).body == "only the html says something"


def test_format_flowed_is_unwrapped(store: LocalAttachmentStore) -> None:
    body = b"This line was wrapped by the \r\nmail client.\r\nNew line.\r\n"
    record = parse(plain(body, "text/plain; charset=utf-8; format=flowed"), store)
    assert record.text == "This line was wrapped by the mail client.\nNew line."


# ------------------------------------------------------------------ the customer's words

GMAIL_REPLY = """Still nothing arrived, please check again.

Thanks,
Kumar

On Mon, Nov 23, 2026 at 9:00 AM Shop Support <help@shop.example>
wrote:

> Your parcel left our warehouse on Friday.
>
> On Sun, Nov 22, 2026 at 8:00 PM Kumar <kumar@customer.example> wrote:
>> Where is my order?
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GMAIL_REPLY, "Still nothing arrived, please check again.\n\nThanks,\nKumar"),
        (
            "Sigue sin llegar.\n\nEl lun, 23 nov 2026 a las 9:00, Tienda (<ayuda@tienda.example>) escribió:\n> Ya se envió.\n",
            "Sigue sin llegar.",
        ),
        (
            "Mera order abhi tak nahi aaya.\n\nसोम, 23 नव॰ 2026 को 9:00 am बजे Shop <help@shop.example> ने लिखा:\n> Shipped.\n",
            "Mera order abhi tak nahi aaya.",
        ),
        (
            "Hindi pa rin dumarating ang order ko.\n\nNoong Lun, Nob 23, 2026 nang 9:00 AM, sumulat si Shop <help@shop.example>:\n> Naipadala na.\n",
            "Hindi pa rin dumarating ang order ko.",
        ),
        (
            "আমার অর্ডার এখনও আসেনি।\n\nসোম, ২৩ নভে, ২০২৬ এ ৯:০০ AM এ Shop <help@shop.example> লিখেছেন:\n> পাঠানো হয়েছে।\n",
            "আমার অর্ডার এখনও আসেনি।",
        ),
        (
            "Please cancel it.\n\n-----Original Message-----\nFrom: Shop <help@shop.example>\nSent: Monday, November 23, 2026 9:00 AM\nTo: Kumar\nSubject: Your order\n\nYour order is confirmed.\n",
            "Please cancel it.",
        ),
        (
            "Please cancel it.\n\n________________________________\nFrom: Shop <help@shop.example>\nSent: Monday, November 23, 2026 9:00 AM\nTo: Kumar\nSubject: Your order\n\nYour order is confirmed.\n",
            "Please cancel it.",
        ),
        (
            "Por favor cancélenlo.\n\nDe: Tienda <ayuda@tienda.example>\nEnviado: lunes, 23 de noviembre de 2026 9:00\nPara: Kumar\nAsunto: Su pedido\n\nConfirmado.\n",
            "Por favor cancélenlo.",
        ),
        (
            "> Which size do you need?\nSize L please.\n> And which colour?\nBlue.\n",
            "Size L please.\nBlue.",
        ),
        ("The charger is faulty.\n\n-- \nKumar Raman\n+91 98765 43210\n", "The charger is faulty."),
        ("The charger is faulty.\n\nSent from my iPhone\n", "The charger is faulty."),
        ("El cargador no funciona.\n\nEnviado desde mi iPhone\n", "El cargador no funciona."),
        ("Charger kharab hai.\n\nमेरे iPhone से भेजा गया\n", "Charger kharab hai."),
        ("Sira ang charger.\n\nIpinadala mula sa aking iPhone\n", "Sira ang charger."),
        ("চার্জার কাজ করছে না।\n\nআমার iPhone থেকে পাঠানো\n", "চার্জার কাজ করছে না।"),
        (
            "On Monday I ordered two phones and the courier wrote:\nnobody was home. I was home all day!\n",
            "On Monday I ordered two phones and the courier wrote:\nnobody was home. I was home all day!",
        ),
        ("Only this.\n\nOn Mon, Nov 23, 2026 at 9:00 AM Shop <h@s.example> wrote:\n", "Only this."),
    ],
)
def test_quoted_history_and_signatures_are_removed(body: str, expected: str) -> None:
    assert reply_text(body) == expected


def test_forwarded_content_is_kept(store: LocalAttachmentStore) -> None:
    body = (
        "See the mail below, the courier never came.\n\n"
        "-- \nKumar\n\n"
        "---------- Forwarded message ---------\n"
        "From: Courier <noreply@courier.example>\n"
        "Date: Sun, Nov 22, 2026 at 8:00 PM\n"
        "Subject: Delivery attempted\n\n"
        "We tried to deliver parcel 4471 but nobody was home.\n"
    )
    headers = HEADERS.replace("Subject: Order 4471 not delivered", "Subject: Fwd: Delivery attempted")
    record = parse(plain(body.encode(), headers=headers), store)
    assert record.text.startswith("See the mail below, the courier never came.\n\n---------- Forwarded")
    assert "nobody was home" in record.text
    assert "Kumar" not in record.text.split("----------")[0]  # the signature before it is gone


def test_an_outlook_forward_keeps_its_header_block(store: LocalAttachmentStore) -> None:
    body = (
        "FYI, this is the third time.\n\n"
        "From: Courier <noreply@courier.example>\nSent: Sunday, November 22, 2026 8:00 PM\n"
        "To: Kumar\nSubject: Delivery attempted\n\nNobody was home.\n"
    )
    headers = HEADERS.replace("Subject: Order 4471 not delivered", "Subject: FW: Delivery attempted")
    record = parse(plain(body.encode(), headers=headers), store)
    assert record.text.endswith("Nobody was home.") and record.text.startswith("FYI")


def test_a_mail_forwarded_as_attachment_is_kept_and_stored(store: LocalAttachmentStore) -> None:
    inner = EmailMessage()
    inner["From"] = "Courier <noreply@courier.example>"
    inner["Subject"] = "Delivery attempted"
    inner["Date"] = "Sun, 22 Nov 2026 20:00:00 +0000"
    inner.set_content("We tried to deliver parcel 4471.")
    outer = EmailMessage()
    outer["From"] = "kumar@customer.example"
    outer["Subject"] = "Fwd: Delivery attempted"
    outer["Message-ID"] = "<fwd@customer.example>"
    outer.set_content("Look at this.")
    outer.add_attachment(inner)
    record = parse(outer.as_bytes(), store)
    assert record.text.startswith("Look at this.")
    assert "From: Courier <noreply@courier.example>" in record.text
    assert "We tried to deliver parcel 4471." in record.text
    [eml] = record.attachments
    assert eml.content_type == "message/rfc822" and eml.filename == "Delivery attempted.eml"
    assert b"We tried to deliver parcel 4471." in file_at(eml.ref)


# --------------------------------------------------------------------------------- ids


def test_the_same_bytes_give_the_same_id_whatever_the_line_endings(store: LocalAttachmentStore) -> None:
    raw = plain(b"My parcel never arrived.\r\n")
    first = parse(raw, store)
    again = parse(raw, store)
    unix = parse(raw.replace(b"\r\n", b"\n"), store)
    assert first.message_id == again.message_id == unix.message_id


def test_a_reused_message_id_with_other_content_is_another_record(store: LocalAttachmentStore) -> None:
    first = parse(plain(b"My parcel never arrived."), store)
    other = parse(plain(b"A completely different complaint."), store)
    later = parse(plain(b"My parcel never arrived.", headers=HEADERS.replace("10:00:00", "11:00:00")), store)
    assert len({first.message_id, other.message_id, later.message_id}) == 3
    assert first.native_id == other.native_id == later.native_id


def test_ids_are_namespaced_by_instance(store: LocalAttachmentStore) -> None:
    one = parse(plain(b"hi"), store, instance="support-mail")
    two = parse(plain(b"hi"), store, instance="sales-mail")
    assert one.message_id != two.message_id
    assert two.conversation_id == "sales-mail:<4471@customer.example>"


def test_a_mail_without_message_id_gets_a_stable_one(store: LocalAttachmentStore) -> None:
    headers = HEADERS.replace("Message-ID: <4471@customer.example>\r\n", "")
    first = parse(plain(b"no id here", headers=headers), store)
    second = parse(plain(b"no id here", headers=headers), store)
    other = parse(plain(b"different words", headers=headers), store)
    assert first.native_id == second.native_id and first.message_id == second.message_id
    assert first.native_id.endswith("@switchboard.invalid>")
    assert other.native_id != first.native_id
    assert first.metadata["native_id_synthesized"] is True
    assert first.conversation_id == f"support-mail:{first.native_id}"


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    ("extra", "thread"),
    [
        ("References: <a@x> <b@x> <c@x>\r\nIn-Reply-To: <c@x>\r\n", "<a@x>"),
        ("In-Reply-To: <c@x> (Kumar's message)\r\n", "<c@x>"),
        (
            "Thread-Index: " + base64.b64encode(bytes(range(22)) + b"\x01\x02\x03\x04\x05").decode() + "\r\n",
            "thread-index:" + base64.b64encode(bytes(range(22))).decode(),
        ),
        ("Thread-Index: " + base64.b64encode(bytes(range(22))).decode() + "\r\n", "<4471@customer.example>"),
        ("", "<4471@customer.example>"),
    ],
)
def test_conversation_follows_the_contract_order(
    store: LocalAttachmentStore, extra: str, thread: str
) -> None:
    record = parse(plain(b"hi", headers=HEADERS + extra), store)
    assert record.conversation_id == f"support-mail:{thread}"


def test_in_reply_to_is_recorded(store: LocalAttachmentStore) -> None:
    record = parse(plain(b"hi", headers=HEADERS + "References: <a@x> <b@x>\r\nIn-Reply-To: <b@x>\r\n"), store)
    assert record.in_reply_to == "<b@x>"


def test_a_bare_reply_is_threaded_by_sender_and_subject(store: LocalAttachmentStore) -> None:
    def reply(subject: str, message_id: str) -> InboundMessage:
        headers = HEADERS.replace("Subject: Order 4471 not delivered", f"Subject: {subject}").replace(
            "<4471@customer.example>", message_id
        )
        return parse(plain(b"any news?", headers=headers), store)

    first = reply("Re: Order 4471 not delivered", "<r1@customer.example>")
    second = reply("RE: re:  order 4471 NOT delivered", "<r2@customer.example>")
    assert first.conversation_id == second.conversation_id
    assert first.conversation_id.startswith("support-mail:")
    assert first.conversation_id != reply("Order 4471 not delivered", "<r3@x>").conversation_id


def test_a_long_thread_key_is_digested_but_stays_namespaced(store: LocalAttachmentStore) -> None:
    long_id = "<" + "x" * 300 + "@customer.example>"
    record = parse(plain(b"hi", headers=HEADERS + f"References: {long_id}\r\n"), store)
    assert record.conversation_id.startswith("support-mail:") and len(record.conversation_id) < 80


# ------------------------------------------------------------------------ auto-submitted


@pytest.mark.parametrize(
    ("extra", "envelope", "kind"),
    [
        ("Auto-Submitted: auto-replied\r\n", None, "auto-reply"),
        ("Auto-Submitted: auto-generated\r\n", None, "auto-reply"),
        ("X-Autoreply: yes\r\n", None, "auto-reply"),
        ("X-Autorespond: Out of office\r\n", None, "auto-reply"),
        ("Precedence: auto_reply\r\n", None, "auto-reply"),
        ("List-Id: Offers <offers.shop.example>\r\n", None, "list"),
        ("Precedence: bulk\r\n", None, "list"),
        ("Precedence: list\r\n", None, "list"),
        ("", EmailEnvelope(mail_from=""), "bounce"),
        ("Return-Path: <>\r\n", None, "bounce"),
        ("Auto-Submitted: no\r\n", None, None),
        ("", EmailEnvelope(mail_from="kumar@customer.example"), None),
    ],
)
def test_automatic_mail_is_marked(
    store: LocalAttachmentStore, extra: str, envelope: EmailEnvelope | None, kind: str | None
) -> None:
    record = parse(plain(b"text", headers=HEADERS + extra), store, envelope=envelope)
    assert record.metadata.get("auto_submitted") == kind


def test_a_delivery_status_report_is_a_bounce(store: LocalAttachmentStore) -> None:
    raw = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.shop.example>\r\n"
        "To: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMessage-ID: <bounce1@mx.shop.example>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.shop.example\r\n\r\n"
        "Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: support@example.com\r\nSubject: Your order\r\n\r\n"
        "Your order shipped.\r\n--b--\r\n"
    )
    record = parse(raw, store)
    assert record.metadata["auto_submitted"] == "bounce"
    assert record.text == "Your message could not be delivered."
    assert "Your order shipped" not in record.body  # the returned mail is not the sender's words
    assert {a.content_type for a in record.attachments} == {"message/delivery-status", "message/rfc822"}


def test_a_mailer_daemon_sender_is_a_bounce(store: LocalAttachmentStore) -> None:
    headers = HEADERS.replace("From: Kumar <kumar@customer.example>", "From: MAILER-DAEMON@mx.example")
    assert parse(plain(b"failed", headers=headers), store).metadata["auto_submitted"] == "bounce"


# -------------------------------------------------------------------------- attachments


def test_attachments_are_stored_with_their_metadata(store: LocalAttachmentStore) -> None:
    message = EmailMessage()
    message["From"] = "kumar@customer.example"
    message["Subject"] = "Broken kettle"
    message.set_content("Photos attached.")
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    message.add_attachment(photo, maintype="image", subtype="png", filename="kettle.png")
    message.add_attachment("order,4471\n", subtype="csv", filename="order.csv")
    record = parse(message.as_bytes(), store)
    png, csv = record.attachments
    assert (png.filename, png.content_type, png.size) == ("kettle.png", "image/png", len(photo))
    assert png.sha256 == hashlib.sha256(photo).hexdigest() and file_at(png.ref) == photo
    assert (csv.filename, csv.content_type) == ("order.csv", "text/csv")
    assert record.text == "Photos attached."  # a text attachment is not part of the words


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ("attachment; filename*=utf-8''r%C3%A9sum%C3%A9%20%E0%AE%A4.pdf", "résumé த.pdf"),
        (
            "attachment; filename*0*=utf-8''factura%20n%C3%BA; filename*1*=mero%204471.pdf",
            "factura número 4471.pdf",
        ),
        ("attachment; filename*=iso-8859-1'es'se%F1or.pdf", "señor.pdf"),
        ("attachment; filename*=x-bogus''caf%C3%A9.pdf", "café.pdf"),
        ('attachment; filename="=?utf-8?b?4KSs4KS/4KSy?=.pdf"', "बिल.pdf"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\Users\\\\k\\\\bill.pdf"', "bill.pdf"),
    ],
)
def test_attachment_names_are_decoded_and_never_paths(
    store: LocalAttachmentStore, disposition: str, name: str
) -> None:
    raw = (
        HEADERS + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        f"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: {disposition}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n--b--\r\n"
    )
    [attachment] = parse(raw, store).attachments
    assert attachment.filename == name
    assert file_at(attachment.ref) == b"%PDF-1.4"


def test_an_image_pasted_into_html_is_kept_when_plain_text_is_preferred(store: LocalAttachmentStore) -> None:
    message = EmailMessage()
    message["From"] = "kumar@customer.example"
    message["Subject"] = "screenshot"
    message.set_content("See the screenshot.")
    message.add_alternative('<p>See the screenshot.</p><img src="cid:shot">', subtype="html")
    _, html_part = message.iter_parts()
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(b"GIF89a-screenshot", maintype="image", subtype="gif", cid="<shot>")
    record = parse(message.as_bytes(), store)
    assert record.body == "See the screenshot."
    [image] = record.attachments
    assert image.content_type == "image/gif" and file_at(image.ref) == b"GIF89a-screenshot"


def test_signatures_are_not_attachments_and_the_count_is_bounded(store: LocalAttachmentStore) -> None:
    message = EmailMessage()
    message["From"] = "kumar@customer.example"
    message["Subject"] = "many files"
    message.set_content("Lots of scans.")
    for n in range(MAX_ATTACHMENTS + 3):
        message.add_attachment(f"scan {n}".encode(), maintype="application", subtype="octet-stream")
    message.add_attachment(b"sig", maintype="application", subtype="pgp-signature")
    record = parse(message.as_bytes(), store)
    assert len(record.attachments) == MAX_ATTACHMENTS
    assert record.metadata["attachments_skipped"] == 3
    assert all(a.content_type != "application/pgp-signature" for a in record.attachments)


def test_a_failing_store_propagates_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    message = EmailMessage()
    message["From"] = "kumar@customer.example"
    message.set_content("with file")
    message.add_attachment(b"data", maintype="application", subtype="octet-stream", filename="a.bin")
    with pytest.raises(OSError):
        parse(message.as_bytes(), LocalAttachmentStore(blocker))


# ------------------------------------------------------------------------ size and failure


def test_an_oversized_body_is_cut_and_says_so(store: LocalAttachmentStore) -> None:
    body = ("Line of a very long complaint about the late delivery of order 4471.\n" * 5000).encode()
    record = parse(plain(body), store, max_record_bytes=50_000)
    assert len(record.to_json_bytes()) <= 50_000
    assert record.metadata["body_truncated"] is True
    body_bytes = record.metadata["body_bytes"]
    assert isinstance(body_bytes, int) and body_bytes > 300_000
    assert record.text.startswith("Line of a very long complaint")


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \r\n\r\n", b"\x00\x01\x02\x03 binary \xff\xfe", b"no headers here at all\r\njust words\r\n"],
)
def test_input_without_a_usable_message_is_unparseable(store: LocalAttachmentStore, raw: bytes) -> None:
    with pytest.raises(UnparseableEmail):
        parse(raw, store)


def test_a_mail_with_only_headers_is_still_a_record(store: LocalAttachmentStore) -> None:
    record = parse(HEADERS.encode(), store)
    assert record.subject == "Order 4471 not delivered" and record.body == ""


def test_broken_mime_does_not_lose_the_mail(store: LocalAttachmentStore) -> None:
    raw = (
        HEADERS + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="never-used"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nThis is not base64 and the boundary never comes.\r\n"
    )
    record = parse(raw, store)
    assert record.subject == "Order 4471 not delivered"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(
            [
                b"From: =?x?q?=FF?= <a@b>\r\n",
                b"Subject: =?utf-8?b?4K6k?==?utf-8?q?=E0?=\r\n",
                b"Content-Type: multipart/mixed; boundary=z\r\n",
                b"Content-Type: text/html; charset=\xff\r\n",
                b"Content-Transfer-Encoding: base64\r\n",
                b"Content-Disposition: attachment; filename*0*=bogus''%FF%; filename*1=x\r\n",
                b"Message-ID: <<>>\r\n",
                b"References: <\xff@x>\r\n",
                b"Date: Mon, 99 Foo 20266 99:99:99 +9999\r\n",
                b"Thread-Index: ***\r\n",
                b"\r\n",
                b"--z\r\n",
                b"--z--\r\n",
                b"<html><blockquote><p>x</blockquote></script>\r\n",
                b"\xe0\xa4\x95\xff\x00\r\n",
                b"=?utf-8?q?=\r\n",
                b"> quoted\r\n",
            ]
        ),
        max_size=25,
    )
)
def test_arbitrary_mail_never_crashes_the_parser(tmp_path: Path, chunks: list[bytes]) -> None:
    raw = b"From: kumar@customer.example\r\n" + b"".join(chunks)
    try:
        record = parse(raw, LocalAttachmentStore(tmp_path / "fuzz"))
    except UnparseableEmail:
        return
    assert InboundMessage.from_json_bytes(record.to_json_bytes()) == record
