// app.js: the relay's Live Logs page. It owns the DOM; the connection is
// livelogs.js (the same module an existing frontend would embed), and the
// drawing of one entry is render.js.
import { connectLiveLogs, State, DEVICE_ID } from "./livelogs.js";
import { renderEntry } from "./render.js";

const MAX_ENTRIES = 500; // bounded list: the oldest entries fall off
const MAX_RECENT = 10; // recent device IDs remembered for the picker
const TOKEN_KEY = "nbiot-live.token";
const RECENT_KEY = "nbiot-live.recent";

const $ = (id) => document.getElementById(id);
const store = (s) => {
  // Storage may be disabled (privacy modes): the page still works without it.
  try {
    return s();
  } catch (e) {
    return null;
  }
};

// 1. Take the token out of the address bar before anything else, so it is
// not left in the history, a bookmark or a screenshot. It is kept in this
// tab's sessionStorage only, so a reload stays signed in.
const params = new URLSearchParams(location.search);
if (params.has("access_token")) {
  const t = params.get("access_token").trim();
  if (t) store(() => sessionStorage.setItem(TOKEN_KEY, t));
  params.delete("access_token");
  history.replaceState(history.state, "", pageURL(params.get("deviceId")));
}

function pageURL(deviceId) {
  const q = new URLSearchParams();
  if (deviceId) q.set("deviceId", deviceId);
  const s = q.toString();
  return location.pathname + (s ? "?" + s : "") + location.hash;
}

const token = () => store(() => sessionStorage.getItem(TOKEN_KEY)) || "";

let conn = null;
let deviceId = "";
let count = 0;

// 2. Connection state, shown at the top right; status entries go in the list.
const stateText = {
  [State.CONNECTING]: () => "connecting…",
  [State.LIVE]: () => "live",
  [State.RECONNECTING]: (i) => (i.delayMs ? `reconnecting in ${(i.delayMs / 1000).toFixed(1)} s` : "reconnecting…"),
  [State.UNAUTHORIZED]: () => "sign in required",
  [State.FORBIDDEN]: () => "no access to this device",
  [State.INVALID]: () => "invalid device ID",
  [State.CLOSED]: () => "closed",
};

function showState(state, info) {
  const el = $("conn");
  el.dataset.state = state;
  $("conn-text").textContent = (stateText[state] || (() => state))(info);
  el.title = info && info.reason ? info.reason : "";
  if (state === State.UNAUTHORIZED) showSignIn(token() ? "The relay refused the token (expired or wrong project?). Paste a fresh one." : "This relay needs a sign-in: paste a Supabase access token (JWT).");
  if (state === State.LIVE) hideSignIn();
}

function showAuth() {
  const signedIn = !!token();
  $("auth-text").textContent = signedIn ? "signed in" : "";
  $("signout").hidden = !signedIn;
  $("signin-show").hidden = signedIn;
}

function showSignIn(why) {
  $("signin-why").textContent = why;
  $("signin").hidden = false;
  $("token").focus();
}

function hideSignIn() {
  $("signin").hidden = true;
}

// The relay keeps the browser connected while its own link to coap-server
// is down, and says so with status entries (data.upstream "lost", then
// "restored"): the indicator follows them.
function upstreamStatus(entry) {
  const up = entry.type === "status" && entry.data && entry.data.upstream;
  if (up === "lost") {
    $("conn").dataset.state = "upstream-lost";
    $("conn-text").textContent = "reconnecting: relay lost coap-server";
    $("conn").title = entry.message || "";
  } else if (up === "restored") {
    showState(State.LIVE, {});
  }
}

// 3. Entries, newest first, at most MAX_ENTRIES.
function addEntry(entry) {
  upstreamStatus(entry);
  const list = $("entries");
  list.insertBefore(renderEntry(entry), list.firstChild);
  while (list.childElementCount > MAX_ENTRIES) list.lastElementChild.remove();
  count++;
  updateCount();
}

function updateCount() {
  const n = $("entries").childElementCount;
  $("count").textContent = `${n} entr${n === 1 ? "y" : "ies"}` + (count > n ? ` (last ${MAX_ENTRIES} of ${count})` : "");
  $("empty").hidden = n > 0;
}

function clearEntries() {
  $("entries").replaceChildren();
  count = 0;
  updateCount();
}

// 4. Opening a device.
function open(id, { push = true } = {}) {
  id = (id || "").trim();
  if (conn) conn.close();
  conn = null;
  deviceId = id;
  $("device").value = id;
  $("device-title").textContent = id;
  document.title = (id ? id + " · " : "") + "Live Logs · nbiot-live";
  clearEntries();
  if (push) history.pushState(null, "", pageURL(id));
  if (!id) {
    $("conn").dataset.state = "idle";
    $("conn-text").textContent = "pick a device";
    return;
  }
  if (!DEVICE_ID.test(id)) return showState(State.INVALID, { reason: "letters, digits, _ and -, up to 64" });
  remember(id);
  conn = connectLiveLogs({ deviceId: id, token, onEntry: addEntry, onState: showState });
}

function recentDevices() {
  const recent = store(() => JSON.parse(localStorage.getItem(RECENT_KEY) || "[]"));
  return Array.isArray(recent) ? recent.filter((d) => typeof d === "string" && DEVICE_ID.test(d)) : [];
}

function showRecent(recent) {
  $("recent-devices").replaceChildren(...recent.map((d) => Object.assign(document.createElement("option"), { value: d })));
}

function remember(id) {
  const recent = [id, ...recentDevices().filter((d) => d !== id)].slice(0, MAX_RECENT);
  store(() => localStorage.setItem(RECENT_KEY, JSON.stringify(recent)));
  showRecent(recent);
}

$("device-form").addEventListener("submit", (e) => {
  e.preventDefault();
  open($("device").value);
});

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim().replace(/^Bearer\s+/i, "");
  if (!t) return;
  store(() => sessionStorage.setItem(TOKEN_KEY, t));
  $("token").value = "";
  hideSignIn();
  showAuth();
  if (deviceId) open(deviceId, { push: false });
});
$("signin-show").addEventListener("click", () => showSignIn("Paste a Supabase access token (JWT)."));
$("signin-cancel").addEventListener("click", hideSignIn);
$("signout").addEventListener("click", () => {
  store(() => sessionStorage.removeItem(TOKEN_KEY));
  showAuth();
  if (deviceId) open(deviceId, { push: false });
});
$("clear").addEventListener("click", clearEntries);
window.addEventListener("popstate", () => open(new URLSearchParams(location.search).get("deviceId"), { push: false }));

showAuth();
showRecent(recentDevices());
open(params.get("deviceId"), { push: false });
