"""Request bodies read no further than a limit: a declared Content-Length over it is refused
before a byte is read, and a body that streams past it (chunked, or lying about its length) is
refused the moment it does, never buffered whole first."""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


def declared_length(request: Request) -> int | None:
    """The Content-Length the client declared, if it is a plain number."""
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge once it is over ``limit`` bytes."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)
