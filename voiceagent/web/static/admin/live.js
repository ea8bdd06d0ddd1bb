// The one WebSocket of the dashboard (/api/admin/live, cookie auth): reconnects by itself with
// backoff (0.5 s doubling to 10 s, with jitter); every (re)connect and every "resync" message asks
// the page to read the API again, since updates may have been missed in between.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
// Close codes a server may use to say "log in again" (policy violation, app-defined 4401/4403).
const AUTH_CLOSE = new Set([1008, 4001, 4401, 4403]);

export class LiveFeed {
  /**
   * onMessage(update): one LiveUpdate (not hello/resync); onResync(): read the API again;
   * onStatus("connecting" | "live" | "reconnecting"); checkSession(): a promise, which leaves for
   * the login page when the session is gone.
   */
  constructor({ onMessage, onResync, onStatus, checkSession }) {
    this.onMessage = onMessage;
    this.onResync = onResync;
    this.onStatus = onStatus;
    this.checkSession = checkSession;
    this.ws = null;
    this.attempt = 0; // reconnects since a connection last worked
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.onStatus("connecting");
    this.connect();
    window.addEventListener("online", () => this.reconnectNow());
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) this.ws.close(1000, "leaving");
  }

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/api/admin/live`);
    } catch {
      this.retry(false);
      return;
    }
    this.ws = ws;
    let opened = false;
    let openedAt = 0;
    ws.addEventListener("open", () => {
      opened = true;
      openedAt = Date.now();
      this.onStatus("live");
      this.onResync("connect");
    });
    ws.addEventListener("message", (event) => {
      this.attempt = 0; // the server talks to us: the next drop starts again at 0.5 s
      let update;
      try {
        update = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!update || typeof update.type !== "string" || update.type === "hello") return;
      if (update.type === "resync") {
        this.onResync("resync");
        return;
      }
      try {
        this.onMessage(update);
      } catch (err) {
        // One update the page cannot apply must not stop the feed; the next resync repairs it.
        console.warn("live update not applied:", update.type, err);
      }
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      this.onStatus("reconnecting");
      if (opened && Date.now() - openedAt > 5000) this.attempt = 0;
      // Refused, or closed for a policy reason: the session may have ended (then: login page).
      this.retry(AUTH_CLOSE.has(event.code) || (!opened && this.attempt >= 1));
    });
  }

  retry(checkFirst) {
    if (this.stopped || this.timer) return;
    const step = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt);
    const delay = step / 2 + Math.random() * (step / 2); // equal jitter: 50–100 % of the step
    this.attempt = Math.min(this.attempt + 1, 10);
    this.timer = setTimeout(async () => {
      if (checkFirst) {
        try {
          await this.checkSession();
        } catch {
          // logged out (the page is leaving) or the server is unreachable: try again later
        }
      }
      this.timer = null;
      this.connect();
    }, delay);
  }

  reconnectNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.connect();
  }
}
