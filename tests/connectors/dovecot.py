"""A private Dovecot IMAP server for tests: its own config, users, maildirs, ports and TLS certificate.

Nothing is shared with a system Dovecot: the instance lives in one temporary directory (base_dir,
state, maildirs, log) and listens on 127.0.0.1 only, on ports picked free at start. It runs as the
current user; as root, Dovecot refuses mail access for uid 0, so the mail user is then ``nobody``.

Mail is delivered the way a client would file it, with IMAP APPEND through imapclient.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from imapclient import IMAPClient

__all__ = ["DOVECOT", "Dovecot", "require_dovecot", "running_dovecot"]

DOVECOT = Path("/usr/sbin/dovecot")
USER = "help@example.com"
PASSWORD = "correct horse battery staple"
OAUTH_USER = "oauth@example.com"
OAUTH_TOKEN = "ya29.test-access-token"  # XOAUTH2 hands the token to the passdb as the password
_START_TIMEOUT = 20.0


def require_dovecot() -> None:
    """Fail under CI (a missing service is a broken build), skip elsewhere, when Dovecot is absent."""
    if DOVECOT.exists():
        return
    message = f"{DOVECOT} is missing: install Debian's dovecot-imapd (deploy/test.sh does)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _mail_owner() -> tuple[int, int]:
    """Uid and gid that own the maildirs (never root: Dovecot refuses mail access for uid 0)."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid
    return os.geteuid(), os.getegid()


def _process_users() -> tuple[str, str, str]:
    """Dovecot's internal user, its group and the login user for this instance."""
    if os.geteuid() == 0:
        return "dovecot", "dovecot", "dovenull"
    me = pwd.getpwuid(os.geteuid()).pw_name
    return me, grp.getgrgid(os.getegid()).gr_name, me


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass
class Dovecot:
    """One running instance. ``port`` speaks plain IMAP with STARTTLS, ``tls_port`` implicit TLS."""

    directory: Path
    port: int = field(default_factory=_free_port)
    tls_port: int = field(default_factory=_free_port)
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    oauth_user: str = OAUTH_USER
    oauth_token: str = OAUTH_TOKEN
    _process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.directory / "dovecot.conf"

    @property
    def ca_file(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def log_file(self) -> Path:
        return self.directory / "dovecot.log"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def configure(self) -> None:
        """Write config, users and certificate; create the directories the mail user may write."""
        root = self.directory
        root.chmod(0o755)  # Dovecot's unprivileged processes traverse it
        uid, gid = _mail_owner()
        internal_user, internal_group, login_user = _process_users()
        cert, key = _self_signed_certificate(root)
        mail = root / "mail"
        mail.mkdir()
        os.chown(mail, uid, gid)
        for name in ("run", "state"):
            (root / name).mkdir()
        users = root / "users"
        users.write_text(
            f"{self.user}:{{PLAIN}}{self.password}:{uid}:{gid}::{mail / self.user}::\n"
            f"{self.oauth_user}:{{PLAIN}}{self.oauth_token}:{uid}:{gid}::{mail / self.oauth_user}::\n"
        )
        self.config_file.write_text(
            f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_file}
info_log_path = {self.log_file}
protocols = imap
listen = 127.0.0.1
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = 1
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = 1 secs
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
passdb {{
  driver = passwd-file
  args = {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
# No chroot: an unprivileged user cannot chroot, and this instance needs no jail.
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""
        )

    def start(self) -> None:
        """Start the server; returns once it greets on both ports."""
        with (self.directory / "dovecot.stderr").open("ab") as stderr:
            self._process = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(self.config_file)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a process group of its own, for stop()
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited at start:\n{self.log()}{self._stderr()}")
            if self._greets(self.port) and self._greets(self.tls_port, tls=True):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dovecot did not answer within {_START_TIMEOUT}s:\n{self.log()}{self._stderr()}")

    def _stderr(self) -> str:
        return (self.directory / "dovecot.stderr").read_text(errors="replace")

    def _greets(self, port: int, tls: bool = False) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1) as raw:
                if tls:
                    context = ssl.create_default_context(cafile=str(self.ca_file))
                    with context.wrap_socket(raw, server_hostname="localhost") as wrapped:
                        return wrapped.recv(64).startswith(b"* OK")
                return raw.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server; idempotent. Sessions still open are killed with it (Dovecot would
        otherwise let them linger ~10 s), so clients see their connection drop at once."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only this instance's processes

    # ------------------------------------------------------------------ client side

    @contextlib.contextmanager
    def client(self, user: str | None = None, token: str | None = None) -> Iterator[IMAPClient]:
        """A client logged in over STARTTLS, as a test's mail sender: with the password, or
        with XOAUTH2 when *token* is given."""
        with IMAPClient(self.host, self.port, ssl=False, timeout=10) as imap:
            imap.starttls(ssl.create_default_context(cafile=str(self.ca_file)))
            if token is None:
                imap.login(user or self.user, self.password)
            else:
                imap.oauth2_login(user or self.oauth_user, token)
            yield imap

    def append(
        self,
        raw: bytes,
        folder: str = "INBOX",
        *,
        when: dt.datetime | None = None,
        seen: bool = False,
    ) -> int:
        """File *raw* into *folder* (created if needed); returns its UID."""
        with self.client() as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            flags = [b"\\Seen"] if seen else []
            response = imap.append(folder, raw, flags=flags, msg_time=when)
            # Dovecot answers with UIDPLUS: [APPENDUID <uidvalidity> <uid>]
            return int(response.split(b"]")[0].split()[-1])

    def flags(self, uid: int, folder: str = "INBOX") -> tuple[bytes, ...]:
        with self.client() as imap:
            imap.select_folder(folder, readonly=True)
            return tuple(imap.get_flags([uid]).get(uid, ()))

    def raw(self, uid: int, folder: str = "INBOX") -> bytes:
        """The message as the server stores it (APPEND may have normalized line ends)."""
        with self.client() as imap:
            imap.select_folder(folder, readonly=True)
            return bytes(imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"])

    def recreate(self, folder: str) -> None:
        """Delete and re-create *folder*: the server assigns it a new UIDVALIDITY."""
        with self.client() as imap:
            if imap.folder_exists(folder):
                imap.delete_folder(folder)
            imap.create_folder(folder)


@contextlib.contextmanager
def running_dovecot() -> Iterator[Dovecot]:
    """A started instance in a fresh temporary directory, stopped and removed afterwards."""
    require_dovecot()
    directory = Path(tempfile.mkdtemp(prefix="sb-dovecot-"))
    server = Dovecot(directory)
    try:
        server.configure()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
