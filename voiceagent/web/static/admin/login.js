// The login form: POST /api/admin/session, then back to the dashboard view the user came from
// (its hash was kept in sessionStorage by api.js; never put in the URL), or to another signed-in
// page of this server that sent the user here.

import { detailText, RETURN_KEY } from "./api.js";

const PAGES = new Set(["/jobs"]); // the signed-in pages besides the dashboard

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const button = form.querySelector('button[type="submit"]');

function showError(text) {
  error.textContent = text;
  error.hidden = false;
}

function destination() {
  let hash = "";
  try {
    hash = sessionStorage.getItem(RETURN_KEY) || "";
    sessionStorage.removeItem(RETURN_KEY);
  } catch {
    // no storage: the overview
  }
  if (PAGES.has(hash)) return hash;
  // Only a dashboard route of our own: "#/…" with no way to leave the page.
  return /^#\/[^\s<>"'\\]*$/.test(hash) && hash.length < 500 ? `/admin${hash}` : "/admin";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  if (!username || !password) {
    showError("Enter your user name and password.");
    (username ? form.elements.password : form.elements.username).focus();
    return;
  }
  error.hidden = true;
  button.disabled = true;
  try {
    const res = await fetch("/api/admin/session", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
      body: JSON.stringify({ username, password }),
    });
    if (res.ok) {
      location.replace(destination());
      return;
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      // no JSON body
    }
    if (res.status === 401) {
      showError("wrong user name or password");
      form.elements.password.value = "";
      form.elements.password.focus();
    } else if (res.status === 429) {
      const wait = res.headers.get("Retry-After");
      const detail = detailText(body, res.status);
      showError(wait && !/\d/.test(detail) ? `${detail} (try again in ${wait} s)` : detail);
    } else {
      showError(`Login failed: ${detailText(body, res.status)}`);
    }
  } catch {
    showError("The server cannot be reached. Try again in a moment.");
  } finally {
    button.disabled = false;
  }
});
