"""Async engine lifecycle: connect with a deadline, migrate under a lock, fail in one line."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from voiceagent.config import StoreSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit key: nodes sharing one PostgreSQL take turns migrating it.
_MIGRATION_LOCK_KEY = 0x766F696365  # "voice"


_WAL_SWITCH_WAIT_S = 30.0  # only a stuck lock holder outlasts this


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or used; the message is safe to print (no password)."""


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


class Database:
    """One engine per process; sessions come from :attr:`sessions`."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.url = make_url(settings.url)
        self.engine: AsyncEngine = self._create_engine()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._wal_checked = False

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    async def set_row(
        self, model: type[Any], key: object, new: Callable[[], Any], /, **values: object
    ) -> None:
        """Set ``values`` on ``model``'s row ``key`` (locked for the change), made by ``new()``
        first if there is none: one short transaction, the same on SQLite and PostgreSQL."""
        async with self.sessions.begin() as session:
            row = await session.get(model, key, with_for_update=True)
            if row is None:
                row = new()
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)

    def _create_engine(self) -> AsyncEngine:
        timeout = self.settings.connect_timeout_s
        if self.dialect == "sqlite":
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(
                self.url, echo=self.settings.echo_sql, connect_args={"timeout": timeout}
            )
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
            event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
            return engine
        return create_async_engine(
            self.url,
            echo=self.settings.echo_sql,
            pool_size=self.settings.pool_size,
            pool_pre_ping=True,
            connect_args={"timeout": timeout, "command_timeout": max(timeout, 30.0)},
        )

    async def ping(self) -> None:
        """Round-trip ``SELECT 1``; raise StoreUnavailable with the reason in one line."""
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s + 1):
                await self._ensure_wal()
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise StoreUnavailable(
                f"cannot reach database {redacted(self.settings.url)}: {_reason(exc)}"
            ) from exc

    async def _ensure_wal(self) -> None:
        """WAL lets the dashboard read while a call writes. It is a property of the file, set once;
        the switch does not wait on SQLite's busy handler, so another opener holding a lock (a
        node migrating beside this one) is waited out here rather than failing the start. The
        PRAGMA goes straight to the driver, whose error is sqlite3's, not SQLAlchemy's (missing
        that made the wait a no-op). Each retry opens a fresh connection: one opened before
        another node switched the file still reports the old mode."""
        if self.dialect != "sqlite" or self._wal_checked:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self.settings.connect_timeout_s, _WAL_SWITCH_WAIT_S)
        while True:
            conn = await self.engine.connect()
            try:
                # Straight to the driver: SQLAlchemy would wrap the PRAGMA in BEGIN IMMEDIATE,
                # and the journal mode cannot change inside a transaction.
                raw: Any = (await conn.get_raw_connection()).driver_connection
                async with raw.execute("PRAGMA journal_mode") as cursor:
                    row = await cursor.fetchone()
                if str(row[0]).lower() not in ("wal", "memory"):
                    await raw.execute("PRAGMA journal_mode=WAL")
                break
            except (OperationalError, sqlite3.OperationalError) as exc:  # pool's, or the driver's
                await conn.invalidate()
                if "locked" not in str(exc) or loop.time() >= deadline:
                    raise
            finally:
                await conn.close()
            await asyncio.sleep(0.05)
        self._wal_checked = True

    async def migrate(self, revision: str = "head") -> None:
        await self._run_alembic(lambda cfg: command.upgrade(cfg, revision))

    async def downgrade(self, revision: str) -> None:
        await self._run_alembic(lambda cfg: command.downgrade(cfg, revision))

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())

    @staticmethod
    def head_revision() -> str | None:
        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    async def _run_alembic(self, operation: Callable[[AlembicConfig], None]) -> None:
        def run(sync_conn: Connection) -> None:
            if self.dialect == "postgresql":
                sync_conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            operation(alembic_config(sync_conn))

        try:
            await self._ensure_wal()
            async with self.engine.begin() as conn:
                await conn.run_sync(run)
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"cannot reach database {redacted(self.settings.url)}: {_reason(exc)}"
            ) from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_on_connect(dbapi_conn: Any, _record: object) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself instead of the driver's lazy BEGIN.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite
    cursor.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    # Take the write lock at BEGIN: two deferred transactions that both read-then-write (turn
    # numbering) would otherwise both read the same state or fail with SQLITE_BUSY_SNAPSHOT.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _reason(exc: BaseException) -> str:
    """The innermost useful message, on one line."""
    seen = exc
    while seen.__cause__ is not None and not str(seen).strip():
        seen = seen.__cause__
    message = str(seen).strip() or type(seen).__name__
    if isinstance(seen, TimeoutError) and not str(seen).strip():
        message = "timed out"
    first = message.splitlines()[0]
    return f"{type(seen).__name__}: {first}" if type(seen).__name__ not in first else first
