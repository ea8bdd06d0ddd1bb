"""Signed caller identity: a user id is believed only inside a short-lived HS256 token the host
application signed, unless the node allows unsigned ids; outreach trusts callers by how their id
is known. ``POST /api/calls`` is driven in process (ASGI) against the calls layer with fake
engines and real aiortc callers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from tests.transport.client import SpeechSource, offer_sdp, place_call
from voiceagent.auth.callers import CallerVerifier, IdentityRefused, mint, validate
from voiceagent.auth.settings import CallerIdentitySettings, SecuritySettings
from voiceagent.calls.session import CallManager, Identity
from voiceagent.config import Settings, StoreSettings
from voiceagent.engines.settings import EngineSettings
from voiceagent.outreach.identity import IdentityTrust
from voiceagent.runtime import Runtime, StartupError
from voiceagent.server.calls_api import UNSIGNED_REFUSED, calls_router

SECRET = "k7V0mQ2rT9xW4zB8nC1dF6gH3jL5pS0u"  # 32 bytes: the shortest a node accepts
SIGNED = CallerIdentitySettings(allow_unsigned=False, secret=SecretStr(SECRET), max_ttl_s=900, leeway_s=30)


def verify(token: str, settings: CallerIdentitySettings = SIGNED) -> str:
    return CallerVerifier(settings).verify(token)


def signed(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


# -- the verifier ----------------------------------------------------------------------------------


def test_a_token_minted_as_the_readme_says_gives_its_user_id() -> None:
    assert verify(mint(SECRET, "ann@example.com")) == "ann@example.com"
    now = int(time.time())
    assert verify(signed({"sub": "bob", "exp": now + 60})) == "bob"  # iat is optional


def test_clock_skew_within_the_leeway_is_forgiven() -> None:
    assert verify(mint(SECRET, "ann", ttl_s=-10)) == "ann"  # expired 10 s ago by our clock
    now = int(time.time())
    assert verify(signed({"sub": "ann", "iat": now + 10, "exp": now + 70})) == "ann"  # issued "later"


def _alg_none() -> str:
    return jwt.encode({"sub": "ann", "exp": int(time.time()) + 60}, None, algorithm="none")


def _forged_hs256() -> str:
    header, payload, _ = mint("another-secret-of-at-least-32-bytes!", "ann").split(".")
    return f"{header}.{payload}."  # HS256 said, no signature given


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(lambda: mint(SECRET, "ann", ttl_s=-120), "expired", id="expired"),
        pytest.param(lambda: mint("x" * 32 + "wrong", "ann"), "bad signature", id="wrong-secret"),
        pytest.param(_forged_hs256, "bad signature", id="signature-stripped"),
        pytest.param(_alg_none, "not signed with HS256", id="alg-none"),
        pytest.param(
            lambda: signed({"sub": "ann", "exp": int(time.time()) + 60}, SECRET * 2, "HS512"),
            "not signed with HS256",
            id="hs512",
        ),
        pytest.param(
            lambda: mint(SECRET, "ann", ttl_s=3600),
            "valid for longer than security.callers.max_ttl_s",
            id="ttl-too-long",
        ),
        pytest.param(
            lambda: signed({"sub": "ann", "iat": int(time.time()) - 3000, "exp": int(time.time()) + 60}),
            "valid for longer than security.callers.max_ttl_s",
            id="issued-long-before-exp",
        ),
        pytest.param(lambda: signed({"sub": "ann"}), "no expiry (exp)", id="no-exp"),
        pytest.param(
            lambda: signed({"sub": "ann", "aud": "billing", "exp": int(time.time()) + 60}),
            "meant for another audience (aud)",
            id="other-audience",
        ),
        pytest.param(lambda: signed({"exp": int(time.time()) + 60}), "no subject", id="no-sub"),
        pytest.param(
            lambda: signed({"sub": "alice smith", "exp": int(time.time()) + 60}),
            "its subject is not a user id (1-64 of A-Z a-z 0-9 _ . @ : -)",
            id="bad-sub",
        ),
        pytest.param(
            lambda: signed({"sub": "ann", "exp": str(int(time.time()) + 60)}), "malformed", id="exp-a-string"
        ),
        pytest.param(
            lambda: signed({"sub": 42, "exp": int(time.time()) + 60}), "malformed", id="sub-a-number"
        ),
        pytest.param(lambda: "not-a-token", "malformed", id="not-a-jwt"),
        pytest.param(lambda: "a.b.c", "malformed", id="garbage"),
        pytest.param(lambda: "x" * 4097, "longer than 4096 characters", id="oversized"),
    ],
)
def test_a_token_that_proves_nothing_is_refused_saying_why(token: Callable[[], str], reason: str) -> None:
    text = token()
    with pytest.raises(IdentityRefused) as refused:
        verify(text)
    assert refused.value.reason == reason
    assert text not in str(refused.value) and SECRET not in str(refused.value)


def test_a_node_without_a_secret_believes_no_token() -> None:
    # An empty HMAC key would be a key anyone has.
    with pytest.raises(IdentityRefused, match=r"no security\.callers\.secret"):
        verify(mint(SECRET, "ann"), CallerIdentitySettings(allow_unsigned=True))


def test_start_up_refuses_caller_identity_that_cannot_work() -> None:
    with pytest.raises(ValueError, match=r"security\.callers\.secret is empty"):
        validate(CallerIdentitySettings(allow_unsigned=False))
    with pytest.raises(ValueError, match="is 7 bytes, too short") as short:
        validate(CallerIdentitySettings(allow_unsigned=True, secret=SecretStr("hunter2")))
    assert "hunter2" not in str(short.value)
    validate(CallerIdentitySettings(allow_unsigned=True))  # local use: no tokens at all
    validate(SIGNED)


def test_outreach_trusts_callers_by_how_their_id_is_known() -> None:
    class Call:
        def __init__(self, identity: Identity) -> None:
            self.id, self.user_id, self.identity = "c1", "ann", identity

    strict, local = IdentityTrust(allow_unsigned=False), IdentityTrust(allow_unsigned=True)
    kinds: list[Identity] = ["signed", "claimed", "anonymous"]
    assert [strict.trusts(Call(k)) for k in kinds] == [True, False, False]
    assert [local.trusts(Call(k)) for k in kinds] == [True, True, False]
    # Live events: an anonymous caller's id was made up for their call (a check-in is for them).
    assert [strict.may_hear(Call(k)) for k in kinds] == [True, False, True]


# -- POST /api/calls -------------------------------------------------------------------------------


async def _anyone() -> None:
    """The dashboard's sign-in guards GET /api/calls (tests/admin); identity is the subject here."""


def api(manager: CallManager, **settings: Any) -> httpx.AsyncClient:
    app = FastAPI()
    verifier = CallerVerifier(SIGNED.model_copy(update=settings))
    app.include_router(calls_router(manager, 64 * 1024, verifier, _anyone))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://va")


@pytest.fixture
async def strict(manager: CallManager) -> AsyncIterator[httpx.AsyncClient]:
    """A production node: unsigned user ids refused."""
    async with api(manager, allow_unsigned=False) as client:
        yield client


async def call_with(client: httpx.AsyncClient, **identity: str) -> str:
    """Place a real call through ``POST /api/calls``; its call id."""

    async def over_asgi(sdp: str) -> tuple[str, str]:
        response = await client.post("/api/calls", json={"sdp": sdp, "type": "offer", **identity})
        assert response.status_code == 201, response.text
        return response.json()["call_id"], response.json()["sdp"]

    call = await place_call(over_asgi, SpeechSource())
    await call.close()
    return call.call_id


@pytest.mark.integration  # real aiortc peers
@pytest.mark.parametrize(
    ("allow_unsigned", "given", "expected"),
    [
        pytest.param(False, {"identity_token": "ann"}, ("ann", "signed"), id="signed"),
        pytest.param(
            False, {"identity_token": "ann", "user_id": "ann"}, ("ann", "signed"), id="signed+same-id"
        ),
        pytest.param(True, {"user_id": "ann"}, ("ann", "claimed"), id="claimed-where-allowed"),
        pytest.param(False, {}, (None, "anonymous"), id="anonymous"),
    ],
)
async def test_a_call_carries_who_the_caller_is_and_how_that_is_known(
    manager: CallManager,
    caplog: pytest.LogCaptureFixture,
    allow_unsigned: bool,
    given: dict[str, str],
    expected: tuple[str | None, Identity],
) -> None:
    caplog.set_level(logging.DEBUG)
    if "identity_token" in given:
        given = {**given, "identity_token": mint(SECRET, given["identity_token"])}
    async with api(manager, allow_unsigned=allow_unsigned) as client:
        call_id = await call_with(client, **given)
        session = manager.sessions[call_id]
        user_id, identity = expected
        assert session.identity == identity
        assert session.user_id == user_id if user_id else session.user_id.startswith("anon-")
        [live] = (await client.get("/api/calls")).json()
        assert (live["user_id"], live["identity"]) == (session.user_id, identity)
        await manager.hang_up(call_id)
    if "identity_token" in given:
        assert given["identity_token"] not in caplog.text


async def test_an_unsigned_user_id_is_refused_where_unsigned_ids_are_not_allowed(
    manager: CallManager, strict: httpx.AsyncClient
) -> None:
    body = {"sdp": await offer_sdp("audio"), "type": "offer", "user_id": "ann"}
    response = await strict.post("/api/calls", json=body)
    assert (response.status_code, response.json()) == (401, {"detail": UNSIGNED_REFUSED})
    assert manager.sessions == {} and manager.gateway.active == 0


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        pytest.param(
            lambda: mint("y" * 40, "ann"), "identity_token refused: bad signature", id="wrong-secret"
        ),
        pytest.param(
            lambda: mint(SECRET, "ann", ttl_s=-120), "identity_token refused: expired", id="expired"
        ),
        pytest.param(_alg_none, "identity_token refused: not signed with HS256", id="alg-none"),
    ],
)
async def test_a_bad_token_is_401_and_starts_nothing(
    manager: CallManager,
    strict: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    token: Callable[[], str],
    detail: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    text = token()
    body = {"sdp": await offer_sdp("audio"), "type": "offer", "identity_token": text}
    response = await strict.post("/api/calls", json=body)
    assert (response.status_code, response.json()) == (401, {"detail": detail})
    assert manager.sessions == {} and manager.gateway.active == 0
    assert text not in caplog.text  # refusals are logged, the token never


async def test_a_user_id_other_than_the_tokens_subject_is_400(
    manager: CallManager, strict: httpx.AsyncClient
) -> None:
    token = mint(SECRET, "ann")
    body = {"sdp": await offer_sdp("audio"), "type": "offer", "identity_token": token, "user_id": "bob"}
    response = await strict.post("/api/calls", json=body)
    assert (response.status_code, response.json()) == (
        400,
        {"detail": "user_id is not the identity_token's subject"},
    )
    assert manager.sessions == {} and manager.gateway.active == 0


async def test_an_oversized_token_is_a_bad_request_naming_the_field(strict: httpx.AsyncClient) -> None:
    body = {"sdp": "v=0", "type": "offer", "identity_token": "x" * 4097}
    response = await strict.post("/api/calls", json=body)
    assert response.status_code == 400
    assert response.json() == {
        "detail": "bad offer request: identity_token: String should have at most 4096 characters"
    }


# -- the node refuses to start without a way to verify callers --------------------------------------


def _settings(tmp_path: Path, callers: CallerIdentitySettings) -> Settings:
    return Settings(
        node_id="test-node",
        store=StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path}/va.db"),
        engines=EngineSettings(preload=False),
        security=SecuritySettings(callers=callers),
    )


def test_a_runtime_refusing_unsigned_ids_without_a_secret_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"security\.callers\.secret is empty"):
        Runtime(_settings(tmp_path, CallerIdentitySettings(allow_unsigned=False)))
    assert not (tmp_path / "va.db").exists()  # refused before anything was opened


async def test_a_node_allowing_unsigned_ids_warns_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = Runtime(_settings(tmp_path, CallerIdentitySettings(allow_unsigned=True)))
    await runtime.start()
    await runtime.stop()
    [warning] = [r for r in caplog.records if "allow_unsigned" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    quiet = Runtime(_settings(tmp_path, SIGNED))
    await quiet.start()
    await quiet.stop()
    assert len([r for r in caplog.records if "allow_unsigned" in r.getMessage()]) == 1


@pytest.mark.integration  # a real `voiceagent serve` process
def test_serve_exits_1_in_one_line_when_callers_cannot_be_verified(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
    env.update(
        VOICEAGENT_ENGINES__PRELOAD="false",
        VOICEAGENT_SECURITY__CALLERS__ALLOW_UNSIGNED="false",
        VOICEAGENT_SECURITY__CALLERS__SECRET="hunter2",
    )
    result = subprocess.run(
        [sys.executable, "-m", "voiceagent", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "voiceagent: error: security.callers.secret is 7 bytes, too short to sign identity tokens "
        "safely: use at least 32 random bytes (e.g. `openssl rand -hex 32`)"
    )
    assert not (tmp_path / ".data").exists()  # the store was never opened
