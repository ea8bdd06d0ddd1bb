"""A ``multipart/form-data`` submission read as it streams in: the form's text fields first, then
the file, handed on chunk by chunk while the client is still sending it.

Starlette's ``request.form()`` spools the whole body (to memory or a temporary file) before the
route sees a byte of it: a 10 GB body would be written out in full before it could be refused.
Here python-multipart's streaming parser is fed from ``request.stream()`` and the file's bytes go
straight on to the store, so the size limit is enforced on the bytes received so far.

The form: ``kind`` (text), ``params`` (JSON text, optional) and ``file``, in that order; the text
fields must come before the file, because the job is checked (and refused, if it must be) when the
file starts. Browsers send a ``FormData``'s fields in the order they were appended, and the /jobs
page appends the file last.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from voiceagent.jobs.schemas import JobSubmission
from voiceagent.jobs.service import BadRequest, IncomingFile, TooLarge
from voiceagent.server.bodies import declared_length
from voiceagent.server.errors import describe_validation_error

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

TEXT_FIELDS = ("kind", "params")
FILE_FIELD = "file"
MAX_PARTS = 8  # the form has three; anything near this many is not our page


@dataclass(frozen=True)
class _Field:
    name: str
    value: str


@dataclass(frozen=True)
class _FileStart:
    field: str
    filename: str
    media_type: str


@dataclass(frozen=True)
class _FileData:
    data: bytes


class _FileEnd:
    pass


class _End:
    pass


_Event = _Field | _FileStart | _FileData | _FileEnd | _End


class StreamingForm:
    """One multipart body: :meth:`fields` reads up to the file, :meth:`file` then streams it."""

    def __init__(self, stream: AsyncIterator[bytes], content_type: str, *, max_field_bytes: int) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary in its Content-Type")
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise BadRequest(f"not usable multipart/form-data: {exc}") from None
        self._stream = stream
        self._max_field_bytes = max_field_bytes
        self._events: deque[_Event] = deque()
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None  # the text field being read
        self._value = bytearray()
        self._in_file = False
        self._ended = False

    # --- the parser's callbacks (synchronous; they only record what they saw) --------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise BadRequest(f"more than {MAX_PARTS} form fields: send kind, params and file")
        self._headers = {}
        self._field = None
        self._value = bytearray()
        self._in_file = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise BadRequest("a form part without a name in its Content-Disposition")
        name = _text(options[b"name"])
        if b"filename" in options:
            media_type = _text(self._headers.get(b"content-type", b"")).strip()
            self._in_file = True
            self._events.append(_FileStart(name, _text(options[b"filename"]), media_type))
        else:
            self._field = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._events.append(_FileData(data[start:end]))
            return
        self._value += data[start:end]
        if len(self._value) > self._max_field_bytes:
            raise TooLarge(f"the form field {self._field!r} is larger than {self._max_field_bytes} bytes")

    def _on_part_end(self) -> None:
        if self._in_file:
            self._events.append(_FileEnd())
            return
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"the form field {self._field!r} is not UTF-8 text") from None
        self._events.append(_Field(self._field or "", value))

    def _on_end(self) -> None:
        self._ended = True
        self._events.append(_End())

    # --- reading ----------------------------------------------------------------------------

    async def _next(self) -> _Event:
        while not self._events:
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                raise BadRequest("the body ended before the multipart closing boundary") from None
            except ClientDisconnect:
                raise BadRequest("the client went away before the upload ended") from None
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise BadRequest(f"not valid multipart/form-data: {exc}") from None
        return self._events.popleft()

    async def fields(self) -> tuple[dict[str, str], IncomingFile | None]:
        """The text fields, and the file (to be read before anything else) if the form has one."""
        fields: dict[str, str] = {}
        while True:
            event = await self._next()
            if isinstance(event, _End):
                return fields, None
            if isinstance(event, _Field):
                if event.name not in TEXT_FIELDS:
                    raise BadRequest(f"unknown form field {event.name!r}: send kind, params and file")
                if event.name in fields:
                    raise BadRequest(f"the form field {event.name!r} is sent twice")
                fields[event.name] = event.value
            elif isinstance(event, _FileStart):
                if event.field != FILE_FIELD:
                    raise BadRequest(f"a file in the field {event.field!r}: send it as {FILE_FIELD!r}")
                return fields, IncomingFile(event.filename, event.media_type, self._file_chunks())
            else:  # data or an end without a start: the parser's callbacks make this impossible
                raise BadRequest("malformed multipart/form-data")

    async def _file_chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next()
            if isinstance(event, _FileData):
                if event.data:
                    yield event.data
            elif isinstance(event, _FileEnd):
                break
            else:
                raise BadRequest("malformed multipart/form-data")
        # Nothing may follow the file but the closing boundary: kind and params come first.
        event = await self._next()
        if not isinstance(event, _End):
            raise BadRequest(f"a form field after {FILE_FIELD!r}: send kind and params before the file")


def _text(raw: bytes) -> str:
    """Header parameters as browsers send them: UTF-8, or Latin-1 from older clients."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


async def read_form(
    request: Request, *, max_upload_bytes: int, max_request_bytes: int
) -> tuple[JobSubmission, IncomingFile | None]:
    """The submission in a multipart body, and its file still to be read (None: no file). A
    declared length over the largest file plus the largest parameters is refused unread."""
    declared = declared_length(request)
    if declared is not None and declared > max_upload_bytes + max_request_bytes:
        raise TooLarge(f"the upload is larger than the limit of {max_upload_bytes} bytes")
    form = StreamingForm(
        request.stream(), request.headers.get("content-type", ""), max_field_bytes=max_request_bytes
    )
    fields, file = await form.fields()
    if "kind" not in fields:
        raise BadRequest("the form has no 'kind' field (it must come before the file)")
    try:
        params = json.loads(fields.get("params") or "{}")
    except ValueError as exc:
        raise BadRequest(f"the form field 'params' is not JSON: {exc}") from None
    return submission({"kind": fields["kind"], "params": params}), file


def submission(data: object) -> JobSubmission:
    """A JobSubmission, or BadRequest naming every field that is wrong."""
    try:
        if isinstance(data, bytes):
            return JobSubmission.model_validate_json(data)
        return JobSubmission.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"bad job submission: {describe_validation_error(exc)}") from None
