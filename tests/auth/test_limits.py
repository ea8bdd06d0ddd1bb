"""The login rate limit (per account, per address, shared through the store) and the audit log."""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.auth.conftest import PASSWORD, ClientFactory, build_app, login
from voiceagent.auth.audit import AuditLog
from voiceagent.auth.guard import AdminAuth, Principal, Role
from voiceagent.auth.settings import AdminAuthSettings
from voiceagent.config import ServerSettings
from voiceagent.store import Database
from voiceagent.store.models import LoginFailure, utcnow
from voiceagent.testing.serving import served

LIMITS = AdminAuthSettings(login_max_failures_per_account=3, login_max_failures_per_address=5)


async def _try(client: httpx.AsyncClient, username: str, password: str = "wrong password!") -> httpx.Response:
    return await client.post("/api/admin/session", json={"username": username, "password": password})


@pytest.mark.parametrize("auth_settings", [LIMITS])
async def test_an_account_is_refused_after_its_failures_even_with_the_right_password(
    make_client: ClientFactory, database: Database
) -> None:
    here, there = make_client(address="10.0.0.1"), make_client(address="10.0.0.2")
    for client in (here, here, there):
        assert (await _try(client, "alice")).status_code == 401
    refused = await _try(here, "alice", PASSWORD)
    assert refused.status_code == 429
    assert 890 <= int(refused.headers["retry-after"]) <= 900
    assert "try again" in refused.json()["detail"]
    assert (await _try(there, "alice", PASSWORD)).status_code == 429  # counted across addresses
    assert (await _try(here, "victor", PASSWORD)).status_code == 200  # other accounts are fine

    # Retry-After is when the oldest counted failure leaves the window; then the account may try.
    async with database.sessions.begin() as session:
        await session.execute(update(LoginFailure).values(at=utcnow() - timedelta(seconds=895)))
    assert int((await _try(here, "alice", PASSWORD)).headers["retry-after"]) <= 5
    async with database.sessions.begin() as session:
        await session.execute(update(LoginFailure).values(at=utcnow() - timedelta(seconds=901)))
    assert (await _try(here, "alice", PASSWORD)).status_code == 200
    async with database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(LoginFailure)) == 0  # pruned, cleared


@pytest.mark.parametrize("auth_settings", [LIMITS])
async def test_an_address_is_refused_after_its_failures_across_accounts(make_client: ClientFactory) -> None:
    attacker, other = make_client(address="10.6.6.6"), make_client(address="10.0.0.9")
    for name in ("a1", "a2", "a3", "a4", "a5"):
        assert (await _try(attacker, name)).status_code == 401
    refused = await _try(attacker, "victor", PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert (await _try(other, "victor", PASSWORD)).status_code == 200


@pytest.mark.parametrize("auth_settings", [LIMITS])
async def test_a_success_clears_the_accounts_failures(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        assert (await _try(client, "alice")).status_code == 401
    await login(client)
    for _ in range(3):
        assert (await _try(client, "alice")).status_code == 401
    assert (await _try(client, "alice")).status_code == 429


async def test_logins_logouts_and_failures_are_audited(
    client: httpx.AsyncClient, auth: AdminAuth, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="voiceagent")
    assert (await _try(client, "alice", "a wrong guess")).status_code == 401
    assert (await _try(client, "x" * 64)).status_code == 401
    csrf = await login(client)
    cookie = client.cookies["va_session"]
    assert (await client.delete("/api/admin/session", headers={"X-CSRF-Token": csrf})).status_code == 204

    entries, total = await auth.audit.page()
    assert total == 4
    assert [(e.action, e.actor, e.role) for e in entries] == [
        ("logout", "alice", "operator"),
        ("login", "alice", "operator"),
        ("login.failed", "x" * 64, ""),
        ("login.failed", "alice", ""),
    ]
    assert all(e.address == "127.0.0.1" for e in entries)
    failed, failures = await auth.audit.page(action="login.failed", limit=1, offset=1)
    assert failures == 2 and [e.actor for e in failed] == ["alice"]
    mine, count = await auth.audit.page(actor="alice")
    assert count == 3 and len(mine) == 3
    for secret in (PASSWORD, "a wrong guess", cookie, csrf):
        assert secret not in caplog.text
        assert all(secret not in (e.detail or "") for e in entries)
    assert "'alice'" in caplog.text  # the account is named


@pytest.mark.parametrize("auth_settings", [AdminAuthSettings(login_max_failures_per_account=1)])
async def test_refused_logins_are_audited(client: httpx.AsyncClient, auth: AdminAuth) -> None:
    await _try(client, "alice")
    assert (await _try(client, "alice")).status_code == 429
    entries, _ = await auth.audit.page(limit=1)
    assert entries[0].action == "login.limited" and entries[0].actor == "alice"


async def test_a_failed_audit_write_does_not_raise(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(database)
    principal = Principal(kind="token", name="token:ci", role=Role.OPERATOR)
    await audit.record(principal, "thing.done", target="t" * 1000, detail="d" * 1000, address="a" * 100)
    await audit.record(None, "thing.odd", target="doc\x00id", actor="x\x00y")
    odd, entry = (await audit.page())[0]
    assert len(entry.target or "") == 256 and len(entry.detail or "") == 500 and entry.role == "operator"
    assert (odd.actor, odd.target, odd.role) == ("x\ufffdy", "doc\ufffdid", "")
    await database.close()
    broken = AuditLog(
        type(database)(database.settings.model_copy(update={"url": "sqlite+aiosqlite:////nonexistent/x.db"}))
    )
    with caplog.at_level(logging.ERROR):
        await broken.record(principal, "thing.done")
    assert "audit entry thing.done by 'token:ci' not written" in caplog.text


async def test_every_admitted_change_is_audited_once_with_its_outcome(
    client: httpx.AsyncClient, auth: AdminAuth, operator_token: str
) -> None:
    """Routes that say what a change means are written so (with the status if it then failed);
    any other admitted change as its method, route (its path under an include prefix) and status;
    reads and refused requests write nothing."""
    bearer = {"Authorization": f"Bearer {operator_token}"}
    assert (await client.post("/api/admin/things", headers=bearer)).status_code == 200
    assert (await client.put("/api/admin/things/missing", headers=bearer)).status_code == 404
    assert (await client.patch("/api/admin/things/lamp", headers=bearer)).status_code == 200
    assert (await client.post("/api/admin/things/vase/break", headers=bearer)).status_code == 409
    assert (await client.put("/v2/api/admin/things/cup", headers=bearer)).status_code == 200
    assert (await client.delete("/api/admin/danger", headers=bearer)).status_code == 200
    assert (await client.get("/api/admin/things", headers=bearer)).status_code == 200
    assert (await client.post("/api/admin/things")).status_code == 401
    csrf = await login(client, "victor")
    refused = await client.post("/api/admin/things", headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403

    entries, _ = await auth.audit.page()
    assert [(e.actor, e.action, e.target, e.detail) for e in reversed(entries)] == [
        ("token:ci", "POST /api/admin/things", "/api/admin/things", "HTTP 200"),
        ("token:ci", "PUT /api/admin/things/{name}", "/api/admin/things/missing", "HTTP 404"),
        ("token:ci", "thing.tidy", "lamp", None),
        ("token:ci", "thing.break", "vase", "(HTTP 409)"),
        ("token:ci", "PUT /v2/api/admin/things/cup", "/v2/api/admin/things/cup", "HTTP 200"),
        ("token:ci", "DELETE /api/admin/danger", "/api/admin/danger", "HTTP 200"),
        ("victor", "login", None, None),
    ]
    assert all(e.address == "127.0.0.1" for e in entries)
    # The action filter is a prefix, case and all, on SQLite as on PostgreSQL.
    assert [(await auth.audit.page(action=a))[1] for a in ("POST", "post", "thing.", "PUT /v2")] == [
        1,
        0,
        2,
        1,
    ]


@pytest.mark.parametrize(
    ("trusted", "seen_as"), [([], "127.0.0.1"), (["127.0.0.1"], "203.0.113.7")], ids=["no-proxy", "proxy"]
)
async def test_a_forwarded_address_counts_only_from_a_trusted_proxy(
    auth: AdminAuth, trusted: list[str], seen_as: str
) -> None:
    """Through the real server: X-Forwarded-For names the client only when it comes from a proxy
    in ``server.trusted_proxies``; otherwise a client could pick any address to dodge the limit."""
    settings = ServerSettings(trusted_proxies=trusted)
    async with served(build_app(auth), settings) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.post(
            "/api/admin/session",
            json={"username": "alice", "password": "wrong!"},
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
        assert response.status_code == 401
    [entry], _ = await auth.audit.page()
    assert (entry.action, entry.address) == ("login.failed", seen_as)
    async with auth.database.sessions() as session:
        assert set(await session.scalars(select(LoginFailure.address))) == {seen_as}
