"""The FastAPI application; the runtime it serves is built and started by the caller."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from voiceagent import __version__
from voiceagent.knowledge.sources.api import knowledge_router
from voiceagent.observability.metrics import CONTENT_TYPE
from voiceagent.observability.readiness import ReadinessReport
from voiceagent.outreach.api import outreach_router
from voiceagent.runtime import Runtime
from voiceagent.server.calls_api import WEB_DIR, calls_router


def create_app(runtime: Runtime, *, manage_runtime: bool = False) -> FastAPI:
    """``manage_runtime`` starts/stops the runtime in the lifespan (tests, ASGI servers);
    ``voiceagent serve`` starts it itself before binding the port and leaves only the stop here."""
    started_at = time.monotonic()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="VoiceAgent",
        version=__version__,
        description="Real-time voice agent server with event-driven proactive outreach.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.middleware("http")(runtime.metrics.http_middleware)
    app.include_router(calls_router(runtime.calls, runtime.settings.transport.max_offer_bytes))
    app.include_router(outreach_router(runtime.outreach.publisher, runtime.outreach.ledger))
    knowledge = runtime.knowledge
    app.include_router(knowledge_router(knowledge.submitter, knowledge.states, knowledge.retriever))
    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process serves HTTP")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "node_id": runtime.settings.node_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - started_at, 3),
        }

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: every dependency answers",
        response_model=ReadinessReport,
        responses={503: {"model": ReadinessReport, "description": "a dependency is down"}},
    )
    async def readyz() -> JSONResponse:
        report = await runtime.readiness.check()
        return JSONResponse(report.model_dump(), status_code=200 if report.ready else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    return app
