"""`/api/jobs` (submit, follow, cancel and download asynchronous jobs; in the OpenAPI docs) and
the `/jobs` page, which reads nothing but this API.

Reads need a signed-in viewer or an API token, changes an operator (and, from a browser session,
the CSRF header): the app's guard, applied to the API here. Every refusal of the API's own is a
:class:`JobProblem` (``{error, detail, job_id}``); the guard's 401/403 keep the app-wide shape.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, cast
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from voiceagent.admin.api import PAGE_HEADERS
from voiceagent.auth.audit import describe_change
from voiceagent.auth.guard import Principal
from voiceagent.jobs.schemas import (
    REASONS,
    JobAccepted,
    JobLink,
    JobPage,
    JobProblem,
    JobRecord,
    JobStatus,
    JobSubmission,
    JobView,
)
from voiceagent.jobs.service import (
    Backpressure,
    BadRequest,
    JobConflict,
    JobError,
    JobRefused,
    JobService,
    NoSuchJob,
    QueueDown,
    TooLarge,
    UnsupportedMediaType,
)
from voiceagent.jobs.upload import read_form, submission
from voiceagent.server.bodies import BodyTooLarge, read_limited
from voiceagent.server.errors import describe_errors

PAGES_DIR = FilePath(__file__).resolve().parent.parent / "web" / "static" / "jobs"
MAX_PARAM_CHARS = 200  # a view shows the start of long texts; the job keeps them whole
QUEUE_DOWN_RETRY_S = 5

STATUS_OF: tuple[tuple[type[JobError], int], ...] = (
    (BadRequest, 400),
    (NoSuchJob, 404),
    (JobConflict, 409),
    (TooLarge, 413),
    (UnsupportedMediaType, 415),
    (JobRefused, 422),
    (Backpressure, 429),
    (QueueDown, 503),
)

JobId = Annotated[str, Path(min_length=1, max_length=64, description="the id from the submission")]
Limit = Annotated[int, Query(ge=1, le=200)]
Before = Annotated[datetime | None, Query(description="next_before of the previous page")]
KindName = Annotated[str | None, Query(min_length=1, max_length=64)]
FileName = Annotated[str | None, Query(min_length=1, max_length=64, description="default: the main file")]


def _problem(description: str) -> dict[str, Any]:
    return {"model": JobProblem, "description": description}


Responses = dict[int | str, dict[str, Any]]
SIGNED_IN: Responses = {
    401: {"description": "not signed in (body: {detail})"},
    403: {"description": "role too low, or a browser session without its CSRF header (body: {detail})"},
}
NOT_FOUND: Responses = {404: _problem("no such job (or it expired)")}
SUBMIT_RESPONSES: Responses = {
    202: {"headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}},
    400: _problem("not JSON or not multipart/form-data as documented, or a field missing"),
    413: _problem("the JSON body or the uploaded file is over the configured limit"),
    415: _problem("neither application/json nor multipart/form-data"),
    422: _problem("unknown kind, or parameters the kind refuses: recorded as a failed job (job_id)"),
    429: {
        **_problem("too many jobs queued: try again after Retry-After seconds"),
        "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
    },
    503: _problem("the job queue (broker) is unavailable: nothing was kept, try again"),
    **SIGNED_IN,
}
SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobSubmission.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {
                        "kind": {"type": "string", "examples": ["transcribe"]},
                        "params": {"type": "string", "description": "the parameters as JSON text"},
                        "file": {"type": "string", "format": "binary", "description": "last, after kind"},
                    },
                },
                "encoding": {"file": {"contentType": "audio/*"}},
            },
        },
    }
}


class KindInfo(BaseModel):
    name: str
    accepts_upload: bool
    requires_upload: bool


class JobOptions(BaseModel):
    """What a client needs to know before it submits (the /jobs page's limits and words)."""

    kinds: list[KindInfo]
    max_upload_bytes: int
    max_request_bytes: int
    max_text_chars: int  # synthesize's limit on its text
    reasons: dict[str, str]  # why a job failed, in words


class _ProblemRoute(APIRoute):
    """Turns the service's refusals and FastAPI's parameter errors into JobProblem answers
    (exception handlers are app-wide; this keeps the shape to the jobs API)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except JobError as exc:
                return problem_response(exc)
            except RequestValidationError as exc:
                errors = [{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in exc.errors()]
                body = JobProblem(error="invalid_request", detail=describe_errors(errors, "request"))
                return JSONResponse(body.model_dump(), status_code=422)

        return route


def problem_response(exc: JobError) -> JSONResponse:
    status = next((code for cls, code in STATUS_OF if isinstance(exc, cls)), 400)
    headers: dict[str, str] = {}
    if isinstance(exc, Backpressure):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, QueueDown):
        headers["Retry-After"] = str(QUEUE_DOWN_RETRY_S)
    elif isinstance(exc, TooLarge):
        headers["Connection"] = "close"  # the rest of the body is not read
    body = JobProblem(error=exc.code, detail=exc.detail, job_id=exc.job_id)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def jobs_router(service: JobService, guard: Callable[..., Awaitable[Principal]]) -> APIRouter:
    """``guard`` is the app's ``auth.by_method()``; the page shell at /jobs is public (it holds
    no data: the page asks the guarded API, and goes to the login page on a 401)."""
    api = APIRouter(
        prefix="/api/jobs", tags=["jobs"], dependencies=[Depends(guard)], route_class=_ProblemRoute
    )
    asking = Depends(guard)  # the router's own dependency: FastAPI runs it once per request
    limits = service.limits

    @api.post(
        "",
        status_code=202,
        response_model=JobAccepted,
        summary="Submit a job (operator): JSON {kind, params}, or a multipart form with a file",
        description=(
            "Answers at once; follow the job at `Location`. A multipart form sends `kind`, then "
            "`params` (JSON text), then `file` (e.g. audio to transcribe), in that order."
        ),
        responses=SUBMIT_RESPONSES,
        openapi_extra=SUBMIT_BODY,
    )
    async def submit(request: Request, response: Response, who: Principal = asking) -> JobAccepted:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type == "application/json":
            try:
                body = await read_limited(request, limits.max_request_bytes)
            except BodyTooLarge as exc:
                raise TooLarge(f"the submission is larger than the limit of {exc.limit} bytes") from None
            sent = submission(body)
            job = await service.submit(sent.kind, sent.params, submitted_by=who.name)
        elif media_type == "multipart/form-data":
            sent, file = await read_form(
                request, max_upload_bytes=limits.max_upload_bytes, max_request_bytes=limits.max_request_bytes
            )
            job = await service.submit(sent.kind, sent.params, file=file, submitted_by=who.name)
        else:
            raise UnsupportedMediaType(
                f"send application/json or multipart/form-data, not {media_type or 'no Content-Type'}"
            )
        describe_change(request, "job.submit", target=job.id, detail=job.kind)
        location = job_url(job.id)
        response.headers["Location"] = location
        return JobAccepted(job_id=job.id, status=_shown(job), location=location)

    @api.get("", response_model=JobPage, summary="Jobs, newest first", responses=SIGNED_IN)
    async def recent(
        limit: Limit = 50,
        before: Before = None,
        status: JobStatus | None = None,
        kind: KindName = None,
    ) -> JobPage:
        jobs = await service.recent(limit=limit, before=before, status=status, kind=kind)
        next_before = jobs[-1].created_at if len(jobs) == limit else None
        return JobPage(jobs=[view_of(j) for j in jobs], next_before=next_before)

    @api.get("/kinds", response_model=JobOptions, summary="The job kinds and limits", responses=SIGNED_IN)
    async def kinds() -> JobOptions:
        found = [service.kinds.get(name) for name in service.kinds.names]
        return JobOptions(
            kinds=[
                KindInfo(name=k.name, accepts_upload=k.accepts_upload, requires_upload=k.requires_upload)
                for k in found
                if k is not None
            ],
            max_upload_bytes=limits.max_upload_bytes,
            max_request_bytes=limits.max_request_bytes,
            max_text_chars=limits.synthesize.max_chars,
            reasons=REASONS,
        )

    @api.get(
        "/{job_id}",
        response_model=JobView,
        summary="A job's status, progress and result links",
        responses={**NOT_FOUND, **SIGNED_IN},
    )
    async def job(job_id: JobId) -> JobView:
        return view_of(await service.get(job_id))

    @api.get(
        "/{job_id}/result",
        response_class=StreamingResponse,
        summary="Download a result file of a succeeded job",
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the file, streamed"},
            404: _problem("no such job, or no such file in it"),
            409: _problem("the job has not succeeded (the detail says its status)"),
            **SIGNED_IN,
        },
    )
    async def result(job_id: JobId, name: FileName = None) -> StreamingResponse:
        found = await service.result(job_id, name)
        download = f"{found.job.id}-{_safe_name(found.file.name)}"
        return StreamingResponse(
            found.chunks,
            media_type=found.file.media_type,
            headers={
                "Content-Length": str(found.file.bytes),
                "Content-Disposition": f'attachment; filename="{download}"',
            },
        )

    @api.delete(
        "/{job_id}",
        response_model=JobView,
        summary="Cancel a job (operator): at once if queued, at its next progress report if running",
        responses={**NOT_FOUND, 409: _problem("the job has already finished"), **SIGNED_IN},
    )
    async def cancel(job_id: JobId, request: Request) -> JobView:
        describe_change(request, "job.cancel", target=job_id)
        return view_of(await service.cancel(job_id))

    router = APIRouter()
    router.include_router(api)

    @router.get("/jobs", include_in_schema=False)
    async def jobs_page() -> FileResponse:
        return FileResponse(PAGES_DIR / "index.html", headers=PAGE_HEADERS)

    return router


def job_url(job_id: str) -> str:
    return f"/api/jobs/{job_id}"


def result_url(job_id: str, name: str) -> str:
    return f"{job_url(job_id)}/result?name={quote(name, safe='')}"


def view_of(job: JobRecord) -> JobView:
    """A job as clients see it: progress in percent, long texts cut, files as download links."""
    shown = job.status == "succeeded"
    return JobView(
        id=job.id,
        kind=job.kind,
        status=_shown(job),
        progress_percent=round(min(max(job.progress, 0.0), 1.0) * 100, 1),
        progress_note=job.progress_note,
        params=cast(dict[str, Any], _cut(job.params)),
        input=None
        if job.input_name is None
        else {"name": job.input_name, "media_type": job.input_type, "bytes": job.input_bytes},
        result=job.result,
        files=[
            JobLink(name=f.name, media_type=f.media_type, bytes=f.bytes, url=result_url(job.id, f.name))
            for f in (job.files if shown else [])
        ],
        reason=job.reason,
        detail=job.detail,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        expires_at=job.expires_at,
    )


def _shown(job: JobRecord) -> JobStatus:
    """A job still receiving its upload is never listed; should one slip through, it is queued."""
    return "queued" if job.status == "receiving" else job.status


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_PARAM_CHARS else f"{value[:MAX_PARAM_CHARS]}…"
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value]
    return value


def _safe_name(name: str) -> str:
    """A file name fit for a quoted header parameter (the workers name files; this is a guard)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "result"
