"""The conversation benchmark's analysis: what the page saw and the server recorded, turned into
the conversation_* keys. A module of its own because it needs neither a browser nor a server: a
recording kept with bench/conversation_browser.py --keep is re-analysed with --analyse.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.calls_common import log
from bench.conversation_script import RATE, SCRIPT, Clip
from bench.conversation_server import default_llm
from bench.results import Metric, metric, percentile

AUDIBLE = 0.005  # rms of window.__va.levels (5.3 ms window): the agent is heard
SILENT = 0.003  # below this for STOP_HOLD_MS: the agent has stopped
STOP_HOLD_MS = 400
FALSE_GAP_MS = 400  # the agent's audio pausing this long right after a cough/mm-hm: a false barge-in
MIN_REACTION_S = 0.15  # no server can silence the agent at the page sooner after the caller's onset
OUT_SOUND = 100  # int16 rms of an outbound 20 ms frame that carries sound (-50 dBFS)
VOICED = 0.5  # conversation.voiced_probability (default)
PATIENCE_S = 15  # the caller talks over an answer still going after this long
OVERLONG = f"talked over an answer still going after {PATIENCE_S} s"
IN_RATE = 16_000


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
    llm = default_llm()
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
            "recorders of bench/conversation_server.py (server time.monotonic mapped to Date.now via "
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
