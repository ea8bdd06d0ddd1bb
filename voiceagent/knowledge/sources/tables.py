"""Change data capture on a table of a source database (SQLite or PostgreSQL): every changed row
becomes a submission (submissions.py) of the document ``<name>:<key>``, rendered as Markdown
(``# title``, then the text columns); a deleted row deletes its document.

Capture: the first poll installs in the source database a change table ``va_changes_<table>`` and
AFTER INSERT/UPDATE/DELETE row triggers that append the row's key to it (with the op, and on
PostgreSQL the writer's transaction id). Triggers rather than an ``updated_at`` high-water mark:
deletes are seen without soft-delete columns, nothing is asked of the application's schema, and no
clock or forgotten ``updated_at`` can hide a change. The triggers log only the key, and the poller
reads each changed row as it is *now*: a row changed ten times between polls is read once, and the
order of the changes does not matter. On PostgreSQL the key is read as ``to_jsonb(NEW) ->> 'key'``,
not ``NEW.key``: a renamed or dropped column then breaks our reads (reported, below), never the
application's writes; the function is SECURITY DEFINER, so writers need no rights on the change
table. (SQLite renames the key column in the triggers too, and refuses to drop it while they
exist.) The source's user needs the right to create tables and triggers (and a function) there.

The cursor (``knowledge_change_cursors``, row ``table:<name>``, in our store):
- SQLite serialises writers, so change rows are numbered in commit order: the change table's
  AUTOINCREMENT high-water mark (``sqlite_sequence``), read before the changes, is a safe cursor.
- PostgreSQL does not: a transaction that took a lower seq can commit after a higher one was read,
  and a max-seq cursor would skip it. A poll reads the xmin of a fresh snapshot (every transaction
  below it has ended, so all their rows are visible), handles the change rows whose txid is in
  [previous xmin, xmin), and stores xmin. The price: a transaction left open anywhere on that
  server delays capture until it ends; it never loses a change.
The cursor is stored before handled rows are pruned from the change table (the other order could
lose rows on a crash). A crash between publishing and storing the cursor handles those changes
again, harmlessly: the same content is the same version (and idempotency key); a document the
ingestor already shows at that version is skipped (``_settled``), one it has not yet is published
again and at worst ingested twice.

Full loads ("resync": every row submitted, documents of vanished rows deleted) happen only when
capture may have missed something: the first start (no cursor: the initial load), the capture
found missing or altered in the source (the table dropped and created again, a trigger disabled or
replaced, the settings' key changed), the source behind the cursor (a database restored from
elsewhere), and on PostgreSQL a TRUNCATE (it fires no row triggers) or rows written while the key
column was renamed away (SQLite renames it in the triggers too). The load reads the position
first and the rows after, in pages by key, so a change made meanwhile is in the load or after the
position: never lost, at worst handled twice. Before it starts the stored cursor is cleared, so a
load cut short by a crash is done again. Rows already indexed as they are cost two store reads.

Unchanged content is not submitted again once the ingestor shows it, indexed or failed (the
submitter itself skips only what is indexed): a counter column updated every second must not
re-embed its row, or re-publish a row that can never be ingested, every second.

Failures (the table dropped, a column renamed, the source unreachable, the store or the bus down)
are logged, stored as the cursor's ``error`` and the poll returns; the next poll checks the capture
again and goes on from the stored cursor. Changes meanwhile wait in the change table (a dropped
table's are recovered by a resync once it is back).

One source per table: two sources on one table would share its change table and prune each
other's changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Executable, bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from voiceagent.events.envelope import utcnow
from voiceagent.knowledge.parsing import DocumentRefused
from voiceagent.knowledge.settings import TableSourceSettings
from voiceagent.knowledge.submissions import DocumentSubmitter, version_of
from voiceagent.store.database import Database, redacted
from voiceagent.store.models import ChangeCursor
from voiceagent.store.records import UtcDatetime

log = logging.getLogger(__name__)

PAGE = 500  # change rows (or table rows, in a full load) read at once
_MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names, and then they would not be found again


class TableSourceError(RuntimeError):
    """The source cannot be captured as configured; the message names what is missing."""


class TableSourceStatus(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    source: str
    position: str  # "" until the first full load has finished
    error: str | None
    updated_at: UtcDatetime


_Row = tuple[Any, ...]


async def _rows(conn: AsyncConnection, query: Executable, params: dict[str, Any] | None = None) -> list[_Row]:
    return [tuple(row) for row in await conn.execute(query, params or {})]


class _Change(NamedTuple):
    mark: tuple[int, int]  # where the page ends: (txid, seq) on PostgreSQL, (0, seq) on SQLite
    key: Any
    op: str  # I, U, D; T (PostgreSQL): a full load is needed (truncated, or written without its key)


def _quote(name: str) -> str:
    # The settings accept plain identifiers only; a schema's name comes from the catalog.
    return '"' + name.replace('"', '""') + '"'


def _derived(prefix: str, table: str, suffix: str = "") -> str:
    name = f"{prefix}{table}{suffix}"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(f"{table}{suffix}".encode()).hexdigest()[:8]
    return f"{name[: _MAX_IDENTIFIER - 9]}_{digest}"


def render(title: object, texts: Sequence[object]) -> bytes:
    """The row as Markdown: ``# title`` (on one line), then each non-empty text column."""
    parts = []
    if title is not None and (heading := " ".join(_text(title).split())):
        parts.append(f"# {heading}")
    parts += [body for value in texts if value is not None and (body := _text(value).strip())]
    return ("\n\n".join(parts) + "\n").encode()


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


class _Capture(ABC):
    """What differs between the two databases: the triggers, the cursor, the key lookups."""

    def __init__(self, settings: TableSourceSettings) -> None:
        self.settings = settings
        self.table = settings.table
        self.columns = list(
            dict.fromkeys([settings.key, *filter(None, [settings.title_column]), *settings.text_columns])
        )
        self.source = _quote(settings.table)  # qualified with its schema on PostgreSQL
        self.changes = _quote(_derived("va_changes_", settings.table))

    def _select(self, doc_key: str) -> str:
        """Key (native), key (as in doc ids), title, then the text columns."""
        title = f"t.{_quote(self.settings.title_column)}" if self.settings.title_column else "NULL"
        texts = ", ".join(f"t.{_quote(c)}" for c in self.settings.text_columns)
        key = f"t.{_quote(self.settings.key)}"
        return f"SELECT {key}, {doc_key}, {title}, {texts} FROM {self.source} AS t"

    @abstractmethod
    async def check(self, conn: AsyncConnection) -> None:
        """Raise ``TableSourceError`` naming what is missing: the table, or columns of it."""

    @abstractmethod
    async def present(self, conn: AsyncConnection) -> bool:
        """The change table and the triggers are there, enabled, as ``install`` makes them."""

    @abstractmethod
    async def create(self, conn: AsyncConnection) -> None:
        """Create (or replace) the change table and the triggers."""

    async def install(self, conn: AsyncConnection) -> bool:
        """Check the table, create what is missing or different; True: all of it was there
        already, so no change can have gone unseen."""
        await self.check(conn)
        if await self.present(conn):
            return True
        await self.create(conn)
        return False

    @abstractmethod
    async def high_water(self, conn: AsyncConnection) -> int:
        """Where the change rows that can be handled now end."""

    @abstractmethod
    async def read_changes(
        self, conn: AsyncConnection, cursor: int, high: int, after: tuple[int, int] | None
    ) -> list[_Change]:
        """The next page of change rows between ``cursor`` and ``high``, after ``after``."""

    @abstractmethod
    async def prune(self, conn: AsyncConnection, high: int) -> None:
        """Delete the change rows up to ``high`` (all handled)."""

    @abstractmethod
    async def lookup(self, conn: AsyncConnection, keys: list[Any]) -> list[_Row]:
        """The current rows of ``keys`` (those that still exist)."""

    @abstractmethod
    async def scan(self, conn: AsyncConnection, after: Any | None) -> list[_Row]:
        """The next page of the whole table, in key order, after the key ``after``."""


class _SqliteCapture(_Capture):
    def __init__(self, settings: TableSourceSettings) -> None:
        super().__init__(settings)
        self.change_table = _derived("va_changes_", self.table)
        k, ch, src = _quote(settings.key), self.changes, self.source
        # As sqlite_master keeps them (it drops "IF NOT EXISTS"), to see whether they changed.
        self.triggers = {
            name: f"CREATE TRIGGER {_quote(name)} {body}"
            for name, body in {
                _derived("va_capture_", self.table, "_ins"): (
                    f"AFTER INSERT ON {src} WHEN NEW.{k} IS NOT NULL BEGIN "
                    f"INSERT INTO {ch} (row_key, op) VALUES (NEW.{k}, 'I'); END"
                ),
                _derived("va_capture_", self.table, "_upd"): (
                    f"AFTER UPDATE ON {src} BEGIN "
                    f"INSERT INTO {ch} (row_key, op) SELECT OLD.{k}, 'U' "
                    f"WHERE OLD.{k} IS NOT NULL AND OLD.{k} IS NOT NEW.{k}; "
                    f"INSERT INTO {ch} (row_key, op) SELECT NEW.{k}, 'U' WHERE NEW.{k} IS NOT NULL; END"
                ),
                _derived("va_capture_", self.table, "_del"): (
                    f"AFTER DELETE ON {src} WHEN OLD.{k} IS NOT NULL BEGIN "
                    f"INSERT INTO {ch} (row_key, op) VALUES (OLD.{k}, 'D'); END"
                ),
            }.items()
        }

    async def check(self, conn: AsyncConnection) -> None:
        info = await _rows(conn, text(f"PRAGMA table_info({self.source})"))
        if not info:
            raise TableSourceError(f"table {self.table!r} does not exist")
        present = {str(row[1]).lower() for row in info}  # SQLite names are case-insensitive
        _require_columns(self.table, self.columns, lambda c: c.lower() in present)

    async def _existing(self, conn: AsyncConnection) -> dict[tuple[str, str], str]:
        query = text("SELECT type, name, sql FROM sqlite_master WHERE name IN :names")
        names = [self.change_table, *self.triggers]
        found = await _rows(conn, query.bindparams(bindparam("names", expanding=True)), {"names": names})
        return {(row[0], row[1]): row[2] for row in found}

    async def present(self, conn: AsyncConnection) -> bool:
        existing = await self._existing(conn)
        return ("table", self.change_table) in existing and all(
            existing.get(("trigger", name)) == sql for name, sql in self.triggers.items()
        )

    async def create(self, conn: AsyncConnection) -> None:
        existing = await self._existing(conn)
        # No row type: the key keeps the storage class it has in the table, so it finds it again.
        await conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {self.changes} "
            "(seq INTEGER PRIMARY KEY AUTOINCREMENT, row_key, op TEXT NOT NULL)"
        )
        for name, sql in self.triggers.items():
            if existing.get(("trigger", name)) != sql:
                await conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {_quote(name)}")
                await conn.exec_driver_sql(sql)

    async def high_water(self, conn: AsyncConnection) -> int:
        seq = await conn.scalar(
            text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": self.change_table}
        )
        return int(seq or 0)

    async def read_changes(
        self, conn: AsyncConnection, cursor: int, high: int, after: tuple[int, int] | None
    ) -> list[_Change]:
        rows = await conn.execute(
            text(
                f"SELECT seq, row_key, op FROM {self.changes} "
                "WHERE seq > :after AND seq <= :high ORDER BY seq LIMIT :limit"
            ),
            {"after": cursor if after is None else after[1], "high": high, "limit": PAGE},
        )
        return [_Change((0, row[0]), row[1], row[2]) for row in rows]

    async def prune(self, conn: AsyncConnection, high: int) -> None:
        await conn.execute(text(f"DELETE FROM {self.changes} WHERE seq <= :high"), {"high": high})

    async def lookup(self, conn: AsyncConnection, keys: list[Any]) -> list[_Row]:
        query = text(
            f"{self._select('t.' + _quote(self.settings.key))} WHERE t.{_quote(self.settings.key)} IN :keys"
        )
        return await _rows(conn, query.bindparams(bindparam("keys", expanding=True)), {"keys": keys})

    async def scan(self, conn: AsyncConnection, after: Any | None) -> list[_Row]:
        return await _scan(conn, self._select("t." + _quote(self.settings.key)), self.settings.key, after)


class _PostgresCapture(_Capture):
    def __init__(self, settings: TableSourceSettings) -> None:
        super().__init__(settings)
        self.key_type = "text"  # the key column's type, found by check()
        self._qualify("public")  # until check() finds the table's schema

    def _qualify(self, schema: str) -> None:
        self.source = f"{_quote(schema)}.{_quote(self.table)}"
        self.changes = f"{_quote(schema)}.{_quote(_derived('va_changes_', self.table))}"
        self.txid_index = _quote(_derived("va_changes_", self.table, "_txid"))
        self.function = f"{_quote(schema)}.{_quote(_derived('va_capture_', self.table))}"
        self.row_trigger = _derived("va_capture_", self.table)
        self.truncate_trigger = _derived("va_capture_", self.table, "_truncate")

    def _function_body(self) -> str:
        key, ch = self.settings.key, self.changes
        return f"""
DECLARE
  xid bigint := pg_current_xact_id()::text::bigint;
  old_row jsonb;
  new_row jsonb;
  old_key text;
  new_key text;
BEGIN
  IF TG_OP <> 'TRUNCATE' THEN
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
  END IF;
  IF TG_OP = 'TRUNCATE' OR NOT coalesce(new_row, old_row) ? '{key}' THEN
    INSERT INTO {ch} (txid, row_key, op) VALUES (xid, NULL, 'T');
    RETURN NULL;
  END IF;
  old_key := old_row ->> '{key}';
  new_key := new_row ->> '{key}';
  IF old_key IS NOT NULL AND old_key IS DISTINCT FROM new_key THEN
    INSERT INTO {ch} (txid, row_key, op) VALUES (xid, old_key, substr(TG_OP, 1, 1));
  END IF;
  IF new_key IS NOT NULL THEN
    INSERT INTO {ch} (txid, row_key, op) VALUES (xid, new_key, substr(TG_OP, 1, 1));
  END IF;
  RETURN NULL;
END
"""

    async def check(self, conn: AsyncConnection) -> None:
        query = text(
            "SELECT n.nspname, c.relkind::text, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.oid = to_regclass(:table)"
        )
        rows = await _rows(conn, query, {"table": _quote(self.table)})
        if not rows:
            raise TableSourceError(f"table {self.table!r} does not exist")
        if rows[0][1] not in ("r", "p"):
            raise TableSourceError(f"{self.table!r} is not a table")
        types = {row[2]: row[3] for row in rows}
        _require_columns(self.table, self.columns, types.__contains__)
        self._qualify(rows[0][0])
        self.key_type = types[self.settings.key]

    async def install(self, conn: AsyncConnection) -> bool:
        # Nodes sharing the source take turns: two creating one trigger at once would fail.
        lock = {"name": f"voiceagent.table_source:{self.table}"}
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), lock)
        return await super().install(conn)

    async def present(self, conn: AsyncConnection) -> bool:
        query = text(
            "SELECT to_regclass(:changes) IS NOT NULL, "
            "(SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(:fn)), "
            "(SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(:table) "
            "AND tgfoid = to_regprocedure(:fn) AND tgenabled <> 'D' AND tgname IN (:row, :truncate))"
        )
        [(has_changes, body, triggers)] = await _rows(
            conn,
            query,
            {
                "changes": self.changes,
                "fn": f"{self.function}()",
                "table": self.source,
                "row": self.row_trigger,
                "truncate": self.truncate_trigger,
            },
        )
        return bool(has_changes) and body == self._function_body() and triggers == 2

    async def create(self, conn: AsyncConnection) -> None:
        for statement in (
            f"CREATE TABLE IF NOT EXISTS {self.changes} (seq bigint GENERATED ALWAYS AS IDENTITY "
            "PRIMARY KEY, txid bigint NOT NULL, row_key text, op char(1) NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {self.txid_index} ON {self.changes} (txid, seq)",
            f"CREATE OR REPLACE FUNCTION {self.function}() RETURNS trigger LANGUAGE plpgsql "
            f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $va${self._function_body()}$va$",
            f"DROP TRIGGER IF EXISTS {_quote(self.row_trigger)} ON {self.source}",
            f"CREATE TRIGGER {_quote(self.row_trigger)} AFTER INSERT OR UPDATE OR DELETE "
            f"ON {self.source} FOR EACH ROW EXECUTE FUNCTION {self.function}()",
            f"DROP TRIGGER IF EXISTS {_quote(self.truncate_trigger)} ON {self.source}",
            f"CREATE TRIGGER {_quote(self.truncate_trigger)} AFTER TRUNCATE "
            f"ON {self.source} FOR EACH STATEMENT EXECUTE FUNCTION {self.function}()",
        ):
            await conn.exec_driver_sql(statement)

    async def high_water(self, conn: AsyncConnection) -> int:
        xmin = await conn.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
        return int(xmin)

    async def read_changes(
        self, conn: AsyncConnection, cursor: int, high: int, after: tuple[int, int] | None
    ) -> list[_Change]:
        txid, seq = after or (-1, -1)
        rows = await conn.execute(
            text(
                f"SELECT txid, seq, row_key, op FROM {self.changes} "
                "WHERE txid >= :cursor AND txid < :high AND (txid, seq) > (:txid, :seq) "
                "ORDER BY txid, seq LIMIT :limit"
            ),
            {"cursor": cursor, "high": high, "txid": txid, "seq": seq, "limit": PAGE},
        )
        return [_Change((row[0], row[1]), row[2], row[3]) for row in rows]

    async def prune(self, conn: AsyncConnection, high: int) -> None:
        await conn.execute(text(f"DELETE FROM {self.changes} WHERE txid < :high"), {"high": high})

    def _doc_key(self) -> str:
        # The key's text exactly as the trigger logs it (to_jsonb ->>), whatever its type.
        return f"to_jsonb(t.{_quote(self.settings.key)}) #>> '{{}}'"

    async def lookup(self, conn: AsyncConnection, keys: list[Any]) -> list[_Row]:
        key = f"t.{_quote(self.settings.key)}"
        query = text(
            f"{self._select(self._doc_key())} "
            f"WHERE {key} = ANY(CAST(CAST(:keys AS text[]) AS {self.key_type}[]))"
        )
        return await _rows(conn, query, {"keys": [str(k) for k in keys]})

    async def scan(self, conn: AsyncConnection, after: Any | None) -> list[_Row]:
        return await _scan(conn, self._select(self._doc_key()), self.settings.key, after)


async def _scan(conn: AsyncConnection, select: str, key: str, after: Any | None) -> list[_Row]:
    column = f"t.{_quote(key)}"
    where = f"{column} IS NOT NULL" if after is None else f"{column} > :after"
    query = text(f"{select} WHERE {where} ORDER BY {column} LIMIT :limit")
    params: dict[str, Any] = {"limit": PAGE} if after is None else {"limit": PAGE, "after": after}
    return await _rows(conn, query, params)


def _require_columns(table: str, wanted: list[str], present: Callable[[str], bool]) -> None:
    missing = [column for column in wanted if not present(column)]
    if missing:
        names = ", ".join(repr(column) for column in missing)
        raise TableSourceError(f"table {table!r} has no column {names}")


class TableSource:
    """Polls one source table every ``poll_s`` (see the module's note); ``poll_once`` is one poll."""

    def __init__(
        self, settings: TableSourceSettings, submitter: DocumentSubmitter, cursors_db: Database
    ) -> None:
        self.settings = settings
        self.submitter = submitter
        self.cursors_db = cursors_db
        self.cursor_id = f"table:{settings.name}"
        self.origin = f"table:{settings.name}"
        self.error: str | None = None  # as stored: None when the last poll went through
        self._logged: str | None = None
        self._engine: AsyncEngine | None = None
        self._capture: _Capture | None = None
        self._cursor: int | None = None
        self._ready = False  # capture checked and installed, cursor loaded
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Poll in the background; the first poll installs the capture (and loads the table)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"table-source-{self.settings.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._engine is not None:
            await self._engine.dispose()

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.settings.poll_s)

    async def status(self) -> TableSourceStatus | None:
        async with self.cursors_db.sessions() as session:
            row = await session.get(ChangeCursor, self.cursor_id)
            return None if row is None else TableSourceStatus.model_validate(row)

    async def poll_once(self) -> int:
        """Handle what changed; the number of documents submitted or deleted. Never raises: a
        failure is logged and stored as the cursor's error, and the next poll tries again."""
        async with self._lock:
            try:
                handled = await self._poll()
                if self.error is not None:
                    await self._store(None, error=None)
                if self._logged is not None:
                    log.info("knowledge table source %s: reading again", self.settings.name)
                    self._logged = None
                return handled
            except Exception as exc:
                await self._failed(exc)
                return 0

    async def _poll(self) -> int:
        engine, capture = self._connect()
        try:
            if self._ready:
                async with engine.connect() as conn:
                    # Every poll, though no change came: a dropped table takes its triggers along.
                    await capture.check(conn)
                    if not await capture.present(conn):
                        log.warning("knowledge table source %s: its triggers are gone", self.settings.name)
                        self._ready = False
            if not self._ready and (loaded := await self._prepare(engine, capture)) is not None:
                return loaded
            async with engine.connect() as conn:
                high = await capture.high_water(conn)
            assert self._cursor is not None
            if high < self._cursor:
                return await self._resync(engine, capture, "the source is behind the cursor (restored?)")
            return await self._follow(engine, capture, self._cursor, high)
        except TableSourceError:
            raise
        except Exception as exc:
            # A query failed: say what is missing, if that is why (a renamed column...).
            try:
                async with engine.connect() as conn:
                    await capture.check(conn)
            except TableSourceError as missing:
                raise missing from exc
            except Exception:
                pass
            raise

    def _connect(self) -> tuple[AsyncEngine, _Capture]:
        if self._engine is not None and self._capture is not None:
            if isinstance(self._capture, _SqliteCapture):
                _require_file(self.settings.url)
            return self._engine, self._capture
        try:
            url = make_url(self.settings.url)
        except ArgumentError:
            raise TableSourceError(
                "the source's url is not a database URL"
            ) from None  # it may hold a password
        if url.drivername == "sqlite+aiosqlite":
            _require_file(self.settings.url)
            self._engine = create_async_engine(url, connect_args={"timeout": 10})
            self._capture = _SqliteCapture(self.settings)
        elif url.drivername == "postgresql+asyncpg":
            self._engine = create_async_engine(
                url,
                pool_size=2,
                max_overflow=0,
                pool_pre_ping=True,
                connect_args={"timeout": 10, "command_timeout": 60},
            )
            self._capture = _PostgresCapture(self.settings)
        else:
            raise TableSourceError(
                f"unsupported database URL {redacted(self.settings.url)}: "
                "use sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return self._engine, self._capture

    async def _prepare(self, engine: AsyncEngine, capture: _Capture) -> int | None:
        """Check and install the capture; load in full if changes may have gone unseen (then the
        documents changed, else None: follow the changes from the stored cursor)."""
        async with engine.begin() as conn:
            intact = await capture.install(conn)
        self._cursor = await self._load_cursor()
        handled = None
        if self._cursor is None:
            handled = await self._resync(engine, capture, "no cursor yet: the initial load")
        elif not intact:
            handled = await self._resync(engine, capture, "its change capture was missing or altered")
        self._ready = True
        return handled

    async def _follow(self, engine: AsyncEngine, capture: _Capture, cursor: int, high: int) -> int:
        handled = rows = 0
        after: tuple[int, int] | None = None
        while high != cursor:
            async with engine.connect() as conn:
                page = await capture.read_changes(conn, cursor, high, after)
            rows += len(page)
            if any(change.op == "T" for change in page):
                return await self._resync(engine, capture, "truncated, or written without its key column")
            handled += await self._apply(engine, capture, page)
            if len(page) < PAGE:
                break
            after = page[-1].mark
        if rows:
            await self._advance(engine, capture, high)
        else:
            self._cursor = high  # nothing to keep: the stored cursor is as good, and spares a write
        return handled

    async def _apply(self, engine: AsyncEngine, capture: _Capture, changes: list[_Change]) -> int:
        """The changed keys' rows as they are now: submitted, or their documents deleted."""
        keys = list(dict.fromkeys(change.key for change in changes if change.key is not None))
        if not keys:
            return 0
        async with engine.connect() as conn:
            current = {str(row[1]): row for row in await capture.lookup(conn, keys)}
        handled = 0
        for key in map(str, keys):
            row = current.get(key)
            if row is not None:
                handled += await self._submit_row(row)
            else:
                handled += await self._delete(self._doc_id(key))
        return handled

    async def _resync(self, engine: AsyncEngine, capture: _Capture, why: str) -> int:
        log.info("knowledge table source %s: loading the whole table (%s)", self.settings.name, why)
        await self._store("", error=self.error)  # a load cut short is done again
        async with engine.connect() as conn:
            position = await capture.high_water(conn)
        handled, seen = 0, set[str]()
        after: Any | None = None
        while True:
            async with engine.connect() as conn:
                rows = await capture.scan(conn, after)
            for row in rows:
                seen.add(self._doc_id(str(row[1])))
                handled += await self._submit_row(row)
            if len(rows) < PAGE:
                break
            after = rows[-1][0]
        prefix = self._doc_id("")
        live = {
            doc_id for doc_id in await self.submitter.sources.ids(self.origin) if doc_id.startswith(prefix)
        }
        for doc_id in sorted(live - seen):
            handled += await self._delete(doc_id)
        await self._advance(engine, capture, position)
        log.info("knowledge table source %s: loaded, %d document(s) changed", self.settings.name, handled)
        return handled

    async def _advance(self, engine: AsyncEngine, capture: _Capture, high: int) -> None:
        """Store the cursor, then prune: the other order could lose rows on a crash."""
        await self._store(str(high), error=None)
        self._cursor = high
        async with engine.begin() as conn:
            await capture.prune(conn, high)

    def _doc_id(self, key: str) -> str:
        return f"{self.settings.name}:{key}"

    async def _submit_row(self, row: _Row) -> int:
        key = str(row[1])
        doc_id = self._doc_id(key)
        content = render(row[2], row[3:])
        if len(doc_id) > 256:
            log.warning(
                "knowledge table source %s: key %.40s… too long for a document id", self.settings.name, key
            )
            return 0
        if await self._settled(doc_id, version_of(content)):
            return 0
        try:
            await self.submitter.submit(doc_id, content, filename=f"{key}.md", origin=self.origin)
        except DocumentRefused as exc:  # too large: the submitter records it as the document's state
            log.warning("knowledge table source %s: %s refused: %s", self.settings.name, doc_id, exc)
            return 0
        return 1

    async def _delete(self, doc_id: str) -> int:
        if await self._settled(doc_id, None):
            return 0
        return 0 if await self.submitter.delete(doc_id) is None else 1

    async def _settled(self, doc_id: str, version: str | None) -> bool:
        """The ingestor already shows this version (None: the deletion), so it is not submitted
        again. A version only queued may have lost its event: submitted again (harmless)."""
        record = await self.submitter.sources.get(doc_id)
        if record is None:
            return version is None  # never submitted: nothing to delete
        state = await self.submitter.states.get(doc_id)
        if state is None:
            return False
        if version is None:
            return record.deleted and state.state == "deleted"
        return (
            not record.deleted
            and record.version == version == state.version
            and (state.state == "indexed" or (state.state == "failed" and state.reason != "publish_failed"))
        )

    async def _load_cursor(self) -> int | None:
        async with self.cursors_db.sessions() as session:
            row = await session.get(ChangeCursor, self.cursor_id)
        if row is None:
            return None
        self.error = row.error
        return int(row.position) if row.position.isdigit() else None

    async def _store(self, position: str | None, *, error: str | None) -> None:
        """Upsert the cursor row: its position (None: kept as it is) and its error."""

        def new() -> ChangeCursor:
            return ChangeCursor(source=self.cursor_id, position="")

        moved = {} if position is None else {"position": position}
        await self.cursors_db.set_row(
            ChangeCursor, self.cursor_id, new, **moved, error=error, updated_at=utcnow()
        )
        self.error = error

    async def _failed(self, exc: Exception) -> None:
        self._ready = False  # the next poll checks (and if need be installs) the capture again
        message = _describe(exc)[:300]
        if message != self._logged:  # once, not every poll
            log.warning("knowledge table source %s: %s", self.settings.name, message)
            self._logged = message
        if message == self.error:  # stored already: no write every poll
            return
        try:
            await self._store(None, error=message)
        except Exception as store_exc:  # the store is down too: tried again at the next failure
            log.warning(
                "knowledge table source %s: could not store its error: %s",
                self.settings.name,
                _describe(store_exc),
            )


def _require_file(url: str) -> None:
    """SQLite would create a missing file, empty: say that it is missing instead."""
    path = make_url(url).database
    if path and path != ":memory:" and not Path(path).exists():
        raise TableSourceError(f"source database file {path} does not exist")


def _describe(exc: BaseException) -> str:
    """One line: a TableSourceError as is, a driver's error without SQLAlchemy's wrapping."""
    if isinstance(exc, TableSourceError):
        return str(exc)
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__
