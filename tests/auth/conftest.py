"""An app with the session API and a few guarded routes, on a migrated store, and logins for it.

No ``from __future__ import annotations`` here: FastAPI must resolve the route's local
``Annotated`` dependency alias when the route is defined."""

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request

from voiceagent.auth.accounts import Role, create_token, create_user
from voiceagent.auth.audit import describe_change
from voiceagent.auth.changes import AuditChanges
from voiceagent.auth.guard import AdminAuth, Principal
from voiceagent.auth.settings import AdminAuthSettings
from voiceagent.store import Database

PASSWORD = "correct horse battery"


def build_app(auth: AdminAuth) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuditChanges, audit=auth.audit)
    app.include_router(auth.router())
    things = APIRouter(prefix="/api/admin/things", dependencies=[Depends(auth.by_method())])

    @things.get("")
    async def read_things() -> dict[str, Any]:
        return {"things": []}

    @things.post("")
    async def add_thing() -> dict[str, Any]:
        return {"added": True}

    @things.put("/{name}")
    async def replace_thing(name: str) -> dict[str, Any]:
        if name == "missing":
            raise HTTPException(404, "no such thing")
        return {"replaced": name}

    @things.patch("/{name}")
    async def tidy_thing(name: str, request: Request) -> dict[str, Any]:
        describe_change(request, "thing.tidy", target=name)
        return {"tidied": name}

    @things.post("/{name}/break")
    async def break_thing(name: str, request: Request) -> dict[str, Any]:
        describe_change(request, "thing.break", target=name)
        raise HTTPException(409, "it resists")

    app.include_router(things)
    app.include_router(things, prefix="/v2")  # FastAPI keeps an include's prefix out of the route

    Operator = Annotated[Principal, Depends(auth.require(Role.OPERATOR))]

    @app.delete("/api/admin/danger")
    async def danger(principal: Operator) -> dict[str, Any]:
        return {"by": principal.name, "kind": principal.kind}

    return app


@pytest.fixture
def auth_settings() -> AdminAuthSettings:
    return AdminAuthSettings(cookie_secure="auto")


@pytest.fixture
async def auth(database: Database, auth_settings: AdminAuthSettings) -> AdminAuth:
    await create_user(database, "alice", PASSWORD, Role.OPERATOR)
    await create_user(database, "victor", PASSWORD, Role.VIEWER)
    return AdminAuth(database, auth_settings)


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def make_client(auth: AdminAuth) -> AsyncIterator[ClientFactory]:
    app = build_app(auth)
    clients: list[httpx.AsyncClient] = []

    def make(base_url: str = "http://test", address: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        client = httpx.AsyncClient(transport=transport, base_url=base_url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(make_client: ClientFactory) -> httpx.AsyncClient:
    return make_client()


async def login(client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD) -> str:
    """Log in; returns the CSRF token (the cookie stays in the client)."""
    response = await client.post("/api/admin/session", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


@pytest.fixture
async def operator_token(database: Database) -> str:
    return await create_token(database, "ci", Role.OPERATOR, created_by="test")
