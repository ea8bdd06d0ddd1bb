// The /jobs page: synthesize a text or transcribe a file as a background job, follow it (a
// progress bar fed by polling GET /api/jobs/<id> while it is queued or running), cancel it, and
// download its files. Sign-in, the CSRF token and errors come from the dashboard's api.js; what the
// server sends reaches the page as text only (dom.js), never as HTML.

import { api, ApiError, LoggedOut, isOperator, loadSession, logout } from "/static/admin/api.js";
import { h, replace, shortId, time } from "/static/admin/dom.js";

const POLL_MS = 750; // while a job on screen is queued or running
const POLL_HIDDEN_MS = 5000; // ...and the tab is in the background
const PAGE_SIZE = 20;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const KIND_NAMES = { synthesize: "Speech", transcribe: "Transcript", summarize_call: "Call summary" };
const FORMATS = { wav: "WAV", opus: "Opus", json: "JSON", txt: "TXT", vtt: "VTT" };

const $ = (sel) => document.querySelector(sel);
const list = $("#jobs");
const message = $("#form-message");
const banner = $("#banner");
const announcer = $("#announcer");
const textArea = $("#text");
const counter = $("#text-count");
const fileInput = $("#audio");

// Replaced by GET /api/jobs/kinds; these only serve until it answers.
let options = { max_text_chars: 100_000, max_upload_bytes: Infinity, reasons: {} };
const cards = new Map(); // job id -> its card; updated in place, so focus survives a poll
let nextBefore = null;
let pollTimer = null;

// -- formatting ----------------------------------------------------------------------------------

function size(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB"];
  let value = n;
  let unit = "B";
  for (const next of units) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

function what(job) {
  const params = job.params || {};
  if (job.kind === "synthesize" && typeof params.text === "string") return `“${params.text}”`;
  if (job.input) return `${job.input.name} (${size(job.input.bytes)})`;
  if (job.kind === "summarize_call" && params.call_id) return `Call ${params.call_id}`;
  const shown = JSON.stringify(params);
  return shown === "{}" ? "" : shown;
}

function fileLabel(file) {
  const [stem, ext = ""] = file.name.split(/\.(?=[^.]+$)/);
  const format = FORMATS[ext.toLowerCase()] || ext.toUpperCase() || file.media_type;
  return `${stem.charAt(0).toUpperCase()}${stem.slice(1)} ${format}`;
}

function reasonWords(reason) {
  return options.reasons[reason] || String(reason || "failed").replace(/_/g, " ");
}

// -- the list ------------------------------------------------------------------------------------

function makeCard(job) {
  const c = {
    job,
    status: h("span.badge", { testid: "job-status" }),
    bar: h("progress", { max: "100", testid: "job-progress", "aria-label": `Progress of job ${shortId(job.id)}` }),
    percent: h("span.job-percent", { testid: "job-percent" }),
    note: h("span.job-note.muted", { testid: "job-note" }),
    problem: h("p.job-problem", { testid: "job-problem", hidden: true }),
    result: h("p.job-result.muted", { hidden: true }),
    links: h("div.job-links", { testid: "job-links", hidden: true }),
    cancel: h("button.btn.btn-small.btn-danger", { type: "button", testid: "job-cancel", hidden: true }, "Cancel"),
    filesShown: false,
  };
  c.progress = h("div.job-progress", null, c.bar, c.percent, c.note);
  c.cancel.addEventListener("click", () => cancel(c));
  c.el = h(
    "li.job",
    { dataset: { jobId: job.id }, testid: "job" },
    h(
      "div.job-head",
      null,
      h("span.job-kind", null, KIND_NAMES[job.kind] || job.kind),
      c.status,
      h("span.job-meta.muted", null, time(job.created_at), " · ", h("span.mono", { title: job.id }, shortId(job.id))),
    ),
    h("p.job-what", null, what(job)),
    c.progress,
    c.problem,
    c.result,
    c.links,
    h("div.job-actions", null, c.cancel),
  );
  return c;
}

function update(c, job) {
  c.job = job;
  const active = !FINISHED.has(job.status);
  c.el.dataset.status = job.status;
  c.status.textContent = job.cancel_requested && active ? "cancelling" : job.status;
  c.status.className = `badge badge-${job.status}`;

  c.progress.hidden = !active;
  if (job.status === "running") {
    c.bar.value = job.progress_percent;
    c.percent.textContent = `${Math.round(job.progress_percent)}%`;
  } else {
    c.bar.removeAttribute("value"); // queued: an indeterminate bar
    c.percent.textContent = "";
  }
  c.note.textContent = job.status === "queued" ? job.progress_note || "waiting for a worker" : job.progress_note || "";

  c.cancel.hidden = !active || !isOperator();
  c.cancel.disabled = job.cancel_requested;
  c.cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel";

  if (job.status === "failed") {
    replace(c.problem, h("strong", null, reasonWords(job.reason)), job.detail ? `: ${job.detail}` : "");
    c.problem.hidden = false;
  } else if (job.status === "cancelled") {
    replace(c.problem, job.detail || "cancelled");
    c.problem.hidden = false;
    c.problem.classList.add("muted");
  } else {
    c.problem.hidden = true;
  }

  const preview = job.result?.text_preview;
  c.result.hidden = typeof preview !== "string" || !preview;
  if (!c.result.hidden) c.result.textContent = `“${preview}”`;

  if (job.status === "succeeded" && !c.filesShown) {
    c.filesShown = true;
    replace(
      c.links,
      job.files.map((file) =>
        h(
          "a.btn.btn-small.download",
          { href: file.url, download: true, testid: "job-download", dataset: { file: file.name } },
          fileLabel(file),
          h("span.muted", null, ` ${size(file.bytes)}`),
        ),
      ),
    );
    c.links.hidden = job.files.length === 0;
  }
}

/** The job's card, made or brought up to date; new cards go first (newest) or last (older pages). */
function show(job, where = "top") {
  let c = cards.get(job.id);
  if (!c) {
    c = makeCard(job);
    cards.set(job.id, c);
  }
  update(c, job);
  if (!c.el.isConnected) {
    if (where === "top") list.prepend(c.el);
    else list.append(c.el);
  }
  $("#jobs-empty").hidden = cards.size > 0;
  return c;
}

function forget(id) {
  const c = cards.get(id);
  if (c) c.el.remove();
  cards.delete(id);
  $("#jobs-empty").hidden = cards.size > 0;
}

async function loadJobs(older = false) {
  const page = await api("GET", "/api/jobs", { query: { limit: PAGE_SIZE, before: older ? nextBefore : undefined } });
  const fresh = older ? page.jobs : [...page.jobs].reverse(); // prepending newest last keeps the order
  for (const job of fresh) show(job, older ? "bottom" : "top");
  if (older || nextBefore === null) nextBefore = page.next_before;
  $("#more").hidden = !nextBefore;
  $("#jobs-empty").hidden = cards.size > 0;
  schedule();
}

async function addJob(id) {
  try {
    show(await api("GET", `/api/jobs/${encodeURIComponent(id)}`));
    schedule();
  } catch (err) {
    if (!(err instanceof LoggedOut)) showError(err);
  }
}

// -- following running jobs ----------------------------------------------------------------------

function active() {
  return [...cards.values()].filter((c) => !FINISHED.has(c.job.status));
}

function schedule(delay) {
  clearTimeout(pollTimer);
  pollTimer = null;
  if (active().length) pollTimer = setTimeout(poll, delay ?? (document.hidden ? POLL_HIDDEN_MS : POLL_MS));
}

async function poll() {
  pollTimer = null;
  let reached = true;
  await Promise.all(
    active().map(async (c) => {
      try {
        const before = c.job.status;
        const job = await api("GET", `/api/jobs/${encodeURIComponent(c.job.id)}`);
        update(c, job);
        if (before !== job.status && FINISHED.has(job.status)) announce(`Job ${shortId(job.id)} ${job.status}.`);
      } catch (err) {
        if (err instanceof LoggedOut) throw err;
        if (err instanceof ApiError && err.status === 404) forget(c.job.id); // expired meanwhile
        else {
          reached = false;
          showError(err);
        }
      }
    }),
  ).then(
    () => {
      if (reached) clearError();
      schedule();
    },
    () => {}, // on the way to the login page
  );
}

async function cancel(c) {
  c.cancel.disabled = true;
  try {
    update(c, await api("DELETE", `/api/jobs/${encodeURIComponent(c.job.id)}`));
    announce(c.job.status === "cancelled" ? "Job cancelled." : "Cancelling: the worker stops at its next step.");
    schedule();
  } catch (err) {
    if (err instanceof LoggedOut) return;
    if (err instanceof ApiError && err.status === 409) {
      await addJob(c.job.id); // it finished meanwhile: show how
    } else {
      showError(err);
    }
    c.cancel.disabled = false;
  }
}

// -- submitting ----------------------------------------------------------------------------------

function say(text, isError = false) {
  message.textContent = text;
  message.classList.toggle("error", isError);
}

function refusal(err) {
  const body = err.body && typeof err.body === "object" ? err.body : {};
  switch (err.status) {
    case 422:
      return `Refused: ${reasonWords(body.error)} (${err.detail}).`;
    case 413:
      return `Too large: ${err.detail}`;
    case 429:
      return `Too many jobs are waiting. Try again${err.retryAfter ? ` in ${err.retryAfter} s` : " later"}.`;
    case 503:
      return "The job queue is unavailable; nothing was kept. Try again in a moment.";
    case 403:
      return `Not allowed: ${err.detail}`;
    default:
      return `The server answered ${err.status}: ${err.detail}`;
  }
}

async function submit(body, form, waiting) {
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  say(waiting);
  try {
    const accepted = await api("POST", "/api/jobs", { body });
    say("Submitted: follow it below.");
    form.reset();
    countText();
    await addJob(accepted.job_id);
  } catch (err) {
    if (err instanceof LoggedOut) return;
    if (err instanceof ApiError) {
      say(refusal(err), true);
      if (err.body?.job_id) await addJob(err.body.job_id); // the refusal is a failed job in the list
    } else {
      say("The server cannot be reached. Try again in a moment.", true);
    }
  } finally {
    button.disabled = false;
  }
}

function countText() {
  const n = textArea.value.length;
  const over = n > options.max_text_chars;
  counter.textContent = `${n.toLocaleString("en")} / ${options.max_text_chars.toLocaleString("en")} characters${over ? " (over the limit)" : ""}`;
  counter.classList.toggle("over", over);
}

function chooseKind(kind) {
  $("#synthesize-form").hidden = kind !== "synthesize";
  $("#transcribe-form").hidden = kind !== "transcribe";
  say("");
}

function setUpForms() {
  const synthesize = $("#synthesize-form");
  const transcribe = $("#transcribe-form");
  textArea.addEventListener("input", countText);
  countText();
  if (Number.isFinite(options.max_upload_bytes)) $("#audio-limit").textContent = `Audio, up to ${size(options.max_upload_bytes)}.`;
  for (const radio of document.querySelectorAll('input[name="kind"]')) {
    radio.addEventListener("change", () => chooseKind(radio.value));
  }
  synthesize.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!textArea.value.trim()) {
      say("Enter a text to speak.", true);
      textArea.focus();
      return;
    }
    submit({ kind: "synthesize", params: { text: textArea.value } }, synthesize, "Submitting…");
  });
  transcribe.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = fileInput.files?.[0];
    if (!file) {
      say("Choose an audio file.", true);
      fileInput.focus();
      return;
    }
    if (file.size > options.max_upload_bytes) {
      say(`The file is ${size(file.size)}, over the limit of ${size(options.max_upload_bytes)}.`, true);
      return;
    }
    const form = new FormData();
    form.append("kind", "transcribe"); // the fields before the file: the server reads them first
    form.append("file", file, file.name);
    submit(form, transcribe, `Uploading ${size(file.size)}…`);
  });
  if (!isOperator()) {
    for (const control of document.querySelectorAll(".new-job input, .new-job textarea, .new-job button")) {
      control.disabled = true;
    }
    $("#viewer-note").hidden = false;
  }
}

// -- the frame -----------------------------------------------------------------------------------

function showError(err) {
  banner.textContent =
    err instanceof ApiError ? `The server answered ${err.status}: ${err.detail}` : "The server cannot be reached; retrying.";
  banner.hidden = false;
}

function clearError() {
  banner.hidden = true;
  banner.textContent = "";
}

function announce(text) {
  announcer.textContent = text;
}

function showUser(session) {
  $("#who-name").textContent = session.username;
  const role = $("#who-role");
  role.textContent = session.role;
  role.className = `badge badge-role-${session.role === "operator" ? "operator" : "viewer"}`;
}

async function main() {
  try {
    showUser(await loadSession());
  } catch (err) {
    if (!(err instanceof LoggedOut)) showError(err);
    return;
  }
  $("#app").hidden = false;
  $('[data-testid="logout"]').addEventListener("click", (e) => {
    e.currentTarget.disabled = true;
    logout();
  });
  try {
    options = await api("GET", "/api/jobs/kinds");
  } catch (err) {
    if (err instanceof LoggedOut) return;
    showError(err);
  }
  setUpForms();
  $("#refresh").addEventListener("click", () => loadJobs().catch(onLoadError));
  $("#more").addEventListener("click", () => loadJobs(true).catch(onLoadError));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && pollTimer !== null) schedule(0); // back in view: catch up at once
  });
  await loadJobs().catch(onLoadError);
}

function onLoadError(err) {
  if (!(err instanceof LoggedOut)) showError(err);
}

main();
