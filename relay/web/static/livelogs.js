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
//     tail: 100,                                 // history on open (0..1000, default 100)
//     onEntry: (entry) => console.log(entry.type, entry.message, entry.data),
//     onGap: (entry) => console.warn("history lost here", entry),
//     onState: (state, info) => console.log(state, info),
//   });
//   // later: conn.close();
//
// Entries are the contract's live-log messages:
//   {seq, deviceId, timestamp, type: "uplink"|"downlink"|"error"|"status", message, data}
// Keys are only ever added, so ignore the ones you do not know.
//
// Position: entries from the server's stream carry "seq" (increasing). The
// first connection asks for the last `tail` entries (?tail=N), every
// reconnection for what came after the last seq seen (?since=SEQ), so a
// reconnect neither misses nor repeats an entry; an entry whose seq is not
// above the last one seen is dropped. Entries without seq (the relay's own
// status entries) are passed on and do not move the position. A status
// entry with data.recovered === false says history was lost there (it was
// no longer retained, or the stream was reset): onGap is called with it, it
// is passed to onEntry too, and the position starts again from the entries
// that follow it.

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

/** DEFAULT_TAIL is how many recent entries the first connection asks for. */
export const DEFAULT_TAIL = 100;

/** MAX_TAIL is the largest tail the server accepts. */
export const MAX_TAIL = 1000;

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
 * or nothing (the page's own origin). position, when given, is {since} (a
 * seq: what came after it) or {tail} (the last N entries).
 */
export function relayURL(url, deviceId, position = {}) {
  const u = new URL(url || "/", globalThis.location ? globalThis.location.href : undefined);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (!u.pathname.endsWith("/device-logs")) {
    u.pathname = u.pathname.replace(/\/+$/, "") + "/device-logs";
  }
  u.search = "";
  u.searchParams.set("deviceId", deviceId);
  if (position.since !== undefined && position.since !== null) u.searchParams.set("since", String(position.since));
  else if (position.tail !== undefined && position.tail !== null) u.searchParams.set("tail", String(position.tail));
  return u;
}

/** isSeq: a stream position as the server sends it (a non-negative integer). */
export const isSeq = (v) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** isGap: the status entry that says history was lost before it. */
export const isGap = (e) => !!e && e.type === "status" && !!e.data && typeof e.data === "object" && e.data.recovered === false;

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
 * tail: how many recent entries the first connection asks for (0..1000,
 *   default 100; 0 = live only).
 * since: start after this seq instead of with the tail (a page that kept
 *   its entries, say across a reload).
 * onEntry(entry): every live-log message, parsed, at most once per seq.
 * onGap(entry): a status entry with data.recovered === false arrived: the
 *   entries before it are no longer retained (also passed to onEntry).
 * onState(state, info): State changes; info has attempt, delayMs, reason.
 * Returns {close(), lastSeq()}: lastSeq() is the newest seq seen (null
 * before the first).
 */
export function connectLiveLogs({
  url, deviceId, token, tail = DEFAULT_TAIL, since = null,
  onEntry = () => {}, onGap = () => {}, onState = () => {}, backoff = {},
}) {
  const b = { ...DEFAULT_BACKOFF, ...backoff };
  const tailN = Math.max(0, Math.min(MAX_TAIL, Math.floor(Number(tail)) || 0));
  let ws = null;
  let timer = null;
  let attempt = 0;
  let closed = false;
  let last = isSeq(since) ? since : null; // newest seq seen
  // afterGap: a recovered:false came; the next entry starts a new run of
  // positions (after a stream reset it may be numbered lower than last).
  let afterGap = false;

  const setState = (state, info = {}) => {
    if (!closed || state === State.CLOSED) onState(state, { attempt, ...info });
  };

  if (!DEVICE_ID.test(deviceId || "")) {
    setState(State.INVALID, { reason: "device ID must match " + DEVICE_ID });
    return { close() {} };
  }
  // Where to resume: after the last seq seen, or the tail when none yet.
  const position = () => (last !== null ? { since: last } : { tail: tailN });

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
  async function refusal(t, wsURL) {
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
    const wsURL = relayURL(url, deviceId, position());
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
      if (isGap(entry)) {
        // What follows starts a new run of positions (after a stream
        // reset they may even be lower than the last one seen). The last
        // seq is kept: a reconnection before the next entry resumes after
        // it (the server then says recovered:false again, with what it
        // holds), not with the tail, which would repeat what is shown.
        afterGap = true;
        onGap(entry);
        onEntry(entry);
        return;
      }
      if (isSeq(entry.seq)) {
        if (!afterGap && last !== null && entry.seq <= last) return; // seen already
        last = entry.seq;
        afterGap = false;
      }
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
      // A connection that lasted resets the backoff, whatever ended it (a
      // token expiring every hour must not make each retry wait longer).
      if (openedAt && Date.now() - openedAt >= b.stableMs) attempt = 0;
      if (ev.code === 4401) return retry(ev.reason || "token expired");
      if (ev.code === 4403) return setState(State.FORBIDDEN, { reason: ev.reason || "device not visible" });
      if (!openedAt) {
        const r = await refusal(t, wsURL);
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
    lastSeq: () => last,
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
