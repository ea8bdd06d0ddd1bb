"""An app served by a real uvicorn on a free loopback port, in this process (tests and benches)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from voiceagent.config import ServerSettings


@contextlib.asynccontextmanager
async def served(app: FastAPI, server: ServerSettings) -> AsyncIterator[str]:
    """Yields the base URL once uvicorn accepts connections; on exit the app's lifespan ends."""
    import uvicorn

    from voiceagent.server.app import server_config

    runner = uvicorn.Server(server_config(app, server))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    serving = asyncio.create_task(runner.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not runner.started:
                if serving.done():  # failed to start: say why
                    serving.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        runner.should_exit = True
        await serving
        sock.close()
