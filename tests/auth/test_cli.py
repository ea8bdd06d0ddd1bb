"""``voiceagent admin …`` end to end on a fresh SQLite file, and what it prints."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.auth.conftest import PASSWORD, build_app
from voiceagent.auth import accounts
from voiceagent.auth.guard import AdminAuth
from voiceagent.auth.settings import AdminAuthSettings
from voiceagent.cli import main
from voiceagent.config import StoreSettings
from voiceagent.store import Database

T = TypeVar("T")


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'va.db'}"
    monkeypatch.setenv("VOICEAGENT_STORE__URL", url)
    return url


def admin(monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["admin", *argv])


def _with_database(url: str, check: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        database = Database(StoreSettings(url=url))
        try:
            return await check(database)
        finally:
            await database.close()

    return asyncio.run(go())


def test_user_add_on_a_fresh_store_then_log_in(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        admin(
            monkeypatch,
            "user",
            "add",
            "alice",
            "--role",
            "operator",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        == 0
    )
    assert "added admin user alice (operator)" in capsys.readouterr().out

    async def log_in(database: Database) -> int:
        app = build_app(AdminAuth(database, AdminAuthSettings()))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            response = await client.post(
                "/api/admin/session", json={"username": "alice", "password": PASSWORD}
            )
            return response.status_code

    assert _with_database(store_url, log_in) == 200


def _log_in(url: str, cookie: str | None = None) -> tuple[int, int, str | None]:
    """(status of a login, status of a read with ``cookie`` or the new session's, the session cookie)."""

    async def go(database: Database) -> tuple[int, int, str | None]:
        app = build_app(AdminAuth(database, AdminAuthSettings()))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            login = await client.post("/api/admin/session", json={"username": "dora", "password": PASSWORD})
            session = client.cookies.get("va_session") if cookie is None else cookie
            client.cookies.clear()
            client.cookies.set("va_session", session or "")
            read = await client.get("/api/admin/things")
            return login.status_code, read.status_code, session

    return _with_database(url, go)


def test_a_disabled_user_cannot_log_in_and_their_sessions_end_until_enabled(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    admin(monkeypatch, "user", "add", "dora", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    login, read, cookie = _log_in(store_url)
    assert (login, read) == (200, 200) and cookie
    capsys.readouterr()

    assert admin(monkeypatch, "user", "disable", "dora") == 0
    assert "dora is disabled; 1 sessions ended" in capsys.readouterr().out
    assert _log_in(store_url, cookie)[:2] == (401, 401)  # the old session and a new login alike
    assert admin(monkeypatch, "user", "list") == 0
    assert capsys.readouterr().out.split()[-1] == "disabled"

    assert admin(monkeypatch, "user", "enable", "dora") == 0
    assert _log_in(store_url, cookie)[:2] == (200, 401)  # a new login works; the ended one stays ended
    assert admin(monkeypatch, "user", "disable", "nobody") == 1
    assert "no admin user 'nobody'" in capsys.readouterr().err


def test_user_add_refuses_short_passwords_duplicates_and_bad_names(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        admin(monkeypatch, "user", "add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n") == 1
    )
    assert capsys.readouterr().err.strip().endswith("password too short: at least 10 characters")
    assert (
        admin(monkeypatch, "user", "add", "bob", "--role", "viewer", "--password-stdin", stdin=PASSWORD) == 0
    )
    assert (
        admin(monkeypatch, "user", "add", "bob", "--role", "viewer", "--password-stdin", stdin=PASSWORD) == 1
    )
    assert "admin user 'bob' already exists" in capsys.readouterr().err
    assert (
        admin(monkeypatch, "user", "add", "b o b", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
        == 1
    )
    assert "bad user name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        admin(monkeypatch, "user", "add", "carol", "--role", "root", "--password-stdin", stdin=PASSWORD)


def test_passwords_are_typed_twice_without_echo(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    typed = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    assert admin(monkeypatch, "user", "add", "dave", "--role", "viewer") == 1
    assert "the passwords differ" in capsys.readouterr().err
    typed = iter([PASSWORD, PASSWORD])
    assert admin(monkeypatch, "user", "add", "dave", "--role", "viewer") == 0


def test_user_list_passwd_role_remove(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    admin(monkeypatch, "user", "add", "erin", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    capsys.readouterr()
    assert admin(monkeypatch, "user", "list") == 0
    assert capsys.readouterr().out.split()[:2] == ["erin", "viewer"]
    assert (
        admin(monkeypatch, "user", "passwd", "erin", "--password-stdin", stdin="a new long password\n") == 0
    )
    assert admin(monkeypatch, "user", "role", "erin", "operator") == 0
    assert "erin is now operator" in capsys.readouterr().out
    assert admin(monkeypatch, "sessions", "revoke", "erin") == 0
    assert admin(monkeypatch, "user", "remove", "erin") == 0
    assert admin(monkeypatch, "user", "remove", "erin") == 1
    assert "no admin user 'erin'" in capsys.readouterr().err

    async def audited(database: Database) -> list[tuple[str, str, str | None]]:
        entries, _ = await AdminAuth(database, AdminAuthSettings()).audit.page()
        return [(e.actor, e.action, e.target) for e in reversed(entries)]

    assert _with_database(store_url, audited) == [
        ("cli", "user.add", "user:erin"),
        ("cli", "user.passwd", "user:erin"),
        ("cli", "user.role", "user:erin"),
        ("cli", "sessions.revoke", "user:erin"),
        ("cli", "user.remove", "user:erin"),
    ]


def test_token_create_prints_a_usable_token_alone(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(monkeypatch, "token", "create", "ci", "--role", "operator") == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n" and token.startswith("va_")  # TOKEN=$(voiceagent admin token create …)

    def status_with_token() -> int:
        async def use(database: Database) -> int:
            app = build_app(AdminAuth(database, AdminAuthSettings()))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                response = await client.post(
                    "/api/admin/things", headers={"Authorization": f"Bearer {token}"}
                )
                return response.status_code

        return _with_database(store_url, use)

    assert status_with_token() == 200
    assert admin(monkeypatch, "token", "list") == 0
    listed = capsys.readouterr().out
    assert listed.startswith("ci ") and token not in listed
    assert admin(monkeypatch, "token", "revoke", "ci") == 0
    assert status_with_token() == 401


def test_token_revoke_then_the_token_is_refused(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    admin(monkeypatch, "token", "create", "ci", "--role", "viewer")
    token = capsys.readouterr().out.strip()
    assert _with_database(store_url, lambda db: accounts.find_token(db, token)) is not None
    assert admin(monkeypatch, "token", "revoke", "ci") == 0
    assert _with_database(store_url, lambda db: accounts.find_token(db, token)) is None
    assert admin(monkeypatch, "token", "revoke", "ci") == 1
