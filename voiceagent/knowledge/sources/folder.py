"""A watched folder whose files are documents: what is added, changed, renamed or removed there
becomes a submission (submissions.py), with the file's path in the folder as its id.

Why each changed path is looked at as it is *now* rather than trusting the kind of change:
watchfiles hands over what happened within the debounce window as an unordered set (an editor's
save can be "deleted" and "added" at once), and a renamed directory is one event for the
directory and none for its files. So every changed path, file or directory, is reconciled with the
store exactly as the whole folder is at start: present files whose content differs from the
store's current version are submitted, this folder's documents with no file any more are deleted.

Why the watcher is set up before the start's reconciliation: a file saved between the scan and
the watch would otherwise go unseen until the next restart.

Symlinks: only a file reached without one is a document. One leading out of the folder is refused,
never read (the folder is what its owner chose to publish, not whatever a link points at); one
leading back in is skipped, since its target is a document under its own path already. The scan
does not enter linked directories; the watcher does report files through one that was there when
it was set up, and each is judged like any file: refused, as it leads out (or skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict
from watchfiles import Change, awatch

from voiceagent.knowledge.parsing import DocumentRefused
from voiceagent.knowledge.settings import FolderSourceSettings
from voiceagent.knowledge.submissions import DocumentSubmitter, SourceDocuments, version_of

log = logging.getLogger(__name__)

# Ids from the API and the tables (``<name>:<key>``) live in the same store: the prefix keeps a
# file ``faq/hours.md`` from replacing an upload that happens to be called the same.
DOC_PREFIX = "folder:"
ORIGIN_PREFIX = "folder:"
SETTING = "knowledge.folder.path"
MAX_DOC_ID = 256  # the store's column
_TEMP_SUFFIXES = ("~", ".swp")  # editor backups and swap files (``.#x`` locks are dotfiles)
# The watcher says it is set up by yielding once this long passes without a change; then it is
# idle-woken as often, which costs a thread hop and nothing else.
_WATCH_TIMEOUT_MS = 250
_RETRY_S = 5.0  # a watcher that failed (folder gone, store down) is set up again after this

Outcome = Literal["submitted", "unchanged", "refused", "gone", "skipped", "error"]


class FolderSync(BaseModel):
    """What one reconciliation did, by doc id."""

    model_config = ConfigDict(frozen=True)

    submitted: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # recorded as failed (too large, unreadable, outside the folder)
    unchanged: int = 0


@dataclass(frozen=True)
class _Outside:
    target: str


@dataclass
class _Scan:
    files: dict[str, Path] = field(default_factory=dict)  # path in the folder → candidate document
    unlisted: set[str] = field(default_factory=set)  # could not be listed: its documents are kept


def _hidden(rel: str) -> bool:
    parts = rel.split("/")
    return any(part.startswith(".") for part in parts) or parts[-1].endswith(_TEMP_SUFFIXES)


def _under(rel: str, prefixes: set[str]) -> bool:
    return any(not p or rel == p or rel.startswith(p + "/") for p in prefixes)


class FolderSource:
    def __init__(
        self, settings: FolderSourceSettings, submitter: DocumentSubmitter, sources: SourceDocuments
    ) -> None:
        if not settings.path:
            raise ValueError(f"{SETTING} is not set: there is no folder to watch")
        self.settings = settings
        self.submitter = submitter
        self.sources = sources
        # As configured (not resolved): the folder's identity is the path its owner chose, which
        # stays the same when a link in it is pointed elsewhere.
        self.root = Path(os.path.abspath(os.path.expanduser(settings.path)))
        self.origin = f"{ORIGIN_PREFIX}{self.root}"
        if len(self.origin) > 2000:
            raise ValueError(f"{SETTING}: the path is too long to be a document's origin")
        self._patterns = tuple(p.lower() for p in settings.patterns)
        self._lock = asyncio.Lock()  # the start's reconciliation, a caller's sync() and the watcher
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile the folder with the store, then keep watching it (until ``stop()``)."""
        if self._task is not None:
            raise RuntimeError("the folder source is already started")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{SETTING}: {self.root} is not a directory (or does not exist)")
        self._stop = asyncio.Event()
        ready: asyncio.Future[FolderSync] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._watch(ready), name="knowledge-folder")
        try:
            await ready
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """The batch being handled is finished first: nothing is left half-submitted."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        await asyncio.gather(task, return_exceptions=True)

    async def sync(self) -> FolderSync:
        """The whole folder against the store (what ``start()`` does first)."""
        result = await self._reconcile({""})
        log.info(
            "knowledge folder %s: %d submitted, %d deleted, %d refused, %d unchanged",
            self.root,
            len(result.submitted),
            len(result.deleted),
            len(result.refused),
            result.unchanged,
        )
        return result

    # -- watching --------------------------------------------------------------------------------

    async def _watch(self, ready: asyncio.Future[FolderSync]) -> None:
        while not self._stop.is_set():
            synced = False
            try:
                changes_seen = awatch(
                    self.root,
                    watch_filter=self._watched,
                    debounce=int(self.settings.debounce_s * 1000),
                    stop_event=self._stop,
                    rust_timeout=_WATCH_TIMEOUT_MS,
                    yield_on_timeout=True,
                    recursive=True,
                )
                async with contextlib.aclosing(changes_seen) as batches:
                    async for changes in batches:
                        if not synced:  # the watcher is set up: now what it cannot have seen
                            result = await self.sync()
                            synced = True
                            if not ready.done():
                                ready.set_result(result)
                        elif changes:
                            await self._apply(changes)
            except Exception as exc:
                if not ready.done():  # the start's own failure is start()'s to raise
                    ready.set_exception(exc)
                    return
                log.error(
                    "knowledge folder %s: watching failed (%s: %s); again in %.0f s",
                    self.root,
                    type(exc).__name__,
                    exc,
                    _RETRY_S,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _RETRY_S)

    def _watched(self, change: Change, path: str) -> bool:
        rel = self._relative(path)
        return rel is not None and not (rel and _hidden(rel))

    async def _apply(self, changes: set[tuple[Change, str]]) -> None:
        rels = {rel for _, path in changes if (rel := self._relative(path)) is not None}
        result = await self._reconcile(rels)
        if result.submitted or result.deleted or result.refused:
            log.debug("knowledge folder %s: %s", self.root, result)

    def _relative(self, path: str) -> str | None:
        """POSIX-style path in the folder ("" for the folder itself); None for one outside it."""
        try:
            rel = PurePath(path).relative_to(self.root)
        except ValueError:
            return None
        return PurePosixPath(*rel.parts).as_posix() if rel.parts else ""

    # -- reconciling -----------------------------------------------------------------------------

    async def _reconcile(self, under: set[str]) -> FolderSync:
        """Make the store's documents at or below each of ``under`` ("" = everywhere) match the
        files there now."""
        async with self._lock:
            scan = await asyncio.to_thread(self._scan, under)
            live = await self.sources.ids(self.origin)  # a prefix: ownership is checked on delete
            submitted: list[str] = []
            refused: list[str] = []
            unchanged = 0
            present: set[str] = set()
            for rel, path in sorted(scan.files.items()):
                try:
                    outcome = await self._upsert(rel, path)
                except Exception:
                    log.exception("knowledge folder: %s could not be submitted", rel)
                    outcome = "error"
                if outcome not in ("gone", "skipped"):
                    present.add(rel)  # a refused file keeps its last good version (and state says why)
                if outcome == "submitted":
                    submitted.append(DOC_PREFIX + rel)
                elif outcome == "refused":
                    refused.append(DOC_PREFIX + rel)
                elif outcome == "unchanged":
                    unchanged += 1
            deleted: list[str] = []
            for doc_id in sorted(live):
                rel = doc_id.removeprefix(DOC_PREFIX)
                if not doc_id.startswith(DOC_PREFIX) or rel in present or not _under(rel, under):
                    continue
                if _under(rel, scan.unlisted):
                    continue  # cannot be told apart from gone: keep it rather than lose it
                try:
                    if await self._remove(doc_id):
                        deleted.append(doc_id)
                except Exception:
                    log.exception("knowledge folder: %s could not be deleted", rel)
            return FolderSync(
                submitted=tuple(submitted),
                deleted=tuple(deleted),
                refused=tuple(refused),
                unchanged=unchanged,
            )

    def _scan(self, under: set[str]) -> _Scan:
        """Candidate documents at or below each path (blocking: run in a thread)."""
        if not self.root.is_dir():  # an unmounted share is an outage, not every document deleted
            raise FileNotFoundError(f"{SETTING}: {self.root} is not a directory any more")
        scan = _Scan()
        for rel in under:
            path = self.root / rel if rel else self.root
            try:
                mode = path.lstat().st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                log.warning("knowledge folder: cannot look at %s: %s", rel, exc)
                scan.unlisted.add(rel)
                continue
            if stat.S_ISDIR(mode):
                self._walk(path, scan)
            elif self._wanted(rel):
                scan.files[rel] = path
        return scan

    def _walk(self, top: Path, scan: _Scan) -> None:
        def unlisted(exc: OSError) -> None:
            rel = self._relative(str(exc.filename))
            if rel is not None:
                log.warning("knowledge folder: cannot list %s: %s", rel or ".", exc.strerror or exc)
                scan.unlisted.add(rel)

        for directory, dirnames, filenames in os.walk(top, onerror=unlisted):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            for name in dirnames:  # not entered (followlinks=False): see the module's note
                if os.path.islink(os.path.join(directory, name)):
                    log.info("knowledge folder: %s is a link to a directory: not scanned", name)
            for name in filenames:
                rel = self._relative(os.path.join(directory, name))
                if rel and self._wanted(rel):
                    scan.files[rel] = Path(directory, name)

    def _wanted(self, rel: str) -> bool:
        """Not hidden nor an editor's temp file, and matching a pattern (case aside: ``FAQ.MD``
        is Markdown too). A pattern with a ``/`` matches the end of the path."""
        if _hidden(rel):
            return False
        lowered = PurePosixPath(rel.lower())
        return any(lowered.match(pattern) for pattern in self._patterns)

    async def _upsert(self, rel: str, path: Path) -> Outcome:
        doc_id = DOC_PREFIX + rel
        if len(doc_id) > MAX_DOC_ID:
            log.warning("knowledge folder: %s refused: its path is over %d characters", rel, MAX_DOC_ID)
            return "refused"
        limit = self.submitter.max_bytes
        try:
            read = await asyncio.to_thread(self._read, rel, path, limit)
        except (FileNotFoundError, NotADirectoryError):
            log.info("knowledge folder: %s vanished before it was read: treated as deleted", rel)
            return "gone"
        except OSError as exc:
            detail = f"{type(exc).__name__}: {exc.strerror or exc}"
            await self.submitter.states.failed(doc_id, "-", "unreadable", detail)
            log.warning("knowledge folder: %s refused (unreadable: %s)", rel, detail)
            return "refused"
        if read is None:
            return "skipped"
        if isinstance(read, _Outside):
            detail = f"a link to {read.target}, outside {self.root}"
            await self.submitter.states.failed(doc_id, "-", "outside_folder", detail)
            log.warning("knowledge folder: %s refused (outside_folder: %s), not read", rel, detail)
            return "refused"
        content, size = read
        if len(content) > limit:
            # Judged here only because the file is read no further than the limit (a stray
            # video must not be loaded whole to be refused): the submitter's rule and reason.
            refused = DocumentRefused("too_large", f"{size} bytes > {limit}")
            await self.submitter.states.failed(doc_id, "-", refused.reason, refused.detail)
            log.warning("knowledge folder: %s refused (%s)", rel, refused)
            return "refused"
        version = version_of(content)
        if await self._current(doc_id, version):
            return "unchanged"
        try:
            await self.submitter.submit(doc_id, content, filename=rel, origin=self.origin)
        except DocumentRefused as exc:  # the submitter's own judgement (it recorded the state)
            log.warning("knowledge folder: %s refused (%s)", rel, exc)
            return "refused"
        return "submitted"

    def _read(self, rel: str, path: Path, limit: int) -> tuple[bytes, int] | _Outside | None:
        """Up to ``limit + 1`` bytes of the file and its size; ``_Outside`` for a link leading out
        (not opened); None for a link back in or something that is not a regular file."""
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real != os.path.join(root, *rel.split("/")):
            if os.path.commonpath([real, root]) != root:
                return _Outside(target=real)
            log.debug("knowledge folder: %s skipped: a link to %s, a document already", rel, real)
            return None
        # O_NOFOLLOW: a file swapped for a link since it was looked at is not followed either;
        # O_NONBLOCK: a FIFO named like a document does not hang the watcher.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            return file.read(limit + 1), info.st_size

    async def _current(self, doc_id: str, version: str) -> bool:
        """The store holds this content as this folder's document, and nothing says it failed to
        get out: a restart with nothing changed publishes nothing. A failure recorded here (a file
        that was refused, a publish that failed) is submitted again, which heals it."""
        record = await self.sources.get(doc_id)
        if record is None or record.deleted or record.origin != self.origin or record.version != version:
            return False
        state = await self.submitter.states.get(doc_id)
        return not (
            state is not None
            and state.state == "failed"
            and (state.version != version or state.reason == "publish_failed")
        )

    async def _remove(self, doc_id: str) -> bool:
        """Delete a document of this folder (exactly: another folder's origin may share the prefix)."""
        record = await self.sources.get(doc_id)
        if record is None or record.deleted or record.origin != self.origin:
            return False
        await self.submitter.delete(doc_id)
        return True
