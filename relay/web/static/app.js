// app.js: the relay's Live Logs page. It owns the DOM; the connection is
// livelogs.js (the same module an existing frontend would embed), the list
// as data is model.js, the drawing of one row is render.js and the files
// are export.js.
import { connectLiveLogs, State, DEVICE_ID } from "./livelogs.js";
import { LogList, MAX_ENTRIES, TYPES, matches } from "./model.js";
import { renderRow, renderMarker } from "./render.js";
import { toJSONLines, toCSV, download, fileName } from "./export.js";

const PAGE = 200; // rows in the DOM at once: the list is windowed
const MAX_RECENT = 10; // recent device IDs remembered for the picker
const ANNOUNCE_EVERY_MS = 2000; // the live region speaks at most this often
const TOKEN_KEY = "nbiot-live.token";
const RECENT_KEY = "nbiot-live.recent";
const TAIL = 100; // history asked for on open

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

// whoami: the email (or else the sub) in a JWT's payload, unverified: for display only.
function whoami(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "===".slice((part.length + 3) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    const who = claims.email || claims.sub;
    return typeof who === "string" ? who : "";
  } catch (e) {
    return "";
  }
}

let conn = null;
let deviceId = "";
let connState = "idle"; // the last State, or "idle"
let list = new LogList();
const filter = { types: new Set(TYPES), text: "" };
let paused = false;
let held = []; // entries that arrived while paused, in order
let offset = 0; // rows of the filtered view above the window (0 = newest)
let newSince = 0; // entries since the live region last spoke
let announceTimer = null;
let clockSkewMs = 0; // largest negative latency seen
const drawn = new Map(); // row id → {version, node} of the rows in the DOM

// 2. One truthful state. The connection state decides the header's
// indicator, who the header says is signed in, and the text in an empty
// list: a refused token is "sign in required" and nothing else.
const stateText = {
  [State.CONNECTING]: () => "connecting…",
  [State.LIVE]: () => "live",
  [State.RECONNECTING]: (i) => (i.delayMs ? `reconnecting in ${(i.delayMs / 1000).toFixed(1)} s` : "reconnecting…"),
  [State.UNAUTHORIZED]: () => "sign in required",
  [State.FORBIDDEN]: () => "no access to this device",
  [State.INVALID]: () => "invalid device ID",
  [State.CLOSED]: () => "closed",
};

function showState(state, info = {}) {
  connState = state;
  const el = $("conn");
  el.dataset.state = state;
  $("conn-text").textContent = (stateText[state] || (() => state))(info);
  el.title = info.reason || "";
  if (state === State.UNAUTHORIZED) showSignIn(token() ? "The relay refused the token (expired or wrong project?). Paste a fresh one." : "This relay needs a sign-in: paste a Supabase access token (JWT).");
  if (state === State.LIVE) hideSignIn();
  showAuth();
  updateCount();
}

function showAuth() {
  const t = token();
  // A token the relay refused signs nobody in.
  const signedIn = !!t && connState !== State.UNAUTHORIZED;
  const who = signedIn ? whoami(t) : "";
  $("auth-text").textContent = signedIn ? (who ? `signed in as ${who}` : "signed in") : "";
  $("signout").hidden = !signedIn;
  $("signin-show").hidden = signedIn;
  if (signedIn) loadDevices(t);
  else showPicker([]);
}

function emptyText() {
  switch (connState) {
    case "idle":
      return "Pick a device above.";
    case State.UNAUTHORIZED:
      return "Sign in to see this device's live log.";
    case State.FORBIDDEN:
      return `You cannot see ${deviceId}: it is not one of your devices, or it does not exist.`;
    case State.INVALID:
      return `“${deviceId}” is not a device ID: letters, digits, _ and -, up to 64.`;
    case State.CONNECTING:
      return "Connecting…";
    case State.RECONNECTING:
      return "Not connected yet: retrying.";
    default:
      return list.rows.length ? "No entries match the filter." : "No entries yet. They appear here, newest first, as the device reports.";
  }
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

// 3. Entries. Arrivals are queued and drawn once per animation frame, so a
// burst of thousands costs one layout, not thousands. In a flood (more than
// FLOOD_ROWS new rows since the last drawing) the list is redrawn at most
// every FLOOD_EVERY_MS, and once a second when a whole window of new rows
// is waiting: each drawing would replace the window anyway, and the time
// is better left to scrolling and typing.
const FLOOD_ROWS = 50;
const FLOOD_EVERY_MS = 250;
const DELUGE_EVERY_MS = 1000;
let frame = 0;
let floodTimer = 0;
let lastDraw = 0;
let newRows = 0; // rows added since the last drawing
let urgent = false; // the user changed something: draw at the next frame
function schedule(now = false) {
  urgent = urgent || now;
  if (frame) return;
  if (floodTimer && !now) return;
  clearTimeout(floodTimer);
  floodTimer = 0;
  frame = requestAnimationFrame(draw);
}

// drawIn is how long a drawing waits now: nothing for a trickle or the user.
function drawIn() {
  if (urgent) return 0;
  const every = newRows >= PAGE ? DELUGE_EVERY_MS : newRows >= FLOOD_ROWS ? FLOOD_EVERY_MS : 0;
  return lastDraw + every - performance.now();
}

function onEntry(entry) {
  upstreamStatus(entry);
  if (paused) {
    held.push(entry);
    updateHeld();
    return;
  }
  ingest(entry);
}

function ingest(entry) {
  const { row, isNew } = list.add(entry, Date.now());
  // Looking at older rows: keep them still while newer ones arrive.
  if (isNew && offset > 0 && matches(row, filter)) offset++;
  if (isNew) newSince++, newRows++;
  announceSoon();
  schedule();
}

/** visibleRows: the filtered rows, newest first, in the window. */
function visibleRows() {
  const out = [];
  let n = 0;
  for (let i = list.rows.length - 1; i >= 0; i--) {
    const r = list.rows[i];
    if (!matches(r, filter)) continue;
    if (n >= offset && out.length < PAGE) out.push(r);
    n++;
  }
  return { rows: out, matching: n };
}

function draw() {
  frame = 0;
  const wait = drawIn();
  if (wait > 0) {
    floodTimer = setTimeout(() => {
      floodTimer = 0;
      frame = requestAnimationFrame(draw);
    }, wait);
    return;
  }
  lastDraw = performance.now();
  newRows = 0;
  urgent = false;
  const { rows, matching } = visibleRows();
  if (offset > 0 && offset >= matching) offset = Math.max(0, matching - PAGE);
  const now = Date.now();
  const nodes = [];
  const keep = new Set();
  const active = document.activeElement && document.activeElement.closest ? document.activeElement.closest("#entries > li.entry") : null;
  const focusedId = active ? active.dataset.rowId : "";
  for (const r of rows) {
    let d = drawn.get(r.id);
    if (!d || d.version !== r.version) {
      if (r.shownAt === undefined) r.shownAt = now;
      const node = renderRow(r, r.shownAt);
      node.tabIndex = -1;
      d = { version: r.version, node, marker: r.marker ? renderMarker(r) : null };
      drawn.set(r.id, d);
      trackSkew(node);
    }
    keep.add(r.id);
    nodes.push(d.node);
    if (d.marker) nodes.push(d.marker);
  }
  for (const id of drawn.keys()) if (!keep.has(id)) drawn.delete(id);
  patch($("entries"), nodes);
  // Roving tabindex: one entry is in the tab order, arrows move within.
  const again = focusedId ? $("entries").querySelector(`li.entry[data-row-id="${focusedId}"]`) : null;
  const target = again || $("entries").querySelector("li.entry");
  if (target) target.tabIndex = 0;
  if (again && document.activeElement !== again) again.focus({ preventScroll: true });
  $("newer-bar").hidden = offset === 0;
  $("older-bar").hidden = offset + rows.length >= matching;
  updateCount(matching, rows.length);
}

// patch makes list's children be nodes, moving as few as it can: in the
// usual case (new rows on top, old ones falling off the bottom) the rows
// already shown stay in place, so the browser restyles only the new ones.
function patch(list, nodes) {
  let cur = list.firstChild;
  for (const n of nodes) {
    if (cur === n) {
      cur = cur.nextSibling;
      continue;
    }
    list.insertBefore(n, cur);
  }
  while (cur) {
    const next = cur.nextSibling;
    cur.remove();
    cur = next;
  }
}

function trackSkew(node) {
  const l = node.querySelector(".latency.l-skew");
  if (!l) return;
  clockSkewMs = Math.min(clockSkewMs, Number(l.dataset.ms));
  const note = $("clock-note");
  note.hidden = false;
  note.textContent = `⚠ clocks disagree: entries arrive up to ${-clockSkewMs} ms before their server timestamp; latencies are not exact`;
}

function updateCount(matching, shown) {
  if (matching === undefined) ({ matching, rows: { length: shown } } = visibleRows());
  const n = list.rows.length;
  let text = `${n} entr${n === 1 ? "y" : "ies"}`;
  if (list.total > n) text += ` (last ${MAX_ENTRIES} of ${list.total})`;
  if (matching !== n) text += `, ${matching} match the filter`;
  if (shown < matching) text += `, showing ${offset + 1}–${offset + shown}`;
  $("count").textContent = text;
  const empty = shown === 0;
  $("empty").hidden = !empty;
  if (empty) $("empty").textContent = emptyText();
}

function updateHeld() {
  const n = held.length;
  $("held").hidden = !paused;
  $("held").textContent = paused ? `Paused: ${n} new entr${n === 1 ? "y" : "ies"} held back. Resume to show them in order.` : "";
  $("pause").textContent = paused ? `Resume (${n})` : "Pause";
}

// The live region says how many entries arrived, not each one, and not
// while paused (the held-back line says it then).
function announceSoon() {
  if (announceTimer) return;
  announceTimer = setTimeout(() => {
    announceTimer = null;
    if (newSince > 0 && !paused) $("announce").textContent = `${newSince} new entr${newSince === 1 ? "y" : "ies"}`;
    newSince = 0;
  }, ANNOUNCE_EVERY_MS);
}

function clearEntries() {
  list.clear();
  held = [];
  offset = 0;
  drawn.clear();
  updateHeld();
  schedule(true);
}

function setPaused(p) {
  paused = p;
  $("pause").setAttribute("aria-pressed", String(p));
  if (!p) {
    const h = held;
    held = [];
    for (const e of h) ingest(e);
    schedule(true);
  }
  updateHeld();
}

/** shownEntries: every entry of the rows the filter shows, oldest first. */
function shownEntries() {
  const out = [];
  for (const r of list.rows) if (matches(r, filter)) out.push(...r.entries);
  return out;
}

// 4. Opening a device.
function open(id, { push = true } = {}) {
  id = (id || "").trim();
  if (conn) conn.close();
  conn = null;
  deviceId = id;
  $("device").value = id;
  $("device-title").textContent = id;
  $("my-devices").value = id;
  document.title = (id ? id + " · " : "") + "Live Logs · nbiot-live";
  list = new LogList();
  clockSkewMs = 0;
  $("clock-note").hidden = true;
  clearEntries();
  if (push) history.pushState(null, "", pageURL(id));
  if (!id) {
    connState = "idle";
    $("conn").dataset.state = "idle";
    $("conn-text").textContent = "pick a device";
    showAuth();
    updateCount();
    return;
  }
  if (!DEVICE_ID.test(id)) return showState(State.INVALID, { reason: "letters, digits, _ and -, up to 64" });
  remember(id);
  conn = connectLiveLogs({ deviceId: id, token, tail: TAIL, onEntry, onState: showState });
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

// 5. The signed-in user's devices, from the relay's GET /devices (read
// under RLS with the user's token). Typing an ID works without it.
const DEVICES_FRESH_MS = 15000; // the picker's last-seen times are re-read when older
let devicesFor = "";
let devicesAt = 0;
async function loadDevices(t, { refresh = false } = {}) {
  if (devicesFor === t && !(refresh && Date.now() - devicesAt > DEVICES_FRESH_MS)) return;
  devicesFor = t;
  devicesAt = Date.now();
  try {
    const r = await fetch("devices", { headers: { Authorization: "Bearer " + t }, cache: "no-store" });
    if (!r.ok) throw new Error("status " + r.status);
    const devices = await r.json();
    if (devicesFor === t && Array.isArray(devices)) showPicker(devices);
  } catch (e) {
    if (devicesFor === t) showPicker([]);
  }
}

function ago(iso) {
  const t = Date.parse(iso);
  if (isNaN(t)) return "never seen";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `seen ${s} s ago`;
  if (s < 3600) return `seen ${Math.round(s / 60)} min ago`;
  if (s < 86400) return `seen ${Math.round(s / 3600)} h ago`;
  return `seen ${new Date(t).toLocaleDateString()}`;
}

function showPicker(devices) {
  const sel = $("my-devices");
  const opts = devices
    .filter((d) => d && typeof d.devid === "string" && DEVICE_ID.test(d.devid))
    .map((d) => {
      const o = document.createElement("option");
      o.value = d.devid;
      o.textContent = [d.devid, d.name, ago(d.last_seen_at)].filter(Boolean).join(" · ");
      if (d.last_seen_at) o.title = "last seen " + d.last_seen_at;
      return o;
    });
  const none = Object.assign(document.createElement("option"), { value: "", textContent: `${opts.length} device${opts.length === 1 ? "" : "s"}…` });
  sel.replaceChildren(none, ...opts);
  sel.value = opts.some((o) => o.value === deviceId) ? deviceId : "";
  $("picker").hidden = opts.length === 0;
}

// 6. Controls.
$("device-form").addEventListener("submit", (e) => {
  e.preventDefault();
  open($("device").value);
});
// Opening the picker shows fresh last-seen times.
$("my-devices").addEventListener("focus", () => {
  if (devicesFor) loadDevices(devicesFor, { refresh: true });
});
$("my-devices").addEventListener("change", (e) => {
  if (e.target.value && e.target.value !== deviceId) open(e.target.value);
});

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim().replace(/^Bearer\s+/i, "");
  if (!t) return;
  store(() => sessionStorage.setItem(TOKEN_KEY, t));
  $("token").value = "";
  hideSignIn();
  if (deviceId) open(deviceId, { push: false });
  else showAuth();
});
$("signin-show").addEventListener("click", () => showSignIn("Paste a Supabase access token (JWT)."));
$("signin-cancel").addEventListener("click", hideSignIn);
$("signout").addEventListener("click", () => {
  store(() => sessionStorage.removeItem(TOKEN_KEY));
  devicesFor = "";
  if (deviceId) open(deviceId, { push: false });
  else showAuth();
});
$("clear").addEventListener("click", clearEntries);
$("pause").addEventListener("click", () => setPaused(!paused));
$("types").addEventListener("change", () => {
  filter.types = new Set([...$("types").querySelectorAll("input:checked")].map((i) => i.value));
  offset = 0;
  schedule(true);
});
$("search").addEventListener("input", () => {
  filter.text = $("search").value.trim();
  offset = 0;
  schedule(true);
});
$("export-jsonl").addEventListener("click", () => download(fileName(deviceId || "none", "jsonl"), toJSONLines(shownEntries()), "application/x-ndjson"));
$("export-csv").addEventListener("click", () => download(fileName(deviceId || "none", "csv"), toCSV(shownEntries()), "text/csv"));
$("older").addEventListener("click", () => {
  offset += PAGE;
  schedule(true);
});
$("newer").addEventListener("click", () => {
  offset = Math.max(0, offset - PAGE);
  schedule(true);
});

function toggle(li) {
  const r = list.rows.find((x) => String(x.id) === li.dataset.rowId);
  if (!r) return;
  r.expanded = !r.expanded;
  r.version++;
  li.focus();
  schedule(true);
}

$("entries").addEventListener("click", (e) => {
  if (e.target.closest("pre") || (window.getSelection && String(window.getSelection()))) return; // selecting text
  const li = e.target.closest("li.entry");
  if (li) toggle(li);
});
$("entries").addEventListener("keydown", (e) => {
  const li = e.target.closest("li.entry");
  if (!li) return;
  const items = [...$("entries").querySelectorAll("li.entry")];
  const i = items.indexOf(li);
  let next = null;
  switch (e.key) {
    case "ArrowDown":
    case "j":
      next = items[i + 1];
      break;
    case "ArrowUp":
    case "k":
      next = items[i - 1];
      break;
    case "Home":
      next = items[0];
      break;
    case "End":
      next = items[items.length - 1];
      break;
    case "Enter":
    case " ":
      e.preventDefault();
      toggle(li);
      return;
    default:
      return;
  }
  e.preventDefault();
  if (!next) return;
  li.tabIndex = -1;
  next.tabIndex = 0;
  next.focus();
});
window.addEventListener("popstate", () => open(new URLSearchParams(location.search).get("deviceId"), { push: false }));

showRecent(recentDevices());
open(params.get("deviceId"), { push: false });
