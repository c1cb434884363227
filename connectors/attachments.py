"""Where attachment bytes go: a content-addressed store, referred to from records by URI.

Records on Kafka carry only attachment metadata (:class:`models.Attachment`); the bytes are
written here first, so a record never points at something that is not stored yet. The store
is content-addressed: the same bytes always land at the same place and a second ``put`` of
them writes nothing. This module is the only place in the mail path that touches files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from models import Attachment

__all__ = ["AttachmentStore", "LocalAttachmentStore", "save_attachment"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# A file name's extension is kept on the stored file (``<sha256>.pdf``) so an operator can
# open it; anything unusual is dropped rather than trusted as part of a path.
_SAFE_SUFFIX = re.compile(r"^\.[a-z0-9]{1,10}$")


@runtime_checkable
class AttachmentStore(Protocol):
    """Durable, content-addressed storage of attachment bytes.

    ``put`` returns the stored bytes' reference (a URI) once they are durable. It is
    idempotent: storing the same bytes again returns the same reference. *sha256*, when the
    caller already has it, is checked against the bytes. ``OSError`` means the bytes could
    not be stored (retriable: the caller should answer "try again later").
    """

    def put(
        self,
        data: bytes,
        *,
        sha256: str | None = None,
        filename: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str: ...


def save_attachment(
    store: AttachmentStore,
    data: bytes,
    *,
    filename: str | None,
    content_type: str,
) -> Attachment:
    """Store *data* and return the record's metadata for it (size, sha256, ref)."""
    digest = hashlib.sha256(data).hexdigest()
    ref = store.put(data, sha256=digest, filename=filename, content_type=content_type)
    return Attachment(filename=filename, content_type=content_type, size=len(data), sha256=digest, ref=ref)


def _suffix(filename: str | None) -> str:
    if not filename:
        return ""
    suffix = Path(filename.replace("\\", "/")).suffix.lower()
    return suffix if _SAFE_SUFFIX.match(suffix) else ""


class LocalAttachmentStore:
    """An :class:`AttachmentStore` in a local directory; references are ``file://`` URIs.

    Layout: ``<directory>/<first two hex digits>/<sha256><extension>``. A file appears under
    its final name only once it is complete and flushed to disk (written to a temporary file
    in the same directory, fsynced, then renamed), so a reader never sees a partial file and a
    crash leaves at most a stray temporary file. The directory is created on first use.
    """

    def __init__(self, directory: Path | str) -> None:
        self._directory = Path(directory)

    @property
    def directory(self) -> Path:
        return self._directory

    def path_for(self, sha256: str, filename: str | None = None) -> Path:
        """Where bytes with this digest (and the extension of *filename*) are kept."""
        if not _DIGEST.match(sha256):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return self._directory / sha256[:2] / f"{sha256}{_suffix(filename)}"

    def put(
        self,
        data: bytes,
        *,
        sha256: str | None = None,
        filename: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise ValueError("sha256 does not match the bytes")
        target = self.path_for(digest, filename)
        if not _complete(target, len(data)):
            _write_atomically(target, data)
        return target.resolve().as_uri()


def _complete(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is; not every platform allows it.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
