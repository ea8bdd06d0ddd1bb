"""The realistic conversation benchmark: a scripted 14-turn call from Chromium, timed at the page.

    python -m bench conversation                 # run, merge into bench/results.json
    python -m bench.conversation_browser         # run and print the figures (results.json untouched)
    python -m bench.conversation_browser --keep DIR      # ...and keep the raw recording
    python -m bench.conversation_browser --analyse DIR   # re-analyse a kept recording

The server and its hop recorders: bench/conversation_server.py; the analysis: bench/conversation_analysis.py.

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
for the transport hops (``--serve``; see bench/conversation_server.py): arrival of each RTP packet, each
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
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.calls_common import log
from bench.conversation_analysis import AUDIBLE, OVERLONG, PATIENCE_S, ServerHops, analyse
from bench.conversation_script import RATE, SCRIPT, Clip, clip_of, make_clips, pink_noise
from bench.conversation_server import fetch, serve, start_server
from bench.results import Metric
from tests.e2e.browser import CHROMIUM, chromium_args

NO_ANSWER_S = 10  # no agent audio this long after the caller stopped: no answer
NO_REPLY_S = 8  # ...and the turn is taken as over when no turn event came in this long
DEADLINE_S = 8 * 60  # the whole call, whatever happens


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
            server_stats = json.loads(await asyncio.to_thread(fetch, base + "/bench/stats"))
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
        summary = json.loads(await asyncio.to_thread(fetch, server.base + "/bench/hops"))
        pcm = await asyncio.to_thread(fetch, server.base + "/bench/hops/pcm")
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
        serve(args.port_file)
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
