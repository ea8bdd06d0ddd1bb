// The dashboard's pages. Each one builds its frame once (headings, filters, forms), then refresh()
// reads the API and redraws only the data, so a live refresh never loses what the user typed;
// onLive(update) applies one WebSocket update in place.

import { api, get, isOperator, LoggedOut } from "./api.js";
import {
  h, replace, time, seconds, duration, count, percent, shortId, label, badge, table, row,
  field, select,
} from "./dom.js";
import { ChartsPanel, STAGES } from "./charts.js";

const PAGE_SIZE = 50;
const OUTREACH_STATUSES = ["decided", "published", "routed", "pending", "spoken", "heard", "acked",
  "interrupted", "expired", "superseded", "failed"];
const HAPPY_PATH = ["decided", "published", "routed", "spoken", "heard", "acked"];
const FINISHED = new Set(["heard", "acked", "interrupted", "expired", "superseded", "failed"]);
const DOC_STATES = ["queued", "indexed", "failed", "deleted"];

const enc = encodeURIComponent;
export const callHref = (id, turn) => `#/calls/${enc(id)}${turn !== undefined ? `?turn=${enc(turn)}` : ""}`;
export const userHref = (id) => `#/users/${enc(id)}`;
const eventHref = (userId, eventId) => `#/outreach?${new URLSearchParams({ user_id: userId || "", event: eventId })}`;

/** fn at most once per `ms` (counted from now: the page just read everything); a call during the
 * wait runs once at its end. */
function throttle(fn, ms) {
  let last = Date.now();
  let timer = null;
  const run = () => {
    timer = null;
    last = Date.now();
    fn();
  };
  const call = () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(run, wait);
  };
  call.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return call;
}

const eventType = (t) => String(t ?? "").replace(/^outreach\./, "");

function liveBadge(live, endReason) {
  if (live) return badge("live", "live");
  return badge(endReason ? label(endReason) : "ended", "ended");
}

function userLink(id) {
  return h("a", { href: userHref(id) }, id);
}

function callLink(id, n = 8) {
  return h("a.mono", { href: callHref(id), title: id }, shortId(id, n));
}

function pager(page, go) {
  const { total = 0, limit = PAGE_SIZE, offset = 0 } = page || {};
  const first = total === 0 ? 0 : offset + 1;
  const last = Math.min(offset + limit, total);
  return h("nav.pager", { "aria-label": "Pages" },
    h("span.muted", null, `${count(first)}–${count(last)} of ${count(total)}`),
    h("button.btn.btn-small", { type: "button", disabled: offset <= 0, onclick: () => go(Math.max(0, offset - limit)) }, "‹ Previous"),
    h("button.btn.btn-small", { type: "button", disabled: offset + limit >= total, onclick: () => go(offset + limit) }, "Next ›"));
}

/** The shared frame of a page: its heading, an error line, and stale-response protection. */
class Page {
  constructor(app, params, id) {
    this.app = app;
    this.params = params;
    this.id = id;
    this.alive = true;
    this.seq = 0;
    this.timers = [];
  }

  heading(text, ...extra) {
    this.title = h("h1.page-title", { tabindex: "-1" }, text);
    return h("div.page-head", null, this.title, ...extra);
  }

  /** Runs `load` for the newest request only: older answers that come late are dropped. */
  async fetch(load) {
    const mine = ++this.seq;
    try {
      const result = await load();
      if (!this.alive || mine !== this.seq) return undefined;
      this.app.clearError();
      return result;
    } catch (err) {
      if (err instanceof LoggedOut || !this.alive || mine !== this.seq) return undefined;
      this.app.showError(err);
      return undefined;
    }
  }

  param(name, fallback = "") {
    return this.params.get(name) ?? fallback;
  }

  unmount() {
    this.alive = false;
    for (const t of this.timers) t.cancel();
  }

  onLive() {}
}

// -- overview ------------------------------------------------------------------------------------

class OverviewPage extends Page {
  mount(root) {
    this.windowH = Number(this.param("window_h", "24")) || 24;
    this.cards = h("div.cards");
    this.liveCalls = h("div");
    this.nodes = h("div");
    this.latency = h("div");
    this.outreach = h("div");
    this.documents = h("div");
    this.latencyTitle = h("h2", null, "Turn latency");
    this.charts = new ChartsPanel();
    const windowSelect = select("window_h", [["1", "last hour"], ["6", "last 6 hours"], ["24", "last 24 hours"], ["168", "last 7 days"]], String(this.windowH));
    windowSelect.addEventListener("change", () => {
      this.windowH = Number(windowSelect.value);
      this.app.setParams({ window_h: this.windowH === 24 ? "" : this.windowH });
      this.refreshCharts();
    });
    const chartSection = h("section.section", { "aria-labelledby": "charts-title" },
      h("div.section-head", null, h("h2", { id: "charts-title" }, "Charts"), field("Window", windowSelect)));
    this.charts.mount(chartSection);
    root.append(
      this.heading("Overview"),
      this.cards,
      h("div.grid-2", null,
        h("section.card.wide", null, h("h2", null, "Live calls"), this.liveCalls),
        h("section.card", null, h("h2", null, "Live calls per node"), this.nodes),
        h("section.card", null, this.latencyTitle, this.latency),
        h("section.card", null, h("h2", null, "Outreach today"), this.outreach),
        h("section.card", null, h("h2", null, "Knowledge documents"), this.documents)),
      chartSection);
    this.refreshSoon = throttle(() => this.refresh(), 1000);
    this.chartsSoon = throttle(() => this.refreshCharts(), 15000);
    this.timers.push(this.refreshSoon, this.chartsSoon);
    this.chartsAt = 0;
    this.refresh();
  }

  /** The counters and tables; the charts too when they are older than 15 s (they cover hours). */
  async refresh() {
    if (Date.now() - this.chartsAt > 15000) this.refreshCharts();
    const data = await this.fetch(() => Promise.all([get("/overview"), get("/calls", { live: "true", limit: 20 })]));
    if (data) this.render(...data);
  }

  async refreshCharts() {
    this.chartsAt = Date.now();
    try {
      const charts = await get("/charts", { window_h: this.windowH });
      if (this.alive) await this.charts.update(charts);
    } catch (err) {
      if (!(err instanceof LoggedOut) && this.alive) this.charts.unavailable(`Charts could not be loaded: ${err.message}`);
    }
  }

  render(o, live) {
    const outreachTotal = Object.values(o.outreach_today || {}).reduce((a, b) => a + b, 0);
    const card = (title, value, testid, note) =>
      h("div.stat", null, h("div.stat-label", null, title), h("div.stat-value", { testid }, count(value)), note ? h("div.stat-note.muted", null, note) : null);
    const docs = o.documents || {};
    replace(this.cards,
      card("Live calls", o.live_calls, "overview-live-calls", `on ${count((o.nodes || []).length)} node(s)`),
      card("Calls today", o.calls_today, "overview-calls-today", "since 00:00 UTC"),
      card("Turns today", o.turns_today, "overview-turns-today"),
      card("Open intents", o.open_intents, "overview-open-intents"),
      card("Outreach today", outreachTotal, "overview-outreach-today", `${count(o.outreach_today?.acked ?? 0)} acked`),
      card("Documents indexed", docs.indexed ?? 0, "overview-documents", docs.failed ? `${count(docs.failed)} failed` : null));

    replace(this.liveCalls, table({
      caption: "Live calls", testid: "overview-calls-table", empty: "No call in progress.",
      columns: [{ title: "Call" }, { title: "User" }, { title: "Node" }, { title: "Started" }, { title: "Turns", class: "num" }],
      rows: (live.items || []).map((c) => row([callLink(c.id), userLink(c.user_id), c.node_id, time(c.started_at), { content: count(c.turns), class: "num" }], { dataset: { callId: c.id } })),
    }).wrap, live.total > (live.items || []).length ? h("p", null, h("a", { href: "#/calls?live=true" }, `All ${count(live.total)} live calls`)) : null);

    replace(this.nodes, table({
      caption: "Live calls per node", testid: "overview-nodes", empty: "No node holds a live call.",
      columns: [{ title: "Node" }, { title: "Live calls", class: "num" }],
      rows: (o.nodes || []).map((n) => row([h("a", { href: `#/calls?${new URLSearchParams({ node_id: n.node_id, live: "true" })}` }, n.node_id), { content: count(n.live_calls), class: "num" }], { dataset: { nodeId: n.node_id } })),
    }).wrap);

    this.latencyTitle.textContent = `Turn latency (last ${o.window_h} h)`;
    const byStage = new Map((o.latency || []).map((l) => [l.stage, l]));
    const stages = [...STAGES.filter((s) => byStage.has(s)), ...[...byStage.keys()].filter((s) => !STAGES.includes(s))];
    replace(this.latency, table({
      caption: "Turn latency percentiles per stage", testid: "overview-latency", empty: "No turns in this window.",
      columns: [{ title: "Stage" }, { title: "p50", class: "num" }, { title: "p95", class: "num" }, { title: "Turns", class: "num" }],
      rows: stages.map((s) => {
        const l = byStage.get(s);
        return row([label(s), { content: seconds(l.p50_s), class: "num" }, { content: seconds(l.p95_s), class: "num" }, { content: count(l.count), class: "num" }], { dataset: { stage: s } });
      }),
    }).wrap);

    const outreach = o.outreach_today || {};
    const statuses = [...OUTREACH_STATUSES.filter((s) => s in outreach), ...Object.keys(outreach).filter((s) => !OUTREACH_STATUSES.includes(s))];
    replace(this.outreach, table({
      caption: "Outreach events created today by status", testid: "overview-outreach", empty: "No outreach today.",
      columns: [{ title: "Status" }, { title: "Events", class: "num" }],
      rows: statuses.map((s) => row([h("a", { href: `#/outreach?status=${enc(s)}` }, badge(s)), { content: count(outreach[s]), class: "num" }])),
    }).wrap);

    const states = [...DOC_STATES.filter((s) => s in docs), ...Object.keys(docs).filter((s) => !DOC_STATES.includes(s))];
    replace(this.documents, table({
      caption: "Knowledge documents by state", testid: "overview-documents-table", empty: "No documents.",
      columns: [{ title: "State" }, { title: "Documents", class: "num" }],
      rows: states.map((s) => row([h("a", { href: `#/knowledge?state=${enc(s)}` }, badge(s)), { content: count(docs[s]), class: "num" }])),
    }).wrap);
  }

  onLive(u) {
    if (u.type === "call.started" || u.type === "call.ended") this.refreshSoon();
    else if (u.type === "turn" || u.type === "outreach" || u.type === "intent" || u.type === "knowledge") {
      this.refreshSoon();
      this.chartsSoon();
    }
  }

  unmount() {
    super.unmount();
    this.charts.destroy();
  }
}

// -- calls -----------------------------------------------------------------------------------------

const CALL_COLUMNS = [
  { title: "Call" }, { title: "User" }, { title: "Node" }, { title: "Started" }, { title: "Duration" },
  { title: "Status" }, { title: "Turns", class: "num" }, { title: "Barge-ins", class: "num" },
  { title: "Prompts", class: "num" }, { title: "Caller's last words" },
];

function callRow(c, app) {
  const tr = row([
    callLink(c.id),
    userLink(c.user_id),
    c.node_id,
    time(c.started_at),
    { content: c.live ? duration(c.started_at) : duration(c.started_at, c.ended_at), class: "nowrap" },
    { content: liveBadge(c.live, c.end_reason), testid: "call-status" },
    { content: count(c.turns), class: "num", testid: "call-turns" },
    { content: count(c.barge_ins), class: "num", testid: "call-barge-ins" },
    { content: count(c.prompts), class: "num", testid: "call-prompts" },
    { content: c.last_user_text || "", class: "truncate", testid: "call-last-words" },
  ], { dataset: { callId: c.id }, class: "clickable" });
  tr.addEventListener("click", (event) => {
    if (event.target.closest("a, button") || window.getSelection()?.toString()) return;
    app.navigate(callHref(c.id));
  });
  return tr;
}

class CallsPage extends Page {
  mount(root) {
    const q = h("input", { type: "search", name: "q", value: this.param("q"), placeholder: "user id or words said", autocomplete: "off" });
    const userId = h("input", { type: "text", name: "user_id", value: this.param("user_id"), autocomplete: "off" });
    const nodeId = h("input", { type: "text", name: "node_id", value: this.param("node_id"), autocomplete: "off" });
    const live = select("live", [["", "all"], ["true", "live"], ["false", "ended"]], this.param("live"));
    this.form = h("form.filters", { role: "search", "aria-label": "Filter calls" },
      field("Search", q), field("User id", userId), field("Node", nodeId), field("State", live),
      h("div.field.field-button", null, h("button.btn", { type: "submit" }, "Apply")));
    const apply = () => {
      this.filters = { q: q.value.trim(), user_id: userId.value.trim(), node_id: nodeId.value.trim(), live: live.value };
      this.offset = 0;
      this.app.setParams({ ...this.filters, offset: "" });
      this.refresh();
    };
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      apply();
    });
    live.addEventListener("change", apply);
    let typing = null;
    q.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(apply, 400);
    });
    this.filters = { q: q.value, user_id: userId.value, node_id: nodeId.value, live: live.value };
    this.offset = Number(this.param("offset", "0")) || 0;
    this.pagerSlot = h("div");
    this.tbl = table({ columns: CALL_COLUMNS, rows: [], testid: "calls-table", stack: true, caption: "Calls", empty: "No calls match." });
    root.append(this.heading("Calls"), this.form, this.pagerSlot, this.tbl.wrap);
    this.refresh();
  }

  async refresh() {
    const page = await this.fetch(() => get("/calls", { ...this.filters, limit: PAGE_SIZE, offset: this.offset }));
    if (!page) return;
    this.page = page;
    replace(this.tbl.body, page.items.map((c) => callRow(c, this.app)));
    this.tbl.note.hidden = page.items.length > 0;
    this.renderPager();
  }

  renderPager() {
    replace(this.pagerSlot, pager(this.page, (offset) => {
      this.offset = offset;
      this.app.setParams({ offset: offset || "" });
      this.refresh();
    }));
  }

  matches(c) {
    const f = this.filters;
    if (f.user_id && c.user_id !== f.user_id) return false;
    if (f.node_id && c.node_id !== f.node_id) return false;
    if (f.live === "true" && !c.live) return false;
    if (f.live === "false" && c.live) return false;
    if (f.q) {
      const needle = f.q.toLowerCase();
      if (!c.user_id.toLowerCase().includes(needle) && !(c.last_user_text || "").toLowerCase().includes(needle)) return false;
    }
    return true;
  }

  findRow(id) {
    return [...this.tbl.body.rows].find((tr) => tr.dataset.callId === id) || null;
  }

  onLive(u) {
    if (!this.page) return;
    if ((u.type === "call.started" || u.type === "call.ended") && u.call) {
      const existing = this.findRow(u.call.id);
      const fits = this.matches(u.call);
      if (existing) {
        if (fits) existing.replaceWith(callRow(u.call, this.app));
        else existing.remove();
      } else if (fits && this.offset === 0 && u.type === "call.started") {
        this.tbl.body.prepend(callRow(u.call, this.app));
        this.page = { ...this.page, total: this.page.total + 1 };
        this.renderPager();
        this.app.announce(`New call from ${u.call.user_id}`);
      }
      this.tbl.note.hidden = this.tbl.body.rows.length > 0;
    } else if (u.type === "turn" && u.turn) {
      const tr = this.findRow(u.turn.call_id);
      if (!tr) return;
      const cell = (id) => tr.querySelector(`[data-testid="${id}"]`);
      const value = (id) => Number(cell(id)?.textContent.replace(/,/g, "")) || 0;
      const bump = (id, yes) => {
        if (yes && cell(id)) cell(id).textContent = count(value(id) + 1);
      };
      if (u.turn.index >= value("call-turns")) { // a new turn (not one counted already, updated)
        cell("call-turns").textContent = count(u.turn.index + 1);
        bump("call-barge-ins", u.turn.interrupted);
        bump("call-prompts", u.turn.initiator === "agent");
      }
      if (u.turn.user_text) cell("call-last-words").textContent = u.turn.user_text.slice(0, 200);
    }
  }
}

// -- one call --------------------------------------------------------------------------------------

const METRIC_KEYS = STAGES.map((s) => [s, `${s}_s`]);

function turnView(t, userId) {
  const classes = ["turn", t.initiator === "agent" ? "turn-prompt" : "turn-user", t.interrupted ? "turn-interrupted" : "", t.fault ? "turn-fault" : ""];
  const head = h("div.turn-head", null,
    h("span.turn-index", null, `#${t.index}`),
    time(t.started_at),
    t.initiator === "agent"
      ? h("span.turn-tag", null, badge("proactive prompt", "prompt"),
        t.event_id ? h("a.mono", { href: eventHref(userId, t.event_id), title: `outreach event ${t.event_id}`, testid: "turn-event" }, `event ${shortId(t.event_id, 12)}`) : null)
      : null,
    t.interrupted ? badge("barge-in", "interrupted") : null,
    t.fault ? h("span.badge.badge-failed", { title: t.fault }, `fault: ${t.fault}`) : null);

  const parts = [head];
  if (t.user_text) parts.push(h("p.utterance.utt-user", null, h("span.speaker", null, "Caller"), h("span.said", null, t.user_text)));
  if (t.agent_text || t.agent_text_heard) {
    let said;
    if (t.interrupted) {
      const heard = t.agent_text_heard || "";
      const rest = t.agent_text.startsWith(heard) ? t.agent_text.slice(heard.length) : null;
      said = rest !== null
        ? h("span.said", null, heard, rest ? h("s.unheard", { title: "not heard: the caller spoke over it" }, h("span.visually-hidden", null, " (not heard:) "), rest) : null)
        : h("span.said", null, heard, h("span.unheard.block", null, `Full reply (not all heard): ${t.agent_text}`));
    } else {
      said = h("span.said", null, t.agent_text);
    }
    parts.push(h("p.utterance.utt-agent", null, h("span.speaker", null, "Agent"), said));
  }

  const m = t.metrics || {};
  const metrics = METRIC_KEYS.filter(([, k]) => m[k] !== null && m[k] !== undefined);
  if (metrics.length) {
    parts.push(h("dl.metrics", { "aria-label": "Latency per stage" },
      metrics.map(([stage, k]) => h("div.metric", { dataset: { stage } }, h("dt", null, label(stage)), h("dd", null, seconds(m[k]))))));
  }
  if (t.sources && t.sources.length) {
    parts.push(h("div.sources", null, h("span.muted", null, "Knowledge sources:"),
      h("ul", null, t.sources.map((s) => h("li", null,
        h("span.source-title", null, s.title || s.doc_id),
        h("span.muted.mono", null, ` ${s.doc_id}#${s.ordinal}`),
        h("span.muted", null, ` · score ${typeof s.score === "number" ? s.score.toFixed(2) : "—"}`))))));
  }
  return h("li", { class: classes.filter(Boolean).join(" "), dataset: { turnIndex: t.index }, id: `turn-${t.index}`, tabindex: "-1" }, parts);
}

class CallPage extends Page {
  mount(root) {
    this.summary = h("div");
    this.recap = h("section.section", { hidden: true, testid: "call-after" });
    this.transcript = h("ol.transcript", { testid: "call-transcript", "aria-label": "Transcript" });
    this.empty = h("p.empty", { hidden: true }, "No turns yet.");
    root.append(
      h("p.back", null, h("a", { href: "#/calls" }, "← All calls")),
      this.heading(`Call ${shortId(this.id, 13)}`),
      this.summary,
      this.recap,
      h("section.section", null, h("h2", null, "Transcript"), this.transcript, this.empty));
    this.refresh(true);
  }

  async refresh(first = false) {
    const call = await this.fetch(() => get(`/calls/${enc(this.id)}`));
    if (!call) return;
    this.call = call;
    this.renderSummary();
    replace(this.transcript, call.transcript.map((t) => turnView(t, call.user_id)));
    this.empty.hidden = call.transcript.length > 0;
    // Announced from now on: turns arriving live (not the whole transcript at load).
    this.transcript.setAttribute("aria-live", "polite");
    this.transcript.setAttribute("aria-relevant", "additions");
    const turn = this.param("turn");
    if (first && turn !== "") {
      const el = this.transcript.querySelector(`[data-turn-index="${CSS.escape(turn)}"]`);
      if (el) {
        el.classList.add("highlight");
        el.scrollIntoView({ block: "center" });
        el.focus({ preventScroll: true });
      }
    }
  }

  renderSummary() {
    const c = this.call;
    const item = (k, v, testid) => h("div", null, h("dt", null, k), h("dd", { testid }, v));
    replace(this.summary, h("dl.summary", null,
      item("Call id", h("span.mono", null, c.id)),
      item("User", userLink(c.user_id)),
      item("Node", c.node_id),
      item("Status", liveBadge(c.live, c.end_reason), "call-detail-status"),
      item("Started", time(c.started_at)),
      item(c.live ? "Running for" : "Duration", c.live ? duration(c.started_at) : duration(c.started_at, c.ended_at)),
      item("Turns", count(c.turns)),
      item("Barge-ins", count(c.barge_ins)),
      item("Proactive prompts", count(c.prompts))));
    const recap = c.after_call;
    replace(this.recap, recap ? [
      h("h2", null, "After the call"),
      h("p", { testid: "call-after-summary" }, recap.summary),
      recap.intents.length
        ? h("ul.intents", { "aria-label": "Intents found" }, recap.intents.map((i) => h("li", null,
          h("strong", null, i.intent),
          h("span.muted", null, ` ${Math.round(i.confidence * 100)} % · turns `),
          i.evidence.map((id) => h("span.mono", null, `#${id} `)))))
        : h("p.muted", null, "No intent found."),
      h("p.muted", null, `Summarized by ${recap.model}, ${new Date(recap.created_at).toLocaleString()}`),
    ] : []);
    this.recap.hidden = !recap;
  }

  onLive(u) {
    if (!this.call) return;
    if (u.type === "turn" && u.turn && u.turn.call_id === this.call.id) {
      const el = turnView(u.turn, this.call.user_id);
      const existing = this.transcript.querySelector(`[data-turn-index="${u.turn.index}"]`);
      if (existing) {
        existing.replaceWith(el);
      } else {
        const after = [...this.transcript.children].find((li) => Number(li.dataset.turnIndex) > u.turn.index);
        this.transcript.insertBefore(el, after || null);
        const turns = this.call.transcript.filter((t) => t.index !== u.turn.index).concat([u.turn]);
        this.call = {
          ...this.call,
          transcript: turns,
          turns: Math.max(this.call.turns, turns.length),
          barge_ins: turns.filter((t) => t.interrupted).length,
          prompts: turns.filter((t) => t.initiator === "agent").length,
        };
        this.renderSummary();
      }
      this.empty.hidden = true;
    } else if ((u.type === "call.ended" || u.type === "call.started") && u.call && u.call.id === this.call.id) {
      this.call = { ...this.call, ...u.call, transcript: this.call.transcript };
      this.renderSummary();
      if (u.type === "call.ended") this.app.announce("This call ended");
    }
  }
}

// -- users -----------------------------------------------------------------------------------------

class UsersPage extends Page {
  mount(root) {
    const q = h("input", { type: "search", name: "q", value: this.param("q"), placeholder: "user id or name", autocomplete: "off" });
    const form = h("form.filters", { role: "search", "aria-label": "Find users" },
      field("Search", q), h("div.field.field-button", null, h("button.btn", { type: "submit" }, "Search")));
    const apply = () => {
      this.q = q.value.trim();
      this.offset = 0;
      this.app.setParams({ q: this.q, offset: "" });
      this.refresh();
    };
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      apply();
    });
    let typing = null;
    q.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(apply, 400);
    });
    this.q = q.value;
    this.offset = Number(this.param("offset", "0")) || 0;
    this.pagerSlot = h("div");
    this.tbl = table({
      caption: "Users", testid: "users-table", stack: true, empty: "No users match.",
      columns: [{ title: "User" }, { title: "Name" }, { title: "Status" }, { title: "Calls", class: "num" }, { title: "Last seen" }, { title: "Open intents" }],
      rows: [],
    });
    this.refreshSoon = throttle(() => this.refresh(), 1000);
    this.timers.push(this.refreshSoon);
    root.append(this.heading("Users"), form, this.pagerSlot, this.tbl.wrap);
    this.refresh();
  }

  async refresh() {
    const page = await this.fetch(() => get("/users", { q: this.q, limit: PAGE_SIZE, offset: this.offset }));
    if (!page) return;
    this.page = page;
    replace(this.tbl.body, page.items.map((u) => {
      const tr = row([
        h("a", { href: userHref(u.id) }, u.id),
        u.display_name || h("span.muted", null, "—"),
        u.live ? badge("in a call", "live") : h("span.muted", null, "—"),
        { content: count(u.calls), class: "num" },
        time(u.last_seen_at),
        { content: u.open_intents.length ? h("span.chips", null, u.open_intents.map((i) => h("span.chip", null, i))) : h("span.muted", null, "none"), testid: "user-open-intents" },
      ], { dataset: { userId: u.id }, class: "clickable" });
      tr.addEventListener("click", (event) => {
        if (!event.target.closest("a, button")) this.app.navigate(userHref(u.id));
      });
      return tr;
    }));
    this.tbl.note.hidden = page.items.length > 0;
    replace(this.pagerSlot, pager(page, (offset) => {
      this.offset = offset;
      this.app.setParams({ offset: offset || "" });
      this.refresh();
    }));
  }

  onLive(u) {
    if (!this.page) return;
    const userId = u.intent?.user_id || u.call?.user_id;
    if (!userId) return;
    if ([...this.tbl.body.rows].some((tr) => tr.dataset.userId === userId) || this.offset === 0) this.refreshSoon();
  }
}

class UserPage extends Page {
  mount(root) {
    this.summary = h("div");
    this.attributes = h("div");
    this.intentsSlot = h("div");
    this.calls = h("div");
    this.message = h("p.form-message", { role: "status" });
    root.append(
      h("p.back", null, h("a", { href: "#/users" }, "← All users")),
      this.heading(`User ${this.id}`),
      this.summary,
      h("section.section", { "aria-labelledby": "intents-title" }, h("h2", { id: "intents-title" }, "Intents"), this.message, this.intentsSlot),
      h("section.section", null, h("h2", null, "Recent calls"), this.calls),
      h("section.section", null, h("h2", null, "Attributes"), this.attributes));
    this.refreshSoon = throttle(() => this.refresh(), 1000);
    this.timers.push(this.refreshSoon);
    this.refresh();
  }

  async refresh() {
    const user = await this.fetch(() => get(`/users/${enc(this.id)}`));
    if (!user) return;
    this.user = user;
    if (user.display_name) this.title.textContent = `${user.display_name} (${user.id})`;
    const item = (k, v) => h("div", null, h("dt", null, k), h("dd", null, v));
    replace(this.summary, h("dl.summary", null,
      item("User id", h("span.mono", null, user.id)),
      item("Name", user.display_name || "—"),
      item("Status", user.live ? badge("in a call", "live") : badge("not in a call", "ended")),
      item("Calls", h("a", { href: `#/calls?user_id=${enc(user.id)}` }, count(user.calls))),
      item("First seen", time(user.created_at)),
      item("Last seen", time(user.last_seen_at))));
    this.renderIntents();
    replace(this.calls, table({
      caption: "Recent calls", testid: "user-calls-table", stack: true, columns: CALL_COLUMNS, empty: "No calls yet.",
      rows: user.recent_calls.map((c) => callRow(c, this.app)),
    }).wrap);
    const attrs = Object.entries(user.attributes || {});
    replace(this.attributes, table({
      caption: "Attributes", testid: "user-attributes", empty: "No attributes.",
      columns: [{ title: "Name" }, { title: "Value" }],
      rows: attrs.map(([k, v]) => row([h("span.mono", null, k), { content: typeof v === "string" ? v : JSON.stringify(v), class: "wrap" }])),
    }).wrap);
  }

  renderIntents() {
    const operator = isOperator();
    const columns = [{ title: "Intent" }, { title: "Confidence" }, { title: "Status" }, { title: "Evidence" }, { title: "Analyzer" }, { title: "Detected" }, { title: "Updated" }];
    if (operator) columns.push({ title: "Actions" });
    this.intentTable = table({
      caption: "Intents", testid: "intents-table", stack: true, columns, empty: "No intents found for this user.",
      rows: this.user.intents.map((i) => this.intentRow(i, operator)),
    });
    replace(this.intentsSlot, this.intentTable.wrap, operator ? null : h("p.muted.note", null, "Resolving or dismissing intents needs the operator role."));
  }

  intentRow(i, operator) {
    const evidence = i.evidence.length
      ? h("ul.evidence", null, i.evidence.map((e) => h("li", null,
        h("a", { href: callHref(e.call_id, e.index), title: `call ${e.call_id}, turn ${e.index}` }, `${shortId(e.call_id)} #${e.index}`),
        " ", h("q", null, e.user_text.length > 120 ? `${e.user_text.slice(0, 120)}…` : e.user_text))))
      : h("span.muted", null, "—");
    const cells = [
      h("strong", null, i.intent),
      h("span.confidence", null, h("meter", { min: "0", max: "1", value: String(i.confidence), "aria-hidden": "true" }), ` ${percent(i.confidence)}`),
      { content: badge(i.status), testid: "intent-status" },
      { content: evidence, class: "wrap" },
      i.analyzer,
      time(i.detected_at),
      time(i.updated_at),
    ];
    if (operator) {
      const act = (text, status, testid, kind) => h(`button.btn.btn-small${kind ? `.${kind}` : ""}`, {
        type: "button", testid, "aria-label": `${text} intent ${i.intent}`,
        onclick: (ev) => this.change(i, status, ev.currentTarget),
      }, text);
      cells.push({ class: "actions", content: i.status === "open"
        ? [act("Resolve", "resolved", "intent-resolve", "btn-primary"), act("Dismiss", "dismissed", "intent-dismiss")]
        : act("Reopen", "open", "intent-reopen") });
    }
    return row(cells, { dataset: { intentId: i.id, status: i.status } });
  }

  async change(intent, status, button) {
    const buttons = button.closest("td").querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    this.message.textContent = "";
    try {
      const updated = await api("POST", `/intents/${enc(intent.id)}`, { body: { status } });
      this.upsertIntent(updated || { ...intent, status });
      this.message.textContent = `Intent “${intent.intent}” is now ${status}.`;
    } catch (err) {
      if (err instanceof LoggedOut) return;
      for (const b of buttons) b.disabled = false;
      this.message.textContent = err.status === 403 ? `Not allowed: ${err.detail}` : `Could not change the intent: ${err.detail || err.message}`;
    }
  }

  upsertIntent(i) {
    if (!this.user || !this.alive) return;
    const intents = [i, ...this.user.intents.filter((x) => x.id !== i.id)];
    this.user = { ...this.user, intents };
    const operator = isOperator();
    const tr = this.intentRow(i, operator);
    const existing = [...this.intentTable.body.rows].find((r) => r.dataset.intentId === String(i.id));
    if (existing) existing.remove();
    this.intentTable.body.prepend(tr);
    this.intentTable.note.hidden = true;
  }

  onLive(u) {
    if (!this.user) return;
    if (u.type === "intent" && u.intent && u.intent.user_id === this.user.id) {
      this.upsertIntent(u.intent);
      this.app.announce(`Intent ${u.intent.intent}: ${u.intent.status}`);
    } else if (u.call && u.call.user_id === this.user.id) {
      this.refreshSoon();
    }
  }
}

// -- outreach ----------------------------------------------------------------------------------------

function stageChip(s) {
  const when = s.at ? new Date(s.at) : null;
  const title = [s.stage, when ? when.toLocaleString() : "", s.node_id ? `node ${s.node_id}` : "", s.detail || ""].filter(Boolean).join(" · ");
  return h("li", { class: `stage stage-${String(s.stage).replace(/[^a-z_-]/gi, "")}`, title, dataset: { stage: s.stage } },
    h("span.stage-name", null, s.stage),
    when ? h("span.stage-time", null, time(s.at)) : null,
    s.detail ? h("span.stage-detail", null, s.detail) : null);
}

function timeline(e) {
  const stages = [...(e.stages || [])].sort((a, b) => new Date(a.at) - new Date(b.at));
  const reached = new Set(stages.map((s) => s.stage));
  const list = h("ol.timeline", { "aria-label": "Stages" }, stages.map(stageChip));
  if (!FINISHED.has(e.status)) {
    // What would come next on the happy path, dimmed (a pending event is spoken in the next call).
    const last = e.status === "pending" ? HAPPY_PATH.indexOf("routed")
      : Math.max(...stages.map((s) => HAPPY_PATH.indexOf(s.stage)), HAPPY_PATH.indexOf(e.status));
    for (const next of HAPPY_PATH.slice(last + 1)) {
      if (!reached.has(next)) list.appendChild(h("li.stage.stage-future", { "aria-hidden": "true" }, h("span.stage-name", null, next)));
    }
  }
  return list;
}

function eventText(body) {
  if (!body || typeof body !== "object") return "";
  const payload = body.payload && typeof body.payload === "object" ? body.payload : body;
  return payload.text || payload.question || payload.reason || "";
}

class OutreachPage extends Page {
  mount(root) {
    const status = select("status", [["", "any"], ...OUTREACH_STATUSES.map((s) => [s, s])], this.param("status"));
    const type = select("type", [["", "any"], ["greet", "greet"], ["ask", "ask"]], this.param("type"));
    const userId = h("input", { type: "text", name: "user_id", value: this.param("user_id"), autocomplete: "off" });
    const filters = h("form.filters", { role: "search", "aria-label": "Filter outreach events", testid: "outreach-filters" },
      field("Status", status), field("Type", type), field("User id", userId),
      h("div.field.field-button", null, h("button.btn", { type: "submit" }, "Apply")));
    const apply = () => {
      this.filters = { status: status.value, type: type.value, user_id: userId.value.trim() };
      this.offset = 0;
      this.highlight = "";
      this.app.setParams({ ...this.filters, offset: "", event: "" });
      this.refresh();
    };
    filters.addEventListener("submit", (e) => {
      e.preventDefault();
      apply();
    });
    status.addEventListener("change", apply);
    type.addEventListener("change", apply);
    this.filters = { status: status.value, type: type.value, user_id: userId.value };
    this.offset = Number(this.param("offset", "0")) || 0;
    this.highlight = this.param("event");
    this.pagerSlot = h("div");
    this.tbl = table({
      caption: "Outreach events", testid: "outreach-table", stack: true, empty: "No outreach events match.",
      columns: [{ title: "Event" }, { title: "User" }, { title: "Status" }, { title: "Timeline" }, { title: "What" }, { title: "Created" }, { title: "Expires" }, { title: "Call" }],
      rows: [],
    });
    root.append(this.heading("Outreach"), this.sendForm(),
      h("section.section", { "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title" }, "Timeline"), filters, this.pagerSlot, this.tbl.wrap));
    this.refresh(true);
  }

  sendForm() {
    if (!isOperator()) {
      return h("p.muted.note", { testid: "outreach-viewer-note" }, "Sending a greeting or a question needs the operator role.");
    }
    const userId = h("input", { type: "text", name: "user_id", required: true, maxlength: "64", pattern: "[A-Za-z0-9_.@:\\-]+", autocomplete: "off", value: this.param("user_id") });
    const type = select("type", [["greet", "greet: say hello"], ["ask", "ask: a question"]], "greet");
    const text = h("textarea", { name: "text", rows: "2", maxlength: "1000", placeholder: "greet: the exact words (or leave empty and give a reason); ask: the question" });
    const reason = h("input", { type: "text", name: "reason", maxlength: "500", autocomplete: "off", placeholder: "e.g. their order has shipped" });
    const expires = h("input", { type: "number", name: "expires_in_s", min: "1", max: String(30 * 86400), step: "1", placeholder: "3600", inputmode: "numeric" });
    const submit = h("button.btn.btn-primary", { type: "submit" }, "Send");
    const message = h("p.form-message", { role: "status", testid: "outreach-form-message" });
    const form = h("form.card.send-form", { testid: "outreach-form", "aria-labelledby": "send-title", novalidate: true },
      h("h2", { id: "send-title" }, "Send outreach"),
      h("div.form-grid", null,
        field("User id", userId), field("Type", type), field("Expires in (s)", expires, "default 3600"),
        h("div.field.span-all", null, h("label", { for: "outreach-text" }, "Text"), text),
        h("div.span-all", null, field("Reason", reason, "greet without text: the agent phrases a greeting about this"))),
      h("div.form-actions", null, submit, message));
    text.id = "outreach-text";
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      message.classList.remove("error");
      const body = { user_id: userId.value.trim(), type: type.value };
      const problem = !body.user_id ? "Give a user id."
        : !userId.checkValidity() ? "A user id has only letters, digits and _ . @ : -"
          : type.value === "ask" && !text.value.trim() ? "An ask needs text: the question."
            : type.value === "greet" && !text.value.trim() && !reason.value.trim() ? "A greet needs text or a reason."
              : expires.value && !(Number(expires.value) > 0) ? "Expires in: a number of seconds above 0." : "";
      if (problem) {
        message.textContent = problem;
        message.classList.add("error");
        return;
      }
      if (text.value.trim()) body.text = text.value.trim();
      if (reason.value.trim()) body.reason = reason.value.trim();
      if (expires.value) body.expires_in_s = Number(expires.value);
      submit.disabled = true;
      message.textContent = "Sending…";
      try {
        const res = await api("POST", "/outreach", { body });
        const id = res?.event_id;
        message.textContent = res?.duplicate ? `Already decided: event ${id} (nothing new was sent).`
          : id ? `Queued: event ${id}.` : "Queued.";
        text.value = "";
        reason.value = "";
        this.highlight = id || "";
        this.app.announce(`Outreach queued for ${body.user_id}`);
        this.refresh();
      } catch (err) {
        if (err instanceof LoggedOut) return;
        message.classList.add("error");
        message.textContent = err.status === 503 ? `The event broker is unavailable: ${err.detail}`
          : err.status === 403 ? `Not allowed: ${err.detail}` : `Not sent: ${err.detail || err.message}`;
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }

  async refresh(first = false) {
    const page = await this.fetch(() => get("/outreach", { ...this.filters, limit: PAGE_SIZE, offset: this.offset }));
    if (!page) return;
    this.page = page;
    replace(this.tbl.body, page.items.map((e) => this.eventRow(e)));
    this.tbl.note.hidden = page.items.length > 0;
    replace(this.pagerSlot, pager(page, (offset) => {
      this.offset = offset;
      this.app.setParams({ offset: offset || "" });
      this.refresh();
    }));
    if (this.highlight) {
      const tr = this.findRow(this.highlight);
      if (tr) {
        tr.classList.add("highlight");
        if (first) tr.scrollIntoView({ block: "center" });
      }
    }
  }

  eventRow(e) {
    this.events = this.events || new Map();
    this.events.set(e.id, e);
    return row([
      h("span.event-id", null, h("span.mono", { title: e.id }, shortId(e.id, 10)), " ", badge(eventType(e.type), "type")),
      userLink(e.user_id),
      { content: badge(e.status), testid: "outreach-status" },
      { content: timeline(e), testid: "outreach-timeline" },
      { content: eventText(e.body), class: "truncate" },
      time(e.created_at),
      time(e.expires_at),
      e.call_id ? callLink(e.call_id) : h("span.muted", null, "—"),
    ], { dataset: { eventId: e.id, status: e.status }, class: e.id === this.highlight ? "highlight" : undefined });
  }

  findRow(id) {
    return [...this.tbl.body.rows].find((tr) => tr.dataset.eventId === id) || null;
  }

  onLive(u) {
    if (u.type !== "outreach" || !u.outreach || !this.page) return;
    const c = u.outreach;
    const known = this.events?.get(c.event_id);
    const stage = { stage: c.stage, at: u.at, node_id: u.node_id ?? null, detail: c.detail ?? null };
    // Already listed (read from the API after the change was made): not twice.
    const seen = (known?.stages || []).some((s) => s.stage === stage.stage && Math.abs(new Date(s.at) - new Date(stage.at)) < 2000);
    const event = known
      ? { ...known, status: c.status, updated_at: u.at, stages: seen ? known.stages : [...(known.stages || []), stage] }
      : { id: c.event_id, idempotency_key: "", type: c.type, user_id: c.user_id, status: c.status, created_at: u.at, updated_at: u.at, expires_at: null, claimed_by: null, call_id: null, detail: c.detail ?? null, body: {}, stages: [stage] };
    const f = this.filters;
    const fits = (!f.status || f.status === event.status) && (!f.type || eventType(f.type) === eventType(event.type)) && (!f.user_id || f.user_id === event.user_id);
    const tr = this.findRow(c.event_id);
    if (tr) {
      if (fits) tr.replaceWith(this.eventRow(event));
      else tr.remove();
    } else if (fits && this.offset === 0) {
      this.tbl.body.prepend(this.eventRow(event));
      this.tbl.note.hidden = true;
    } else {
      return;
    }
    this.app.announce(`Outreach ${shortId(c.event_id)} for ${c.user_id}: ${c.status}`);
  }
}

// -- knowledge ---------------------------------------------------------------------------------------

class KnowledgePage extends Page {
  mount(root) {
    const state = select("state", [["", "any"], ...DOC_STATES.map((s) => [s, s])], this.param("state"));
    const form = h("form.filters", { role: "search", "aria-label": "Filter documents" }, field("State", state));
    form.addEventListener("submit", (e) => e.preventDefault());
    state.addEventListener("change", () => {
      this.state = state.value;
      this.offset = 0;
      this.app.setParams({ state: this.state, offset: "" });
      this.refresh();
    });
    this.state = state.value;
    this.offset = Number(this.param("offset", "0")) || 0;
    this.counts = h("div.cards");
    this.last = h("p.last-ingestion");
    this.pagerSlot = h("div");
    this.message = h("p.form-message", { role: "status" });
    const columns = [{ title: "Document" }, { title: "State" }, { title: "Reason" }, { title: "Chunks", class: "num" }, { title: "Version" }, { title: "Source" }, { title: "Updated" }];
    if (isOperator()) columns.push({ title: "Actions" });
    this.tbl = table({ caption: "Knowledge documents", testid: "knowledge-table", stack: true, empty: "No documents match.", columns, rows: [] });
    this.summarySoon = throttle(() => this.refresh(true), 1000);
    this.timers.push(this.summarySoon);
    root.append(this.heading("Knowledge"), this.counts, this.last, form, this.message, this.pagerSlot, this.tbl.wrap);
    this.refresh();
  }

  async refresh(summaryOnly = false) {
    const k = await this.fetch(() => get("/knowledge", { state: this.state, limit: summaryOnly ? 1 : PAGE_SIZE, offset: summaryOnly ? 0 : this.offset }));
    if (!k) return;
    this.renderSummary(k);
    if (summaryOnly) return;
    const page = k.documents;
    this.page = page;
    replace(this.tbl.body, page.items.map((d) => this.docRow(d)));
    this.tbl.note.hidden = page.items.length > 0;
    replace(this.pagerSlot, pager(page, (offset) => {
      this.offset = offset;
      this.app.setParams({ offset: offset || "" });
      this.refresh();
    }));
  }

  renderSummary(k) {
    const states = k.states || {};
    replace(this.counts, DOC_STATES.concat(Object.keys(states).filter((s) => !DOC_STATES.includes(s))).map((s) =>
      h("div.stat", null, h("div.stat-label", null, label(s)), h("div.stat-value", { testid: `knowledge-${s}` }, count(states[s] ?? 0)))));
    const d = k.last_ingestion;
    replace(this.last, d
      ? ["Last ingestion: ", h("strong", null, d.title || d.doc_id), " ", badge(d.state), " ", time(d.updated_at), d.reason ? ` — ${d.reason}` : ""]
      : h("span.muted", null, "No ingestion yet."));
  }

  docRow(d) {
    const cells = [
      h("span.doc", null, h("strong", null, d.title || "(untitled)"), h("span.muted.mono.block", null, d.doc_id)),
      { content: badge(d.state), testid: "doc-state" },
      { content: [d.reason ? h("strong", null, d.reason) : null, d.detail ? h("span.block.muted", null, d.detail) : null, !d.reason && !d.detail ? "—" : null], class: "wrap" },
      { content: count(d.chunks), class: "num" },
      h("span.mono", { title: d.version }, shortId(d.version, 10)),
      { content: d.source, class: "truncate" },
      time(d.updated_at),
    ];
    if (isOperator()) {
      const actions = h("td.actions");
      const reset = () => {
        replace(actions, d.state === "deleted" ? h("span.muted", null, "—")
          : h("button.btn.btn-small.btn-danger", { type: "button", testid: "doc-delete", "aria-label": `Delete ${d.title || d.doc_id}`, onclick: confirm }, "Delete"));
      };
      const confirm = () => {
        const yes = h("button.btn.btn-small.btn-danger", { type: "button", testid: "doc-delete-confirm", onclick: () => this.remove(d, actions, reset) }, "Delete it");
        replace(actions, h("span.confirm", null, "Sure? ", yes, " ", h("button.btn.btn-small", { type: "button", onclick: () => { reset(); actions.querySelector("button")?.focus(); } }, "Cancel")));
        yes.focus();
      };
      reset();
      const tr = row(cells, { dataset: { docId: d.doc_id, state: d.state } });
      tr.appendChild(actions);
      return tr;
    }
    return row(cells, { dataset: { docId: d.doc_id, state: d.state } });
  }

  async remove(d, actions, reset) {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    this.message.textContent = "";
    try {
      await api("DELETE", `/knowledge/documents/${enc(d.doc_id)}`);
      replace(actions, h("span.muted", null, "deleting…"));
      this.message.textContent = `Deleting “${d.title || d.doc_id}”.`;
    } catch (err) {
      if (err instanceof LoggedOut) return;
      reset();
      this.message.textContent = err.status === 403 ? `Not allowed: ${err.detail}` : `Not deleted: ${err.detail || err.message}`;
    }
  }

  onLive(u) {
    if (u.type !== "knowledge" || !u.document || !this.page) return;
    const d = u.document;
    const tr = [...this.tbl.body.rows].find((r) => r.dataset.docId === d.doc_id);
    const fits = !this.state || this.state === d.state;
    if (tr) {
      if (fits) tr.replaceWith(this.docRow(d));
      else tr.remove();
    } else if (fits && this.offset === 0) {
      this.tbl.body.prepend(this.docRow(d));
      this.tbl.note.hidden = true;
    }
    this.summarySoon();
    this.app.announce(`Document ${d.title || d.doc_id}: ${d.state}`);
  }
}

// -- audit -------------------------------------------------------------------------------------------

// Prefixes the action filter offers; any other prefix works too.
const AUDIT_ACTIONS = ["login", "logout", "outreach", "intent", "document", "user", "token", "sessions",
  "POST", "PUT", "DELETE"];

class AuditPage extends Page {
  mount(root) {
    const action = h("input", { type: "text", name: "action", value: this.param("action"), list: "audit-actions",
      autocomplete: "off", placeholder: "e.g. login" });
    const actor = h("input", { type: "text", name: "actor", value: this.param("actor"), autocomplete: "off",
      placeholder: "user, token:name or cli" });
    const form = h("form.filters", { role: "search", "aria-label": "Filter the audit log", testid: "audit-filters" },
      field("Action starts with", action), field("Who", actor),
      h("datalist", { id: "audit-actions" }, ...AUDIT_ACTIONS.map((a) => h("option", { value: a }))),
      h("div.field.field-button", null, h("button.btn", { type: "submit" }, "Apply")));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.filters = { action: action.value.trim(), actor: actor.value.trim() };
      this.offset = 0;
      this.app.setParams({ ...this.filters, offset: "" });
      this.refresh();
    });
    this.filters = { action: action.value, actor: actor.value };
    this.offset = Number(this.param("offset", "0")) || 0;
    this.pagerSlot = h("div");
    this.tbl = table({
      caption: "Audit log", testid: "audit-table", stack: true, empty: "Nothing recorded matches.",
      columns: [{ title: "When" }, { title: "Who" }, { title: "Role" }, { title: "Action" }, { title: "Target" }, { title: "Detail" }, { title: "Address" }],
      rows: [],
    });
    const reload = h("button.btn.btn-small", { type: "button", onclick: () => this.refresh() }, "Reload");
    root.append(this.heading("Audit", reload), form, this.pagerSlot, this.tbl.wrap);
    this.refresh();
  }

  async refresh() {
    const page = await this.fetch(() => get("/audit", { ...this.filters, limit: PAGE_SIZE, offset: this.offset }));
    if (!page) return;
    replace(this.tbl.body, page.items.map((a) => row([
      time(a.at), a.actor, a.role, h("span.mono", null, a.action), { content: a.target ?? "—", class: "wrap" },
      { content: a.detail ?? "—", class: "wrap" }, a.address ?? "—",
    ], { dataset: { auditId: a.id } })));
    this.tbl.note.hidden = page.items.length > 0;
    replace(this.pagerSlot, pager(page, (offset) => {
      this.offset = offset;
      this.app.setParams({ offset: offset || "" });
      this.refresh();
    }));
  }
}

class NotFoundPage extends Page {
  mount(root) {
    root.append(this.heading("Not found"), h("p", null, "There is no such page. ", h("a", { href: "#/overview" }, "Go to the overview.")));
  }

  refresh() {}
}

/** path segments -> [nav key, page class, id] */
export function route(parts) {
  const [section = "overview", id, ...rest] = parts;
  if (rest.length) return ["", NotFoundPage, null];
  switch (section) {
    case "":
    case "overview":
      return id === undefined ? ["overview", OverviewPage, null] : ["", NotFoundPage, null];
    case "calls":
      return id === undefined ? ["calls", CallsPage, null] : ["calls", CallPage, id];
    case "users":
      return id === undefined ? ["users", UsersPage, null] : ["users", UserPage, id];
    case "outreach":
      return id === undefined ? ["outreach", OutreachPage, null] : ["", NotFoundPage, null];
    case "knowledge":
      return id === undefined ? ["knowledge", KnowledgePage, null] : ["", NotFoundPage, null];
    case "audit":
      return id === undefined ? ["audit", AuditPage, null] : ["", NotFoundPage, null];
    default:
      return ["", NotFoundPage, null];
  }
}

