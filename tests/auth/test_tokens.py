"""API tokens (Authorization: Bearer) and the WebSocket check."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update
from starlette.websockets import WebSocket

from tests.auth.conftest import login
from voiceagent.auth import accounts
from voiceagent.auth.accounts import AccountError, Role
from voiceagent.auth.guard import AdminAuth
from voiceagent.store import Database
from voiceagent.store.models import ApiToken, utcnow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_token_may_change_without_csrf(client: httpx.AsyncClient, operator_token: str) -> None:
    assert operator_token.startswith("va_") and len(operator_token) >= 40
    assert (await client.get("/api/admin/things", headers=bearer(operator_token))).status_code == 200
    assert (await client.post("/api/admin/things", headers=bearer(operator_token))).status_code == 200
    danger = await client.delete("/api/admin/danger", headers=bearer(operator_token))
    assert danger.json() == {"by": "token:ci", "kind": "token"}
    session = await client.get("/api/admin/session", headers=bearer(operator_token))
    assert session.json() == {
        "username": "token:ci",
        "role": "operator",
        "csrf_token": "",
        "expires_at": None,
    }
    assert (await client.delete("/api/admin/session", headers=bearer(operator_token))).status_code == 400


async def test_a_viewer_token_reads_only(client: httpx.AsyncClient, database: Database) -> None:
    token = await accounts.create_token(database, "grafana", Role.VIEWER)
    assert (await client.get("/api/admin/things", headers=bearer(token))).status_code == 200
    assert (await client.post("/api/admin/things", headers=bearer(token))).status_code == 403


async def test_revoked_forged_and_malformed_tokens_are_401(
    client: httpx.AsyncClient, database: Database, operator_token: str
) -> None:
    await accounts.revoke_token(database, "ci")
    for header in (
        f"Bearer {operator_token}",
        "Bearer va_forged",
        "Bearer " + "va_" + "x" * 10_000,
        "Basic YWxpY2U6cHc=",
        "Bearer",
    ):
        response = await client.get("/api/admin/things", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["www-authenticate"] == "Bearer"


async def test_a_bad_token_is_not_rescued_by_a_good_cookie(client: httpx.AsyncClient) -> None:
    await login(client)
    assert (await client.get("/api/admin/things", headers=bearer("va_forged"))).status_code == 401


async def test_live_names_are_unique_and_a_revoked_name_can_be_reused(
    database: Database, operator_token: str
) -> None:
    with pytest.raises(AccountError, match="exists"):
        await accounts.create_token(database, "ci", Role.VIEWER)
    await accounts.revoke_token(database, "ci")
    with pytest.raises(AccountError, match="no live token"):
        await accounts.revoke_token(database, "ci")
    again = await accounts.create_token(database, "ci", Role.VIEWER)
    assert again != operator_token
    assert [(t.name, t.role) for t in await accounts.list_tokens(database)] == [("ci", Role.VIEWER)]
    assert len(await accounts.list_tokens(database, include_revoked=True)) == 2
    with pytest.raises(AccountError, match="bad token name"):
        await accounts.create_token(database, "no spaces", Role.VIEWER)


async def test_use_is_noted_at_most_once_a_minute(
    client: httpx.AsyncClient, database: Database, operator_token: str
) -> None:
    async def last_used() -> object:
        async with database.sessions() as session:
            return await session.scalar(select(ApiToken.last_used_at))

    assert await last_used() is None
    await client.get("/api/admin/things", headers=bearer(operator_token))
    first = await last_used()
    assert first is not None
    await client.get("/api/admin/things", headers=bearer(operator_token))
    assert await last_used() == first
    async with database.sessions.begin() as session:
        await session.execute(update(ApiToken).values(last_used_at=utcnow() - timedelta(minutes=2)))
    await client.get("/api/admin/things", headers=bearer(operator_token))
    assert await last_used() != first


def _websocket(headers: dict[str, str], scheme: str = "ws") -> WebSocket:
    scope = {
        "type": "websocket",
        "scheme": scheme,
        "path": "/api/admin/live",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("test", 80),
        "client": ("127.0.0.1", 40000),
    }

    async def nothing() -> dict[str, str]:
        return {}

    async def ignore(_: object) -> None:
        return None

    return WebSocket(scope, nothing, ignore)


async def test_a_cookie_websocket_must_come_from_this_origin(
    client: httpx.AsyncClient, auth: AdminAuth, operator_token: str
) -> None:
    await login(client)
    cookie = f"va_session={client.cookies['va_session']}"
    admitted = await auth.authenticate_websocket(
        _websocket({"host": "test:8000", "origin": "http://test:8000", "cookie": cookie})
    )
    assert admitted is not None and admitted.name == "alice" and admitted.session_id
    assert await auth.authenticate_websocket(
        _websocket({"host": "test", "origin": "https://test", "cookie": cookie}, scheme="wss")
    )
    assert await auth.authenticate_websocket(
        _websocket({"host": "test", "origin": "https://test:443", "cookie": cookie}, scheme="wss")
    )
    for origin in (None, "http://evil.example", "http://test:8001", "http://test:8000.evil", "null", "x"):
        headers = {"host": "test:8000", "cookie": cookie} | ({"origin": origin} if origin else {})
        assert await auth.authenticate_websocket(_websocket(headers)) is None, origin
    by_token = await auth.authenticate_websocket(
        _websocket({"host": "test", "authorization": f"Bearer {operator_token}"})
    )
    assert by_token is not None and by_token.kind == "token"
    assert await auth.authenticate_websocket(_websocket({"host": "test"})) is None
