"""One email (RFC 5322 / MIME bytes) to one :class:`models.InboundMessage`.

Shared by every email channel (SMTP, IMAP, quarantine reprocessing). Pure: it opens no socket
and no file; attachment bytes go through the :class:`~connectors.attachments.AttachmentStore`
it is handed (:func:`reparse`, for ``quarantine reprocess``, hands it a local one). Guarantees:

* **Never crashes on bad mail.** Any declared charset, known, misspelled or bogus, decodes
  (declared charset, then UTF-8, then Windows-1252, replacing what is left); 8-bit headers and
  RFC 2047 encoded words decode the same way. Only input that holds no usable message raises
  :class:`UnparseableEmail` (empty input, no header section, nothing that says who wrote it).
* **Deterministic ids.** ``message_id`` comes from the channel instance, the Message-ID and a
  digest of From, Date and the body bytes: the same bytes always give the same id (a retry
  after a 451, a second IMAP fetch), a Message-ID reused for other content does not. Mail
  without a Message-ID gets a stable ``native_id`` derived from its content.
* **Threads.** ``conversation_id`` is the first References entry, else In-Reply-To, else the
  root of an Outlook Thread-Index that belongs to a reply, else the own Message-ID; a reply
  (``Re:`` subject) carrying none of those is threaded by sender and normalized subject.
  Always namespaced by the channel instance.
* **Text.** ``body`` is the whole message as plain text: the ``text/plain`` alternative when
  there is one, otherwise the HTML rendered to text; inline text parts in order; a forwarded
  message (``message/rfc822``) appended under a "Forwarded message" line. ``text`` is what the
  customer wrote in this mail: ``body`` without quoted history (attribution lines such as
  "On … wrote:" in several languages, Outlook header blocks, ``>`` lines) and signatures
  (``-- `` and mobile footers such as "Sent from my iPhone"). Forwarded content is kept.
* **Attachments** are stored before the record exists, each with size, SHA-256, content type
  and its (RFC 2231 / RFC 2047) file name; at most :data:`MAX_ATTACHMENTS` per mail.
* **Size.** The record is cut to ``max_record_bytes`` with :func:`models.messages.fit_to_size`,
  which sets ``metadata.body_truncated``.

Metadata written here: ``auto_submitted`` (``auto-reply`` | ``bounce`` | ``list``),
``reply_to``, ``sent_at`` (the Date header, RFC 3339), ``language_hint`` (Content-Language),
``native_id_synthesized``, ``attachments_skipped``, ``recipients_truncated`` and what
:func:`~models.messages.fit_to_size` adds. The caller's ``extra_metadata`` is merged on top.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.message
import email.policy
import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path

from pydantic import JsonValue

from connectors.attachments import AttachmentStore, LocalAttachmentStore, save_attachment
from models import Attachment, InboundMessage, Sender
from models.errors import SwitchboardError
from models.ids import conversation_id, message_id, stable_digest
from models.messages import fit_to_size, format_timestamp
from models.text import normalize_subject

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "MAX_ATTACHMENTS",
    "EmailEnvelope",
    "UnparseableEmail",
    "decode_bytes",
    "decode_header_value",
    "html_to_text",
    "message_from_email",
    "reparse",
    "reply_text",
]

DEFAULT_MAX_RECORD_BYTES = 900_000  # the default of kafka.max_record_bytes
MAX_ATTACHMENTS = 100
MAX_RECIPIENTS = 500  # in the record; a longer list is cut and says so
_MAX_DEPTH = 20  # MIME nesting followed; deeper parts are not read
_MAX_SUBJECT = 2000
_MAX_NAME = 256
_MAX_ADDRESS = 320
_MAX_NATIVE_ID = 998


class UnparseableEmail(SwitchboardError):
    """The bytes hold no usable message; retrying cannot help, so the mail is quarantined."""

    retriable = False


@dataclass(frozen=True, slots=True)
class EmailEnvelope:
    """What the transport knew about a mail beside its bytes.

    ``mail_from`` is ``None`` when unknown (IMAP, reprocessing) and ``""`` for the SMTP null
    reverse-path ``<>`` that bounces and many auto-replies use. ``recipients`` (the accepted
    envelope recipients) become the record's ``recipients``; when empty, To and Cc are used.
    """

    mail_from: str | None = None
    recipients: tuple[str, ...] = ()
    peer_ip: str | None = None
    helo: str | None = None


_NO_ENVELOPE = EmailEnvelope()


# --------------------------------------------------------------------------------- charsets

# Labels that mail uses but Python does not know, or knows by a narrower relative. As in
# browsers, ASCII and Latin-1 labels decode as Windows-1252 (its superset seen in practice).
_CHARSET_ALIASES: Mapping[str, str] = {
    "ascii": "cp1252",
    "iso8859-1": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc_kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode20utf8": "utf-8",
    "utf8mb4": "utf-8",
}
# Text codecs that are not character sets: a mail must not pick them.
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"})
# Declared single-byte Western charsets are often wrong about UTF-8 content; strictly valid
# UTF-8 with non-ASCII bytes is almost never accidental, so it is tried first for these.
_UTF8_FIRST = frozenset({"cp1252"})


def _codec(declared: str | None) -> str | None:
    """The Python codec for a declared charset label, or ``None`` if unknown or unsuitable."""
    if not declared:
        return None
    label = declared.strip().strip("\"'").lower()
    if not label or len(label) > 40:
        return None
    label = _CHARSET_ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return _CHARSET_ALIASES.get(info.name, info.name)


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Decode *data* whatever charset it claims; never raises.

    Order: the declared charset (UTF-8 first when the declaration is ASCII or Latin-1/
    Windows-1252, which often hide UTF-8), then UTF-8, then the declared charset (or
    Windows-1252) with undecodable bytes replaced by U+FFFD.
    """
    codec = _codec(declared)
    utf8_first = codec is None or codec in _UTF8_FIRST
    order = ["utf-8", codec or "cp1252"] if utf8_first else [codec or "cp1252", "utf-8"]
    for name in order:
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode(codec or "cp1252", errors="replace")


def _recover_8bit(value: str) -> str:
    """Undo the parser's surrogateescape of raw 8-bit header bytes (SMTPUTF8, careless mailers)."""
    if not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    return decode_bytes(value.encode("utf-8", errors="surrogateescape"), None)


# ---------------------------------------------------------------------------------- headers

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")


def _unfold(value: str) -> str:
    return _FOLD.sub("", value).replace("\r", "").replace("\n", "")


def _encoded_word_bytes(encoding: str, text: str) -> bytes:
    data = text.encode("utf-8", errors="surrogateescape")
    if encoding in "Bb":
        try:
            return base64.b64decode(data + b"=" * (-len(data) % 4))
        except binascii.Error:
            return data
    return binascii.a2b_qp(data, header=True)


def decode_header_value(raw: str) -> str:
    """A header value as text: unfolded, RFC 2047 encoded words and raw 8-bit bytes decoded.

    Adjacent encoded words in one charset are joined before decoding (senders split
    multi-byte characters across them); whitespace between encoded words is dropped, as
    RFC 2047 says. Never raises.
    """
    raw = _unfold(raw)
    pieces: list[str] = []
    pending = b""
    pending_charset: str | None = None
    position = 0
    for match in _ENCODED_WORD.finditer(raw):
        between = raw[position : match.start()]
        if pending_charset is None or between.strip():
            if pending_charset is not None:
                pieces.append(decode_bytes(pending, pending_charset))
                pending, pending_charset = b"", None
            pieces.append(_recover_8bit(between))
        charset = match.group(1).split("*", 1)[0]  # RFC 2231 §5: charset*language
        data = _encoded_word_bytes(match.group(2), match.group(3))
        if pending_charset is not None and pending_charset.lower() != charset.lower():
            pieces.append(decode_bytes(pending, pending_charset))
            pending = b""
        pending_charset = charset
        pending += data
        position = match.end()
    if pending_charset is not None:
        pieces.append(decode_bytes(pending, pending_charset))
    pieces.append(_recover_8bit(raw[position:]))
    return "".join(pieces)


class _Headers:
    """The raw header fields of one part, read without the header registry's parsers.

    Values are looked up by case-insensitive name. MIME parameters are read from a plain
    (compat32) view of the raw value, so a malformed header yields defaults, not errors.
    """

    def __init__(self, part: email.message.Message) -> None:
        self._fields: dict[str, list[str]] = {}
        legacy = email.message.Message()
        legacy.set_default_type(part.get_default_type())
        for name, value in part.raw_items():
            text = value if isinstance(value, str) else str(value)
            self._fields.setdefault(name.lower(), []).append(text)
            if name.lower() in ("content-type", "content-disposition"):
                legacy[name] = _unfold(text)
        self._legacy = legacy

    def __bool__(self) -> bool:
        return bool(self._fields)

    def raw(self, name: str) -> str | None:
        values = self._fields.get(name.lower())
        return values[0] if values else None

    def text(self, name: str) -> str | None:
        """The first *name* field, decoded, whitespace collapsed; ``None`` when absent."""
        raw = self.raw(name)
        return None if raw is None else " ".join(decode_header_value(raw).split())

    def all_raw(self, name: str) -> list[str]:
        return list(self._fields.get(name.lower(), ()))

    @property
    def content_type(self) -> str:
        return self._legacy.get_content_type()

    @property
    def disposition(self) -> str | None:
        value = self._legacy.get("content-disposition")
        if value is None:
            return None
        return str(value).split(";", 1)[0].strip().lower() or None

    def param(self, name: str, header: str = "content-type") -> str | None:
        """A MIME parameter, RFC 2231 continuations and charsets (or RFC 2047 words) decoded."""
        value = self._legacy.get_param(name, header=header)
        if value is None:
            return None
        if isinstance(value, tuple):
            charset, _, encoded = value
            return decode_bytes(str(encoded).encode("latin-1", errors="replace"), charset or None)
        return decode_header_value(email.utils.unquote(str(value)))


def _addresses(headers: _Headers, *names: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of address headers; names decoded, junk entries dropped."""
    raw_values = [_unfold(value) for name in names for value in headers.all_raw(name)]
    pairs = []
    for name, address in getaddresses(raw_values):
        address = _recover_8bit(address).strip()
        if address:
            pairs.append((" ".join(decode_header_value(name).split())[:_MAX_NAME], address[:_MAX_ADDRESS]))
    return pairs


_MSG_ID = re.compile(r"<([^<>\s]{1,990})>")


def _message_ids(value: str | None) -> list[str]:
    """The msg-ids of a Message-ID/References/In-Reply-To value, in order, as ``<id>``."""
    if not value:
        return []
    found = [f"<{m}>" for m in _MSG_ID.findall(_unfold(value))]
    if not found and value.strip() and len(value.split()) == 1:
        found = [f"<{value.strip().strip('<>')}>"]  # a bare id without angle brackets
    return [_recover_8bit(i)[:_MAX_NATIVE_ID] for i in found if len(i) > 2]


def _thread_index_root(value: str | None) -> str | None:
    """The thread root of an Outlook Thread-Index, only when the mail is a reply in it.

    A Thread-Index is 22 bytes for the first mail of a thread plus 5 bytes per reply; the
    first mail is identified by its own Message-ID instead (which later References name).
    """
    if not value:
        return None
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(data) <= 22:
        return None
    return base64.b64encode(data[:22]).decode("ascii")


# --------------------------------------------------------------------------------- HTML

_SKIPPED_ELEMENTS = frozenset(
    {"script", "style", "head", "title", "template", "noscript", "svg", "object", "iframe", "xml"}
)
_BLOCK_ELEMENTS = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "tbody", "thead", "tfoot", "tr", "ul", "caption",
    }
)  # fmt: skip
_PARAGRAPH_ELEMENTS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"})
_VOID_ELEMENTS = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base"})
_SPACE = re.compile(r"[ \t\r\n\f\v\u00a0\u200b]+")


class _HtmlText(HTMLParser):
    """Renders HTML to plain text: blocks become lines, ``<blockquote>`` lines get ``> ``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._skip = 0
        self._quote = 0
        self._pre = 0

    def _flush(self, blank: bool = False) -> None:
        text = "".join(self._line).strip(" ") if not self._pre else "".join(self._line).rstrip()
        self._line = []
        if text:
            self.lines.append("> " * self._quote + text)
        elif blank and self.lines and self.lines[-1]:
            self.lines.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_ELEMENTS:
            if tag not in _VOID_ELEMENTS:
                self._skip += 1
            return
        if self._skip:
            return
        if tag == "br":
            self._flush()
        elif tag in _BLOCK_ELEMENTS:
            self._flush(blank=tag in _PARAGRAPH_ELEMENTS)
            if tag == "blockquote":
                self._quote += 1
            elif tag == "pre":
                self._pre += 1
            elif tag == "li":
                self._line.append("- ")
            if dict(attrs).get("id") in ("Signature", "signature"):
                self.lines.append("-- ")  # Outlook's signature block: mark it as one
        elif tag in ("td", "th") and self._line:
            self._line.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_ELEMENTS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_ELEMENTS:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag in _BLOCK_ELEMENTS:
            self._flush(blank=tag in _PARAGRAPH_ELEMENTS)
            if tag == "blockquote":
                self._quote = max(0, self._quote - 1)
            elif tag == "pre":
                self._pre = max(0, self._pre - 1)
            if tag in _PARAGRAPH_ELEMENTS:
                self._flush(blank=True)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            first, *rest = data.replace("\r\n", "\n").split("\n")
            self._line.append(first)
            for line in rest:
                self._flush()
                self._line.append(line)
            return
        text = _SPACE.sub(" ", data)
        if text == " " and (not self._line or self._line[-1].endswith(" ")):
            return
        self._line.append(text)

    def text(self) -> str:
        self._flush()
        return "\n".join(self.lines)


def html_to_text(html: str) -> str:
    """Plain text of an HTML document or fragment, as a mail reader would show it.

    Scripts, styles and the head are dropped; block elements and ``<br>`` become line breaks;
    text inside ``<blockquote>`` is prefixed with ``> `` per level (so quoted history looks
    like it does in plain-text mail); entities are decoded. Never raises.
    """
    renderer = _HtmlText()
    try:
        renderer.feed(html)
        renderer.close()
    except Exception:  # a parser bug must not lose the mail: fall back to stripping tags
        return _collapse_blank_lines(re.sub(r"<[^>]*>", " ", html))
    return _collapse_blank_lines(renderer.text())


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


def _collapse_blank_lines(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    kept: list[str] = []
    for line in lines:
        if not line and (not kept or not kept[-1]):
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n")


# ------------------------------------------------------------------------ customer's words

# Attribution lines ("On <date>, <name> wrote:"), possibly wrapped over up to three lines.
_ATTRIBUTION = re.compile(
    r"(?:\b(?:wrote|writes|escribió|escribio|escreveu|schrieb|a écrit|ha scritto|schreef|skrev"
    r"|napisał|kirjoitti|yazdı)"
    r"|ने लिखा|लिखा है|লিখেছেন|লিখেছে|எழுதியது|எழுதினார்)\s*:\s*$"
    r"|^\s*Noong\b.*\b(?:sumulat|isinulat|nagsulat)\b.*:\s*$",
    re.IGNORECASE,
)
_ATTRIBUTION_OPENER = re.compile(
    r"^(?:On|El|Em|Am|Le|Il|Op|Den|W dniu|Noong|Sa)\b|^[^\s,]{1,12},\s|^[\d০-৯०-९]", re.IGNORECASE
)
# A real attribution names a time or an address; this keeps "... and the courier wrote:" text.
_ATTRIBUTION_EVIDENCE = re.compile(r"\d{1,2}[:.]\d{2}|[০-৯]{1,2}[:.][০-৯]{2}|[०-९]{1,2}[:.][०-९]{2}|@")
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(?:Original Message|Mensaje original|Mensagem original|Message d'origine"
    r"|Ursprüngliche Nachricht|Messaggio originale|Oorspronkelijk bericht|Orihinal na mensahe"
    r"|मूल संदेश|মূল বার্তা)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_HEADER_FROM = re.compile(
    r"^\s*\**\s*(?:From|De|Von|Van|Da|Od|Från|Fra|Mula kay|Mula sa|प्रेषक|থেকে|প্রেরক)\s*\**\s*:\s*\**\s*\S",
    re.IGNORECASE,
)
_HEADER_SENT = re.compile(
    r"^\s*\**\s*(?:Sent|Date|Enviado|Enviada|Fecha|Gesendet|Datum|Envoyé|Inviato|Verzonden|Skickat"
    r"|Sendt|Data|Petsa|Ipinadala|Ipinadala noong|भेजा गया|भेजा|दिनांक|তারিখ|পাঠানো হয়েছে|পাঠানো)"
    r"\s*\**\s*:",
    re.IGNORECASE,
)
_FORWARD_MARKER = re.compile(
    r"^\s*(?:-{2,}\s*(?:Forwarded message|Forwarded Message|Mensaje reenviado|Mensagem encaminhada"
    r"|Weitergeleitete Nachricht|Message transféré|Messaggio inoltrato|Doorgestuurd bericht"
    r"|Ipinasang mensahe|Ipinasa na mensahe|फ़ॉरवर्ड किया गया संदेश|फॉरवर्ड किया गया संदेश"
    r"|अग्रेषित संदेश|ফরওয়ার্ড করা মেসেজ|ফরওয়ার্ড করা বার্তা|ফরোয়ার্ড করা বার্তা)\s*-{2,}"
    r"|Begin forwarded message:|Inicio del mensaje reenviado:|Début du message réexpédié\s*:"
    r"|Anfang der weitergeleiteten Nachricht:)\s*$",
    re.IGNORECASE,
)
_SIGNATURE_DELIMITER = re.compile(r"^-- ?$")
_MOBILE_FOOTER = re.compile(
    r"^\s*(?:Sent from my [\w .-]{1,40}|Sent from (?:Mail|Outlook|Yahoo Mail|Gmail|Samsung)[\w .-]{0,40}"
    r"|Get Outlook for (?:iOS|Android)|Sent via [\w .-]{1,40}|Sent with [\w .-]{1,40}"
    r"|Enviado desde mi [\w .-]{1,40}|Enviado desde (?:Outlook|Yahoo Mail|Correo|Gmail)[\w .-]{0,40}"
    r"|Obtener Outlook para (?:iOS|Android)|Ipinadala mula sa aking [\w .-]{1,40}"
    r"|Ipinadala mula sa (?:Yahoo Mail|Outlook|Gmail)[\w .-]{0,40}"
    r"|मेरे [\w .-]{1,30} से भेजा गया|আমার [\w .-]{1,30} থেকে পাঠানো(?: হয়েছে)?"
    r"|Von meinem [\w .-]{1,40} gesendet|Envoyé de mon [\w .-]{1,40})\s*[.!]?\s*$",
    re.IGNORECASE,
)
_FORWARD_SUBJECT = re.compile(r"^\s*(?:(?:re|aw|sv)\s*:\s*)*(?:fwd?|fw|wg|rv|tr|enc|ilt)\s*:", re.IGNORECASE)
_REPLY_SUBJECT = re.compile(r"^\s*(?:re|aw|sv|vs|antw|odp|res|rif|ynt)\s*(?:\[\d+\])?\s*[:：]", re.IGNORECASE)
_RULE_LINE = re.compile(r"^\s*[_\-=*]{5,}\s*$")


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _next_filled(lines: Sequence[str], start: int) -> int | None:
    for index in range(start, len(lines)):
        if lines[index].strip():
            return index
    return None


def _attribution_end(lines: Sequence[str], start: int) -> int | None:
    """If an attribution line starts at *start*, the index just after it, else ``None``.

    Clients wrap long attributions; a wrapped one is recognized only when its first line
    opens like one and does not end a sentence, so the customer's last line is not taken in.
    """
    first = lines[start].strip()
    if not first or _is_quoted(first) or len(first) > 400:
        return None
    if not any(line.rstrip().endswith(":") for line in lines[start : start + 3]):
        return None  # every attribution ends with a colon: the cheap test first
    longest = 3 if _ATTRIBUTION_OPENER.match(first) and first[-1] not in ".!?।" else 1
    for end in range(start + 1, min(start + 1 + longest, len(lines) + 1)):
        if end > start + 1 and not lines[end - 1].strip():
            return None
        joined = " ".join(line.strip() for line in lines[start:end])
        if not _ATTRIBUTION.search(joined):
            continue
        following = _next_filled(lines, end)
        if _ATTRIBUTION_EVIDENCE.search(joined) or (following is not None and _is_quoted(lines[following])):
            return end
    return None


def _outlook_header_block(lines: Sequence[str], start: int) -> bool:
    """A "From: … / Sent: …" block (how Outlook introduces the mail it replies to)."""
    if not _HEADER_FROM.match(lines[start]):
        return False
    following = [line for line in lines[start + 1 : start + 8] if line.strip()][:4]
    return any(_HEADER_SENT.match(line) for line in following)


def _tidy(lines: list[str]) -> str:
    while lines and (not lines[-1].strip() or _RULE_LINE.match(lines[-1])):
        lines.pop()
    return _collapse_blank_lines("\n".join(lines)).strip()


def reply_text(body: str, *, forwarded: bool = False) -> str:
    """The customer's own words in *body*: quoted history and signatures removed.

    Reading top to bottom: a forward marker ("---------- Forwarded message ---------",
    "Begin forwarded message:" …) keeps everything from there on. An attribution line
    ("On … wrote:", "El … escribió:", "… ने लिखा:", "Noong … sumulat si …:", "… লিখেছেন:")
    followed by unquoted text, an "-----Original Message-----" line or an Outlook
    "From: / Sent:" block ends the customer's part, unless *forwarded* (the subject says
    Fwd/FW), in which case that block is the forwarded mail and is kept. Lines quoted with
    ``>`` are dropped one by one, so answers written between quotes stay. A ``-- `` line or
    a mobile footer ("Sent from my iPhone", "Enviado desde mi …") starts a signature, dropped
    up to the next forward marker or quoted block.
    """
    lines = unicodedata.normalize("NFC", body).split("\n")
    kept: list[str] = []
    in_signature = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if _FORWARD_MARKER.match(line):
            kept.extend(lines[index:])
            break
        attribution = _attribution_end(lines, index)
        if attribution is not None:
            following = _next_filled(lines, attribution)
            if following is None or not _is_quoted(lines[following]):
                break  # unquoted history (top posting): all of it is history
            index, in_signature = attribution, False
            continue
        if _ORIGINAL_MESSAGE.match(line) or _outlook_header_block(lines, index):
            if forwarded:
                kept.extend(lines[index:])
            break
        if _is_quoted(line):
            index += 1
            continue
        if _SIGNATURE_DELIMITER.match(line) or _MOBILE_FOOTER.match(line):
            in_signature = True
        elif not in_signature:
            kept.append(line)
        index += 1
    return _tidy(kept)


def _unflow(text: str, delete_space: bool) -> str:
    """Join the soft line breaks of ``format=flowed`` text (RFC 3676)."""
    output: list[str] = []
    current: str | None = None
    depth = 0

    def flush() -> None:
        nonlocal current
        if current is not None:
            output.append((">" * depth + " " if depth else "") + current)
            current = None

    for raw in text.split("\n"):
        line_depth = len(raw) - len(raw.lstrip(">"))
        content = raw[line_depth:]
        content = content[1:] if content.startswith(" ") else content  # space-stuffing
        if content == "-- ":
            flush()
            depth = line_depth
            current = content
            flush()
            continue
        if current is not None and line_depth != depth:
            flush()
        flowed = content.endswith(" ")
        if flowed and delete_space:
            content = content[:-1]
        current = content if current is None else current + content
        depth = line_depth
        if not flowed:
            flush()
    flush()
    return "\n".join(output)


# ------------------------------------------------------------------------------- MIME walk


@dataclass
class _Content:
    texts: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    skipped: int = 0


_FORWARDED_TYPES = frozenset({"message/rfc822", "message/global"})
_SIGNATURE_TYPES = frozenset(
    {"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"}
)
_UNSAFE_FILENAME_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _filename(headers: _Headers) -> str | None:
    """The attachment's name (Content-Disposition filename, else Content-Type name), no path."""
    value = headers.param("filename", "content-disposition") or headers.param("name")
    if not value:
        return None
    name = _UNSAFE_FILENAME_CHARS.sub("", value.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return unicodedata.normalize("NFC", name)[:255] or None


def _payload_bytes(part: email.message.Message) -> bytes:
    """The decoded content of a leaf part; for ``message/*`` parts, the embedded text."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822, message/delivery-status: parsed sub-blocks
        return b"\n".join(_as_bytes(p) for p in payload if isinstance(p, email.message.Message))
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    return payload.encode("utf-8", errors="surrogateescape") if isinstance(payload, str) else b""


def _part_text(part: email.message.Message, headers: _Headers) -> str:
    """A text/plain or text/html part as plain text."""
    data = _payload_bytes(part)
    charset = headers.param("charset")
    if headers.content_type == "text/html":
        if _codec(charset) is None:
            sniffed = _META_CHARSET.search(data[:4096])
            charset = sniffed.group(1).decode("ascii") if sniffed else charset
        return html_to_text(decode_bytes(data, charset))
    text = decode_bytes(data, charset).replace("\r\n", "\n").replace("\r", "\n")
    if (headers.param("format") or "").lower() == "flowed":
        text = _unflow(text, (headers.param("delsp") or "").lower() == "yes")
    return text


def _is_body_text(headers: _Headers) -> bool:
    return (
        headers.content_type in ("text/plain", "text/html")
        and headers.disposition != "attachment"
        and _filename(headers) is None
    )


class _Walker:
    """Collects body text and attachments from a MIME tree, storing attachment bytes."""

    def __init__(self, store: AttachmentStore) -> None:
        self._store = store
        self.content = _Content()

    def collect(self, part: email.message.Message, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            self.content.skipped += 1
            return
        headers = _Headers(part)
        content_type = headers.content_type
        if content_type in _FORWARDED_TYPES:
            self._collect_forwarded(part, depth)
        elif content_type.startswith("multipart/") and part.is_multipart():
            children = [c for c in part.get_payload() if isinstance(c, email.message.Message)]
            self._collect_multipart(content_type, headers, children, depth)
        elif _is_body_text(headers):
            text = _part_text(part, headers)
            if text.strip():
                self.content.texts.append(text)
        else:
            self.store(part, headers)

    def _collect_multipart(
        self, content_type: str, headers: _Headers, children: list[email.message.Message], depth: int
    ) -> None:
        if not children:
            return
        if content_type == "multipart/alternative":
            chosen = _preferred_alternative(children)
            self.collect(chosen, depth + 1)
            for other in children:
                if other is not chosen:
                    self.collect_files(other, depth + 1)  # e.g. a screenshot pasted in the HTML
        elif content_type == "multipart/report":
            self.collect(children[0], depth + 1)  # the human-readable explanation
            for other in children[1:]:
                self.collect_files(other, depth + 1, whole_messages=True)
        else:
            for child in children:
                self.collect(child, depth + 1)

    def _collect_forwarded(self, part: email.message.Message, depth: int) -> None:
        inner = part.get_payload()
        message = inner[0] if isinstance(inner, list) and inner else None
        if not isinstance(message, email.message.Message):
            self.store(part, _Headers(part))
            return
        headers = _Headers(message)
        raw = _as_bytes(message)
        subject = headers.text("subject") or ""
        self.save(raw, filename=f"{_safe_stem(subject) or 'message'}.eml", content_type="message/rfc822")
        nested = _Walker(self._store)
        nested.collect(message, depth + 1)
        nested_text = "\n\n".join(nested.content.texts)
        introduction = ["---------- Forwarded message ----------"]
        for label in ("From", "Date", "Subject", "To"):
            value = headers.text(label)
            if value:
                introduction.append(f"{label}: {value}")
        self.content.texts.append("\n".join(introduction) + "\n\n" + nested_text)
        for attachment in nested.content.attachments:
            self._add(attachment)
        self.content.skipped += nested.content.skipped

    def collect_files(self, part: email.message.Message, depth: int, *, whole_messages: bool = False) -> None:
        """Store the non-text leaves under *part* (alternatives not shown, report sections)."""
        if depth > _MAX_DEPTH:
            return
        headers = _Headers(part)
        content_type = headers.content_type
        if content_type in _FORWARDED_TYPES:
            if whole_messages:
                self.save(_payload_bytes(part), filename="message.eml", content_type=content_type)
        elif content_type.startswith("multipart/") and part.is_multipart():
            for child in part.get_payload():
                if isinstance(child, email.message.Message):
                    self.collect_files(child, depth + 1, whole_messages=whole_messages)
        elif whole_messages or not _is_body_text(headers):
            self.store(part, headers)

    def store(self, part: email.message.Message, headers: _Headers) -> None:
        if headers.content_type in _SIGNATURE_TYPES:
            return  # a cryptographic signature is not the customer's content
        self.save(_payload_bytes(part), filename=_filename(headers), content_type=headers.content_type)

    def save(self, data: bytes, *, filename: str | None, content_type: str) -> None:
        if len(self.content.attachments) >= MAX_ATTACHMENTS:
            self.content.skipped += 1
            return
        self._add(save_attachment(self._store, data, filename=filename, content_type=content_type))

    def _add(self, attachment: Attachment) -> None:
        if len(self.content.attachments) >= MAX_ATTACHMENTS:
            self.content.skipped += 1
        else:
            self.content.attachments.append(attachment)


def _preferred_alternative(children: list[email.message.Message]) -> email.message.Message:
    """``text/plain`` when it has words, else the last (richest) HTML or multipart alternative."""
    for child in children:
        headers = _Headers(child)
        if headers.content_type == "text/plain" and _part_text(child, headers).strip():
            return child
    for child in reversed(children):
        content_type = _Headers(child).content_type
        if content_type == "text/html" or child.is_multipart():
            return child
    return children[0]


def _as_bytes(message: email.message.Message) -> bytes:
    try:
        return message.as_bytes(policy=email.policy.compat32)
    except (UnicodeError, LookupError, ValueError, TypeError):
        return str(message.get_payload()).encode("utf-8", errors="surrogateescape")


def _safe_stem(subject: str) -> str:
    return re.sub(r"[^\w .()-]+", "", subject).strip()[:100]


# ----------------------------------------------------------------------------- the record


def _split_raw(raw: bytes) -> tuple[bytes, bytes]:
    """Header section and body of the raw bytes (split at the first empty line)."""
    match = re.search(rb"\r?\n\r?\n", raw)
    if match is None:
        return raw, b""
    return raw[: match.start()], raw[match.end() :]


def _body_digest(body: bytes) -> str:
    # Line endings differ between transports (SMTP CRLF, mbox LF): they must not change ids.
    return hashlib.sha256(body.replace(b"\r\n", b"\n").rstrip()).hexdigest()


def _auto_submitted(headers: _Headers, envelope: EmailEnvelope, sender: str) -> str | None:
    """``bounce``, ``auto-reply`` or ``list`` when the mail says (or shows) it is one."""
    content_type = headers.content_type
    report = (headers.param("report-type") or "").lower() if content_type == "multipart/report" else ""
    if report == "delivery-status" or sender.split("@", 1)[0].lower() == "mailer-daemon":
        return "bounce"
    auto = (headers.text("auto-submitted") or "no").split(";", 1)[0].strip().lower()
    precedence = (headers.text("precedence") or "").strip().lower()
    if (
        auto != "no"
        or report == "disposition-notification"
        or headers.raw("x-autoreply") is not None
        or headers.raw("x-autorespond") is not None
        or precedence == "auto_reply"
    ):
        return "auto-reply"
    return_path = headers.text("return-path")
    if envelope.mail_from == "" or (envelope.mail_from is None and return_path in ("<>", "")):
        return "bounce"
    if headers.raw("list-id") is not None or precedence in ("bulk", "list", "junk"):
        return "list"
    return None


def _sender(headers: _Headers, envelope: EmailEnvelope) -> Sender:
    for name in ("from", "sender"):
        found = _addresses(headers, name)
        if found:
            display, address = found[0]
            return Sender(id=address.lower(), name=display or None)
    if envelope.mail_from:
        return Sender(id=envelope.mail_from.strip().lower()[:_MAX_ADDRESS])
    return_path = [a for _, a in _addresses(headers, "return-path")]
    if return_path:
        return Sender(id=return_path[0].lower())
    return Sender(id="mailer-daemon" if envelope.mail_from == "" else "unknown")


def _recipients(headers: _Headers, envelope: EmailEnvelope) -> list[str]:
    if envelope.recipients:
        return list(envelope.recipients)
    seen: dict[str, str] = {}
    for _, address in _addresses(headers, "to", "cc"):
        seen.setdefault(address.lower(), address)
    return list(seen.values())


def _sent_at(value: str | None) -> str | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # "-0000": time zone unknown, RFC 5322 says UTC
    try:
        return format_timestamp(moment)
    except (OverflowError, ValueError):
        return None


def _language_hint(value: str | None) -> str | None:
    if not value:
        return None
    primary = value.split(",", 1)[0].strip().split("-", 1)[0].lower()
    return primary if re.fullmatch(r"[a-z]{2,3}", primary) else None


def _parse(raw: bytes) -> email.message.Message:
    try:
        return BytesParser(policy=email.policy.default).parsebytes(raw)
    except Exception:  # the modern parser has had crash bugs; the legacy one is lenient
        try:
            return BytesParser(policy=email.policy.compat32).parsebytes(raw)
        except Exception as error:
            raise UnparseableEmail(f"the MIME structure cannot be read: {error!r}") from error


def _looks_binary(data: bytes) -> bool:
    sample = data[:4096]
    return b"\x00" in sample or sum(b < 9 or 13 < b < 32 for b in sample) > len(sample) // 10


def message_from_email(
    raw: bytes,
    *,
    channel_instance: str,
    received_at: datetime,
    envelope: EmailEnvelope = _NO_ENVELOPE,
    attachments: AttachmentStore,
    auth: Mapping[str, str] | None = None,
    extra_metadata: Mapping[str, JsonValue] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> InboundMessage:
    """The record for one mail; see the module docstring for what each field holds.

    Attachments are written to *attachments* before this returns (``OSError`` from the store
    propagates: the mail should be retried, not quarantined). Raises
    :class:`UnparseableEmail` only when the bytes hold no usable message.
    """
    if not raw.strip():
        raise UnparseableEmail("empty message")
    header_bytes, body_bytes = _split_raw(raw)
    message = _parse(raw)
    headers = _Headers(message)
    if not headers:
        raise UnparseableEmail("no header section")
    if _looks_binary(header_bytes):
        raise UnparseableEmail("the header section is binary data, not mail")

    walker = _Walker(attachments)
    walker.collect(message)
    content = walker.content
    body = unicodedata.normalize("NFC", "\n\n".join(t.strip("\n") for t in content.texts).strip())
    subject_text = headers.text("subject")
    subject = subject_text[:_MAX_SUBJECT] if subject_text is not None else None
    sender = _sender(headers, envelope)
    if not body and not subject and not content.attachments and sender.id in ("unknown", "mailer-daemon"):
        raise UnparseableEmail("no sender, subject, text or attachment")

    forwarded = bool(subject and _FORWARD_SUBJECT.match(subject))
    text = reply_text(body, forwarded=forwarded)

    metadata: dict[str, JsonValue] = {}
    own_ids = _message_ids(headers.raw("message-id"))
    from_raw = " ".join(_unfold(headers.raw("from") or "").split())
    date_raw = " ".join(_unfold(headers.raw("date") or "").split())
    digest = _body_digest(body_bytes)
    if own_ids:
        native_id = own_ids[0]
    else:
        native_id = f"<{stable_digest((from_raw, date_raw, subject or '', digest))}@switchboard.invalid>"
        metadata["native_id_synthesized"] = True

    references = _message_ids(headers.raw("references"))
    in_reply_to = _message_ids(headers.raw("in-reply-to"))
    thread_root = _thread_index_root(headers.raw("thread-index"))
    if references:
        thread = references[0]
    elif in_reply_to:
        thread = in_reply_to[0]
    elif thread_root is not None:
        thread = f"thread-index:{thread_root}"
    elif subject and _REPLY_SUBJECT.match(subject):
        thread = f"subject:{sender.id}:{normalize_subject(subject)}"
    else:
        thread = native_id

    kind = _auto_submitted(headers, envelope, sender.id)
    if kind is not None:
        metadata["auto_submitted"] = kind
    reply_to = [address for _, address in _addresses(headers, "reply-to")]
    if reply_to and reply_to[0].lower() != sender.id:
        metadata["reply_to"] = reply_to[0]
    sent_at = _sent_at(headers.raw("date"))
    if sent_at is not None:
        metadata["sent_at"] = sent_at
    language = _language_hint(headers.text("content-language"))
    if language is not None:
        metadata["language_hint"] = language
    if content.skipped:
        metadata["attachments_skipped"] = content.skipped
    recipients = _recipients(headers, envelope)
    if len(recipients) > MAX_RECIPIENTS:
        metadata["recipients_truncated"] = len(recipients)
        recipients = recipients[:MAX_RECIPIENTS]
    metadata.update(extra_metadata or {})

    record = InboundMessage(
        message_id=message_id(channel_instance, native_id, from_raw, date_raw, digest),
        channel="email",
        channel_instance=channel_instance,
        native_id=native_id,
        received_at=received_at,
        sender=sender,
        recipients=tuple(recipients),
        conversation_id=conversation_id(channel_instance, thread),
        in_reply_to=in_reply_to[0] if in_reply_to else (references[-1] if references else None),
        subject=subject,
        text=text,
        body=body,
        attachments=tuple(content.attachments),
        auth=dict(auth or {}),
        metadata=metadata,
    )
    return fit_to_size(record, max_record_bytes)


def reparse(raw: bytes, *, channel_instance: str, attachment_dir: Path) -> InboundMessage:
    """``quarantine reprocess`` for a mail channel: parse a kept mail again, received now.

    No envelope was kept with the mail, so the record is built from its headers alone; the
    same bytes give the same ``message_id`` as the first parse. Attachments are stored under
    *attachment_dir*, as the channel stores them.
    """
    return message_from_email(
        raw,
        channel_instance=channel_instance,
        received_at=datetime.now(UTC),
        envelope=EmailEnvelope(),
        attachments=LocalAttachmentStore(attachment_dir),
    )
