"""Shared fixtures: settings on a temp SQLite file, and a fresh database on the real PostgreSQL.

`make test` starts PostgreSQL (tests/services/postgres.sh) and sets VA_TEST_POSTGRES_URL and
VA_REQUIRE_SERVICES=1, which turns a missing server into a failure instead of a skip.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from voiceagent.config import Settings, StoreSettings
from voiceagent.engines.settings import EngineSettings
from voiceagent.store import Database

POSTGRES_URL_ENV = "VA_TEST_POSTGRES_URL"


def require_service(name: str, env_var: str) -> str:
    value = os.environ.get(env_var)
    if value:
        return value
    message = f"{name} not running: start it with `make test` (sets {env_var})"
    if os.environ.get("VA_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own VOICEAGENT_* variables must not leak into what the tests check.
    for name in list(os.environ):
        if name.startswith("VOICEAGENT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'voiceagent.db'}"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A brand-new database on the real server, dropped afterwards."""
    import asyncpg

    admin_url = make_url(require_service("PostgreSQL", POSTGRES_URL_ENV))
    name = f"va_test_{uuid.uuid4().hex[:12]}"
    dsn = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=[pytest.mark.postgres, pytest.mark.integration]),
    ]
)
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every store test runs on the embedded SQLite and on the real PostgreSQL server."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    yield request.getfixturevalue(fixture)


async def open_migrated(url: str) -> Database:
    database = Database(StoreSettings(url=url))
    await database.migrate()
    return database


@pytest.fixture
async def database(store_url: str) -> AsyncIterator[Database]:
    """A migrated database, once on SQLite and once on PostgreSQL."""
    database = await open_migrated(store_url)
    yield database
    await database.close()


@pytest.fixture
async def sqlite_database(sqlite_url: str) -> AsyncIterator[Database]:
    database = await open_migrated(sqlite_url)
    yield database
    await database.close()


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    # No models here: tests that want real engines load them themselves.
    return Settings(
        node_id="test-node", store=StoreSettings(url=sqlite_url), engines=EngineSettings(preload=False)
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Libraries log from their exit hooks (Milvus Lite stopping its servers) to handlers whose
    stream was pytest's capture, closed by now: a traceback per line there reports nothing."""
    logging.raiseExceptions = False
