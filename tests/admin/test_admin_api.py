"""The whole app's guard, enumerated: every route that is not deliberately public refuses a
stranger (so a new route cannot slip through), viewers read, operators change (with the CSRF
header, audited), and the live WebSocket admits only signed-in dashboards of this origin."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.routing import Mount
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import FakeServer
from voiceagent.admin.live import SIGNED_OUT
from voiceagent.auth.accounts import Role, create_token, create_user, set_disabled
from voiceagent.server.app import create_app
from voiceagent.store import NewTurn, Store

PASSWORD = "correct horse battery"
# Deliberately public, each for a reason; anything else under any path needs a sign-in.
PUBLIC = {
    ("GET", "/healthz"),  # liveness probes
    ("GET", "/readyz"),
    ("GET", "/metrics"),  # Prometheus scrapes: counts, no personal data
    ("POST", "/api/calls"),  # callers (identity comes signed inside the body)
    ("DELETE", "/api/calls/{call_id}"),  # a caller hangs up their own call (its id is their secret)
    ("POST", "/api/admin/session"),  # logging in
    ("GET", "/"),  # pages: shells with no data (their data comes from the guarded API)
    ("GET", "/call"),
    ("GET", "/admin"),
    ("GET", "/admin/login"),
    ("GET", "/admin/{_:path}"),
    ("GET", "/jobs"),  # the jobs page's shell: no data (it reads /api/jobs, and logs in on a 401)
}
PUBLIC_PREFIXES = ("/docs", "/redoc", "/openapi.json")  # the API's description


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def _guarded_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method or "WS", path template) of every route not on the public list."""
    found_public, guarded = set(), []
    for context in iter_route_contexts(app.routes):  # included routers flattened, prefixes applied
        route, path = context.original_route, str(context.path)
        if isinstance(route, Mount):
            assert path == "/static", f"unexpected mount {path}: decide whether it needs a sign-in"
        elif isinstance(route, APIRoute):
            for method in sorted(route.methods):
                if (method, path) in PUBLIC:
                    found_public.add((method, path))
                else:
                    guarded.append((method, path))
        elif isinstance(route, APIWebSocketRoute):
            guarded.append(("WS", path))
        else:
            assert path.startswith(PUBLIC_PREFIXES), f"unclassified route {path}"
    assert found_public == PUBLIC  # no stale allowance
    return guarded


async def test_every_route_refuses_a_stranger(fake_server: FakeServer) -> None:
    guarded = _guarded_routes(create_app(fake_server.runtime))
    assert len(guarded) >= 20

    async with httpx.AsyncClient(base_url=fake_server.base) as http:
        for method, path in guarded:
            if method == "WS":
                ws_url = fake_server.base.replace("http", "ws") + path
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(ws_url):
                        pass
                assert refused.value.response.status_code == 403, path
                continue
            response = await http.request(method, _concrete(path), json={})
            assert response.status_code == 401, (method, path, response.status_code, response.text)
            assert response.json() == {
                "detail": "not signed in: log in, or send Authorization: Bearer <token>"
            }
            assert "Traceback" not in response.text

            forged = await http.request(
                method,
                _concrete(path),
                headers={"Authorization": "Bearer va_forged", "Cookie": "va_session=forged"},
            )
            assert forged.status_code == 401, (method, path)


async def test_every_change_an_operator_makes_is_audited(fake_server: FakeServer) -> None:
    """Whatever the route and however it ends (done, refused as bad input, not found), an admitted
    change leaves exactly one audit entry naming the operator."""
    changes = [
        (method, path)
        for method, path in _guarded_routes(create_app(fake_server.runtime))
        if method not in ("GET", "HEAD", "WS")
    ]
    assert len(changes) >= 8
    token = await create_token(fake_server.runtime.database, "auditor", Role.OPERATOR, created_by="test")
    audit = fake_server.runtime.auth.audit
    async with httpx.AsyncClient(
        base_url=fake_server.base, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        for done, (method, path) in enumerate(changes):
            response = await http.request(method, _concrete(path), json={})
            assert response.status_code < 500, (method, path, response.text)
            entries, total = await audit.page(actor="token:auditor")
            assert total == done + 1, (method, path, [e.action for e in entries])
            assert entries[0].role == "operator" and entries[0].address == "127.0.0.1"


async def _sign_in(http: httpx.AsyncClient, name: str) -> str:
    response = await http.post("/api/admin/session", json={"username": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


async def test_viewers_read_operators_change_with_csrf_and_are_audited(fake_server: FakeServer) -> None:
    database = fake_server.runtime.database
    await create_user(database, "vera", PASSWORD, Role.VIEWER)
    await create_user(database, "otto", PASSWORD, Role.OPERATOR)
    await Store(database).touch_user("ann")
    send = {"user_id": "ann", "type": "greet", "text": "Welcome back!"}

    async with httpx.AsyncClient(base_url=fake_server.base) as viewer:
        csrf = await _sign_in(viewer, "vera")
        assert (await viewer.get("/api/admin/overview")).status_code == 200
        assert (await viewer.get("/api/calls")).status_code == 200
        refused = await viewer.post("/api/admin/outreach", json=send, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]

    async with httpx.AsyncClient(base_url=fake_server.base) as operator:
        csrf = await _sign_in(operator, "otto")
        forged = await operator.post("/api/admin/outreach", json=send, headers={"X-CSRF-Token": "f" * 43})
        missing = await operator.post("/api/admin/outreach", json=send)
        assert (forged.status_code, missing.status_code) == (403, 403)
        assert forged.json()["detail"] == "CSRF token missing or wrong"
        sent = await operator.post("/api/admin/outreach", json=send, headers={"X-CSRF-Token": csrf})
        assert sent.status_code == 202, sent.text
        event_id = sent.json()["event_id"]
        page = (await operator.get("/api/admin/outreach", params={"user_id": "ann"})).json()
        assert [e["id"] for e in page["items"]] == [event_id]
        audit = (await operator.get("/api/admin/audit", params={"action": "outreach.greet"})).json()
        [entry] = audit["items"]
        assert (entry["actor"], entry["target"], entry["detail"]) == ("otto", "ann", event_id)
        mine = (await operator.get("/api/admin/audit", params={"actor": "otto"})).json()["items"]
        assert [e["action"] for e in mine] == ["outreach.greet", "login"]  # one entry a change; refusals none
        assert sent.headers["cache-control"] == "no-store"
        assert "va_session" not in json.dumps(audit)


async def test_hostile_queries_get_clear_answers_and_leave_the_server_unaffected(
    fake_server: FakeServer,
) -> None:
    token = await create_token(fake_server.runtime.database, "ci", Role.VIEWER)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=fake_server.base, headers=headers) as http:
        huge = await http.get("/api/admin/calls", params={"q": "x" * 5000})
        assert huge.status_code == 422 and "at most 200 characters" in huge.text
        for hostile in ("' OR 1=1 --", "%", "_", "<script>alert(1)</script>", "\\"):
            found = await http.get("/api/admin/calls", params={"q": hostile})
            assert found.status_code == 200 and found.json()["total"] == 0, hostile
        assert (await http.get("/api/admin/calls", params={"limit": 10**9})).status_code == 422
        assert (await http.get("/api/admin/users/has space")).status_code == 422
        assert (await http.get("/api/admin/calls/nope")).status_code == 404
        assert (await http.get("/api/admin/charts", params={"window_h": "nan"})).status_code == 422
        assert (await http.get("/api/admin/overview")).status_code == 200  # still serving


async def test_the_live_socket_admits_signed_in_dashboards_of_this_origin_only(
    fake_server: FakeServer,
) -> None:
    runtime = fake_server.runtime
    hub = runtime.admin.hub
    hub.settings = hub.settings.model_copy(update={"recheck_s": 0.2})
    await create_user(runtime.database, "vera", PASSWORD, Role.VIEWER)
    ws_url = fake_server.base.replace("http", "ws") + "/api/admin/live"
    async with httpx.AsyncClient(base_url=fake_server.base) as http:
        await _sign_in(http, "vera")
        cookie = f"va_session={http.cookies['va_session']}"

    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url, additional_headers={"Cookie": cookie, "Origin": "https://evil.example"}):
            pass
    assert refused.value.response.status_code == 403

    async with connect(ws_url, additional_headers={"Cookie": cookie, "Origin": fake_server.base}) as socket:
        hello = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert (hello["type"], hello["node_id"]) == ("hello", runtime.settings.node_id)
        store = Store(runtime.database)
        await store.touch_user("zoe")
        call = await store.start_call("zoe", "elsewhere", call_id="zoe-call")
        now = datetime.now(UTC)
        await store.add_turn(
            call.id, NewTurn(started_at=now, ended_at=now + timedelta(seconds=1), user_text="hi")
        )
        update: dict[str, Any] = {}
        async with asyncio.timeout(20):  # one poll (0.5 s) brings it; only a broken feed waits this long
            while update.get("type") != "turn":
                update = json.loads(await socket.recv())
        assert update["turn"]["call_id"] == "zoe-call" and update["turn"]["user_text"] == "hi"

        # Her user disabled while the dashboard is open: the socket is closed at the next recheck.
        await set_disabled(runtime.database, "vera", True)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(20):  # rechecked every 0.2 s here: only a defect waits this long
                while True:
                    await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == SIGNED_OUT
