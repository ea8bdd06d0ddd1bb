"""Health, readiness and metrics endpoints, served in-process over ASGI."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from voiceagent.config import EventSettings, LLMSettings, RocketMQSettings, Settings
from voiceagent.runtime import Runtime
from voiceagent.server.app import create_app
from voiceagent.server.errors import describe_validation_error


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    runtime = Runtime(settings)
    await runtime.start()
    app = create_app(runtime)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://va") as client:
            yield client
    finally:
        await runtime.stop()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(settings):
        yield c


@pytest.fixture
def models_server() -> Iterator[str]:
    """A minimal OpenAI-compatible /v1/models endpoint on loopback."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer k"
            body = json.dumps({"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["node_id"] == "test-node"


async def test_readyz_reports_each_dependency(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["store"]["detail"].startswith("sqlite ")


async def test_metrics_are_prometheus_text_labelled_by_route(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    await client.get("/readyz")
    await client.get("/no/such/page")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'voiceagent_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert 'voiceagent_dependency_up{dependency="store"} 1.0' in text
    assert "voiceagent_build_info" in text


async def test_openapi_lists_the_ops_endpoints(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert (await client.get("/docs")).status_code == 200


async def test_readyz_is_503_with_reasons_when_external_services_are_down(
    settings: Settings,
) -> None:
    down = settings.model_copy(
        update={
            "llm": LLMSettings(base_url="http://127.0.0.1:9/v1", request_timeout_s=1),
            "events": EventSettings(backend="rocketmq", rocketmq=RocketMQSettings(endpoints="127.0.0.1:9")),
        }
    )
    async for client in _client(down):
        response = await client.get("/readyz")
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["store"]["ok"] is True
        assert checks["llm"]["ok"] is False and checks["llm"]["detail"]
        assert checks["events"]["ok"] is False and checks["events"]["detail"]
        metrics = (await client.get("/metrics")).text
        assert 'voiceagent_dependency_up{dependency="llm"} 0.0' in metrics


async def test_readyz_passes_against_a_reachable_llm(settings: Settings, models_server: str) -> None:
    up = settings.model_copy(update={"llm": LLMSettings(base_url=models_server, api_key="k")})
    async for client in _client(up):
        response = await client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json()["checks"]["llm"]["detail"] == f"2 model(s) at {models_server}"


# -- POST /api/calls: a bad request names the field and why -----------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param({"type": "offer"}, "sdp: Field required", id="missing-sdp"),
        pytest.param({"sdp": "v=0", "type": "answer"}, "type: Input should be 'offer'", id="wrong-type"),
        pytest.param(
            {"sdp": "v=0", "type": "offer", "user_id": "alice smith"},
            "user_id: String should match pattern '^[A-Za-z0-9_.@:-]+$'",
            id="bad-user-id",
        ),
        pytest.param(["v=0", "offer"], "body: Input should be an object, got an array", id="json-array"),
        pytest.param("v=0", "body: Input should be an object, got a string", id="json-string"),
        pytest.param(
            {"sdp": "", "type": "pranswer", "user_id": "x" * 65},
            "sdp: String should have at least 1 character; type: Input should be 'offer'; "
            "user_id: String should have at most 64 characters",
            id="several-fields",
        ),
    ],
)
async def test_a_bad_offer_request_names_each_field_and_why(
    client: httpx.AsyncClient, body: object, detail: str
) -> None:
    response = await client.post("/api/calls", json=body)
    assert response.status_code == 400
    assert response.json() == {"detail": f"bad offer request: {detail}"}


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b'{"sdp": "v=0", "type": ', "EOF while parsing a value at line 1 column 23"),
        (b"sdp=v%3D0&type=offer", "expected value at line 1 column 1"),
        (b"", "EOF while parsing a value at line 1 column 0"),
    ],
    ids=["truncated", "form-encoded", "empty"],
)
async def test_a_body_that_is_not_json_says_so_and_where(
    client: httpx.AsyncClient, content: bytes, detail: str
) -> None:
    response = await client.post("/api/calls", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"detail": f"bad offer request: body: Invalid JSON: {detail}"}


async def test_an_oversized_offer_is_413_before_it_is_parsed(client: httpx.AsyncClient) -> None:
    too_big = b"{" + b" " * (64 * 1024) + b"}"  # not even JSON: the size is checked first
    response = await client.post("/api/calls", content=too_big)
    assert response.status_code == 413
    assert response.json() == {"detail": f"offer larger than {64 * 1024} bytes"}


def test_nested_fields_are_named_by_their_path() -> None:
    class Item(BaseModel):
        name: str

    class Order(BaseModel):
        items: list[Item]

    with pytest.raises(ValidationError) as info:
        Order.model_validate({"items": [{"name": "tea"}, {"name": 3}]})
    assert describe_validation_error(info.value) == "items[1].name: Input should be a valid string"
