"""`/api/knowledge/documents`: documents added, replaced and deleted over HTTP, each change kept
in the store and published as a ``knowledge.changed`` event (202: ingestion follows), and where
each document stands (`GET`). `/api/knowledge/search` shows what a question would retrieve.

Uploads are multipart (`file`, optional `doc_id`, default the file's name) or JSON
(`{"doc_id", "text", "filename"?}`; the file name's extension says the format, `.md` by default).
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from voiceagent.auth.audit import describe_change
from voiceagent.events import PublishFailed
from voiceagent.knowledge.documents import DocumentState, DocumentStateName, DocumentStates
from voiceagent.knowledge.parsing import DocumentRefused
from voiceagent.knowledge.retrieval import Retriever
from voiceagent.knowledge.submissions import DocumentSubmitter, Submitted, version_of
from voiceagent.pipeline.knowledge import LookupOutcome
from voiceagent.server.errors import describe_validation_error

DOC_ID = r"^[^\x00-\x1f]{1,256}$"
UPLOAD_READ = 1 << 16


class TextDocument(BaseModel):
    doc_id: str = Field(pattern=DOC_ID)
    text: str = Field(min_length=1)
    filename: str = Field("document.md", max_length=300, description="its extension says the format")


class FoundPassage(BaseModel):
    doc_id: str
    title: str
    ordinal: int
    similarity: float
    text: str


class SearchResult(BaseModel):
    outcome: LookupOutcome
    seconds: float
    passages: list[FoundPassage]


async def delete_document(submitter: DocumentSubmitter, doc_id: str, request: Request) -> Submitted:
    """Delete a document for an HTTP caller: 404 when unknown, 503 when the broker is down."""
    describe_change(request, "document.delete", target=doc_id)
    try:
        deleted = await submitter.delete(doc_id)
    except PublishFailed as exc:
        raise HTTPException(503, f"not published: {exc}", headers={"Retry-After": "5"}) from None
    if deleted is None:
        raise HTTPException(404, f"no document {doc_id!r}")
    return deleted


def knowledge_router(submitter: DocumentSubmitter, states: DocumentStates, retriever: Retriever) -> APIRouter:
    router = APIRouter(tags=["knowledge"])
    max_bytes = submitter.max_bytes
    refusals = {
        400: {"description": "no document in the body, or a bad field"},
        409: {"description": "POST of an id that exists with other content (PUT replaces)"},
        413: {"description": "the document is over knowledge.max_document_bytes (state: failed, too_large)"},
        503: {
            "description": "the broker is unreachable: kept, not published (state: failed, publish_failed)"
        },
    }

    async def read_upload(request: Request, doc_id: str | None) -> tuple[str, bytes, str]:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "multipart body without a `file` part")
            content = bytearray()
            while chunk := await upload.read(UPLOAD_READ):
                content += chunk
                if len(content) > max_bytes:  # stop reading: it is refused whatever follows
                    break
            named = form.get("doc_id")
            filename = upload.filename or "document"
            return (
                doc_id or (named if isinstance(named, str) and named else filename),
                bytes(content),
                filename,
            )
        body = await request.body()
        if len(body) > 2 * max_bytes:
            raise HTTPException(413, f"body larger than {2 * max_bytes} bytes")
        try:
            document = TextDocument.model_validate_json(body if doc_id is None else _with_id(body, doc_id))
        except ValidationError as exc:
            raise HTTPException(400, f"bad document: {describe_validation_error(exc)}") from None
        return document.doc_id, document.text.encode(), document.filename

    async def submit(doc_id: str, content: bytes, filename: str) -> Submitted:
        try:
            return await submitter.submit(doc_id, content, filename=filename, origin="api")
        except DocumentRefused as exc:
            raise HTTPException(413, f"{exc.reason}: {exc.detail}") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except PublishFailed as exc:
            raise HTTPException(503, f"kept but not published: {exc}", headers={"Retry-After": "5"}) from None

    @router.post(
        "/api/knowledge/documents",
        status_code=202,
        response_model=Submitted,
        summary="Add a document (multipart `file` [+ `doc_id`], or JSON {doc_id, text, filename?})",
        responses=refusals,  # type: ignore[arg-type]
    )
    async def add(request: Request) -> Submitted:
        doc_id, content, filename = await read_upload(request, None)
        describe_change(request, "document.add", target=doc_id, detail=filename)
        current = await submitter.sources.get(doc_id)
        if current is not None and not current.deleted and current.version != version_of(content):
            raise HTTPException(409, f"document {doc_id!r} exists with other content: PUT replaces it")
        return await submit(doc_id, content, filename)

    @router.put(
        "/api/knowledge/documents/{doc_id:path}",
        status_code=202,
        response_model=Submitted,
        summary="Replace a document (multipart `file`, or JSON {text, filename?})",
        responses=refusals,  # type: ignore[arg-type]
    )
    async def replace(request: Request, doc_id: Annotated[str, Path(pattern=DOC_ID)]) -> Submitted:
        doc_id, content, filename = await read_upload(request, doc_id)
        describe_change(request, "document.replace", target=doc_id, detail=filename)
        return await submit(doc_id, content, filename)

    @router.delete(
        "/api/knowledge/documents/{doc_id:path}",
        status_code=202,
        response_model=Submitted,
        summary="Delete a document: its chunks leave the index",
        responses={404: {"description": "no such document"}, 503: refusals[503]},
    )
    async def delete(doc_id: Annotated[str, Path(pattern=DOC_ID)], request: Request) -> Submitted:
        return await delete_document(submitter, doc_id, request)

    @router.get(
        "/api/knowledge/documents", response_model=list[DocumentState], summary="Documents, newest first"
    )
    async def listing(
        state: DocumentStateName | None = None, limit: int = Query(100, ge=1, le=1000)
    ) -> list[DocumentState]:
        return await states.list(state, limit)

    @router.get(
        "/api/knowledge/documents/{doc_id:path}",
        response_model=DocumentState,
        summary="Where a document stands: queued, indexed (chunks), failed (reason), deleted",
        responses={404: {"description": "no such document"}},
    )
    async def status(doc_id: Annotated[str, Path(pattern=DOC_ID)]) -> DocumentState:
        state = await states.get(doc_id)
        if state is None:
            raise HTTPException(404, f"no document {doc_id!r}")
        return state

    @router.get(
        "/api/knowledge/search",
        response_model=SearchResult,
        summary="What the agent would be told for this question",
    )
    async def search(q: str = Query(min_length=1, max_length=1000)) -> SearchResult:
        consulted = await retriever.lookup(q)
        passages = [
            FoundPassage(doc_id=r.doc_id, title=r.title, ordinal=r.ordinal, similarity=r.score, text=r.text)
            for r in consulted.references
        ]
        return SearchResult(outcome=consulted.outcome, seconds=round(consulted.seconds, 4), passages=passages)

    return router


def _with_id(body: bytes, doc_id: str) -> bytes:
    """A replacement's JSON body takes its id from the path."""
    try:
        data = json.loads(body)
    except ValueError:
        return body  # let validation say what is wrong with it
    if isinstance(data, dict):
        data["doc_id"] = doc_id
    return json.dumps(data).encode()
