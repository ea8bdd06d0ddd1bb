"""The FastAPI application; the runtime it serves is built and started by the caller."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from voiceagent import __version__
from voiceagent.admin.api import AdminServices, admin_router
from voiceagent.auth.changes import AuditChanges
from voiceagent.jobs.api import jobs_router
from voiceagent.knowledge.sources.api import knowledge_router
from voiceagent.observability.metrics import CONTENT_TYPE
from voiceagent.observability.readiness import ReadinessReport
from voiceagent.outreach.api import outreach_router
from voiceagent.outreach.intent_store import IntentStore
from voiceagent.runtime import Runtime
from voiceagent.server.calls_api import WEB_DIR, calls_router

if TYPE_CHECKING:
    import uvicorn

    from voiceagent.config import ServerSettings


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
    app.middleware("http")(_security_headers)
    app.add_middleware(AuditChanges, audit=runtime.auth.audit)
    # Reads need a signed-in viewer (or an API token), changes an operator: one callable, so a
    # route that also names it to know who asks runs it once.
    guard = runtime.auth.by_method()
    signed_in = [Depends(guard)]
    transport = runtime.settings.transport
    app.include_router(calls_router(runtime.calls, transport.max_offer_bytes, runtime.callers, guard))
    outreach = runtime.outreach
    app.include_router(outreach_router(outreach.publisher, outreach.ledger), dependencies=signed_in)
    knowledge = runtime.knowledge
    app.include_router(
        knowledge_router(knowledge.submitter, knowledge.states, knowledge.retriever), dependencies=signed_in
    )
    app.include_router(runtime.auth.router())
    if runtime.settings.admin.enabled:
        services = AdminServices(
            queries=runtime.admin.queries,
            ledger=outreach.ledger,
            publisher=outreach.publisher,
            intents=IntentStore(runtime.database),
            documents=knowledge.submitter,
            hub=runtime.admin.hub,
        )
        app.include_router(admin_router(runtime.auth, services, guard))
    if runtime.settings.jobs.enabled:
        app.include_router(jobs_router(runtime.jobs.service, guard))  # the API guarded, the page not
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


def server_config(app: FastAPI, server: ServerSettings) -> uvicorn.Config:
    """How uvicorn serves the app: the one place that decides whose X-Forwarded-* to believe."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_config=None,
        access_log=server.access_log,
        timeout_graceful_shutdown=int(server.shutdown_timeout_s),
        lifespan="on",
        # uvicorn would believe 127.0.0.1 (or $FORWARDED_ALLOW_IPS) by default: any local client
        # could then pick its own address for the login limits and the audit log.
        proxy_headers=bool(server.trusted_proxies),
        forwarded_allow_ips=server.trusted_proxies or None,
    )


async def _security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """No sniffing or referrers anywhere; the dashboard's data and code are never cached stale."""
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    path = request.url.path
    if path.startswith(("/api/admin", "/api/jobs")):
        response.headers["Cache-Control"] = "no-store"
    elif path.startswith(("/static/admin/", "/static/jobs/")):
        response.headers["Cache-Control"] = "no-cache"  # revalidated (ETag): never old code after a deploy
    return response
