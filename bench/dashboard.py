"""The admin dashboard's live updates: how long a change takes to reach a dashboard, and what 50
dashboards cost a node that is holding calls.

Servers: ``bench/call_load_server.py`` with the fake engines (bench/calls_common.start_server), in
a subprocess; dashboards are WebSocket clients of ``/api/admin/live`` signed in with an API token.

1. Update latency, protocol level: one dashboard connected; this process writes a turn into the
   node's store the way a node's call does (``Store.add_turn`` on a call row of its own, from a
   second ``Database``/process), ~100 times, irregularly 0.1-0.6 s apart so the writes do not
   phase-lock with the 0.5 s poll. t0 = SQLAlchemy's ``commit`` event of that write (just before
   the COMMIT goes to the database), t1 = the matching ``turn`` LiveUpdate (same turn id) read by
   the client; both ``time.perf_counter`` in this process. Embedded SQLite (the node polls every
   ``admin.poll_s`` = 0.5 s), then, when ``VA_TEST_POSTGRES_URL`` names a server, a fresh
   PostgreSQL database (the NOTIFY path) whose changes are written by a second Runtime in this
   process (node "dash-node-b": another node), the dashboard being on node A.
2. On screen: Chromium signed in through the login form on ``/admin#/calls/<id>``; a
   MutationObserver stamps ``Date.now()`` when a new ``[data-turn-index]`` element enters the
   transcript and again at the next animation frame (the frame that paints it); latency = that
   frame stamp minus ``time.time()`` at the write's commit (same machine clock).
3. 50 dashboards while 8 calls run: 8 aiortc callers (tone 1.2 s / pause 4 s, so each call
   completes a turn every ~5 s and every turn becomes a LiveUpdate) held for a 30 s window after 3 s
   settling (bench/calls_load.run_level), in four rounds on one server: none, 50, 50, none
   dashboards connected (ABBA, so a drift in the machine's other load cancels out). Server CPU
   from the server's own getrusage (``/bench/stats``) over each window; late frames are
   the server's outbound frames handed to aiortc > 20 ms after their slot; client gaps are > 60 ms
   holes between frames received by the callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from bench.calls_common import BenchServer, log, start_server
from bench.calls_load import LoopSource, run_level
from bench.results import Metric, metric, percentile
from voiceagent.store import Database, NewTurn, Store

SAMPLES = 100
SCREEN_SAMPLES = 40
GAP_S = (0.1, 0.6)  # between writes: irregular, so they cannot phase-lock with the 0.5 s poll
ARRIVAL_TIMEOUT_S = 10.0  # a sample that never arrives counts as this late
DASHBOARDS = 50
CALLS = 8
SETTLE_S = 3.0
WINDOW_S = 30.0
PASSWORD = "bench dashboard password"
CHROMIUM = "/usr/bin/chromium"


# -- dashboards -----------------------------------------------------------------------------------


@dataclass
class Dashboard:
    """One ``/api/admin/live`` client: what it received, by type, and when each turn arrived."""

    socket: Any
    connected_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    counts: Counter[str] = field(default_factory=Counter)
    turn_at: dict[int, float] = field(default_factory=dict)  # turn id -> perf_counter at arrival
    dropped: str | None = None  # closed by the server (or the link) before we closed it
    closing: bool = False
    task: asyncio.Task[None] | None = None
    turned: asyncio.Event = field(default_factory=asyncio.Event)  # set at each turn update
    replayed: int = 0  # turn updates for turns that started before this dashboard connected

    async def read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.socket:
                now = time.perf_counter()
                update = json.loads(message)
                self.counts[update["type"]] += 1
                if update["type"] == "turn":
                    self.turn_at.setdefault(update["turn"]["id"], now)
                    self.turned.set()
                    if datetime.fromisoformat(update["turn"]["started_at"]) < self.connected_at:
                        self.replayed += 1
        except ConnectionClosed:
            pass
        if not self.closing:
            self.dropped = f"closed {self.socket.close_code} {self.socket.close_reason!r}"

    async def close(self) -> None:
        self.closing = True
        await self.socket.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def open_dashboard(base: str, token: str) -> Dashboard:
    """Connected and greeted (the node's ``hello``): its feed is running from then on."""
    from websockets.asyncio.client import connect

    url = base.replace("http", "ws", 1) + "/api/admin/live"
    connected_at = datetime.now(UTC)
    socket = await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=20)
    hello = json.loads(await asyncio.wait_for(socket.recv(), 10))
    if hello.get("type") != "hello":
        raise RuntimeError(f"dashboard greeted with {hello}")
    dashboard = Dashboard(socket, connected_at)
    dashboard.counts["hello"] += 1
    dashboard.task = asyncio.create_task(dashboard.read())
    return dashboard


async def open_dashboards(base: str, token: str, n: int) -> list[Dashboard]:
    dashboards: list[Dashboard] = []
    for batch in range(0, n, 10):
        dashboards += await asyncio.gather(*(open_dashboard(base, token) for _ in range(min(10, n - batch))))
    return dashboards


# -- writes -----------------------------------------------------------------------------------------


class CommitClock:
    """Stamps the moment just before the COMMIT of a write made by :meth:`add_turn` (SQLAlchemy's
    ``commit`` event; only this task's commits, not those of other tasks on the same engine)."""

    def __init__(self, database: Database) -> None:
        from sqlalchemy import event

        self._task: asyncio.Task[Any] | None = None
        self._at: tuple[float, float] | None = None
        event.listen(database.engine.sync_engine, "commit", self._on_commit)

    def _on_commit(self, _connection: Any) -> None:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return
        if task is not None and task is self._task:
            self._at = (time.perf_counter(), time.time())

    async def add_turn(self, store: Store, call_id: str, text: str) -> tuple[int, float, float]:
        """The new turn's id and index, and perf_counter / time.time() at its commit."""
        self._task, self._at = asyncio.current_task(), None
        before = (time.perf_counter(), time.time())
        now = datetime.now(UTC)
        turn = await store.add_turn(
            call_id,
            NewTurn(started_at=now - timedelta(seconds=1), ended_at=now, user_text=text, agent_text="ok"),
        )
        perf, wall = self._at or before
        return turn.id, perf, wall


async def new_call(store: Store, node_id: str) -> str:
    user = f"dash-{uuid.uuid4().hex[:8]}"
    await store.touch_user(user)
    return (await store.start_call(user, node_id, call_id=f"dash-{uuid.uuid4().hex[:12]}")).id


async def protocol_latency(
    base: str, token: str, store: Store, clock: CommitClock, node_id: str, rng: random.Random
) -> tuple[list[float], int]:
    """Write → matching ``turn`` update at a connected dashboard, SAMPLES times; and how many never
    arrived (counted at ARRIVAL_TIMEOUT_S)."""
    call_id = await new_call(store, node_id)
    dashboard = await open_dashboard(base, token)
    try:
        await asyncio.sleep(1.0)  # the feed reads its starting point once the first dashboard is in
        written: list[tuple[int, float]] = []
        for i in range(SAMPLES):
            await asyncio.sleep(rng.uniform(*GAP_S))
            turn_id, perf, _ = await clock.add_turn(store, call_id, f"sample {i}")
            written.append((turn_id, perf))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ARRIVAL_TIMEOUT_S):
                while any(t not in dashboard.turn_at for t, _ in written):
                    dashboard.turned.clear()
                    await dashboard.turned.wait()
        if dashboard.dropped:
            raise RuntimeError(f"the dashboard was dropped: {dashboard.dropped}")
    finally:
        await dashboard.close()
    missing = sum(1 for t, _ in written if t not in dashboard.turn_at)
    return [dashboard.turn_at.get(t, t0 + ARRIVAL_TIMEOUT_S) - t0 for t, t0 in written], missing


def latency_metrics(prefix: str, latencies: list[float], missing: int, note: str) -> dict[str, Metric]:
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    full = (
        f"{note}; {len(latencies)} samples, min {min(latencies):.3f} s, mean "
        f"{statistics.fmean(latencies):.3f} s, max {max(latencies):.3f} s, never arrived {missing}"
    )
    return {
        f"{prefix}_p50_s": metric(p50, "s", "—", full),
        f"{prefix}_p95_s": metric(p95, "s", "<= 1.0 s", full),
    }


async def sqlite_latency(server: BenchServer, url: str, rng: random.Random) -> dict[str, Metric]:
    from voiceagent.config import StoreSettings
    from voiceagent.testing.admin import issue_token

    token = await issue_token(url)
    database = Database(StoreSettings(url=url))
    try:
        latencies, missing = await protocol_latency(
            server.base, token, Store(database), CommitClock(database), "bench-writer", rng
        )
    finally:
        await database.close()
    log(f"  sqlite: p50 {percentile(latencies, 50):.3f} s, p95 {percentile(latencies, 95):.3f} s")
    return latency_metrics(
        "dashboard_update_latency",
        latencies,
        missing,
        "embedded SQLite, node polls every 0.5 s (admin.poll_s); commit of Store.add_turn by another "
        "process -> the matching turn LiveUpdate at a WebSocket dashboard client, writes 0.1-0.6 s apart",
    )


async def postgres_latency(admin_url: str, rng: random.Random) -> dict[str, Metric]:
    from tests.outreach.cluster import fresh_database
    from voiceagent.config import load_settings
    from voiceagent.runtime import Runtime
    from voiceagent.testing.admin import issue_token

    url = await asyncio.to_thread(fresh_database, admin_url)
    server = await asyncio.to_thread(
        start_server, "fake", 120, (), {"VOICEAGENT_STORE__URL": url, "VOICEAGENT_NODE_ID": "dash-node-a"}
    )
    writer: Runtime | None = None
    try:
        token = await issue_token(url)
        settings = load_settings(
            environ={
                "VOICEAGENT_STORE__URL": url,
                "VOICEAGENT_NODE_ID": "dash-node-b",
                "VOICEAGENT_ENGINES__PRELOAD": "false",
                "VOICEAGENT_KNOWLEDGE__ENABLED": "false",
                "VOICEAGENT_SERVER__LOG_LEVEL": "warning",
            }
        )
        writer = Runtime(settings)
        await writer.start()
        latencies, missing = await protocol_latency(
            server.base, token, writer.store, CommitClock(writer.database), "dash-node-b", rng
        )
        server_log = (server.workdir / "server.log").read_text()
    finally:
        if writer is not None:
            await writer.stop()
        await asyncio.to_thread(server.stop)
        await drop_database(admin_url, url)
    listen = "LISTEN failed: the node polled" if "LISTEN failed" in server_log else "LISTEN up throughout"
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    log(f"  postgresql: p50 {p50:.3f} s, p95 {p95:.3f} s ({listen})")
    return latency_metrics(
        "dashboard_update_latency_pg",
        latencies,
        missing,
        "fresh PostgreSQL database (trigger NOTIFY at commit wakes the node's feed; poll 0.5 s as a "
        "safety net); dashboard on node A (the bench server), turns written by a second Runtime "
        f"(node B) in another process; {listen}",
    )


async def drop_database(admin_url: str, url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    except Exception as exc:  # a leftover database on a throwaway server: say so, go on
        log(f"  could not drop {name}: {type(exc).__name__}: {exc}")


# -- on screen --------------------------------------------------------------------------------------

WATCH_TURNS = """() => {
  window.__benchSeen = {};
  const seen = (el) => {
    const index = el.dataset.turnIndex;
    if (index in window.__benchSeen) return;
    const stamp = [Date.now(), null];
    window.__benchSeen[index] = stamp;
    requestAnimationFrame(() => { stamp[1] = Date.now(); });
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) for (const node of m.addedNodes) {
      if (node.nodeType === 1 && node.matches('[data-turn-index]')
          && node.closest('[data-testid="call-transcript"]')) seen(node);
    }
  }).observe(document.body, { childList: true, subtree: true });
}"""


async def on_screen_latency(server: BenchServer, url: str, rng: random.Random) -> dict[str, Metric]:
    from playwright.async_api import async_playwright

    from voiceagent.auth.accounts import Role, create_user
    from voiceagent.config import StoreSettings

    database = Database(StoreSettings(url=url))
    store, clock = Store(database), CommitClock(database)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        await create_user(database, name, PASSWORD, Role.VIEWER)
        call_id = await new_call(store, "bench-writer")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
                await page.goto(f"{server.base}/admin")
                await page.wait_for_url("**/admin/login")
                await page.fill('[data-testid="login-form"] [name="username"]', name)
                await page.fill('[data-testid="login-form"] [name="password"]', PASSWORD)
                await page.press('[data-testid="login-form"] [name="password"]', "Enter")
                await page.wait_for_selector('[data-testid="live-status"]:has-text("live")', timeout=20_000)
                await page.goto(f"{server.base}/admin#/calls/{call_id}")
                await page.wait_for_selector('[data-testid="call-detail-status"]', timeout=20_000)
                await page.wait_for_selector('[data-testid="live-status"]:has-text("live")', timeout=20_000)
                await page.evaluate(WATCH_TURNS)
                await asyncio.sleep(1.0)
                written: list[tuple[int, float]] = []  # turn index, time.time() at commit
                for i in range(SCREEN_SAMPLES):
                    await asyncio.sleep(rng.uniform(*GAP_S))
                    _, _, wall = await clock.add_turn(store, call_id, f"on screen {i}")
                    written.append((i + 1, wall))
                seen: dict[str, list[float | None]] = {}
                deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
                while time.monotonic() < deadline:
                    seen = await page.evaluate("() => window.__benchSeen")
                    if all(str(i) in seen and seen[str(i)][1] is not None for i, _ in written):
                        break
                    await asyncio.sleep(0.1)
            finally:
                await browser.close()
    finally:
        await database.close()
    painted, inserted, missing = [], [], 0
    for index, wall in written:
        stamps = seen.get(str(index))
        if stamps is None:
            missing += 1
            painted.append(ARRIVAL_TIMEOUT_S)
            continue
        dom, frame = stamps
        inserted.append(float(dom or 0) / 1000 - wall)
        painted.append(float(frame if frame is not None else dom or 0) / 1000 - wall)
    log(f"  on screen: p50 {percentile(painted, 50):.3f} s, p95 {percentile(painted, 95):.3f} s")
    dom_note = f"DOM insertion alone p50 {percentile(inserted, 50):.3f} s" if inserted else "none inserted"
    return latency_metrics(
        "dashboard_on_screen_latency",
        painted,
        missing,
        "embedded SQLite (poll 0.5 s); commit of Store.add_turn (time.time()) -> the animation frame "
        "after the new transcript row entered the DOM of /admin#/calls/<id> in headless Chromium "
        f"(Date.now(), same clock); {dom_note}",
    )


# -- 50 dashboards while 8 calls run ---------------------------------------------------------------


def tone_pattern() -> np.ndarray:
    """What bench/calls_load.py's fake-engine callers say: a 440 Hz tone 1.2 s, then 4 s of quiet."""
    rate = 16_000
    t = np.arange(int(1.2 * rate)) / rate
    talk = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    return np.concatenate([talk, np.zeros(int(4.0 * rate), dtype="<i2")])


async def calls_with_dashboards(
    server: BenchServer, token: str, n: int, make_source: Callable[[int], LoopSource]
) -> dict[str, Any]:
    dashboards = await open_dashboards(server.base, token, n)
    try:
        level = await run_level(server, CALLS, make_source, settle_s=SETTLE_S, window_s=WINDOW_S)
        await asyncio.sleep(1.5)  # the hang-ups' call.ended updates
    finally:
        await asyncio.gather(*(d.close() for d in dashboards), return_exceptions=True)
    totals = [sum(d.counts.values()) - d.counts["hello"] for d in dashboards]
    turns = [d.counts["turn"] for d in dashboards]
    level["dashboards"] = n
    level["dashboards_dropped"] = sum(1 for d in dashboards if d.dropped)
    level["dropped_why"] = sorted({d.dropped for d in dashboards if d.dropped})
    level["updates_per_dashboard"] = [min(totals), max(totals)] if totals else [0, 0]
    level["turn_updates_per_dashboard"] = [min(turns), max(turns)] if turns else [0, 0]
    level["replayed_per_dashboard"] = max((d.replayed for d in dashboards), default=0)
    return level


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one condition as one: sums of counts, mean CPU, worst maxima."""

    def total(key: str) -> int:
        return int(sum(r[key] for r in rounds))

    updates = [u for r in rounds for u in r["updates_per_dashboard"]]
    turns = [u for r in rounds for u in r["turn_updates_per_dashboard"]]
    return {
        "dashboards": rounds[0]["dashboards"],
        "rounds": len(rounds),
        "call_windows": total("alive"),
        "calls_started": total("calls"),
        "cpu_s_per_s": statistics.fmean(r["server_cpu_pct_of_core"] for r in rounds) / 100,
        "cpu_rounds": [round(r["server_cpu_pct_of_core"] / 100, 3) for r in rounds],
        "loadgen_cpu_s_per_s": statistics.fmean(r["loadgen_cpu_pct_of_core"] for r in rounds) / 100,
        **{
            key: total(key)
            for key in ("out_frames", "late_frames", "resyncs", "client_gaps_over_60ms", "answered_turns")
        },
        "late_rounds": [r["late_frames"] for r in rounds],
        "max_late_ms": max(r["max_late_ms"] for r in rounds),
        "client_max_gap_ms": max(r["client_max_gap_ms"] for r in rounds),
        "loop_lag_max_ms": max(r["server_loop_lag_max_ms"] for r in rounds),
        "dropped": total("dashboards_dropped"),
        "dropped_why": sorted({why for r in rounds for why in r["dropped_why"]}),
        "updates": [min(updates), max(updates)] if updates else [0, 0],
        "turn_updates": [min(turns), max(turns)] if turns else [0, 0],
        "replayed": max(r["replayed_per_dashboard"] for r in rounds),
        "replayed_rounds": [r["replayed_per_dashboard"] for r in rounds],
    }


async def load(rng: random.Random) -> dict[str, Metric]:
    from voiceagent.testing.admin import issue_token

    order = (0, DASHBOARDS, DASHBOARDS, 0)  # ABBA: a drift in the machine's load cancels out
    log(f"load: {CALLS} calls for {WINDOW_S:.0f} s per round, dashboards per round {order}")
    server = await asyncio.to_thread(start_server, "fake", 60)
    pattern = tone_pattern()
    rounds: dict[int, list[dict[str, Any]]] = {0: [], DASHBOARDS: []}
    try:
        token = await issue_token(f"sqlite+aiosqlite:///{server.workdir}/va.db")
        for n in order:
            level = await calls_with_dashboards(
                server, token, n, lambda _: LoopSource(pattern, rng.randrange(len(pattern)))
            )
            log(f"  {n} dashboards: {json.dumps(level)}")
            rounds[n].append(level)
    finally:
        await asyncio.to_thread(server.stop)
    base, busy = combine(rounds[0]), combine(rounds[DASHBOARDS])

    def describe(c: dict[str, Any]) -> str:
        return (
            f"{c['dashboards']} dashboards, {c['rounds']} rounds: {c['call_windows']}/{c['calls_started']} "
            f"calls alive, {c['out_frames']} frames out, late {c['late_frames']} (per round "
            f"{c['late_rounds']}), max late {c['max_late_ms']} ms, resyncs {c['resyncs']}, client gaps "
            f"> 60 ms {c['client_gaps_over_60ms']}, client max gap {c['client_max_gap_ms']} ms, server "
            f"loop lag max {c['loop_lag_max_ms']} ms, answered turns {c['answered_turns']}, server cpu "
            f"per round {c['cpu_rounds']} s/s, loadgen cpu {c['loadgen_cpu_s_per_s']:.2f} s/s"
        )

    setup = (
        f"{CALLS} aiortc callers (tone 1.2 s / pause 4 s) against fake engines "
        f"(bench/call_load_server.py, embedded SQLite), {WINDOW_S:.0f} s window after {SETTLE_S:.0f} s "
        f"settling, rounds {order} on one server; callers and dashboards in one load generator "
        f"process on the same {os.cpu_count()}-core machine"
    )
    dash = (
        f"{busy['dropped']} of {DASHBOARDS} x {busy['rounds']} dropped; updates per dashboard "
        f"{busy['updates'][0]}-{busy['updates'][1]} per round (turn updates {busy['turn_updates'][0]}"
        f"-{busy['turn_updates'][1]}; of them replayed turns that started before the dashboard "
        f"connected, per round {busy['replayed_rounds']})"
    )
    out: dict[str, Metric] = {}
    for c in (base, busy):
        n = c["dashboards"]
        out[f"dashboard_{n}_server_cpu_s_per_s"] = metric(
            c["cpu_s_per_s"],
            "CPU s/s",
            "—",
            f"server process CPU (user+sys, its getrusage) per wall second, mean of the rounds; {setup}; "
            f"{describe(c)}",
        )
        out[f"dashboard_{n}_late_frames_per_call"] = metric(
            c["late_frames"] / max(c["call_windows"], 1),
            "frames/call",
            "unchanged by dashboards (same as dashboard_0)",
            f"server outbound frames handed to aiortc > 20 ms after their slot, per call per "
            f"{WINDOW_S:.0f} s window ({c['call_windows']} call windows); {describe(c)}",
        )
        out[f"dashboard_{n}_client_gaps_over_60ms_per_call"] = metric(
            c["client_gaps_over_60ms"] / max(c["call_windows"], 1),
            "gaps/call",
            "unchanged by dashboards (same as dashboard_0)",
            f"holes > 60 ms between frames received by the callers, per call per {WINDOW_S:.0f} s window; "
            f"max gap {c['client_max_gap_ms']} ms",
        )
    out[f"dashboard_{DASHBOARDS}_cpu_overhead_s_per_s"] = metric(
        busy["cpu_s_per_s"] - base["cpu_s_per_s"],
        "CPU s/s",
        "—",
        f"server CPU with {DASHBOARDS} dashboards minus without (the node reads the store every 0.5 s "
        f"only while someone watches, then sends each update to every dashboard); {dash}",
    )
    out[f"dashboard_{DASHBOARDS}_dropped_dashboards"] = metric(
        busy["dropped"], "dashboards", "0", f"{dash}; {', '.join(busy['dropped_why']) or 'none'}"
    )
    out[f"dashboard_{DASHBOARDS}_updates_per_dashboard"] = metric(
        busy["updates"][0],
        "updates",
        "every dashboard the same",
        f"fewest LiveUpdates any dashboard received in a round (calls started, turns, calls ended; "
        f"connected before the calls, closed 1.5 s after their hang-ups); {dash}",
    )
    out[f"dashboard_{DASHBOARDS}_replayed_turn_updates"] = metric(
        busy["replayed"],
        "updates",
        "0 (a fresh feed sends no history)",
        "most 'turn' LiveUpdates one dashboard received in a round for turns that started before it "
        "connected, per round "
        f"{busy['replayed_rounds']}: when the first dashboard connects, the node's feed re-reads up to "
        "200 turn ids behind its starting point (LOOKBACK_IDS) and sends those it has not sent before "
        "as new; the first 50-dashboard round follows a round nobody watched",
    )
    return out


# -- the suite -------------------------------------------------------------------------------------


async def _run() -> dict[str, Metric]:
    rng = random.Random(11)
    results: dict[str, Metric] = {}
    started = time.monotonic()
    log("dashboard: update latency on embedded SQLite")
    server = await asyncio.to_thread(start_server, "fake", 60)
    try:
        url = f"sqlite+aiosqlite:///{server.workdir}/va.db"
        results.update(await sqlite_latency(server, url, rng))
        log("dashboard: on-screen latency in Chromium")
        try:
            results.update(await on_screen_latency(server, url, rng))
        except Exception as exc:  # no browser on this machine: the protocol figures still stand
            log(f"  on-screen latency skipped: {type(exc).__name__}: {exc}")
    finally:
        await asyncio.to_thread(server.stop)
    pg = os.environ.get("VA_TEST_POSTGRES_URL")
    if pg:
        log("dashboard: update latency on PostgreSQL, written by another node")
        results.update(await postgres_latency(pg, rng))
    else:
        log("dashboard: VA_TEST_POSTGRES_URL unset: PostgreSQL latency skipped")
    results.update(await load(rng))
    log(f"dashboard: done in {time.monotonic() - started:.0f} s")
    return results


def run() -> dict[str, Metric]:
    return asyncio.run(_run())
