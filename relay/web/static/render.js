// render.js: one live-log entry as a list item. Everything from the wire
// goes in through textContent or attributes, never as HTML: a device ID, a
// message or an unknown key cannot inject markup.

const ACTIVITY = ["sleep", "modem", "gnss", "wifi", "other"];
const KNOWN = new Set(["uplink_count", "temperature", "activity", "wifi_count", "reboot", "config", "gnss", "battery_mv", "config_applied"]);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const pad = (n, w = 2) => String(n).padStart(w, "0");

/** fmtTime: local HH:MM:SS.mmm, with the date when it is not today. */
export function fmtTime(d, now = new Date()) {
  const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return d.toDateString() === now.toDateString() ? t : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}`;
}

/** fmtSeconds: 45 s, 2 min 5 s, 10 min, 1 h, 1 h 4 min. */
export function fmtSeconds(s) {
  if (!isNum(s)) return "?";
  if (s < 60) return `${s} s`;
  if (s < 3600) return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  const m = Math.floor((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h` + (m ? ` ${m} min` : "");
}

// field adds one labelled value; key becomes the class f-<key> and value the
// data-value attribute, so the page (and its browser test) can find it.
function field(box, key, label, text, value) {
  const f = el("span", "field f-" + key);
  f.dataset.value = value === undefined ? String(text) : String(value);
  f.append(el("span", "label", label), el("span", "value", text));
  box.append(f);
  return f;
}

/** activityBar: seconds per state as a small stacked bar with a legend. */
function activityBar(a) {
  const wrap = el("span", "field f-activity");
  const total = ACTIVITY.reduce((s, k) => s + (isNum(a[k]) && a[k] > 0 ? a[k] : 0), 0);
  wrap.dataset.value = ACTIVITY.map((k) => `${k}=${isNum(a[k]) ? a[k] : 0}`).join(",");
  wrap.append(el("span", "label", "activity"));
  const bar = el("span", "bar");
  bar.setAttribute("role", "img");
  const legend = el("span", "legend");
  for (const k of ACTIVITY) {
    const v = isNum(a[k]) ? a[k] : 0;
    if (v > 0 && total > 0) {
      const seg = el("span", "seg s-" + k);
      seg.style.width = ((v / total) * 100).toFixed(2) + "%";
      seg.title = `${k}: ${fmtSeconds(v)}`;
      bar.append(seg);
    }
    if (v > 0) legend.append(el("span", "lg s-" + k, `${k} ${fmtSeconds(v)}`)); // zeros are noise
  }
  bar.setAttribute("aria-label", legend.textContent);
  wrap.append(bar, el("span", "total", fmtSeconds(total)), legend);
  return wrap;
}

function configText(c) {
  const parts = [];
  const sec = (v) => (v === 0 ? "off" : fmtSeconds(v));
  if (isNum(c.heartbeat_interval)) parts.push(`heartbeat ${fmtSeconds(c.heartbeat_interval)}`);
  if (isNum(c.gnss_interval)) parts.push(`gnss ${sec(c.gnss_interval)}`);
  if (isNum(c.wifi_scan_interval)) parts.push(`wifi scan ${sec(c.wifi_scan_interval)}`);
  if (c.fw_version) parts.push(`fw ${c.fw_version}`);
  if (c.hw_version) parts.push(`hw ${c.hw_version}`);
  if (isNum(c.config_version)) parts.push(`v${c.config_version}`);
  for (const [k, v] of Object.entries(c)) {
    if (!["heartbeat_interval", "gnss_interval", "wifi_scan_interval", "fw_version", "hw_version", "config_version"].includes(k)) {
      parts.push(`${k} ${JSON.stringify(v)}`);
    }
  }
  return parts.join(" · ") || "—";
}

function uplinkFields(box, d) {
  if (isNum(d.temperature)) field(box, "temperature", "temp", `${d.temperature.toFixed(1)} °C`, d.temperature);
  if (isNum(d.wifi_count)) field(box, "wifi_count", "wifi", `${d.wifi_count} AP${d.wifi_count === 1 ? "" : "s"}`, d.wifi_count);
  if (isNum(d.battery_mv)) field(box, "battery_mv", "battery", `${(d.battery_mv / 1000).toFixed(2)} V`, d.battery_mv);
  if (d.reboot && typeof d.reboot === "object") {
    const r = field(box, "reboot", "reboot", `${d.reboot.reason || "unspecified"}${isNum(d.reboot.count) ? " (#" + d.reboot.count + ")" : ""}`, d.reboot.reason);
    r.classList.add("warn");
  }
  if (d.gnss && typeof d.gnss === "object" && isNum(d.gnss.lat) && isNum(d.gnss.lon)) {
    const acc = isNum(d.gnss.accuracy_m) ? ` ±${Math.round(d.gnss.accuracy_m)} m` : "";
    field(box, "gnss", "gnss", `${d.gnss.lat.toFixed(5)}, ${d.gnss.lon.toFixed(5)}${acc}`, `${d.gnss.lat},${d.gnss.lon}`);
  }
  if (d.config && typeof d.config === "object") field(box, "config", "config", configText(d.config), JSON.stringify(d.config));
  if (typeof d.config_applied === "boolean") field(box, "config_applied", "config", d.config_applied ? "applied ✓" : "not applied yet", d.config_applied);
  if (d.activity && typeof d.activity === "object") box.append(activityBar(d.activity));
}

/** renderEntry builds the <li> for one entry. */
export function renderEntry(entry) {
  const type = ["uplink", "downlink", "error", "status"].includes(entry.type) ? entry.type : "other";
  const li = el("li", "entry t-" + type);
  li.dataset.type = String(entry.type || "");
  const head = el("div", "head");
  head.append(el("span", "type", entry.type || "?"));
  const ts = new Date(entry.timestamp);
  const time = el("time", "time", isNaN(ts) ? String(entry.timestamp || "") : fmtTime(ts));
  if (!isNaN(ts)) {
    time.dateTime = ts.toISOString();
    time.title = ts.toISOString().replace("T", " ").replace("Z", " UTC");
  }
  head.append(time, el("span", "message", entry.message || ""));
  li.append(head);

  const d = entry.data;
  const box = el("div", "data");
  if (type === "uplink" && d && typeof d === "object") {
    if (isNum(d.uplink_count)) li.dataset.uplinkCount = String(d.uplink_count);
    uplinkFields(box, d);
    for (const [k, v] of Object.entries(d)) {
      if (!KNOWN.has(k) && v !== null) field(box, k, k, JSON.stringify(v));
    }
  } else if (type === "downlink" && d && typeof d === "object") {
    // data holds the configuration under "config" with downlink_id, state
    // and config_version (coap-server/downlink), or is the configuration
    // itself (older servers).
    const c = d.config && typeof d.config === "object" ? d.config : d;
    const shown = Object.fromEntries(Object.entries(c).filter(([k]) => !["downlink_id", "state"].includes(k)));
    if (d.downlink_id !== undefined) li.dataset.downlinkId = String(d.downlink_id);
    field(box, "config", d.state ? "config" : "sent", configText(shown), JSON.stringify(shown));
  } else if (d && typeof d === "object") {
    for (const [k, v] of Object.entries(d)) if (v !== null) field(box, k, k, typeof v === "string" ? v : JSON.stringify(v));
  } else if (d !== null && d !== undefined) {
    field(box, "data", "data", JSON.stringify(d));
  }
  if (box.childElementCount) li.append(box);
  return li;
}

/** LATENCY_HISTORY_MS: older entries than this came from history, not live. */
export const LATENCY_HISTORY_MS = 60000;

/**
 * latency describes receipt (the entry's timestamp, the server's clock) →
 * on screen (shownAt, this browser's clock), in ms: {ms, text, title, kind}
 * with kind "live", "skew" (negative: the clocks disagree) or "history".
 */
export function latency(entry, shownAt) {
  const ts = Date.parse(entry.timestamp);
  if (isNaN(ts)) return null;
  const ms = Math.round(shownAt - ts);
  if (ms < 0) {
    return { ms, kind: "skew", text: `clock ${ms} ms`,
      title: `Shown ${-ms} ms before the server says it received it: this browser's clock is behind the server's (latency unknown)` };
  }
  if (ms >= LATENCY_HISTORY_MS) return { ms, kind: "history", text: "", title: `from history, received ${fmtSeconds(Math.round(ms / 1000))} before it was shown` };
  return { ms, kind: "live", text: `${ms} ms`, title: `${ms} ms from receipt by coap-server to this screen` };
}

function downlinkSteps(dl) {
  const box = el("span", "field f-lifecycle");
  box.dataset.value = dl.state || "";
  box.append(el("span", "label", "lifecycle"));
  const ol = el("ol", "steps");
  ol.setAttribute("aria-label", "downlink lifecycle");
  for (const s of ["queued", "sent", "applied"]) {
    const at = dl.states[s];
    const li = el("li", "step" + (at ? " done" : ""));
    li.dataset.step = s;
    const when = at ? new Date(at) : null;
    // Text, not only colour: ✓ and the time when reached, … when not yet.
    li.textContent = at ? `✓ ${s} ${isNaN(when) ? "" : fmtTime(when)}`.trim() : `… ${s}`;
    if (at && !isNaN(when)) li.title = when.toISOString();
    ol.append(li);
  }
  box.append(ol);
  return box;
}

/**
 * renderRow draws one row of the list model (model.js): its newest entry,
 * the retransmission mark, the downlink lifecycle, the latency, and the
 * full JSON when expanded.
 */
export function renderRow(row, shownAt) {
  const li = renderEntry(row.entry);
  li.dataset.rowId = String(row.id);
  if (Number.isSafeInteger(row.entry.seq)) li.dataset.seq = String(row.entry.seq);
  const head = li.querySelector(".head");
  if (row.downlink) {
    li.dataset.state = row.downlink.state || "";
    const box = li.querySelector(".data") || li.appendChild(el("div", "data"));
    box.prepend(downlinkSteps(row.downlink));
  }
  if (row.retransmissions > 1) {
    const r = el("span", "badge retrans", `retransmitted ×${row.retransmissions}`);
    r.title = `coap-server received ${row.retransmissions} copies of this uplink (CoAP retransmissions); it was processed once`;
    li.dataset.retransmissions = String(row.retransmissions);
    head.append(r);
  }
  if (row.type === "status" && row.entry.data && row.entry.data.recovered === false) {
    li.classList.add("history-gap");
    head.querySelector(".type").textContent = "gap";
    const box = li.querySelector(".data");
    if (box) box.remove(); // "recovered false" says less than the row does
  }
  const lat = latency(row.entries[0], shownAt);
  if (lat) {
    const l = el("span", "latency l-" + lat.kind, lat.text);
    l.dataset.ms = String(lat.ms);
    l.title = lat.title;
    li.dataset.latency = lat.kind;
    head.append(l);
  }
  li.setAttribute("aria-expanded", String(row.expanded));
  if (row.expanded) {
    const pre = el("pre", "json", row.entries.map((e) => JSON.stringify(e, null, 2)).join("\n"));
    li.append(pre);
  }
  return li;
}

/** renderMarker draws what lies between a row and the older one below it. */
export function renderMarker(row) {
  const m = row.marker;
  const li = el("li", "marker m-" + m.kind);
  li.dataset.kind = m.kind;
  li.setAttribute("role", "separator");
  // An icon and words: the colour is only a third cue.
  li.append(el("span", "icon", m.kind === "reboot" ? "↻" : "⚠"), el("span", "text", m.text));
  return li;
}
