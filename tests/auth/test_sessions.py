"""Logging in and out, the cookie, CSRF, expiry, roles."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from tests.auth.conftest import PASSWORD, ClientFactory, login
from voiceagent.auth import accounts
from voiceagent.auth.accounts import Role
from voiceagent.auth.guard import AdminAuth
from voiceagent.auth.settings import AdminAuthSettings
from voiceagent.store import Database
from voiceagent.store.models import AdminSession, AdminUser, utcnow


def _set_cookie(response: httpx.Response, name: str = "va_session") -> dict[str, str]:
    """A Set-Cookie header's attributes, names lowercased ("" for flags)."""
    (header,) = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    attributes: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes


async def test_login_sets_a_strict_httponly_cookie_and_the_session_reads_back(
    client: httpx.AsyncClient, auth: AdminAuth
) -> None:
    response = await client.post("/api/admin/session", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    info = response.json()
    assert info["username"] == "alice" and info["role"] == "operator" and len(info["csrf_token"]) >= 32
    cookie = _set_cookie(response)
    assert "httponly" in cookie and cookie["samesite"].lower() == "strict" and cookie["path"] == "/"
    assert "secure" not in cookie
    assert cookie["max-age"] == str(int(auth.settings.session_ttl_s))
    assert len(cookie["va_session"]) >= 43
    # Beside it, for the pages' scripts only to know a session may exist: no secret, same life.
    hint = _set_cookie(response, "va_signed_in")
    assert hint["va_signed_in"] == "1" and "httponly" not in hint and hint["samesite"].lower() == "strict"
    assert hint["max-age"] == cookie["max-age"]

    current = await client.get("/api/admin/session")
    assert current.status_code == 200
    assert current.json() == info


async def test_the_cookie_is_secure_over_https(make_client: ClientFactory) -> None:
    client = make_client(base_url="https://test")
    response = await client.post("/api/admin/session", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert "secure" in _set_cookie(response)
    assert (await client.get("/api/admin/session")).status_code == 200


async def test_the_store_keeps_only_a_hash_of_the_cookie(
    client: httpx.AsyncClient, database: Database
) -> None:
    await login(client)
    cookie = client.cookies["va_session"]
    async with database.sessions() as session:
        (row,) = (await session.scalars(select(AdminSession))).all()
    assert row.id == accounts.digest(cookie) and row.id != cookie
    assert row.address == "127.0.0.1"


@pytest.mark.parametrize("username", ["alice", "nobody", "admin' OR '1'='1' --", "al%ice", "ädmin"])
async def test_a_wrong_password_and_an_unknown_user_get_the_same_401(
    client: httpx.AsyncClient, username: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await client.post(
        "/api/admin/session", json={"username": username, "password": "not it at all"}
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "wrong user name or password"}
    assert "set-cookie" not in response.headers
    assert "not it at all" not in caplog.text
    assert (await client.get("/api/admin/session")).status_code == 401


async def test_no_session_or_a_forged_cookie_is_401_with_www_authenticate(client: httpx.AsyncClient) -> None:
    for cookie in (None, "forged-value", "x" * 5000):
        if cookie is not None:
            client.cookies.set("va_session", cookie)
        response = await client.get("/api/admin/things")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "not signed in" in response.json()["detail"]


async def test_changes_need_the_csrf_token(client: httpx.AsyncClient) -> None:
    csrf = await login(client)
    assert (await client.get("/api/admin/things")).status_code == 200
    missing = await client.post("/api/admin/things")
    assert missing.status_code == 403 and missing.json() == {"detail": "CSRF token missing or wrong"}
    forged = await client.post("/api/admin/things", headers={"X-CSRF-Token": csrf[:-1] + "x"})
    assert forged.status_code == 403
    odd = await client.post("/api/admin/things", headers=[(b"X-CSRF-Token", "é".encode("latin-1") * 3)])
    assert odd.status_code == 403
    assert (await client.post("/api/admin/things", headers={"X-CSRF-Token": csrf})).status_code == 200
    danger = await client.delete("/api/admin/danger", headers={"X-CSRF-Token": csrf})
    assert danger.json() == {"by": "alice", "kind": "session"}
    assert (await client.delete("/api/admin/danger")).status_code == 403


async def test_a_viewer_can_read_but_not_change(client: httpx.AsyncClient) -> None:
    csrf = await login(client, "victor")
    assert (await client.get("/api/admin/things")).status_code == 200
    refused = await client.post("/api/admin/things", headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    assert (await client.delete("/api/admin/danger", headers={"X-CSRF-Token": csrf})).status_code == 403


async def test_logout_revokes_the_session_and_clears_the_cookie(
    client: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    csrf = await login(client)
    stolen = client.cookies["va_session"]
    assert (await client.delete("/api/admin/session")).status_code == 403  # no CSRF token
    response = await client.delete("/api/admin/session", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 204
    assert _set_cookie(response)["max-age"] == "0"
    assert _set_cookie(response, "va_signed_in")["max-age"] == "0"
    replay = make_client()
    replay.cookies.set("va_session", stolen)
    assert (await replay.get("/api/admin/session")).status_code == 401


async def _age_sessions(database: Database, **moved: timedelta) -> None:
    now = utcnow()
    async with database.sessions.begin() as session:
        await session.execute(update(AdminSession).values({k: now - v for k, v in moved.items()}))


async def test_an_idle_session_ends(client: httpx.AsyncClient, database: Database) -> None:
    await login(client)
    await _age_sessions(database, last_seen_at=timedelta(seconds=3599))
    assert (await client.get("/api/admin/session")).status_code == 200  # and noted as seen now
    await _age_sessions(database, last_seen_at=timedelta(seconds=3601))
    assert (await client.get("/api/admin/session")).status_code == 401


async def test_use_keeps_a_session_alive_but_not_past_its_ttl(
    client: httpx.AsyncClient, database: Database
) -> None:
    await login(client)
    await _age_sessions(database, last_seen_at=timedelta(minutes=50))
    assert (await client.get("/api/admin/session")).status_code == 200
    async with database.sessions() as session:
        seen = await session.scalar(select(AdminSession.last_seen_at))
    assert seen is not None and utcnow() - seen.replace(tzinfo=UTC) < timedelta(seconds=5)
    async with database.sessions.begin() as session:
        await session.execute(update(AdminSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert (await client.get("/api/admin/session")).status_code == 401


@pytest.mark.parametrize("auth_settings", [AdminAuthSettings(session_idle_s=0.2)])
async def test_a_tiny_idle_limit_ends_the_session(client: httpx.AsyncClient) -> None:
    await login(client)
    assert (await client.get("/api/admin/session")).status_code == 200
    await asyncio.sleep(0.3)
    assert (await client.get("/api/admin/session")).status_code == 401


async def test_a_role_change_ends_the_users_sessions(client: httpx.AsyncClient, database: Database) -> None:
    await login(client)
    assert await accounts.set_role(database, "alice", Role.VIEWER) == 1
    assert (await client.get("/api/admin/session")).status_code == 401
    csrf = await login(client)
    assert (await client.get("/api/admin/session")).json()["role"] == "viewer"
    assert (await client.post("/api/admin/things", headers={"X-CSRF-Token": csrf})).status_code == 403


async def test_disabled_or_removed_users_lose_their_sessions_at_once(
    make_client: ClientFactory, database: Database
) -> None:
    alice, victor = make_client(), make_client()
    await login(alice)
    await login(victor, "victor")
    async with database.sessions.begin() as session:
        await session.execute(update(AdminUser).where(AdminUser.username == "alice").values(disabled=True))
    assert (await alice.get("/api/admin/session")).status_code == 401
    refused = await alice.post("/api/admin/session", json={"username": "alice", "password": PASSWORD})
    assert refused.status_code == 401
    await accounts.remove_user(database, "victor")
    assert (await victor.get("/api/admin/session")).status_code == 401


async def test_a_password_change_ends_the_sessions(client: httpx.AsyncClient, database: Database) -> None:
    await login(client)
    assert await accounts.set_password(database, "alice", "another long password") == 1
    assert (await client.get("/api/admin/session")).status_code == 401
    await login(client, password="another long password")
