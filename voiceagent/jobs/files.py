"""A run's files on this machine: its private folder, and reading a file back in chunks."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path


@contextlib.asynccontextmanager
async def private_folder(job_id: str) -> AsyncIterator[Path]:
    """A run's own temporary folder (the upload, the kind's outputs), removed after it."""
    path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"voiceagent-job-{job_id}-"))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


async def read_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    """A file in pieces of ``size`` bytes, each read in a thread."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


def input_file_name(name: str | None) -> str:
    """``input`` with the upload's extension when it looks like one (decoders sniff by it)."""
    suffix = Path(name or "").suffix.lower()
    return f"input{suffix}" if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else "input"
