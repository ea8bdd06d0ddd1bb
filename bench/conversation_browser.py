"""The realistic conversation benchmark: a scripted 14-turn call from Chromium, timed at the page.

    python -m bench conversation                 # run, merge into bench/results.json
    python -m bench.conversation_browser         # run and print the figures (results.json untouched)
    python -m bench.conversation_browser --keep DIR      # ...and keep the raw recording
    python -m bench.conversation_browser --analyse DIR   # re-analyse a kept recording

The caller (bench/conversation_script.py): pink room noise at -35 dBFS all call long, speech at
-19 dBFS and 0.9x-1.15x speed, three hesitant utterances with 0.6-0.8 s pauses, two barge-ins over
long answers, a cough and an "mm-hm" while the agent talks. The server runs the default config
(configs/default.yaml: max_tokens 256, temperature 0.7; no bench-only caps).

The microphone is the page's own: an init script replaces navigator.mediaDevices.getUserMedia
with a MediaStream from an AudioContext (a MediaStreamAudioDestinationNode fed by the looping noise
plus the clips this module schedules with page.evaluate). So the script reacts to the agent (the
next question waits for the answer to end; a barge-in starts N s into an answer) and knows when
each clip's sound starts and ends on the page clock (Date.now; the clip is scheduled on the
AudioContext clock and mapped at scheduling time). Everything else the page measures itself:
window.__va.levels (agent audio rms every ~5 ms), the data-channel events and their arrival times,
and RTCPeerConnection.getStats().

The server is bench/call_load_server.py's real-model app, started by this module with recorders
for the transport hops (``--serve``; see _install_recorders): arrival of each RTP packet, each
decoded frame, each 16 kHz frame given to the pipeline (and its audio), each VAD result, each
outbound frame handed to aiortc (with the Playout's queue and hold), and the conversation clock's
origin. Same machine: server time.monotonic() is mapped to the page's Date.now() through
time.time(); the hops of a turn add up to its browser v2v within a few tens of ms.

The caller is patient for PATIENCE_S of an answer, then talks over it (counted as an overlong
reply). Keys (conversation_*; each key's note says exactly how it is measured): v2v p50/p95 at
the page, endpointing p50/p95, hesitation splits, premature replies, early turn ends, false
barge-ins (cough, mm-hm), phantom holds and turns (noise), barge-in onset -> silent p50/p95,
missed barge-ins, unanswered turns, reply sentences / loops / overlong replies / stalls, and
one key per transport hop: uplink capture, uplink jitter buffer (aiortc), uplink framing,
uplink queue, VAD hang-over, pacing, downlink, downlink jitter buffer (Chromium, getStats).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.calls_common import REPO, BenchServer, log, wait_until_ready
from bench.conversation_script import RATE, SCRIPT, Clip, clip_of, make_clips, pink_noise
from bench.results import Metric, metric, percentile
from tests.e2e.browser import CHROMIUM, chromium_args

AUDIBLE = 0.005  # rms of window.__va.levels (5.3 ms window): the agent is heard
SILENT = 0.003  # below this for STOP_HOLD_MS: the agent has stopped
STOP_HOLD_MS = 400
FALSE_GAP_MS = 400  # the agent's audio pausing this long right after a cough/mm-hm: a false barge-in
MIN_REACTION_S = 0.15  # no server can silence the agent at the page sooner after the caller's onset
OUT_SOUND = 100  # int16 rms of an outbound 20 ms frame that carries sound (-50 dBFS)
VOICED = 0.5  # conversation.voiced_probability (default)
PATIENCE_S = 15  # the caller talks over an answer still going after this long
OVERLONG = f"talked over an answer still going after {PATIENCE_S} s"
NO_ANSWER_S = 10  # no agent audio this long after the caller stopped: no answer
NO_REPLY_S = 8  # ...and the turn is taken as over when no turn event came in this long
DEADLINE_S = 8 * 60  # the whole call, whatever happens
IN_RATE = 16_000


# -- the server, with transport-hop recorders -------------------------------------------------


class _Hops:
    """Per-process recordings (the bench makes one call per server)."""

    def __init__(self) -> None:
        self.rtp: list[tuple[float, int, int]] = []  # (monotonic, rtp timestamp, seq)
        self.decoded: list[tuple[float, int, int]] = []  # (monotonic, pts, samples) from aiortc
        self.pushed: list[float] = []  # monotonic of each 20 ms 16 kHz frame given to the pipeline
        self.pcm = bytearray()  # ...and its audio
        self.vad: list[tuple[float, float, int]] = []  # (monotonic, probability, samples) per feed
        # (monotonic, int16 rms, seconds still queued in the Playout, held) per outbound frame
        self.out: list[tuple[float, float, float, float]] = []
        self.origins: list[float] = []  # conversation clock origins (loop time = monotonic)
        self.dropped = 0

    def summary(self) -> dict[str, Any]:
        return {
            "wall": time.time(), "mono": time.monotonic(), "rtp": self.rtp, "decoded": self.decoded,
            "pushed": self.pushed, "vad": self.vad, "out": self.out, "origins": self.origins,
            "dropped": self.dropped,
        }  # fmt: skip


HOPS = _Hops()


def _install_recorders() -> None:
    """Wrap (never change) the transport and VAD: each wrapper records a time and calls through."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from voiceagent.engines.vad.silero import SileroVADStream
    from voiceagent.pipeline.conversation import Conversation
    from voiceagent.transport.tracks import InboundAudio, OutboundTrack

    wrapped = [
        (RTCRtpReceiver, "_handle_rtp_packet"), (InboundAudio, "push"), (SileroVADStream, "process"),
        (OutboundTrack, "_next_pcm"),
    ]  # fmt: skip
    missing = [f"{cls.__name__}.{name}" for cls, name in wrapped if not hasattr(cls, name)]
    if missing:  # the call still runs; the hop keys are left out
        print(f"bench server: hop recorders not installed, gone: {', '.join(missing)}", flush=True)
        return

    handle_rtp = RTCRtpReceiver._handle_rtp_packet

    async def _handle_rtp_packet(self: Any, packet: Any, arrival_time_ms: int) -> None:
        HOPS.rtp.append((time.monotonic(), packet.timestamp, packet.sequence_number))
        await handle_rtp(self, packet, arrival_time_ms)

    class _TimedTrack:
        def __init__(self, track: Any) -> None:
            self._track = track

        async def recv(self) -> Any:
            frame = await self._track.recv()
            HOPS.decoded.append((time.monotonic(), int(frame.pts or 0), int(getattr(frame, "samples", 0))))
            return frame

        def __getattr__(self, name: str) -> Any:
            return getattr(self._track, name)

    inbound_init = InboundAudio.__init__

    def _inbound_init(self: Any, track: Any, *args: Any, **kwargs: Any) -> None:
        inbound_init(self, _TimedTrack(track), *args, **kwargs)  # type: ignore[arg-type]

    push = InboundAudio.push

    def _push(self: Any, item: bytes | None) -> None:
        if item is not None:
            HOPS.pushed.append(time.monotonic())
            HOPS.pcm += item
        push(self, item)
        HOPS.dropped = max(HOPS.dropped, self.dropped)

    process = SileroVADStream.process

    async def _process(self: Any, pcm: Any) -> Any:
        fed = time.monotonic()
        result = await process(self, pcm)
        n = len(pcm) // 2 if isinstance(pcm, bytes | bytearray | memoryview) else len(pcm)
        HOPS.vad.append((fed, float(result.probability), n))
        return result

    next_pcm = OutboundTrack._next_pcm

    def _next_pcm(self: Any) -> bytes:
        pcm: bytes = next_pcm(self)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        rms = float(np.sqrt((samples**2).mean())) if len(samples) else 0.0
        # Whether the Playout still had audio for the caller (a pause, not the end of a reply).
        queued = float(getattr(self._source, "queued_s", 0.0) or 0.0)
        HOPS.out.append((time.monotonic(), rms, queued, float(bool(getattr(self._source, "held", False)))))
        return pcm

    conversation_init = Conversation.__init__

    def _conversation_init(self: Any, *args: Any, **kwargs: Any) -> None:
        conversation_init(self, *args, **kwargs)
        origin = getattr(self, "_origin", None)
        if origin is not None:
            HOPS.origins.append(float(origin))

    RTCRtpReceiver._handle_rtp_packet = _handle_rtp_packet  # type: ignore[method-assign]
    InboundAudio.__init__ = _inbound_init  # type: ignore[method-assign]
    InboundAudio.push = _push  # type: ignore[method-assign]
    SileroVADStream.process = _process  # type: ignore[method-assign]
    OutboundTrack._next_pcm = _next_pcm  # type: ignore[method-assign]
    Conversation.__init__ = _conversation_init  # type: ignore[method-assign]


def _serve(port_file: Path) -> None:
    """bench/call_load_server.py's real-model server plus GET /bench/hops and /bench/hops/pcm."""
    from fastapi import Response

    import voiceagent.server.app as app_module
    from bench import call_load_server

    _install_recorders()
    create_app = app_module.create_app

    def _create_app(runtime: Any, **kwargs: Any) -> Any:
        app = create_app(runtime, **kwargs)

        async def hops() -> dict[str, Any]:
            return HOPS.summary()

        async def hops_pcm() -> Response:
            return Response(bytes(HOPS.pcm), media_type="application/octet-stream")

        app.add_api_route("/bench/hops", hops, methods=["GET"], include_in_schema=False)
        app.add_api_route("/bench/hops/pcm", hops_pcm, methods=["GET"], include_in_schema=False)
        return app

    app_module.create_app = _create_app  # call_load_server imports it when it starts serving
    asyncio.run(call_load_server._serve("real", port_file))


def _default_llm() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    return {"max_tokens": data["llm"]["max_tokens"], "temperature": data["llm"]["temperature"]}


def start_server(timeout_s: float = 240) -> BenchServer:
    """Like bench.calls_common.start_server("real") but with the default LLM settings (that one
    pins max_tokens 40 and temperature 0 for the friendly figures) and the hop recorders."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-conversation-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "VOICEAGENT_STORE__URL": f"sqlite+aiosqlite:///{workdir}/va.db",
            "VOICEAGENT_SERVER__LOG_LEVEL": "warning",
        }
    )
    port_file = workdir / "port"
    with (workdir / "server.log").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.conversation_browser", "--serve", "--port-file", str(port_file)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return wait_until_ready(proc, workdir, timeout_s)


def _fetch(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read()
        return data


# -- the page -----------------------------------------------------------------------------------

# Runs before the call page's own script: getUserMedia answers with an AudioContext's stream.
MIC_INIT = """(() => {
  const mic = window.__mic = {ctx: null, dest: null, buffers: {}, plays: [], noise: null};
  mic.ensure = () => {
    if (!mic.ctx) {
      mic.ctx = new AudioContext({sampleRate: RATE, latencyHint: "interactive"});
      mic.dest = mic.ctx.createMediaStreamDestination();
      mic.dest.channelCount = 1;
    }
    return mic.ctx;
  };
  mic.load = (id, b64) => {
    const ctx = mic.ensure();
    const bin = atob(b64);
    const n = bin.length >> 1;
    const buf = ctx.createBuffer(1, n, RATE);
    const ch = buf.getChannelData(0);
    for (let i = 0; i < n; i++) {
      let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
      if (v >= 32768) v -= 65536;
      ch[i] = v / 32768;
    }
    mic.buffers[id] = buf;
    return n;
  };
  mic.startNoise = (id) => {
    const src = mic.ctx.createBufferSource();
    src.buffer = mic.buffers[id];
    src.loop = true;
    src.connect(mic.dest);
    src.start();
    mic.noise = src;
    return mic.ctx.state;
  };
  // Start a clip `lead` seconds from now on the AudioContext clock; its page time (Date.now) is
  // read together with the context time, so wallStart is when the clip's first sample is rendered
  // into the microphone track (to a render quantum / callback period).
  mic.play = (id, lead) => {
    const ctx = mic.ctx;
    const src = ctx.createBufferSource();
    src.buffer = mic.buffers[id];
    src.connect(mic.dest);
    const at = ctx.currentTime + lead;
    src.start(at);
    const ctxNow = ctx.currentTime, now = Date.now(), out = ctx.getOutputTimestamp();
    const rec = {id, ctxStart: at, wallStart: now + (at - ctxNow) * 1000, ctxNow, now,
                 outContext: out.contextTime, outWall: performance.timeOrigin + out.performanceTime,
                 baseLatency: ctx.baseLatency, state: ctx.state};
    mic.plays.push(rec);
    return rec;
  };
  const devices = navigator.mediaDevices;
  const original = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    if (!constraints || !constraints.audio) return original(constraints);
    const ctx = mic.ensure();
    await ctx.resume();
    return new MediaStream(mic.dest.stream.getAudioTracks());
  };
})();""".replace("RATE", str(RATE))

PULL = """(since) => {
  const va = window.__va;
  return {
    levels: va.levels.filter(l => l[0] > since[0]),
    events: va.events.slice(since[1]), times: va.eventTimes.slice(since[1]),
    state: va.state, callState: va.callState, error: va.error, now: Date.now(),
  };
}"""

STATS = """async () => {
  const pc = window.__va.pc;
  if (!pc) return null;
  const out = {now: Date.now()};
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') out.inbound = {
      jitterBufferDelay: r.jitterBufferDelay, jitterBufferEmittedCount: r.jitterBufferEmittedCount,
      jitterBufferTargetDelay: r.jitterBufferTargetDelay,
      jitterBufferMinimumDelay: r.jitterBufferMinimumDelay, jitter: r.jitter,
      packetsReceived: r.packetsReceived, packetsLost: r.packetsLost,
      concealedSamples: r.concealedSamples, totalSamplesReceived: r.totalSamplesReceived};
    if (r.type === 'outbound-rtp' && r.kind === 'audio') out.outbound = {
      packetsSent: r.packetsSent, bytesSent: r.bytesSent};
    if (r.type === 'remote-inbound-rtp' && r.kind === 'audio') out.remoteInbound = {
      roundTripTime: r.roundTripTime, jitter: r.jitter};
  });
  return out;
}"""


def _b64(audio: np.ndarray) -> str:
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


@dataclass
class Played:
    name: str
    index: int  # into SCRIPT
    wall_start: float  # page ms of the clip's first sample
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


class Call:
    """The page as the script sees it, pulled every POLL_S; every wait is time-boxed."""

    POLL_S = 0.1

    def __init__(self, page: Any) -> None:
        self.page = page
        self.levels: list[list[float]] = []
        self.audible: list[float] = []  # page ms of every audible level sample, ascending
        self.events: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.finals: list[tuple[float, int | None]] = []  # (arrival, turn index) of final transcripts
        self.turns: list[tuple[float, int | None]] = []  # (arrival, index) of 'turn' events
        self.stats: list[dict[str, Any]] = []
        self.state = "idle"
        self.now = 0.0
        self._last_stats = 0.0

    async def pull(self) -> None:
        since = [self.levels[-1][0] if self.levels else 0, len(self.events)]
        data = await asyncio.wait_for(self.page.evaluate(PULL, since), 15)
        self.levels += data["levels"]
        self.audible += [t for t, level in data["levels"] if level > AUDIBLE]
        self.events += data["events"]
        self.times += data["times"]
        for e, t in zip(data["events"], data["times"], strict=False):
            if e.get("kind") == "turn":
                self.turns.append((t, e.get("index")))
            elif e.get("kind") == "transcript" and e.get("final"):
                self.finals.append((t, e.get("index")))
        self.state, self.now = data["state"], data["now"]
        if data["error"]:
            raise RuntimeError(f"the call page reports: {data['error']}")
        if data["callState"].startswith(("ended", "failed")):
            raise RuntimeError(f"the call ended under the script: {data['callState']}")
        if time.monotonic() - self._last_stats > 2.0:
            self._last_stats = time.monotonic()
            got = await asyncio.wait_for(self.page.evaluate(STATS), 15)
            if got:
                self.stats.append(got)

    async def tick(self) -> None:
        await asyncio.sleep(self.POLL_S)
        await self.pull()

    def first_audible(self, after_ms: float) -> float | None:
        i = bisect.bisect_right(self.audible, after_ms)
        return self.audible[i] if i < len(self.audible) else None

    def quiet_for(self) -> float:
        return self.now - (self.audible[-1] if self.audible else 0.0)

    def sounding_for(self) -> float:
        """How long the agent has been audible without a gap of 120 ms (mid-phrase, not at a
        sentence's end), 0 if it is quiet now."""
        if self.quiet_for() >= 60:
            return 0.0
        i = len(self.audible) - 1
        while i > 0 and self.audible[i] - self.audible[i - 1] < 120:
            i -= 1
        return self.now - self.audible[i]

    def answered(self, onset_ms: float, end_ms: float) -> bool:
        """The answer to the speech from ``onset_ms`` to ``end_ms`` is over: the turn event of
        the last final transcript since the onset has come (or no final came in NO_REPLY_S), the
        agent is listening and has been quiet for 0.8 s. (A turn event alone may be the reply
        the speech cut.)"""
        if not (self.state == "listening" and self.quiet_for() >= 800):
            return False
        finals = [(t, index) for t, index in self.finals if t > onset_ms]
        if not finals:
            return self.now - end_ms > NO_REPLY_S * 1000
        final_t, index = finals[-1]
        return any(t >= final_t and (index is None or i == index) for t, i in self.turns)

    async def wait_answered(self, onset_ms: float, end_ms: float) -> str:
        """Until the answer is over; "" then, else why the caller goes on anyway (the caller's
        patience is PATIENCE_S of answer, or NO_ANSWER_S with none)."""
        limit = time.monotonic() + PATIENCE_S + NO_ANSWER_S
        while time.monotonic() < limit:
            await self.tick()
            if self.answered(onset_ms, end_ms):
                return ""
            onset = self.first_audible(end_ms + 150)
            if onset is not None and self.now - onset > PATIENCE_S * 1000:
                return OVERLONG
            if onset is None and self.now - end_ms > NO_ANSWER_S * 1000:
                return "no answer"
        return "time-box"

    async def wait_into_answer(self, onset_ms: float, end_ms: float, into_s: float) -> bool:
        """Until the answer to speech that ended at ``end_ms`` has been audible for ``into_s``
        and is sounding now; False if it ends (or never starts) first."""
        limit = time.monotonic() + NO_ANSWER_S + into_s + 2
        while time.monotonic() < limit:
            await self.tick()
            onset = self.first_audible(end_ms + 150)  # not the tail of what played before
            if onset is None:
                if self.now - end_ms > NO_ANSWER_S * 1000:
                    return False
                continue
            if self.answered(onset_ms, end_ms):
                return False
            if self.now >= onset + into_s * 1000 and self.sounding_for() >= 400:
                return True
        return False

    async def sleep_until(self, page_ms: float) -> None:
        limit = time.monotonic() + max(0.0, (page_ms - self.now) / 1000) + 5
        while self.now < page_ms and time.monotonic() < limit:
            await self.tick()


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its live descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(times.get(pid, 0.0) for pid in tree)


def _machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # all but idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


async def converse(base: str, clips: list[Clip], server_pid: int) -> dict[str, Any]:
    """Play the script into one call; return what the page saw and when each clip played."""
    from playwright.async_api import async_playwright

    args = [a for a in chromium_args(Path("/dev/null")) if not a.startswith("--use-file-for-fake-audio")]
    played: list[Played] = []
    started = time.monotonic()
    cpu: dict[str, float] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = await browser.new_page()
            await page.add_init_script(MIC_INIT)
            await page.goto(f"{base}/call?ec=0&user=bench-conversation")
            await page.evaluate("([id, b]) => window.__mic.load(id, b)", ["noise", _b64(pink_noise())])
            for clip in clips:
                await page.evaluate(
                    "([id, b]) => window.__mic.load(id, b)", [clip.step.name, _b64(clip.audio)]
                )
            await page.click("#start")
            await page.wait_for_function(
                "() => window.__va && window.__va.pc && window.__va.pc.connectionState === 'connected'",
                timeout=20_000,
            )
            state = await page.evaluate("() => window.__mic.startNoise('noise')")
            if state != "running":
                raise RuntimeError(f"the microphone's AudioContext is {state}, not running")
            call = Call(page)
            await call.pull()
            cpu_start = (
                time.monotonic(), _tree_cpu_s(os.getpid()) - _tree_cpu_s(server_pid), _tree_cpu_s(server_pid),
                _machine_busy_s(),
            )  # fmt: skip
            await call.sleep_until(call.now + 1500)  # the caller settles in, the noise flows
            said: tuple[float, float] | None = None  # (onset, end) of the last clip to answer
            for i, clip in enumerate(clips):
                step, note = clip.step, ""
                if time.monotonic() - started > DEADLINE_S:
                    log(f"conversation: deadline reached, {len(clips) - i} step(s) not played")
                    break
                if step.after == "reply":
                    if said is not None:
                        note = await call.wait_answered(*said)
                    await call.sleep_until(call.now + step.gap_s * 1000)
                elif said is None or not await call.wait_into_answer(*said, step.into_s):
                    if not step.user_turn:
                        log(f"  {step.name}: not played (the agent was not talking)")
                        played.append(Played(step.name, i, float("nan"), "not played: the agent was silent"))
                        continue
                    note = "the answer ended before the barge-in"
                raw = await page.evaluate("([id, lead]) => window.__mic.play(id, lead)", [step.name, 0.03])
                played.append(Played(step.name, i, raw["wallStart"], note, raw))
                log(f"  {step.name} ({step.kind}, {clip.duration_s:.1f} s){' - ' + note if note else ''}")
                await call.sleep_until(raw["wallStart"] + clip.duration_s * 1000 + 20)
                if step.user_turn:
                    said = (raw["wallStart"] + clip.onset_s * 1000, raw["wallStart"] + clip.end_s * 1000)
            final_note = await call.wait_answered(*said) if said is not None else ""
            await call.sleep_until(call.now + 500)
            await call.pull()
            server_stats = json.loads(await asyncio.to_thread(_fetch, base + "/bench/stats"))
            wall = time.monotonic() - cpu_start[0]
            server_cpu = _tree_cpu_s(server_pid)
            cpu = {
                "wall_s": wall,
                "server_s": server_cpu - cpu_start[2],
                "bench_and_browser_s": _tree_cpu_s(os.getpid()) - server_cpu - cpu_start[1],
            }
            cpu["others_s"] = _machine_busy_s() - cpu_start[3] - cpu["server_s"] - cpu["bench_and_browser_s"]
            await page.evaluate("() => window.__hangup && window.__hangup()")
        finally:
            await browser.close()
    calls = list(server_stats.get("calls", {}).values())
    return {
        "levels": call.levels, "events": call.events, "times": call.times, "stats": call.stats,
        "played": [p.__dict__ for p in played], "cpu": cpu, "final_note": final_note,
        "server": {"loop_lag_max_s": server_stats.get("loop_lag_max_s"), **(calls[0] if calls else {})},
    }  # fmt: skip


# -- analysis -----------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if _words(s)]


def _loops(text: str, earlier: list[str]) -> str:
    """Why a reply counts as a loop: a sentence said twice, an 8-word run said twice, or the
    same reply as an earlier one ("" if none)."""
    said = [" ".join(_words(s)) for s in _sentences(text)]
    repeated = [s for s in set(said) if len(s.split()) >= 3 and said.count(s) > 1]
    if repeated:
        return f"sentence repeated: {repeated[0]!r}"
    words = _words(text)
    grams = [" ".join(words[i : i + 8]) for i in range(len(words) - 7)]
    if len(grams) != len(set(grams)):
        return "an 8-word run repeated"
    if words and " ".join(words) in [" ".join(_words(e)) for e in earlier]:
        return "the same reply as before"
    return ""


class Levels:
    def __init__(self, levels: list[list[float]]) -> None:
        self.a = np.array(levels, dtype=np.float64).reshape(-1, 2)

    def between(self, a: float, b: float) -> np.ndarray:
        return self.a[(self.a[:, 0] >= a) & (self.a[:, 0] < b)]

    def audible(self, a: float, b: float) -> bool:
        w = self.between(a, b)
        return bool(len(w)) and float(w[:, 1].max()) > AUDIBLE

    def first_audible(self, a: float, b: float) -> float | None:
        w = self.between(a, b)
        idx = np.flatnonzero(w[:, 1] > AUDIBLE)
        return float(w[idx[0], 0]) if len(idx) else None

    def stop(self, a: float, b: float, hold_ms: float = STOP_HOLD_MS) -> float | None:
        """First sample from which the level stays < SILENT for ``hold_ms``."""
        w = self.between(a, b + hold_ms)
        loud = w[:, 1] >= SILENT
        for i in range(len(w)):
            if w[i, 0] >= b:
                break
            j = np.searchsorted(w[:, 0], w[i, 0] + hold_ms)
            if j < len(w) and not loud[i:j].any():
                return float(w[i, 0])
        return None

    def gaps(self, a: float, b: float, min_ms: float) -> list[tuple[float, float]]:
        """Silences (< SILENT) of at least ``min_ms`` with the agent audible on both sides."""
        w = self.between(a, b)
        out, start = [], None
        for t, level in w:
            if level < SILENT:
                start = t if start is None else start
            else:
                if start is not None and t - start >= min_ms and self.audible(start - 300, start):
                    out.append((start, t))
                start = None
        return out


@dataclass
class ServerHops:
    """The server recordings on the page clock (ms)."""

    offset_ms: float  # page ms = server monotonic s * 1000 + offset_ms
    rtp_by_ts: dict[int, float]
    decoded: np.ndarray  # (page ms, pts, first 48 kHz sample index)
    pushed: np.ndarray  # page ms of each 20 ms frame
    received: np.ndarray  # float audio the pipeline got, 16 kHz
    vad: np.ndarray  # (page ms fed, probability, first 16 kHz sample index)
    out: np.ndarray  # (page ms, int16 rms, seconds queued after it, held)
    origin_ms: float | None  # the conversation clock's 0 on the page clock
    dropped: int

    @classmethod
    def load(cls, summary: dict[str, Any], pcm: bytes) -> ServerHops:
        offset = (summary["wall"] - summary["mono"]) * 1000
        rtp = summary["rtp"]
        first_ts = rtp[0][1] if rtp else 0
        rtp_by_ts: dict[int, float] = {}
        for t, ts, _seq in rtp:
            rtp_by_ts.setdefault((ts - first_ts) % (1 << 32), t * 1000 + offset)
        decoded = np.array(summary["decoded"], dtype=np.float64).reshape(-1, 3)
        decoded[:, 0] = decoded[:, 0] * 1000 + offset
        decoded[:, 2] = np.concatenate([[0], np.cumsum(decoded[:-1, 2])]) if len(decoded) else []
        vad = np.array(summary["vad"], dtype=np.float64).reshape(-1, 3)
        vad[:, 0] = vad[:, 0] * 1000 + offset
        vad[:, 2] = np.concatenate([[0], np.cumsum(vad[:-1, 2])]) if len(vad) else []
        out = np.array(summary["out"], dtype=np.float64).reshape(-1, 4)
        out[:, 0] = out[:, 0] * 1000 + offset
        origins = summary["origins"]
        return cls(
            offset_ms=offset,
            rtp_by_ts=rtp_by_ts,
            decoded=decoded,
            pushed=np.array(summary["pushed"], dtype=np.float64) * 1000 + offset,
            received=np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768,
            vad=vad,
            out=out,
            origin_ms=origins[-1] * 1000 + offset if origins else None,
            dropped=int(summary["dropped"]),
        )

    def locate(self, clip: Clip, wall_start: float) -> int | None:
        """16 kHz sample index in the received stream where the clip's first sample landed:
        the clip's energy envelope matched against what the server got (Opus keeps envelopes,
        not waveforms), searched +-0.6 s around the first frame pushed 0.15 s after the page
        started it."""
        if not len(self.pushed):
            return None
        guess = int(np.searchsorted(self.pushed, wall_start + 150)) * 320
        ref = clip.audio[:: RATE // IN_RATE].astype(np.float64)
        lo = max(0, guess - int(0.6 * IN_RATE))
        hi = min(len(self.received), guess + int(0.6 * IN_RATE) + len(ref))
        if hi - lo < len(ref) + 160:
            return None

        def env(x: np.ndarray, win: int) -> np.ndarray:
            c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
            out: np.ndarray = np.sqrt(np.maximum(c[win:] - c[:-win], 0) / win)
            return out

        e_ref, e_rx = env(ref, 80), env(self.received[lo:hi], 80)
        e_ref = e_ref - e_ref.mean()
        n = len(e_rx) + len(e_ref)
        size = 1 << (n - 1).bit_length()
        corr = np.fft.irfft(np.fft.rfft(e_rx - e_rx.mean(), size) * np.conj(np.fft.rfft(e_ref, size)), size)
        lags = len(e_rx) - len(e_ref) + 1
        return lo + int(np.argmax(corr[:lags]))

    def at_sample(self, pos: int) -> dict[str, float] | None:
        """Where the audio at 16 kHz stream index ``pos`` was on each hop (page ms)."""
        frame = pos // 320
        if frame >= len(self.pushed) or not len(self.decoded) or not len(self.vad):
            return None
        k = int(np.searchsorted(self.decoded[:, 2], pos * 3, side="right")) - 1
        v = int(np.searchsorted(self.vad[:, 2], pos, side="right")) - 1
        if k < 0 or v < 0:
            return None
        rtp = self.rtp_by_ts.get(int(self.decoded[k, 1]))
        if rtp is None:
            return None
        return {"rtp": rtp, "decoded": float(self.decoded[k, 0]), "pushed": float(self.pushed[frame]),
                "fed": float(self.vad[v, 0]), "vad_index": v}  # fmt: skip

    def speech_end(self, vad_index: int, clip_start: int) -> int:
        """16 kHz index where the conversation's silence begins for speech ending in feed
        ``vad_index``: the first feed of the unvoiced run that contains or follows it."""
        v = vad_index
        while v < len(self.vad) and self.vad[v, 1] >= VOICED:
            v += 1
        while v > 0 and self.vad[v - 1, 1] < VOICED and self.vad[v - 1, 2] > clip_start:
            v -= 1
        return int(self.vad[min(v, len(self.vad) - 1), 2])

    def _runs(self, mask: np.ndarray, min_ms: float = FALSE_GAP_MS) -> list[tuple[float, float]]:
        """(start, end) page ms of runs of outbound frames where ``mask`` holds, >= ``min_ms``."""
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        runs = [
            (float(self.out[a, 0]), float(self.out[b - 1, 0]) + 20)
            for a, b in zip(edges[::2], edges[1::2], strict=False)
        ]
        return [(a, b) for a, b in runs if b - a >= min_ms]

    @property
    def has_hold(self) -> bool:
        """The server's Playout has a hold (it did not always)."""
        return bool((self.out[:, 3] > 0).any())

    def holds(self) -> list[tuple[float, float]]:
        """Silence sent because the Playout was held (voice over the agent being judged, or a
        prepared reply waiting for the turn to end), any length."""
        return self._runs(self.out[:, 3] > 0, min_ms=20)

    def pauses(self) -> list[tuple[float, float]]:
        """Silence while the Playout still held audio (for servers without a hold)."""
        silent = self.out[:, 1] <= OUT_SOUND
        return self._runs(silent & (self.out[:, 2] >= 0.02))

    def stalls(self) -> list[tuple[float, float]]:
        """Silences with the Playout empty and sound within 200 ms on both sides."""
        silent = self.out[:, 1] <= OUT_SOUND
        sound_at = self.out[~silent, 0]
        out = []
        for a, b in self._runs(silent & (self.out[:, 2] < 0.02) & (self.out[:, 3] == 0)):
            i = np.searchsorted(sound_at, a)
            j = np.searchsorted(sound_at, b - 20)
            if i > 0 and a - sound_at[i - 1] <= 200 and j < len(sound_at) and sound_at[j] - b <= 200:
                out.append((a, b))
        return out

    def first_sound_out(self, after_ms: float) -> float | None:
        idx = np.flatnonzero((self.out[:, 0] >= after_ms) & (self.out[:, 1] > OUT_SOUND))
        return float(self.out[idx[0], 0]) if len(idx) else None


def _p(xs: list[float], pct: float) -> float:
    return percentile(xs, pct)


def analyse(rec: dict[str, Any], clips: list[Clip], hops: ServerHops | None) -> dict[str, Metric]:
    levels = Levels(rec["levels"])
    events, times = rec["events"], rec["times"]
    played = [p for p in rec["played"] if p["wall_start"] == p["wall_start"]]  # not NaN
    by_name = {c.step.name: c for c in clips}
    at = list(zip(events, times, strict=False))

    # The conversation clock (events' at_s) on the page clock.
    origin_events = min((t - e["at_s"] * 1000 for e, t in at if "at_s" in e), default=None)
    origin = hops.origin_ms if hops and hops.origin_ms is not None else origin_events
    if hops and hops.origin_ms is not None and origin_events is not None:
        log(f"clock check: conversation origin from the server clock vs from event arrival: "
            f"{origin_events - hops.origin_ms:+.1f} ms (event downlink, >= 0)")  # fmt: skip

    # Final transcripts: (arrival, text, user-turn index; None from servers that do not send it).
    finals = [
        (t, e["text"], e.get("index")) for e, t in at if e.get("kind") == "transcript" and e.get("final")
    ]  # fmt: skip
    user_turns = [(t, e) for e, t in at if e.get("kind") == "turn" and e.get("initiator", "user") == "user"]
    used: set[int] = set()

    def turn_for(final_t: float, text: str, index: int | None) -> dict[str, Any] | None:
        """The turn event of the reply to a final transcript: same index (when sent) and text."""
        for i, (t, e) in enumerate(user_turns):
            same = index is None or e.get("index") == index
            if i not in used and same and t >= final_t and e.get("user_text", "").strip() == text.strip():
                used.add(i)
                return dict(e)
        return None

    reply_of = {ft: turn_for(ft, text, index) for ft, text, index in finals}
    user_plays = [p for p in played if by_name[p["name"]].step.user_turn]
    rows: list[dict[str, Any]] = []
    found: dict[str, list[Any]] = {
        "splits": [], "premature": [], "missed": [], "unanswered": [], "overlong": [], "early_ends": [],
    }  # fmt: skip
    claimed: list[tuple[float, float]] = []
    for n, p in enumerate(user_plays):
        clip = by_name[p["name"]]
        step = clip.step
        onset = p["wall_start"] + clip.onset_s * 1000
        end = p["wall_start"] + clip.end_s * 1000
        until = user_plays[n + 1]["wall_start"] if n + 1 < len(user_plays) else float("inf")
        claimed.append((onset, min(until, end + 15_000)))
        mine = [(t, text) for t, text, _ in finals if onset <= t < until]
        turns_heard = {
            index if index is not None else k for k, (t, _, index) in enumerate(finals) if onset <= t < until
        }
        # The agent's voice for a reply before the caller finished: a 'speaking' event, agent
        # audio over a clip it was quiet at the start of, or a heard answer to a fragment.
        speaking_early = any(
            e.get("kind") == "state" and e.get("state") == "speaking" and onset < t < end for e, t in at
        )
        barge = step.kind == "barge_in" and not p["note"]
        # Agent audio during a clip started while the agent was idle (listening, quiet for 1 s).
        states = [e["state"] for e, t in at if e.get("kind") == "state" and t <= onset]
        idle = (not states or states[-1] == "listening") and not levels.audible(onset - 1000, onset)
        talking_early = idle and levels.audible(onset, end)
        fragment_heard = [
            text for t, text in mine[:-1] if (reply_of.get(t) or {}).get("agent_text_heard", "").strip()
        ]
        row: dict[str, Any] = {"name": step.name, "kind": step.kind, "finals": [t for _, t in mine]}
        # How the answer ended: talked over by an impatient caller, or cut by a planned barge-in.
        after = user_plays[n + 1] if n + 1 < len(user_plays) else None
        if (after["note"] if after else rec.get("final_note")) == OVERLONG:
            found["overlong"].append(step.name)
            row["overlong"] = True
        row["planned_cut"] = bool(
            after and by_name[after["name"]].step.kind == "barge_in" and not after["note"]
        )
        if speaking_early or talking_early or fragment_heard:
            found["premature"].append(step.name)
            row["premature"] = True
        if any(t < end for t, _ in mine):  # the server ended the turn while the caller still spoke
            found["early_ends"].append(step.name)
        if step.kind == "hesitation" and len(turns_heard) > 1:
            found["splits"].append(step.name)
        prefixes = [
            text for _, text in mine[:-1]
            if 0 < len(_words(text)) < len(_words(step.text))
            and _words(step.text)[: len(_words(text))] == _words(text)
        ]  # fmt: skip
        if prefixes:
            row["prefix_turns"] = prefixes
        if not mine:
            found["unanswered"].append(step.name)
        reply = reply_of.get(mine[-1][0]) if mine else None
        row["reply"] = reply
        reply_onset = levels.first_audible(end, min(until, end + 20_000))
        quiet_at_end = not levels.audible(end - 300, end)
        if reply_onset is not None and quiet_at_end and not row.get("premature"):
            row["v2v"] = (reply_onset - end) / 1000
        if barge:
            talking = levels.audible(onset - 600, onset)
            stop = levels.stop(onset, onset + 5000) if talking else None
            interrupted = [t for e, t in at if e.get("kind") == "interrupted" and onset <= t < end + 2000]
            if stop is None or not interrupted:
                found["missed"].append(step.name)
            else:
                row["stop"] = (stop - onset) / 1000
                row["decision"] = (interrupted[0] - onset) / 1000
                # Silent sooner than the server can react (uplink, VAD, downlink): the clip met
                # the end of a phrase, not a reaction; left out of the figure.
                row["stop_in_pause"] = row["stop"] < MIN_REACTION_S
        m = (reply or {}).get("metrics") or {}
        row.update(
            {k: m.get(k) for k in ("endpointing_s", "asr_s", "llm_first_token_s", "tts_first_audio_s")}
        )
        row["server_v2v"] = m.get("voice_to_voice_s")
        if hops is not None and "v2v" in row and origin is not None:
            row.update(
                _hops_for(hops, clip, p["wall_start"], end, reply_onset, at, origin, row["server_v2v"])
            )
        rows.append(row)
        log(_describe(row, mine))

    # Cough and mm-hm: nothing may stop, pause or answer.
    false_barge: list[str] = []
    for p in played:
        clip = by_name[p["name"]]
        if clip.step.user_turn:
            continue
        onset = p["wall_start"] + clip.onset_s * 1000
        end = p["wall_start"] + clip.end_s * 1000
        claimed.append((onset, end + 3000))
        why = []
        if any(e.get("kind") == "interrupted" and onset <= t < end + 2000 for e, t in at):
            why.append("interrupted")
        verdicts = [
            e.get("reason") for e, t in at
            if e.get("kind") == "barge_in" and e.get("phase") == "rejected" and onset <= t < end + 4000
        ]  # fmt: skip
        if hops is not None and hops.has_hold:
            # The server cannot react before the sound reaches it (~0.1 s) and VAD hears it.
            held = [r for r in hops.holds() if onset <= r[0] < end + 1000]
            if held:
                length = held[0][1] - held[0][0]
                text = (
                    f"agent held {length:.0f} ms from {held[0][0] - onset:+.0f} ms "
                    f"(verdict {verdicts or '-'})"
                )
                if length >= FALSE_GAP_MS:
                    why.append(text)
                else:
                    log(f"  {clip.step.name}: {text}, under {FALSE_GAP_MS} ms")
        elif hops is not None:
            pauses = [r for r in hops.pauses() if onset + 100 <= r[0] < end + 1000]
            if pauses:
                why.append(f"agent paused {pauses[0][1] - pauses[0][0]:.0f} ms with audio queued, "
                           f"{pauses[0][0] - onset:+.0f} ms after the onset")  # fmt: skip
        else:
            gaps = [g for g in levels.gaps(onset + 150, end + 3000, FALSE_GAP_MS) if g[0] < end + 600]
            if gaps:
                why.append(f"agent silent {gaps[0][1] - gaps[0][0]:.0f} ms from {gaps[0][0] - onset:+.0f} ms")
        if any(onset <= t < end + 3000 for t, _, _ in finals):
            why.append("transcribed as a turn")
        if why:
            false_barge.append(f"{clip.step.name} ({', '.join(why)})")
        log(f"  {clip.step.name}: {'FALSE BARGE-IN: ' + '; '.join(why) if why else 'ignored, as it should'}")
    found["false_barge"] = false_barge
    found["phantom"] = [text for t, text, _ in finals if not any(a <= t < b for a, b in claimed)]
    # Voice over the agent suspected when the caller made no sound (room noise, echo).
    sounding = [
        (p["wall_start"] + by_name[p["name"]].onset_s * 1000,
         p["wall_start"] + by_name[p["name"]].end_s * 1000 + 1500)
        for p in played
    ]  # fmt: skip
    found["phantom_holds"] = [
        f"{(t - times[0]) / 1000:.1f} s" for e, t in at
        if e.get("kind") == "barge_in" and e.get("phase") == "suspected"
        and not any(a <= t < b for a, b in sounding)
    ]  # fmt: skip
    if hops is not None:
        turn_ms = (
            sorted(origin + e["at_s"] * 1000 for e, _ in at if e.get("kind") == "turn") if origin else []
        )
        found["stalls"] = [
            r for r in hops.stalls() if bisect.bisect(turn_ms, r[0]) == bisect.bisect(turn_ms, r[1])
        ]

    # Replies: sentences of each answer to a scripted turn (not those cut by a planned barge-in),
    # loops in every reply.
    counts: list[int] = []
    for row in rows:
        reply = row.get("reply") or {}
        if reply.get("agent_text") and not row.get("planned_cut"):
            counts.append(len(_sentences(reply["agent_text"])))
            row["sentences"] = counts[-1]
    loops: list[str] = []
    earlier: list[str] = []
    for _, e in user_turns:
        said = str(e.get("agent_text", ""))
        loop = _loops(said, earlier)
        if loop:
            loops.append(f"turn {e.get('index')}: {loop}")
        earlier.append(said)
    found["sentences"], found["loops"] = counts, loops
    return _metrics(rows, found, rec, hops, len(played))


def _hops_for(
    hops: ServerHops,
    clip: Clip,
    wall_start: float,
    end_ms: float,
    reply_onset: float | None,
    at: list[tuple[dict[str, Any], float]],
    origin: float,
    server_v2v: float | None,
) -> dict[str, float]:
    start = hops.locate(clip, wall_start)
    if start is None:
        return {}
    end_pos = start + int(clip.end_s * IN_RATE)
    where = hops.at_sample(end_pos)
    if where is None:
        return {}
    out: dict[str, float] = {
        "hop_capture": (where["rtp"] - end_ms) / 1000,
        "hop_server_jitter": (where["decoded"] - where["rtp"]) / 1000,
        "hop_framing": (where["pushed"] - where["decoded"]) / 1000,
        "hop_queue": (where["fed"] - where["pushed"]) / 1000,
        "hop_hangover": (hops.speech_end(int(where["vad_index"]), start) - end_pos) / IN_RATE,
    }
    speaking = [
        origin + e["at_s"] * 1000 for e, t in at
        if e.get("kind") == "state" and e.get("state") == "speaking" and t > end_ms
    ]  # fmt: skip
    if speaking and reply_onset is not None:
        sent = hops.first_sound_out(speaking[0])
        if sent is not None:
            out["hop_pacing"] = (sent - speaking[0]) / 1000
            out["hop_downlink"] = (reply_onset - sent) / 1000
        if server_v2v is not None:
            # Where the server's v2v clock started (speech_end), seen from the page's speech end.
            out["uplink_vad_total"] = (speaking[0] - server_v2v * 1000 - end_ms) / 1000
    return out


def _describe(row: dict[str, Any], mine: list[tuple[float, str]]) -> str:
    parts = [f"  {row['name']} ({row['kind']}):"]
    if "v2v" in row:

        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        parts.append(
            f"v2v {row['v2v']:.3f} s (server {s(row['server_v2v'])}, endpointing {s(row['endpointing_s'])})"
        )
    else:
        parts.append("no v2v")
    if "stop" in row:
        parts.append(f"barge-in: silent {row['stop']:.3f} s after onset")
    if row.get("premature"):
        parts.append("PREMATURE")
    if len(mine) > 1:
        parts.append(f"{len(mine)} turns")
    parts.append(f"heard {[t for _, t in mine]}")
    reply = row.get("reply") or {}
    if reply.get("agent_text"):
        parts.append(f"-> {reply['agent_text'][:90]!r}")
    return " ".join(parts)


def _jitter_buffer(stats: list[dict[str, Any]]) -> tuple[float | None, list[float], float | None]:
    """Chromium's inbound jitter buffer: whole-call mean delay (s per emitted sample), the mean
    of each ~2 s window, and the last target delay."""
    inbound = [
        s["inbound"] for s in stats if s.get("inbound") and s["inbound"].get("jitterBufferEmittedCount")
    ]
    if len(inbound) < 2:
        return None, [], None
    windows = []
    for a, b in itertools.pairwise(inbound):
        count = b["jitterBufferEmittedCount"] - a["jitterBufferEmittedCount"]
        if count > 0:
            windows.append((b["jitterBufferDelay"] - a["jitterBufferDelay"]) / count)
    first, last = inbound[0], inbound[-1]
    count = last["jitterBufferEmittedCount"] - first["jitterBufferEmittedCount"]
    mean = (last["jitterBufferDelay"] - first["jitterBufferDelay"]) / count if count > 0 else None
    target = last.get("jitterBufferTargetDelay")
    target_mean = target / last["jitterBufferEmittedCount"] if target is not None else None
    return mean, windows, target_mean


def _load(cpu: dict[str, float]) -> str:
    """Who used the CPU during the call: this machine may be shared, and the figures move with it."""
    if not cpu:
        return ""
    text = (
        f"CPU seconds over the {cpu['wall_s']:.0f} s call on {os.cpu_count()} cores: server + its LLM "
        f"child {cpu['server_s']:.0f}, Chromium + this script {cpu['bench_and_browser_s']:.0f}"
    )
    if "others_s" in cpu:
        text += f", other processes on the machine {max(0.0, cpu['others_s']):.0f}"
    return text


def _metrics(
    rows: list[dict[str, Any]],
    found: dict[str, list[Any]],
    rec: dict[str, Any],
    hops: ServerHops | None,
    n_played: int,
) -> dict[str, Metric]:
    def col(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None]

    splits, premature, false_barge = found["splits"], found["premature"], found["false_barge"]
    missed, unanswered, phantom = found["missed"], found["unanswered"], found["phantom"]
    sentence_counts, loops, overlong = found["sentences"], found["loops"], found["overlong"]
    user_steps = [s for s in SCRIPT if s.user_turn]
    llm = _default_llm()
    how = (
        f"one Chromium call, {len(rows)} of {len(user_steps)} scripted caller turns played "
        f"({n_played} clips of {len(SCRIPT)}), default config (max_tokens {llm['max_tokens']}, "
        f"temperature {llm['temperature']}), real Silero/Whisper/SmolLM2/Piper; caller: Piper speech at "
        "-19 dBFS, 0.9x-1.15x, over pink noise at -35 dBFS (bench/conversation_script.py); the caller "
        f"talks over an answer still going after {PATIENCE_S} s"
    )
    out: dict[str, Metric] = {}

    def put(key: str, xs: list[float], pct: float, goal: str, note: str) -> None:
        if xs:
            out[key] = metric(_p(xs, pct), "s", goal, f"{note}; n={len(xs)}; {how}")
        else:
            log(f"{key}: no samples")

    v2v = col("v2v")
    v2v_note = (
        "end of the caller's speech in the clip (page clock: the clip is scheduled on the mic "
        "AudioContext, mapped to Date.now when scheduled) -> first window.__va.levels sample > "
        f"{AUDIBLE} rms after it; turns where the agent was still audible at that end (an earlier "
        "answer going on) or had answered before it (premature) are left out"
    )
    if rec.get("cpu"):
        v2v_note += f"; {_load(rec['cpu'])}"
    put("conversation_v2v_p50_s", v2v, 50, "<= 0.8 s", v2v_note)
    put("conversation_v2v_p95_s", v2v, 95, "<= 1.2 s", v2v_note)
    ep_note = (
        "server turn metric endpointing_s (speech end seen by the server -> reply starts) of each "
        "answered turn"
    )
    put("conversation_endpointing_p50_s", col("endpointing_s"), 50, "info", ep_note)
    put("conversation_endpointing_p95_s", col("endpointing_s"), 95, "info", ep_note)
    finished = [
        r["endpointing_s"] for r in rows if r["kind"] != "hesitation" and r.get("endpointing_s") is not None
    ]
    put("conversation_endpointing_finished_p50_s", finished, 50, "<= 0.35 s",
        "server endpointing_s of the turns that end in a finished sentence (every scripted turn but "
        "the hesitant ones, whose 1.0 s wait is by design)")  # fmt: skip
    put("conversation_server_v2v_p50_s", col("server_v2v"), 50, "info",
        "server turn metric voice_to_voice_s (speech end seen by the server -> first audio the "
        "caller can hear queued)")  # fmt: skip
    transport = [r["v2v"] - r["server_v2v"] for r in rows if "v2v" in r and r.get("server_v2v") is not None]
    put("conversation_transport_overhead_p50_s", transport, 50, "info",
        "browser v2v - server voice_to_voice_s of the same turn: every hop below, summed")  # fmt: skip

    hesitations = sum(1 for r in rows if r["kind"] == "hesitation")
    out["conversation_hesitation_splits"] = metric(
        len(splits),
        "turns",
        "0",
        f"hesitant clips ({hesitations} played: 0.6-0.8 s pauses inside one utterance) heard as more "
        "than one user turn: final transcripts with more than one turn index (or, from a server that "
        "sends no index, more than one final transcript) from the clip's onset to the next clip; "
        f"{', '.join(splits) or 'none'}; {how}",
    )
    out["conversation_premature_replies"] = metric(
        len(premature),
        "turns",
        "0",
        "caller clips the agent's voice answered before they ended: a 'speaking' state event "
        "reached the page between the clip's onset and its speech end, or (the agent quiet at the "
        "onset) its audio became audible there, or the reply to a fragment of the clip (a final "
        f"transcript before the clip's last one) was heard; {', '.join(premature) or 'none'}; {how}",
    )
    early = found["early_ends"]
    out["conversation_early_turn_ends"] = metric(
        len(early),
        "turns",
        "info",
        "caller clips for which a final transcript (the server ending the turn) reached the page "
        "before the clip's speech ended, whether or not the server then took the turn back "
        f"(reply_discarded) unheard; {', '.join(early) or 'none'}; {how}",
    )
    discarded = [e for e in rec["events"] if e.get("kind") == "reply_discarded"]
    replies_made = sum(1 for e in rec["events"] if e.get("kind") == "turn") + len(discarded)
    wasted_s = sum(float(e.get("busy_s", 0.0)) for e in discarded)
    out["conversation_replies_discarded"] = metric(
        len(discarded),
        "replies",
        "info",
        f"replies begun (preemptively, at a pause) and thrown away unheard because the caller went on, "
        f"of {replies_made} begun; they kept LLM/TTS busy {wasted_s:.1f} s in all, produced "
        f"{sum(int(e.get('llm_deltas', 0)) for e in discarded)} LLM deltas and "
        f"{sum(float(e.get('tts_audio_s', 0.0)) for e in discarded):.1f} s of TTS audio; {how}",
    )
    out["conversation_preemption_wasted_s"] = metric(
        round(wasted_s, 3),
        "s",
        "info",
        "summed busy_s of the discarded replies (wall time each ran, LLM streaming and the opening "
        f"sentence's TTS): the compute preemptive replies cost; {how}",
    )
    out["conversation_false_barge_ins"] = metric(
        len(false_barge),
        "sounds",
        "0",
        "of the cough and the mm-hm played while the agent talked: an 'interrupted' event within 2 s "
        f"of its end; or the agent held silent >= {FALSE_GAP_MS} ms (the server's outbound frames "
        "sent as silence while the Playout was held, in a run starting between the sound's onset and "
        "1 s after its end; servers without a hold: silence with audio queued), whatever the verdict "
        "after; or a final transcript for it; "
        f"{'; '.join(false_barge) or 'none'}; {how}",
    )
    phantom_holds = found["phantom_holds"]
    out["conversation_phantom_holds"] = metric(
        len(phantom_holds),
        "holds",
        "0",
        "'barge_in' suspected events (the agent's voice held for voice over it) while the caller "
        "made no sound: away from every clip (onset to 1.5 s after its end), so room noise or echo; "
        f"at {', '.join(phantom_holds) or 'none'} into the call; {how}",
    )
    barge_note = (
        "speech onset of the barge-in clip (page clock) -> first __va.levels sample from which the "
        f"agent stays < {SILENT} rms for {STOP_HOLD_MS} ms: uplink, VAD, the server's reaction (a hold of "
        "its voice, or the flush of an interruption) and the downlink"
    )
    stops = [r["stop"] for r in rows if "stop" in r and not r["stop_in_pause"]]
    in_pause = sum(1 for r in rows if r.get("stop_in_pause"))
    barge_note += (
        f"; {in_pause} barge-in(s) left out: the agent fell silent < {MIN_REACTION_S} s after the "
        "onset, sooner than any reaction (the clip met the end of a phrase); the barge-in clip starts "
        "N s into the answer once the agent has sounded 0.4 s without a 120 ms gap; the 'interrupted' "
        f"event reached the page {', '.join(f'{r:.2f}' for r in col('decision')) or '-'} s after the onset"
    )
    put("conversation_barge_in_stop_p50_s", stops, 50, "info", barge_note)
    put("conversation_barge_in_stop_p95_s", stops, 95, "<= 0.3 s", barge_note)
    out["conversation_missed_barge_ins"] = metric(
        len(missed),
        "turns",
        "0",
        "barge-in clips played over an answer that did not stop it (no 'interrupted' event within "
        f"2 s of the clip's end, or no lasting silence); {', '.join(missed) or 'none'}; {how}",
    )
    out["conversation_unanswered_turns"] = metric(
        len(unanswered),
        "turns",
        "0",
        "caller turns with no final transcript before the next clip; "
        f"{', '.join(unanswered) or 'none'}; {how}",
    )
    out["conversation_phantom_turns"] = metric(
        len(phantom),
        "turns",
        "0",
        "final transcripts outside every clip's window (noise or echo heard as speech); "
        f"{'; '.join(map(repr, phantom)) or 'none'}; {how}",
    )
    if sentence_counts:
        sent_note = (
            "sentences (split at . ! ?) the agent started saying in its answer to each scripted caller "
            "turn (turn event agent_text: sentences queued for playout), answers cut by a planned "
            f"barge-in left out; answers the caller talked over after {PATIENCE_S} s count what was "
            f"queued by then (a floor); the system prompt asks for one to three; counts "
            f"{sentence_counts}; {how}"
        )
        out["conversation_reply_sentences_p50"] = metric(
            _p(sentence_counts, 50), "sentences", "<= 3", sent_note
        )
        out["conversation_reply_sentences_max"] = metric(max(sentence_counts), "sentences", "<= 3", sent_note)
    out["conversation_reply_loops"] = metric(
        len(loops),
        "replies",
        "0",
        "replies (finished or cut) that say a sentence of 3+ words twice, repeat an 8-word run, "
        f"or repeat an earlier reply word for word; {'; '.join(loops) or 'none'}; {how}",
    )
    out["conversation_overlong_replies"] = metric(
        len(overlong),
        "replies",
        "0",
        f"answers still audible {PATIENCE_S} s after they began, so the caller's next turn talked "
        f"over them; {', '.join(overlong) or 'none'}; {how}",
    )
    if "stalls" in found:
        stalls = found["stalls"]
        out["conversation_reply_stalls"] = metric(
            len(stalls),
            "stalls",
            "0",
            f"silences >= {FALSE_GAP_MS} ms inside an answer (between two sounding outbound frames, no "
            "turn event in between) with the Playout empty: the reply's next audio was not ready "
            "(LLM or TTS behind real time); "
            + (f"longest {max(b - a for a, b in stalls) / 1000:.2f} s; " if stalls else "")
            + how,
        )

    # Transport hops.
    cpu, server = rec.get("cpu") or {}, rec.get("server") or {}
    load = _load(cpu)
    if load:
        log(load)
    pacing = ""
    if hops is not None and len(hops.out) > 1:
        gaps = np.diff(hops.out[:, 0])
        pacing = (
            f"outbound frames handed to aiortc every {np.percentile(gaps, 50):.1f} ms p50, "
            f"{np.percentile(gaps, 99):.1f} ms p99, {gaps.max():.0f} ms at worst"
            + (f"; server late frames {server.get('late_frames')}, resyncs {server.get('resyncs')}, "
               f"event-loop lag max {server.get('loop_lag_max_s')} s" if server else "")
        )  # fmt: skip
        log(pacing)
    if hops is not None:
        hop_how = (
            "per answered turn, traced for the sample at the clip's speech end through the server "
            "recorders of bench/conversation_browser.py (server time.monotonic mapped to Date.now via "
            "time.time); n={n}, p95 {p95:.3f} s"
        )
        n = min(len(hops.pushed), len(hops.vad))
        lag = (hops.vad[:n, 0] - hops.pushed[:n]) / 1000
        backlog = (
            f"over every frame of the call p50 {np.percentile(lag, 50):.3f} s, p99 "
            f"{np.percentile(lag, 99):.3f} s, max {lag.max():.3f} s"
            if n
            else ""
        )
        hop_defs = {
            "conversation_hop_uplink_capture_p50_s": ("hop_capture",
                "page speech end -> arrival at the server of the RTP packet carrying it: Chromium's "
                "capture from the AudioContext track, 20 ms Opus packetization, loopback"),
            "conversation_hop_uplink_jitter_buffer_p50_s": ("hop_server_jitter",
                "that packet's arrival -> its decoded frame reaches the server's inbound reader: "
                "aiortc's audio jitter buffer (capacity 16, prefetch 4: a frame waits for 4 more "
                "packets) and its decoder thread"),
            "conversation_hop_uplink_framing_p50_s": ("hop_framing",
                "decoded 48 kHz frame -> the 16 kHz 20 ms frame holding the sample is queued for the "
                "pipeline: resampling and re-framing into 20 ms"),
            "conversation_hop_uplink_queue_p50_s": ("hop_queue",
                "that frame queued -> fed to VAD (Conversation.feed): the pipeline's inbound backlog; "
                f"{backlog}"),
            "conversation_hop_vad_hangover_p50_s": ("hop_hangover",
                "speech end -> start of the unvoiced run the conversation takes as the end of speech "
                f"(Silero probability < {VOICED}, 32 ms blocks; the server's v2v clock starts there), "
                "in audio time, from the probabilities the server computed"),
            "conversation_hop_pacing_p50_s": ("hop_pacing",
                "first reply audio queued in the Playout (the 'speaking' event's at_s) -> the first "
                f"outbound 20 ms frame with sound (> {OUT_SOUND} int16 rms) handed to aiortc"),
            "conversation_hop_downlink_p50_s": ("hop_downlink",
                "that frame handed to aiortc -> first audible __va.levels sample: Opus encode, "
                "loopback, Chromium's jitter buffer (NetEq) and decoder, WebAudio, the 5 ms sampler"),
        }  # fmt: skip
        for key, (col_key, definition) in hop_defs.items():
            xs = col(col_key)
            if xs:
                note = f"{definition}; " + hop_how.format(n=len(xs), p95=_p(xs, 95))
                if col_key == "hop_pacing" and pacing:
                    note += f"; {pacing}"
                out[key] = metric(_p(xs, 50), "s", "info", note)
        full = [
            r
            for r in rows
            if all(k in r for k in ("hop_capture", "hop_pacing", "v2v")) and r.get("server_v2v")
        ]
        if full:
            residual = [
                r["v2v"] - r["hop_capture"] - r["hop_server_jitter"] - r["hop_framing"] - r["hop_queue"]
                - r["hop_hangover"] - r["server_v2v"] - r["hop_pacing"] - r["hop_downlink"]
                for r in full
            ]  # fmt: skip
            log(f"hops: browser v2v minus the sum of the hops and the server v2v: p50 "
                f"{_p(residual, 50) * 1000:+.0f} ms, range {min(residual) * 1000:+.0f}.."
                f"{max(residual) * 1000:+.0f} ms")  # fmt: skip
            totals = col("uplink_vad_total")
            if totals:
                uplink = [
                    r["hop_capture"] + r["hop_server_jitter"] + r["hop_framing"] + r["hop_queue"]
                    + r["hop_hangover"] for r in full
                ]  # fmt: skip
                log(f"hops: page speech end -> server speech_end (from the turn metrics) p50 "
                    f"{_p(totals, 50):.3f} s vs the uplink hops + hang-over p50 "
                    f"{_p(uplink, 50):.3f} s")  # fmt: skip
        if hops.dropped:
            log(f"WARNING: the server dropped {hops.dropped} inbound frames (hops after a drop are off)")
    mean, windows, target = _jitter_buffer(rec["stats"])
    if mean is not None:
        out["conversation_hop_downlink_jitter_buffer_s"] = metric(
            mean,
            "s",
            "info",
            "Chromium's inbound jitter buffer for the agent's audio, from RTCPeerConnection.getStats "
            "inbound-rtp: delta jitterBufferDelay / delta jitterBufferEmittedCount over the whole call "
            f"(the server sends frames, silence included, all call long); ~2 s windows p50 "
            f"{_p(windows, 50):.3f} s / p95 {_p(windows, 95):.3f} s"
            + (f", target delay {target:.3f} s" if target is not None else "")
            + "; part of conversation_hop_downlink_p50_s"
            + (f"; it grows when frames come in bursts: {pacing}" if pacing else "")
            + (f"; {load}" if load else ""),
        )
    return out


# -- running ------------------------------------------------------------------------------------


async def _run(keep: Path | None = None) -> dict[str, Metric]:
    log("conversation: synthesizing the caller's clips")
    clips = make_clips()
    log("conversation: starting the server with the real models (default config)")
    started = time.monotonic()
    server = await asyncio.to_thread(start_server)
    log(f"conversation: models ready in {time.monotonic() - started:.1f} s; calling")
    try:
        async with asyncio.timeout(DEADLINE_S + 180):  # a hung page must not hang the bench
            rec = await converse(server.base, clips, server.proc.pid)
        summary = json.loads(await asyncio.to_thread(_fetch, server.base + "/bench/hops"))
        pcm = await asyncio.to_thread(_fetch, server.base + "/bench/hops/pcm")
    finally:
        await asyncio.to_thread(server.stop)
    if keep is not None:
        await asyncio.to_thread(_keep, keep, clips, rec, summary, pcm)
    return analyse(rec, clips, ServerHops.load(summary, pcm))


def _keep(keep: Path, clips: list[Clip], rec: dict[str, Any], summary: dict[str, Any], pcm: bytes) -> None:
    """Everything analyse() reads, for --analyse."""
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "recording.json").write_text(json.dumps(rec))
    (keep / "hops.json").write_text(json.dumps(summary))
    (keep / "received.pcm").write_bytes(pcm)
    # Piper's synthesis is not seeded: keep the very clips that were played.
    np.savez(keep / "clips.npz", **{c.step.name: c.audio for c in clips})  # type: ignore[arg-type]
    log(f"conversation: recording kept in {keep}")


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


def _analyse_kept(keep: Path) -> dict[str, Metric]:
    rec = json.loads((keep / "recording.json").read_text())
    hops = ServerHops.load(json.loads((keep / "hops.json").read_text()), (keep / "received.pcm").read_bytes())
    with np.load(keep / "clips.npz") as saved:
        clips = [clip_of(step, saved[step.name]) for step in SCRIPT]
    return analyse(rec, clips, hops)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conversation_browser")
    parser.add_argument("--serve", action="store_true", help="(internal) the bench server")
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the raw recording in this folder")
    parser.add_argument("--analyse", type=Path, help="re-analyse a recording kept with --keep")
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.port_file)
        return 0
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is missing: run tests/services/system-deps.sh", file=sys.stderr)
        return 2
    results = _analyse_kept(args.analyse) if args.analyse else asyncio.run(_run(args.keep))
    for name, m in sorted(results.items()):
        print(f"{name:48s} {m.value:>9g} {m.unit:10s} goal {m.goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
