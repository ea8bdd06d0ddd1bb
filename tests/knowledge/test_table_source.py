"""Change capture on a source table (SQLite and the real PostgreSQL) into submissions: a real
submitter on a migrated store, and a recording ``publish``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.conftest import open_migrated
from voiceagent.events.envelope import KnowledgeChangedEvent
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.settings import TableSourceSettings
from voiceagent.knowledge.sources import tables
from voiceagent.knowledge.sources.tables import TableSource, render
from voiceagent.knowledge.submissions import DocumentSubmitter, SourceDocuments
from voiceagent.store.database import Database
from voiceagent.store.models import ChangeCursor

CREATE = (
    "CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT, body TEXT, extra TEXT, "
    "views INTEGER NOT NULL DEFAULT 0)"
)


@dataclass
class Published:
    events: list[KnowledgeChangedEvent] = field(default_factory=list)

    async def __call__(self, event: KnowledgeChangedEvent) -> None:
        self.events.append(event)

    def take(self) -> list[tuple[str, str]]:
        """What was published since the last take: (doc id, change), in order."""
        taken: list[tuple[str, str]] = [(e.payload.document_id, e.payload.change) for e in self.events]
        self.events.clear()
        return taken


@dataclass
class Env:
    dialect: str
    url: str  # the source database
    engine: AsyncEngine  # the application writing to it
    store: Database
    published: Published
    submitter: DocumentSubmitter
    opened: list[TableSource] = field(default_factory=list)

    def source(self, **overrides: object) -> TableSource:
        values: dict[str, object] = {
            "name": "kb",
            "url": self.url,
            "table": "articles",
            "title_column": "title",
            "text_columns": ("body", "extra"),
            "poll_s": 0.05,
        }
        values.update(overrides)
        source = TableSource(TableSourceSettings.model_validate(values), self.submitter, self.store)
        self.opened.append(source)
        return source

    async def sql(self, *statements: str) -> None:
        async with self.engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))

    async def content(self, doc_id: str) -> bytes | None:
        record = await self.submitter.sources.get(doc_id)
        return None if record is None or record.deleted else record.content

    async def ingested(self) -> None:
        """What the ingestor would do with what was submitted: every document indexed."""
        for doc_id in await self.submitter.sources.ids(""):
            record = await self.submitter.sources.get(doc_id)
            assert record is not None
            await self.submitter.states.indexed(doc_id, record.version, 1, doc_id)

    async def error(self, source: TableSource) -> str | None:
        status = await source.status()
        assert status is not None
        return status.error


async def open_env(dialect: str, url: str, store_url: str) -> Env:
    store = await open_migrated(store_url)
    published = Published()
    submitter = DocumentSubmitter(SourceDocuments(store), DocumentStates(store), published, max_bytes=100_000)
    return Env(dialect, url, create_async_engine(url), store, published, submitter)


async def close_env(env: Env) -> None:
    for source in env.opened:
        await source.stop()
    await env.engine.dispose()
    await env.store.close()


PG = [pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture(
    params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql", marks=PG)]
)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    """(dialect, source URL, store URL): on PostgreSQL the store shares the source's database."""
    if request.param == "sqlite":
        return (
            "sqlite",
            f"sqlite+aiosqlite:///{tmp_path / 'source.db'}",
            request.getfixturevalue("sqlite_url"),
        )
    url = request.getfixturevalue("postgres_url")
    return "postgresql", url, url


@pytest.fixture(params=[pytest.param("postgresql", marks=PG)])
def pg_urls(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    url = request.getfixturevalue("postgres_url")
    return "postgresql", url, url


@pytest.fixture
async def env(urls: tuple[str, str, str]) -> AsyncIterator[Env]:
    """The source table ``articles`` with two rows."""
    env = await open_env(*urls)
    await env.sql(
        CREATE,
        "INSERT INTO articles (id, title, body) VALUES (1, 'Opening hours', 'We open at nine.')",
        "INSERT INTO articles (id, title, body, extra) VALUES (2, 'Parking', 'Free after six.', 'Level -1.')",
    )
    yield env
    await close_env(env)


@pytest.fixture
async def pg_env(pg_urls: tuple[str, str, str]) -> AsyncIterator[Env]:
    env = await open_env(*pg_urls)
    await env.sql(CREATE, "INSERT INTO articles (id, title, body) VALUES (1, 'Opening hours', 'Nine.')")
    yield env
    await close_env(env)


def test_a_row_renders_as_markdown() -> None:
    assert render("Opening\nhours ", ["We open at nine.", None, "  ", b"Closed on Mondays."]) == (
        b"# Opening hours\n\nWe open at nine.\n\nClosed on Mondays.\n"
    )
    assert render(None, ["Just text"]) == b"Just text\n"


async def test_the_initial_load_then_inserts_updates_and_deletes(env: Env) -> None:
    source = env.source()
    assert await source.poll_once() == 2
    assert sorted(env.published.take()) == [("kb:1", "added"), ("kb:2", "added")]
    assert await env.content("kb:1") == b"# Opening hours\n\nWe open at nine.\n"
    assert await env.content("kb:2") == b"# Parking\n\nFree after six.\n\nLevel -1.\n"
    record = await env.submitter.sources.get("kb:1")
    assert record is not None and (record.origin, record.filename) == ("table:kb", "1.md")
    status = await source.status()
    assert status is not None and status.position and status.error is None

    await env.sql(
        "INSERT INTO articles (id, title, body) VALUES (3, 'Menu', 'Soup of the day.')",
        "UPDATE articles SET body = 'We open at ten.' WHERE id = 1",
        "DELETE FROM articles WHERE id = 2",
    )
    assert await source.poll_once() == 3
    assert sorted(env.published.take()) == [("kb:1", "updated"), ("kb:2", "deleted"), ("kb:3", "added")]
    assert await env.content("kb:1") == b"# Opening hours\n\nWe open at ten.\n"
    assert await env.content("kb:2") is None
    assert await env.content("kb:3") == b"# Menu\n\nSoup of the day.\n"

    # Many changes of one row between polls are one submission of its last state.
    for n in range(5):
        await env.sql(f"UPDATE articles SET body = 'Version {n}.' WHERE id = 3")
    assert await source.poll_once() == 1
    assert env.published.take() == [("kb:3", "updated")]
    assert await env.content("kb:3") == b"# Menu\n\nVersion 4.\n"

    assert await source.poll_once() == 0
    assert env.published.take() == []


async def test_a_changed_key_moves_the_document(env: Env) -> None:
    source = env.source()
    await source.poll_once()
    env.published.take()
    await env.sql("UPDATE articles SET id = 10 WHERE id = 1")
    assert await source.poll_once() == 2
    assert sorted(env.published.take()) == [("kb:1", "deleted"), ("kb:10", "added")]
    assert await env.content("kb:10") == b"# Opening hours\n\nWe open at nine.\n"


async def test_an_update_the_document_does_not_show_is_at_most_an_unchanged_resubmit(env: Env) -> None:
    source = env.source()
    await source.poll_once()
    first = {e.payload.document_id: e.idempotency_key for e in env.published.events}
    env.published.take()

    # Not ingested yet (queued): submitted again, the same version under the same key.
    await env.sql("UPDATE articles SET views = views + 1 WHERE id = 1")
    await source.poll_once()
    again = env.published.events[:]
    assert all(e.idempotency_key == first[e.payload.document_id] for e in again)
    assert [e.payload.document_id for e in again] in ([], ["kb:1"])
    env.published.take()

    # Once the ingestor shows that version, nothing is submitted at all.
    record = await env.submitter.sources.get("kb:1")
    assert record is not None
    await env.submitter.states.indexed("kb:1", record.version, 1, "Opening hours")
    await env.sql("UPDATE articles SET views = views + 1 WHERE id = 1")
    assert await source.poll_once() == 0
    assert env.published.take() == []
    state = await env.submitter.states.get("kb:1")
    assert state is not None and state.state == "indexed"


async def test_a_restart_neither_misses_nor_replays_changes(env: Env) -> None:
    first = env.source()
    await first.poll_once()
    await env.sql("UPDATE articles SET body = 'Free after five.' WHERE id = 2")
    assert await first.poll_once() == 1
    await first.stop()
    env.published.take()

    # While no source runs: the triggers keep the changes.
    await env.sql(
        "INSERT INTO articles (id, title, body) VALUES (3, 'Menu', 'Soup.')",
        "UPDATE articles SET title = 'Hours' WHERE id = 1",
        "DELETE FROM articles WHERE id = 2",
        "INSERT INTO articles (id, title, body) VALUES (4, 'Gone', 'Soon.')",
        "DELETE FROM articles WHERE id = 4",
    )
    second = env.source()
    assert await second.poll_once() == 3
    assert sorted(env.published.take()) == [("kb:1", "updated"), ("kb:2", "deleted"), ("kb:3", "added")]
    assert await env.content("kb:1") == b"# Hours\n\nWe open at nine.\n"
    await second.stop()

    third = env.source()  # and nothing handled is handled again
    assert await third.poll_once() == 0
    assert env.published.take() == []


async def test_changes_are_read_in_pages(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "PAGE", 2)
    await env.sql(
        *(f"INSERT INTO articles (id, title, body) VALUES ({n}, 'Row {n}', 'Text.')" for n in range(3, 8))
    )
    source = env.source()
    assert await source.poll_once() == 7
    assert sorted(doc for doc, _ in env.published.take()) == [f"kb:{n}" for n in range(1, 8)]
    await env.sql(
        *(f"UPDATE articles SET body = 'New {n}.' WHERE id = {n}" for n in range(1, 6)),
        "DELETE FROM articles WHERE id = 7",
    )
    assert await source.poll_once() == 6
    assert sorted(env.published.take()) == [
        *((f"kb:{n}", "updated") for n in range(1, 6)),
        ("kb:7", "deleted"),
    ]
    assert await source.poll_once() == 0


async def test_a_cursor_ahead_of_the_source_reloads_the_table(env: Env) -> None:
    """The source database was restored from an older copy: its change rows are numbered below
    the cursor, and following them from there would skip them."""
    first = env.source()
    await first.poll_once()
    await env.ingested()
    await first.stop()
    env.published.take()
    await env.sql("INSERT INTO articles (id, title, body) VALUES (3, 'Menu', 'Soup.')")
    async with env.store.sessions.begin() as session:
        cursor = await session.get(ChangeCursor, "table:kb")
        assert cursor is not None
        cursor.position = str(10**15)

    second = env.source()
    assert await second.poll_once() == 1
    assert env.published.take() == [("kb:3", "added")]
    status = await second.status()
    assert status is not None and int(status.position) < 10**15


async def test_a_transaction_open_across_a_poll_is_not_missed(pg_env: Env) -> None:
    """It took the lower seq and commits after a higher one was read: a max-seq cursor would
    skip it; the snapshot-xmin cursor waits for it."""
    source = pg_env.source()
    await source.poll_once()
    pg_env.published.take()

    async with pg_env.engine.connect() as slow:
        await slow.execute(text("INSERT INTO articles (id, title, body) VALUES (10, 'Slow', 'First in.')"))
        await pg_env.sql("INSERT INTO articles (id, title, body) VALUES (11, 'Fast', 'Second in.')")
        await source.poll_once()  # waits for the open transaction: neither is handled yet
        assert pg_env.published.take() == []
        await slow.commit()

    assert await source.poll_once() == 2
    assert sorted(pg_env.published.take()) == [("kb:10", "added"), ("kb:11", "added")]
    assert await pg_env.content("kb:10") == b"# Slow\n\nFirst in.\n"
    assert await source.poll_once() == 0
    assert pg_env.published.take() == []


async def test_a_truncated_table_deletes_its_documents(pg_env: Env) -> None:
    source = pg_env.source()
    await source.poll_once()
    pg_env.published.take()
    await pg_env.sql("TRUNCATE articles", "INSERT INTO articles (id, title, body) VALUES (5, 'New', 'Row.')")
    assert await source.poll_once() == 2
    assert sorted(pg_env.published.take()) == [("kb:1", "deleted"), ("kb:5", "added")]


async def test_a_dropped_table_is_reported_and_loaded_again_when_it_is_back(env: Env) -> None:
    source = env.source()
    await source.poll_once()
    env.published.take()

    await env.sql("DROP TABLE articles")
    assert await source.poll_once() == 0  # no exception
    assert await env.error(source) == "table 'articles' does not exist"
    assert await source.poll_once() == 0
    assert env.published.take() == []

    # Back, other rows, written before the triggers are there again: a full load finds them.
    await env.sql(
        CREATE,
        "INSERT INTO articles (id, title, body) VALUES (2, 'Parking', 'Now paid.')",
        "INSERT INTO articles (id, title, body) VALUES (7, 'Terrace', 'Open in summer.')",
    )
    assert await source.poll_once() == 3
    assert sorted(env.published.take()) == [("kb:1", "deleted"), ("kb:2", "updated"), ("kb:7", "added")]
    assert await env.error(source) is None
    await env.sql("UPDATE articles SET body = 'Closed.' WHERE id = 7")
    assert await source.poll_once() == 1
    assert env.published.take() == [("kb:7", "updated")]


async def test_a_missing_column_is_reported_and_changes_meanwhile_are_kept(env: Env) -> None:
    source = env.source()
    await source.poll_once()
    env.published.take()

    await env.sql("ALTER TABLE articles RENAME COLUMN extra TO notes")
    assert await source.poll_once() == 0
    assert await env.error(source) == "table 'articles' has no column 'extra'"
    await env.sql("UPDATE articles SET body = 'We open at ten.' WHERE id = 1")
    assert await source.poll_once() == 0
    assert env.published.take() == []

    await env.sql("ALTER TABLE articles RENAME COLUMN notes TO extra")
    assert await source.poll_once() == 1
    assert env.published.take() == [("kb:1", "updated")]
    assert await env.content("kb:1") == b"# Opening hours\n\nWe open at ten.\n"
    assert await env.error(source) is None


async def test_a_renamed_key_column_does_not_break_the_applications_writes(env: Env) -> None:
    source = env.source()
    await source.poll_once()
    await env.ingested()
    env.published.take()

    await env.sql("ALTER TABLE articles RENAME COLUMN id TO ident")
    await env.sql("INSERT INTO articles (ident, title, body) VALUES (3, 'Menu', 'Soup.')")  # still works
    assert await source.poll_once() == 0
    assert await env.error(source) == "table 'articles' has no column 'id'"

    await env.sql("ALTER TABLE articles RENAME COLUMN ident TO id")
    assert await source.poll_once() == 1
    assert env.published.take() == [("kb:3", "added")]
    assert await env.error(source) is None


async def test_a_table_that_does_not_exist_yet(env: Env) -> None:
    source = env.source(table="faq", title_column=None, text_columns=("answer",))
    assert await source.poll_once() == 0
    assert await env.error(source) == "table 'faq' does not exist"
    await env.sql("CREATE TABLE faq (id INTEGER PRIMARY KEY, answer TEXT)")
    await env.sql("INSERT INTO faq (id, answer) VALUES (1, 'Yes, dogs are welcome.')")
    assert await source.poll_once() == 1
    assert env.published.take() == [("kb:1", "added")]
    assert await env.content("kb:1") == b"Yes, dogs are welcome.\n"
    assert await env.error(source) is None


async def test_an_unreachable_source_is_reported(tmp_path: Path, sqlite_url: str) -> None:
    missing = tmp_path / "nowhere.db"
    env = await open_env("sqlite", f"sqlite+aiosqlite:///{missing}", sqlite_url)
    try:
        source = env.source()
        assert await source.poll_once() == 0
        assert await env.error(source) == f"source database file {missing} does not exist"
        assert not missing.exists()  # not created empty
        pg = env.source(name="pg", url="postgresql+asyncpg://nobody@127.0.0.1:9/none")
        assert await pg.poll_once() == 0
        error = await env.error(pg)
        assert error is not None and "9" in error
    finally:
        await close_env(env)


async def test_it_polls_in_the_background(env: Env) -> None:
    source = env.source()
    await source.start()
    async with asyncio.timeout(60):  # a deadline, not a timing claim
        while len(env.published.events) < 2:
            await asyncio.sleep(0.05)
    await source.stop()
    assert sorted(env.published.take()) == [("kb:1", "added"), ("kb:2", "added")]
