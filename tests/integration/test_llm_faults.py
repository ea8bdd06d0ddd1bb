"""A broken LLM endpoint must cost one reply, never the call: `voiceagent serve` (real VAD, ASR and
TTS) talks to an OpenAI-compatible server that fails on cue, and an aiortc caller asks twice.

Per fault: the first question meets the fault, the node answers it as well as it can (the
fallback line if nothing was said yet, what was already said otherwise), goes back to listening,
and the second question gets the normal answer on the same call. One node for all the faults and
one short call each, so one mode that leaves the call deaf does not hide how the others behave.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.engines.conftest import silence, synthesize_speech
from tests.integration.broken_llm import PARTIAL_FIRST, BrokenLLM, Mode
from tests.serve_process import ServeProcess
from tests.transport.client import RemoteCall, SpeechSource, call_server

pytestmark = [pytest.mark.integration, pytest.mark.models]

FALLBACK = "Sorry, I lost my train of thought. Could you say that again?"
FIRST_TOKEN_TIMEOUT_S = 2  # the stall fault waits this out once per run
QUESTIONS = ("What is two plus two?", "Can you tell me what two plus two is?")
END_OF_TURN_PAUSE_S = 1.5  # silence after each question: the VAD needs ~0.5 s to end the turn
# Generous: a question is ~2 s, the fallback line ~4 s of audio; only a stuck call waits this long.
TURN_DEADLINE_S = 45.0


@dataclass
class Node:
    server: ServeProcess
    llm: BrokenLLM

    @property
    def base(self) -> str:
        return self.server.base_url


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One `voiceagent serve` for every fault, ready (models loaded, LLM warmed) before the calls."""
    workdir = tmp_path_factory.mktemp("llm-faults")
    llm = BrokenLLM()
    base_url = llm.start()
    server = ServeProcess(
        workdir,
        VOICEAGENT_STORE__URL=f"sqlite+aiosqlite:///{workdir}/va.db",
        VOICEAGENT_LLM__BASE_URL=base_url,
        VOICEAGENT_LLM__FIRST_TOKEN_TIMEOUT_S=str(FIRST_TOKEN_TIMEOUT_S),
        VOICEAGENT_LLM__REQUEST_TIMEOUT_S="10",
        VOICEAGENT_CONVERSATION__FALLBACK_LINE=FALLBACK,
    )
    try:
        server.wait_listening(timeout=60)
        server.wait_ok("/readyz", timeout=180, interval=0.3)
        yield Node(server, llm)
    finally:
        server.stop()
        llm.stop()
        print(server.log[-6000:])


async def ask(node: Node, call: RemoteCall, source: SpeechSource, question: str) -> dict[str, Any]:
    """Say ``question`` and a pause; the turn event that answers it, once the node listens again."""
    since = len(call.events)
    log_from = len(node.server.log)
    source.say(synthesize_speech(question) + silence(END_OF_TURN_PAUSE_S))
    try:
        turn = await call.wait_event("turn", since, within_s=TURN_DEADLINE_S)
        await call.wait_event("state", since, within_s=5, state="listening")
    except TimeoutError:
        states = [e["state"] for e in call.events[since:] if e["kind"] == "state"]
        raise AssertionError(
            f"no finished turn for {question!r} (states since: {states}, LLM saw "
            f"{node.llm.questions()}); server log since:\n{node.server.log[log_from:][-4000:]}"
        ) from None
    return turn


def brief(turn: dict[str, Any]) -> str:
    """A turn event's telling fields, whole (pytest cuts a long dict's repr short)."""
    return repr({k: turn.get(k) for k in ("user_text", "agent_text", "fault", "interrupted")})


async def live_state(node: Node, call_id: str) -> str | None:
    async with httpx.AsyncClient(base_url=node.base, timeout=10, headers=node.server.operator) as http:
        calls = (await http.get("/api/calls")).json()
    return next((c["state"] for c in calls if c["call_id"] == call_id), None)


@pytest.mark.parametrize(
    ("mode", "said_first"),
    [
        pytest.param("garbage_after_one", True, id="garbage_after_one"),
        pytest.param("drop_mid_stream", True, id="drop_mid_stream"),
        pytest.param("stall", False, id="stall"),
        pytest.param("http_500", False, id="http_500"),
        pytest.param("non_json", False, id="non_json"),
    ],
)
async def test_a_broken_reply_is_one_bad_turn_and_the_call_goes_on(
    node: Node, mode: Mode, said_first: bool
) -> None:
    node.llm.script(mode, "ok")
    source = SpeechSource()
    call = await call_server(node.base, source, user_id=f"fault-{mode}")
    hung_up = False
    try:
        broken = await ask(node, call, source, QUESTIONS[0])
        said = brief(broken)
        assert broken["user_text"] and not broken["interrupted"], said
        assert (broken.get("fault") or "").startswith("llm: "), said  # the turn says what went wrong
        if said_first:  # what was already said stays, with no apology tacked on
            assert broken["agent_text"].startswith(PARTIAL_FIRST), said
            assert FALLBACK not in broken["agent_text"], said
        else:
            assert broken["agent_text"] == FALLBACK, said
        assert await live_state(node, call.call_id) == "listening"

        answered = await ask(node, call, source, QUESTIONS[1])
        assert "four" in answered["agent_text"].lower() and answered.get("fault") is None, brief(answered)
        assert [(s.mode, bool(s.user_text)) for s in node.llm.questions()] == [(mode, True), ("ok", True)]

        async with httpx.AsyncClient(base_url=node.base, timeout=15, headers=node.server.operator) as http:
            assert (await http.delete(f"/api/calls/{call.call_id}")).status_code == 204
            hung_up = True
            assert call.call_id not in [c["call_id"] for c in (await http.get("/api/calls")).json()]
    finally:
        if not hung_up:  # best effort: the assertion that got us here is what matters
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(base_url=node.base, timeout=15) as http:
                    await http.delete(f"/api/calls/{call.call_id}")
        await call.close()
