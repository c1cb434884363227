"""The process's HTTP server: /healthz, /readyz, /metrics and the HTTP channels' apps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from models.config import HostPort
from models.errors import InvalidInput
from switchboard.supervision import Readiness

__all__ = ["HttpServer", "ListenError", "build_app"]


class ListenError(InvalidInput):
    """The configured address cannot be bound (in use, not permitted, unknown host)."""


def build_app(
    readiness: Readiness, registry: CollectorRegistry, channels: Sequence[tuple[str, ASGIApp]] = ()
) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        body = {"ready": readiness.ready, "components": readiness.snapshot()}
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    routes += [Mount(f"/channels/{name}", app=app) for name, app in channels]
    roots = frozenset(f"/channels/{name}" for name, _ in channels)
    return Starlette(routes=routes, middleware=[Middleware(_ChannelRoot, roots=roots)])


class _ChannelRoot:
    """Serves ``/channels/<name>`` itself, not a redirect to ``/channels/<name>/``.

    Platforms post webhooks to exactly the URL an admin registered, and not all of them follow a
    307 with the body; so the bare path is handed to the channel as its root.
    """

    def __init__(self, app: ASGIApp, roots: frozenset[str]) -> None:
        self._app = app
        self._roots = roots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] in self._roots:
            scope = {**scope, "path": scope["path"] + "/", "raw_path": (scope["path"] + "/").encode()}
        await self._app(scope, receive, send)


def bind(address: HostPort) -> socket.socket:
    """Bind the listening socket now, so a port in use is one clear error at start-up."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only for that protocol.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {address}: {error.strerror or error}") from None
    sock.listen(512)
    sock.setblocking(False)
    return sock


class HttpServer:
    """A uvicorn server on a pre-bound socket, started and stopped with the process."""

    def __init__(self, app: ASGIApp, address: HostPort) -> None:
        self.address = address
        self._socket = bind(address)
        config = uvicorn.Config(
            app, log_config=None, lifespan="off", access_log=False, timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self._socket]), name=f"http {self.address}"
        )
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=8)
        self._task = None
        self._socket.close()
