// livelogs.js: follow one device's live log from an nbiot-live relay.
//
// This is the reference for embedding the relay in an existing frontend;
// the relay's own Live Logs page (app.js) uses it as is. Plain ES module, no
// dependencies, no build step:
//
//   import { connectLiveLogs } from "https://relay.example.com/static/livelogs.js";
//   const conn = connectLiveLogs({
//     url: "https://relay.example.com",          // the relay (http(s) or ws(s))
//     deviceId: "ABC123",
//     token: async () => (await supabase.auth.getSession()).data.session?.access_token,
//     onEntry: (entry) => console.log(entry.type, entry.message, entry.data),
//     onState: (state, info) => console.log(state, info),
//   });
//   // later: conn.close();
//
// Entries are the contract's live-log messages:
//   {deviceId, timestamp, type: "uplink"|"downlink"|"error"|"status", message, data}
// Keys are only ever added, so ignore the ones you do not know.

/** Connection states reported to onState. */
export const State = Object.freeze({
  CONNECTING: "connecting", // first attempt, or a new device
  LIVE: "live", // the WebSocket is open; entries flow
  RECONNECTING: "reconnecting", // lost; next attempt after info.delayMs
  UNAUTHORIZED: "unauthorized", // 401: no token, or the token is bad or expired (stopped)
  FORBIDDEN: "forbidden", // 403: the device is not visible to this user (stopped)
  INVALID: "invalid", // the device ID is not ^[A-Za-z0-9_-]{1,64}$ (stopped)
  CLOSED: "closed", // close() was called
});

/** A device ID as the contract defines it. */
export const DEVICE_ID = /^[A-Za-z0-9_-]{1,64}$/;

// The relay (relay/auth/token.go) reads the user's JWT from a
// Sec-WebSocket-Protocol entry "access_token.<JWT>" offered next to the
// protocol "nbiot-live", which is the one it echoes (RFC 6455 §4.2.2). A
// browser cannot set an Authorization header on a WebSocket, and a
// subprotocol, unlike the access_token query parameter, stays out of access
// logs. JWTs are base64url segments joined by dots: valid protocol tokens.
const PROTOCOL = "nbiot-live";
const TOKEN_PREFIX = "access_token.";

/** Reconnect backoff defaults: exponential with equal jitter, never gives up. */
export const DEFAULT_BACKOFF = Object.freeze({
  initialMs: 500, // first retry after 250–500 ms
  maxMs: 30000, // cap, so a long outage costs one attempt per 15–30 s
  factor: 2,
  stableMs: 5000, // a connection open this long resets the backoff
});

/**
 * relayURL turns the relay's address into the /device-logs WebSocket URL.
 * Accepts "https://relay.example.com", "wss://relay.example.com/device-logs",
 * or nothing (the page's own origin).
 */
export function relayURL(url, deviceId) {
  const u = new URL(url || "/", globalThis.location ? globalThis.location.href : undefined);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (!u.pathname.endsWith("/device-logs")) {
    u.pathname = u.pathname.replace(/\/+$/, "") + "/device-logs";
  }
  u.search = "";
  u.searchParams.set("deviceId", deviceId);
  return u;
}

/** backoffDelay is the wait before retry number attempt (1-based). */
export function backoffDelay(attempt, b = DEFAULT_BACKOFF, random = Math.random) {
  const d = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, Math.max(0, attempt - 1)));
  // Equal jitter: half fixed, half random, so a relay restart is not met
  // by every browser at the same instant, and no retry comes too soon.
  return Math.round(d / 2 + random() * (d / 2));
}

/**
 * connectLiveLogs follows deviceId's live log on the relay at url, and
 * reconnects on its own until close() is called or the relay refuses the
 * token (401) or the device (403).
 *
 * token: a string, or a function returning one (or a Promise of one), asked
 *   again before every attempt, so a refreshed session token is picked up.
 *   Empty or missing means none (a relay running with AUTH_DISABLED=true).
 * onEntry(entry): every live-log message, parsed.
 * onState(state, info): State changes; info has attempt, delayMs, reason.
 * Returns {close()}.
 */
export function connectLiveLogs({ url, deviceId, token, onEntry = () => {}, onState = () => {}, backoff = {} }) {
  const b = { ...DEFAULT_BACKOFF, ...backoff };
  let ws = null;
  let timer = null;
  let attempt = 0;
  let closed = false;

  const setState = (state, info = {}) => {
    if (!closed || state === State.CLOSED) onState(state, { attempt, ...info });
  };

  if (!DEVICE_ID.test(deviceId || "")) {
    setState(State.INVALID, { reason: "device ID must match " + DEVICE_ID });
    return { close() {} };
  }
  const wsURL = relayURL(url, deviceId);

  async function currentToken() {
    try {
      const t = typeof token === "function" ? await token() : token;
      return t ? String(t) : "";
    } catch (e) {
      return "";
    }
  }

  // After a WebSocket fails before opening, the browser hides the HTTP
  // status. A plain GET of the same URL (not an upgrade) shows it: 401 and
  // 403 come before the upgrade; anything else (400 "not a WebSocket",
  // a network error, a CORS refusal) means "try again later".
  async function refusal(t) {
    try {
      const httpURL = new URL(wsURL);
      httpURL.protocol = httpURL.protocol === "wss:" ? "https:" : "http:";
      const headers = t ? { Authorization: "Bearer " + t } : {};
      const r = await fetch(httpURL, { headers, cache: "no-store", credentials: "omit" });
      if (r.status === 401) return State.UNAUTHORIZED;
      if (r.status === 403) return State.FORBIDDEN;
    } catch (e) {
      // unreachable or cross-origin without CORS: treat as transient
    }
    return null;
  }

  async function open() {
    timer = null;
    if (closed) return;
    const t = await currentToken();
    if (closed) return;
    setState(attempt === 0 ? State.CONNECTING : State.RECONNECTING, { reason: "connecting" });
    const protocols = t ? [PROTOCOL, TOKEN_PREFIX + t] : [PROTOCOL];
    let sock;
    try {
      sock = new WebSocket(wsURL, protocols);
    } catch (e) {
      retry("cannot open: " + e.message);
      return;
    }
    ws = sock;
    let openedAt = 0;
    sock.onopen = () => {
      openedAt = Date.now();
      setState(State.LIVE);
    };
    sock.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      let entry;
      try {
        entry = JSON.parse(ev.data);
      } catch (e) {
        return; // not ours to crash on: skip the frame
      }
      if (!entry || typeof entry !== "object" || (entry.deviceId && entry.deviceId !== deviceId)) return;
      onEntry(entry);
    };
    sock.onclose = async (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (closed) return;
      // Close code 4401: the relay ended the session because the token
      // expired. Reconnect: a refreshed token (token as a function) goes on
      // seamlessly, a stale one is refused with 401 and lands in
      // "unauthorized" below. 4403 mirrors HTTP 403.
      if (ev.code === 4401) return retry(ev.reason || "token expired");
      if (ev.code === 4403) return setState(State.FORBIDDEN, { reason: ev.reason || "device not visible" });
      if (openedAt && Date.now() - openedAt >= b.stableMs) attempt = 0;
      if (!openedAt) {
        const r = await refusal(t);
        if (closed) return;
        if (r) return setState(r, { reason: r === State.UNAUTHORIZED ? "sign in required" : "device not visible to this user" });
      }
      retry(ev.reason || "connection lost (code " + ev.code + ")");
    };
  }

  function retry(reason) {
    attempt++;
    const delayMs = backoffDelay(attempt, b);
    setState(State.RECONNECTING, { delayMs, reason });
    timer = setTimeout(open, delayMs);
  }

  open();
  return {
    close() {
      if (closed) return;
      closed = true;
      if (timer) clearTimeout(timer);
      if (ws) ws.close(1000, "closed by page");
      ws = null;
      setState(State.CLOSED);
    },
  };
}
