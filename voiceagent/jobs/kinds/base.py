"""What a job kind is: its parameters (checked at submit, in the API process, without loading a
model), and how a worker runs one job (with its models, loaded once per worker process).

Adding a kind is one module: a subclass with ``name``, ``Params`` and ``run``, listed in
``voiceagent.jobs.registry.BUILTIN_KINDS`` or in ``jobs.extra_kinds``. Importing the module must
stay light (heavy libraries are imported in :meth:`JobKind.load`): the API imports every kind."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from voiceagent.jobs.schemas import ResultFile

if TYPE_CHECKING:
    from voiceagent.config import Settings
    from voiceagent.store.database import Database


class JobInputError(ValueError):
    """The job can never succeed as submitted (empty text, not audio...): it fails at once with
    ``reason`` (a code from ``voiceagent.jobs.schemas.REASONS``), never retried."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.progress` when an operator cancelled the running job."""


class JobLost(Exception):
    """Raised by :meth:`JobContext.progress` when this run's lease lapsed and another worker may
    hold the job: stop, and write nothing more."""


class KindParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Upload:
    """What the API knows of an uploaded file before a worker reads it."""

    name: str
    media_type: str


@dataclass
class JobContext:
    """One run of one job, as a kind sees it."""

    job_id: str
    params: KindParams
    workdir: Path  # a private temporary folder, removed after the run
    input_path: Path | None  # the upload, already copied here from the store (None: no upload)
    input_name: str | None
    report: Callable[[float, str | None], Awaitable[None]]  # (fraction 0..1, note): may raise
    outputs: list[tuple[ResultFile, Path]] = field(default_factory=list)
    attempt: int = 1  # this run's number (1 first; a retry or a run after a lost worker counts up)

    async def progress(self, fraction: float, note: str | None = None) -> None:
        """Tell the client how far along; raises JobCancelled / JobLost (stop at once). Cheap:
        the worker writes to the store at most every ``progress_every_s``."""
        await self.report(fraction, note)

    def add_file(self, name: str, media_type: str, path: Path) -> None:
        """A result file the worker stores once the run returns (the first is the main one)."""
        self.outputs.append((ResultFile(name=name, media_type=media_type, bytes=path.stat().st_size), path))


class JobKind(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[KindParams]]
    accepts_upload: ClassVar[bool] = False  # transcribe: a multipart file is the input
    requires_upload: ClassVar[bool] = False

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database

    @classmethod
    def parse(cls, params: dict[str, Any], settings: Settings) -> KindParams:
        """Check parameters at submit (API) and again at run (worker); JobInputError if unusable."""
        try:
            parsed = cls.Params.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            raise JobInputError("invalid_params", f"{where}: {first['msg']}") from None
        cls.check(parsed, settings)
        return parsed

    @classmethod  # noqa: B027 - optional
    def check(cls, params: Any, settings: Settings) -> None:
        """Content rules beyond the types (limits from the settings); raise JobInputError."""

    async def load(self) -> None:  # noqa: B027 - optional
        """Load models (in threads): once per worker process, before its first job."""

    @abstractmethod
    async def run(self, job: JobContext) -> dict[str, Any]:
        """Do the work: call ``job.progress`` now and then, ``job.add_file`` for each result file,
        and return a small JSON summary. Blocking work goes to a thread (:func:`in_thread`).
        JobInputError fails the job; any other exception is retried with backoff."""

    async def close(self) -> None:  # noqa: B027 - optional
        pass


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)
