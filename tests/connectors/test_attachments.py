"""The local attachment store: content-addressed, atomic, idempotent, failures are OSError."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from connectors.attachments import AttachmentStore, LocalAttachmentStore, save_attachment


def path_of(ref: str) -> Path:
    parsed = urlparse(ref)
    assert parsed.scheme == "file"
    return Path(url2pathname(parsed.path))


def test_bytes_are_stored_under_their_digest_and_read_back(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path / "store")
    data = b"%PDF-1.7 invoice 4471"
    digest = hashlib.sha256(data).hexdigest()
    ref = store.put(data, filename="Invoice 4471.PDF", content_type="application/pdf")
    path = path_of(ref)
    assert path.read_bytes() == data
    assert path == (tmp_path / "store" / digest[:2] / f"{digest}.pdf").resolve()
    assert isinstance(store, AttachmentStore)


def test_storing_the_same_bytes_again_is_a_no_op_with_the_same_ref(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    first = store.put(b"same bytes", filename="a.txt")
    before = path_of(first).stat().st_mtime_ns
    second = store.put(b"same bytes", filename="b.txt")
    assert first == second
    assert path_of(second).stat().st_mtime_ns == before
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [path_of(first)]  # one file, no temporary left behind


def test_a_truncated_file_is_replaced_whole(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    data = b"x" * 10_000
    path = store.path_for(hashlib.sha256(data).hexdigest())
    path.parent.mkdir(parents=True)
    path.write_bytes(data[:100])  # e.g. copied in by hand and cut off
    assert path_of(store.put(data)).read_bytes() == data


def test_a_given_digest_must_match_the_bytes(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    with pytest.raises(ValueError, match="does not match"):
        store.put(b"abc", sha256="0" * 64)
    good = hashlib.sha256(b"abc").hexdigest()
    assert path_of(store.put(b"abc", sha256=good)).read_bytes() == b"abc"


@pytest.mark.parametrize(
    ("filename", "suffix"),
    [
        ("report.eml", ".eml"),
        (None, ""),
        ("../../etc/passwd", ""),
        ("photo.JPEG", ".jpeg"),
        ("weird.ext with space", ""),
        ("archive.tar.gz", ".gz"),
        ("C:\\Users\\k\\scan.png", ".png"),
    ],
)
def test_only_a_plain_extension_of_the_filename_reaches_the_path(
    tmp_path: Path, filename: str | None, suffix: str
) -> None:
    store = LocalAttachmentStore(tmp_path)
    path = path_of(store.put(b"content", filename=filename))
    digest = hashlib.sha256(b"content").hexdigest()
    assert path.name == digest + suffix
    assert path.parent.parent == tmp_path.resolve()


def test_an_unwritable_store_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    store = LocalAttachmentStore(blocker)
    with pytest.raises(OSError):
        store.put(b"data")


def test_save_attachment_returns_the_record_metadata(tmp_path: Path) -> None:
    store = LocalAttachmentStore(tmp_path)
    attachment = save_attachment(store, b"\x89PNG...", filename="screenshot.png", content_type="image/png")
    assert attachment.size == 7
    assert attachment.sha256 == hashlib.sha256(b"\x89PNG...").hexdigest()
    assert attachment.filename == "screenshot.png" and attachment.content_type == "image/png"
    assert attachment.ref is not None and path_of(attachment.ref).read_bytes() == b"\x89PNG..."
