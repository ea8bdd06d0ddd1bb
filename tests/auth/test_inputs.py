"""What hostile or broken login requests get: a clear 4xx, never a stack trace."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.auth.conftest import PASSWORD


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"username": "u" * 10_000, "password": PASSWORD}, 413, "larger than 4096 bytes"),
        ({"username": "u" * 1000, "password": PASSWORD}, 400, "username: String should have at most 64"),
        ({"username": "", "password": PASSWORD}, 400, "username: String should have at least 1"),
        ({"username": "alice"}, 400, "password: Field required"),
        ({"username": "alice", "password": PASSWORD, "admin": True}, 400, "admin: Extra inputs"),
        (["alice", PASSWORD], 400, "body: Input should be an object"),
        (
            {"username": "alice\x00", "password": PASSWORD},
            400,
            "username: Value error, must not contain control",
        ),
        ({"username": ["alice"], "password": PASSWORD}, 400, "username: Input should be a valid string"),
    ],
)
async def test_bad_login_bodies_are_refused_clearly(
    client: httpx.AsyncClient, body: object, status: int, says: str
) -> None:
    response = await client.post("/api/admin/session", json=body)
    assert response.status_code == status
    assert says in response.json()["detail"]
    assert "Traceback" not in response.text


async def test_not_json_or_not_declared_json_is_refused(client: httpx.AsyncClient) -> None:
    broken = await client.post(
        "/api/admin/session", content=b'{"username": "alice",', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and "bad login request" in broken.json()["detail"]
    # A cross-site HTML form can send text/plain that parses as JSON: not accepted.
    form = await client.post(
        "/api/admin/session",
        content=f'{{"username": "alice", "password": "{PASSWORD}"}}'.encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert form.status_code == 415


async def test_a_huge_body_without_a_length_is_cut_off(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    response = await client.post(
        "/api/admin/session", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_the_session_api_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/api/admin/session"]) == {"get", "post", "delete"}
    login = paths["/api/admin/session"]["post"]
    assert login["tags"] == ["admin"]
    assert "username" in login["requestBody"]["content"]["application/json"]["schema"]["properties"]
