"""The process's HTTP app: channel paths are served exactly as registered."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from switchboard.http import build_app
from switchboard.supervision import Readiness


async def _echo_path(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse(f"{scope['root_path']} {scope['path']}")(scope, receive, send)


async def _post(path: str) -> httpx.Response:
    app = build_app(Readiness(), CollectorRegistry(), [("hook", _echo_path)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post(path, content=b"{}")


async def test_a_channel_answers_on_its_bare_path_without_a_redirect() -> None:
    response = await _post("/channels/hook")
    assert response.status_code == 200
    assert response.text == "/channels/hook /channels/hook/"


async def test_a_channel_answers_on_its_sub_paths() -> None:
    response = await _post("/channels/hook/ws")
    assert response.status_code == 200
    assert response.text == "/channels/hook /channels/hook/ws"


async def test_an_unknown_channel_is_404() -> None:
    assert (await _post("/channels/other")).status_code == 404
