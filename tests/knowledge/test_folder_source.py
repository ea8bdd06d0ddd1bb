"""A watched folder → submissions: the real watcher (watchfiles) on a temp folder, the real
submitter on a migrated SQLite store, and the published events recorded in a queue.

Nothing is timed: each test waits for the next event (with a deadline only a defect crosses). What
must *not* be published is checked once the source is stopped (``stop()`` finishes the batch in
hand): a file written before a marker is in the marker's batch or an earlier one, and a batch is
handled in path order, so markers are named to sort last.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from watchfiles import Change

from voiceagent.events.envelope import KnowledgeChangedEvent
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.settings import FolderSourceSettings
from voiceagent.knowledge.sources.folder import FolderSource
from voiceagent.knowledge.submissions import DocumentSubmitter, SourceDocuments
from voiceagent.store.database import Database

MAX_BYTES = 1000
DEADLINE_S = 10.0


@dataclass
class Kit:
    root: Path
    published: asyncio.Queue[KnowledgeChangedEvent]
    sources: SourceDocuments
    states: DocumentStates
    submitter: DocumentSubmitter

    def folder(self, **settings: Any) -> FolderSource:
        return FolderSource(
            FolderSourceSettings(path=str(self.root), debounce_s=0.05, **settings),
            self.submitter,
            self.sources,
        )

    @property
    def origin(self) -> str:
        return f"folder:{self.root}"

    async def next(self) -> tuple[str, str]:
        event = await asyncio.wait_for(self.published.get(), DEADLINE_S)
        return event.payload.document_id, event.payload.change

    async def changes(self, count: int) -> set[tuple[str, str]]:
        return {await self.next() for _ in range(count)}

    def drained(self) -> list[tuple[str, str]]:
        left = []
        while not self.published.empty():
            event = self.published.get_nowait()
            left.append((event.payload.document_id, event.payload.change))
        return left

    async def content(self, doc_id: str) -> bytes | None:
        record = await self.sources.get(doc_id)
        return None if record is None or record.deleted else record.content

    async def failure(self, doc_id: str) -> tuple[str, str | None]:
        state = await self.states.get(doc_id)
        assert state is not None, doc_id
        return state.state, state.reason


@pytest.fixture
async def kit(tmp_path: Path, sqlite_database: Database) -> Kit:
    root = tmp_path / "kb"
    root.mkdir()
    published: asyncio.Queue[KnowledgeChangedEvent] = asyncio.Queue()
    sources, states = SourceDocuments(sqlite_database), DocumentStates(sqlite_database)
    submitter = DocumentSubmitter(sources, states, published.put, max_bytes=MAX_BYTES)
    return Kit(root, published, sources, states, submitter)


@asynccontextmanager
async def watching(folder: FolderSource) -> AsyncIterator[FolderSource]:
    await folder.start()
    try:
        yield folder
    finally:
        await folder.stop()


def put(path: Path, text: str | bytes) -> None:
    """Written whole, as editors save: a hidden temp file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(temp, path)


async def test_start_reconciles_the_folder_with_the_store(kit: Kit, tmp_path: Path) -> None:
    put(kit.root / "kept.md", "# Kept\n\nAlready submitted as it is.\n")
    await kit.submitter.submit(
        "folder:kept.md", b"# Kept\n\nAlready submitted as it is.\n", filename="kept.md", origin=kit.origin
    )
    await kit.submitter.submit(
        "folder:gone.md", b"a file deleted while the node was down", filename="gone.md", origin=kit.origin
    )
    await kit.submitter.submit("upload-1", b"an upload through the API", filename="u.md", origin="api")
    # Another folder whose path starts like this one's: not this folder's to delete.
    await kit.submitter.submit("folder:other.md", b"elsewhere", filename="other.md", origin=f"{kit.origin}2")
    kit.drained()
    put(kit.root / "new.md", "# New\n\nWritten while the node was down.\n")
    put(kit.root / "faq" / "hours.txt", "The kitchen closes at ten.\n")
    (kit.root / "latest.md").symlink_to("new.md")  # a link back in: new.md is the document

    async with watching(kit.folder()):
        pass
    assert kit.drained() == [
        ("folder:faq/hours.txt", "added"),
        ("folder:new.md", "added"),
        ("folder:gone.md", "deleted"),
    ]
    assert await kit.content("folder:faq/hours.txt") == b"The kitchen closes at ten.\n"
    assert (await kit.sources.get("folder:faq/hours.txt")).origin == kit.origin  # type: ignore[union-attr]
    assert await kit.content("folder:latest.md") is None
    assert await kit.content("upload-1") == b"an upload through the API"
    assert await kit.content("folder:other.md") == b"elsewhere"

    async with watching(kit.folder()):  # a restart with nothing changed publishes nothing
        pass
    assert kit.drained() == []

    put(kit.root / "new.md", "# New\n\nChanged while the node was down.\n")
    (kit.root / "faq" / "hours.txt").unlink()
    async with watching(kit.folder()):
        pass
    assert kit.drained() == [("folder:new.md", "updated"), ("folder:faq/hours.txt", "deleted")]
    assert await kit.content("folder:new.md") == b"# New\n\nChanged while the node was down.\n"


async def test_live_adds_changes_renames_and_deletes_are_submitted(kit: Kit) -> None:
    async with watching(kit.folder()):
        put(kit.root / "hours.md", "Open at nine.")
        assert await kit.next() == ("folder:hours.md", "added")
        assert await kit.content("folder:hours.md") == b"Open at nine."

        put(kit.root / "hours.md", "Open at ten.")
        assert await kit.next() == ("folder:hours.md", "updated")
        assert await kit.content("folder:hours.md") == b"Open at ten."

        (kit.root / "hours.md").rename(kit.root / "opening.md")
        assert await kit.changes(2) == {("folder:hours.md", "deleted"), ("folder:opening.md", "added")}
        assert await kit.content("folder:opening.md") == b"Open at ten."

        put(kit.root / "guides" / "parking.md", "Parking is free after six.")
        assert await kit.next() == ("folder:guides/parking.md", "added")
        # A renamed directory is one event for the directory, none for its files.
        (kit.root / "guides").rename(kit.root / "manuals")
        assert await kit.changes(2) == {
            ("folder:guides/parking.md", "deleted"),
            ("folder:manuals/parking.md", "added"),
        }

        (kit.root / "opening.md").unlink()
        assert await kit.next() == ("folder:opening.md", "deleted")
        assert await kit.content("folder:opening.md") is None
    assert kit.drained() == []


async def test_other_files_and_editor_temp_files_are_ignored(kit: Kit) -> None:
    ignored = [
        "photo.pdf",
        ".hidden.md",
        ".#hours.md",
        "hours.md~",
        "hours.swp",
        ".git/notes.md",
        "a/.cache/b.md",
    ]
    for name in ignored:
        put(kit.root / name, "not a document")
    put(kit.root / "UPPER.MD", "Markdown whatever its case.")
    async with watching(kit.folder()):
        assert kit.drained() == [("folder:UPPER.MD", "added")]
        for name in ignored:
            put(kit.root / name, "still not a document")
        put(kit.root / "zz-marker.md", "seen after the others")
        assert await kit.next() == ("folder:zz-marker.md", "added")
    assert kit.drained() == []

    only_text = kit.folder(patterns=("*.txt",))  # patterns changed: the Markdown is not a document now
    async with watching(only_text):
        pass
    assert set(kit.drained()) == {("folder:UPPER.MD", "deleted"), ("folder:zz-marker.md", "deleted")}


async def test_a_link_leading_out_of_the_folder_is_refused_and_never_read(kit: Kit, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # A FIFO: reading it would hang the watcher, so the test would only pass if it is never read.
    os.mkfifo(outside / "secret.md")
    put(outside / "private.md", "not for the knowledge base")
    (kit.root / "secret.md").symlink_to(outside / "secret.md")
    (kit.root / "linked").symlink_to(outside, target_is_directory=True)  # not scanned, but watched
    async with watching(kit.folder()):
        assert kit.drained() == []
        assert await kit.failure("folder:secret.md") == ("failed", "outside_folder")

        (kit.root / "private.md").symlink_to(outside / "private.md")
        put(kit.root / "zz-after.md", "the watcher keeps going")
        assert await kit.next() == ("folder:zz-after.md", "added")
        assert await kit.failure("folder:private.md") == ("failed", "outside_folder")

        put(outside / "more.md", "seen through the linked directory")
        put(kit.root / "zz-after-2.md", "the watcher keeps going")
        assert await kit.next() == ("folder:zz-after-2.md", "added")
        assert await kit.failure("folder:linked/more.md") == ("failed", "outside_folder")
    assert kit.drained() == []
    assert await kit.content("folder:private.md") is None
    state = await kit.states.get("folder:private.md")
    assert state is not None and str(outside / "private.md") in (state.detail or "")


async def test_an_oversized_file_is_refused_and_the_watcher_keeps_going(kit: Kit) -> None:
    put(kit.root / "big.md", "x" * (MAX_BYTES + 1))
    async with watching(kit.folder()):
        assert kit.drained() == []
        assert await kit.failure("folder:big.md") == ("failed", "too_large")

        put(kit.root / "huge.md", "y" * (5 * MAX_BYTES))
        put(kit.root / "zz-after.md", "the watcher keeps going")
        assert await kit.next() == ("folder:zz-after.md", "added")
        state = await kit.states.get("folder:huge.md")
        assert state is not None and (state.state, state.reason) == ("failed", "too_large")
        assert state.detail == f"{5 * MAX_BYTES} bytes > {MAX_BYTES}"

        put(kit.root / "huge.md", "small enough now")  # fixed: submitted, the failure cleared
        assert await kit.next() == ("folder:huge.md", "added")
        assert await kit.failure("folder:huge.md") == ("queued", None)
    assert kit.drained() == []
    assert await kit.content("folder:big.md") is None


async def test_an_unreadable_file_is_refused_and_the_watcher_keeps_going(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Permissions do not stop root (which the tests may run as): the read itself is made to fail.
    read = FolderSource._read

    def denied(self: FolderSource, rel: str, path: Path, limit: int) -> Any:
        if rel == "locked.md":
            raise PermissionError(13, "Permission denied", str(path))
        return read(self, rel, path, limit)

    monkeypatch.setattr(FolderSource, "_read", denied)
    async with watching(kit.folder()):
        put(kit.root / "locked.md", "cannot be read")
        put(kit.root / "zz-after.md", "the watcher keeps going")
        assert await kit.next() == ("folder:zz-after.md", "added")
        state = await kit.states.get("folder:locked.md")
        assert state is not None and (state.state, state.reason) == ("failed", "unreadable")
        assert "Permission denied" in (state.detail or "")
    assert kit.drained() == []


async def test_a_file_gone_before_it_is_read_is_deleted(kit: Kit) -> None:
    folder = kit.folder()
    put(kit.root / "brief.md", "here for a moment")
    assert (await folder.sync()).submitted == ("folder:brief.md",)
    assert await kit.next() == ("folder:brief.md", "added")
    (kit.root / "brief.md").unlink()
    # The event said "modified"; by the time it is handled the file is gone.
    await folder._apply({(Change.modified, str(kit.root / "brief.md"))})
    assert await kit.next() == ("folder:brief.md", "deleted")
    await folder._apply({(Change.modified, str(kit.root / "brief.md"))})
    assert kit.drained() == []  # deleted once


async def test_a_missing_folder_is_a_clear_error(kit: Kit) -> None:
    folder = FolderSource(FolderSourceSettings(path=str(kit.root / "nowhere")), kit.submitter, kit.sources)
    with pytest.raises(FileNotFoundError, match=r"knowledge\.folder\.path"):
        await folder.start()
    await folder.stop()  # harmless after a failed start
