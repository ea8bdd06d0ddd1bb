// The operators' dashboard: a single page with hash routes (#/overview, #/calls, #/calls/<id>,
// #/users, #/users/<id>, #/outreach, #/knowledge, #/audit), one live WebSocket for all of them.

import { loadSession, logout, onSession, LoggedOut, ApiError } from "./api.js";
import { replace } from "./dom.js";
import { LiveFeed } from "./live.js";
import { route } from "./pages.js";

const $ = (sel) => document.querySelector(sel);
const view = $("#view");
const banner = $("#banner");
const announcer = $("#announcer");
const liveStatus = $('[data-testid="live-status"]');

let page = null; // the page on screen
let navigated = false; // focus moves to a page's heading only after the user navigates

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  return { parts, params: new URLSearchParams(query) };
}

const app = {
  navigate(hash) {
    if (location.hash === hash) render();
    else location.hash = hash;
  },

  /** Changes the current hash's query (filters, page offset) without re-rendering the page. */
  setParams(changes) {
    const { parts, params } = parseHash();
    for (const [k, v] of Object.entries(changes)) {
      if (v === "" || v === null || v === undefined) params.delete(k);
      else params.set(k, String(v));
    }
    const qs = params.toString();
    const path = parts.map(encodeURIComponent).join("/") || "overview";
    history.replaceState(history.state, "", `#/${path}${qs ? `?${qs}` : ""}`);
  },

  showError(err) {
    const text = err instanceof ApiError
      ? err.status === 403 ? `Not allowed: ${err.detail}`
        : err.status === 404 ? `Not found: ${err.detail}`
          : err.status === 429 ? `Too many requests: ${err.detail}` : `The server answered ${err.status}: ${err.detail}`
      : `The server cannot be reached (${err?.message || err}). Retrying when the live feed reconnects.`;
    banner.textContent = text;
    banner.hidden = false;
  },

  clearError() {
    if (!banner.hidden) {
      banner.hidden = true;
      banner.textContent = "";
    }
  },

  /** A short sentence for screen readers (aria-live), at most one every 1.5 s. */
  announce(text) {
    pendingAnnouncement = text;
    if (announceTimer) return;
    announceTimer = setTimeout(() => {
      announceTimer = null;
      announcer.textContent = pendingAnnouncement;
    }, 1500);
  },
};

let pendingAnnouncement = "";
let announceTimer = null;

function render() {
  const { parts, params } = parseHash();
  const [key, Page, id] = route(parts);
  if (page) page.unmount();
  app.clearError();
  for (const link of document.querySelectorAll("nav.sections a")) {
    if (link.dataset.section === key) {
      link.setAttribute("aria-current", "page");
      link.scrollIntoView({ block: "nearest", inline: "nearest" }); // phones: the nav strip scrolls
    } else {
      link.removeAttribute("aria-current");
    }
  }
  const root = document.createElement("div");
  root.className = `page page-${key || "none"}`;
  replace(view, root);
  page = new Page(app, params, id);
  page.mount(root);
  const title = page.title?.textContent || "Dashboard";
  document.title = `${title} · VoiceAgent admin`;
  if (navigated && page.title) page.title.focus({ preventScroll: false });
  window.scrollTo(0, 0);
}

function setLiveStatus(state) {
  liveStatus.textContent = state;
  liveStatus.dataset.state = state;
  liveStatus.title = state === "live" ? "Live updates are on" : "Live updates are paused; reconnecting";
}

function showUser(session) {
  $("#who-name").textContent = session.username;
  const role = $("#who-role");
  role.textContent = session.role;
  role.className = `badge badge-role-${session.role === "operator" ? "operator" : "viewer"}`;
  document.body.dataset.role = session.role;
}

async function main() {
  onSession(showUser);
  try {
    await loadSession();
  } catch (err) {
    if (err instanceof LoggedOut) return;
    app.showError(err);
    return;
  }
  $("#app").hidden = false;
  $('[data-testid="logout"]').addEventListener("click", (e) => {
    e.currentTarget.disabled = true;
    logout();
  });
  // The skip link must not change the hash (it is the router's).
  $("#skip").addEventListener("click", (e) => {
    e.preventDefault();
    (page?.title || $("#main")).focus();
  });
  window.addEventListener("hashchange", () => {
    navigated = true;
    render();
  });
  // /admin/calls/<id> (the server serves this page for any /admin/… path) is #/calls/<id>.
  const rest = location.pathname.replace(/^\/admin\/?/, "");
  if (rest && (!location.hash || location.hash === "#")) history.replaceState(null, "", `/admin#/${rest}${location.search}`);
  else if (!location.hash || location.hash === "#" || location.hash === "#/") history.replaceState(null, "", "#/overview");
  render();

  const live = new LiveFeed({
    onStatus: setLiveStatus,
    onMessage: (update) => page?.onLive(update),
    onResync: () => page?.refresh(),
    checkSession: () => loadSession().catch((err) => {
      if (err instanceof LoggedOut) live.stop();
      throw err;
    }),
  });
  live.start();
}

main();
