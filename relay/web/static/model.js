// model.js: the Live Logs list as data, without the DOM. The page (app.js)
// feeds it entries in the order they arrive and draws what it holds.
//
// What it adds to the raw entries, because no console shows it:
//   - uplink-counter gaps ("2 uplinks missing (#41 → #44)") and counter
//     resets (a reboot), as a marker on the newer uplink;
//   - retransmissions: a status entry with data.retransmission.of_seq marks
//     the uplink it repeats (with the count) instead of adding a row;
//   - downlink lifecycle: entries with the same data.downlink_id update one
//     row in place (queued → sent → applied);
//   - the history gap: a status entry with data.recovered === false.

/** MAX_ENTRIES bounds the rows kept; the oldest fall off. */
export const MAX_ENTRIES = 10000;

/** TYPES are the entry types the filter knows. */
export const TYPES = Object.freeze(["uplink", "downlink", "error", "status"]);

/** DOWNLINK_STATES in lifecycle order. */
export const DOWNLINK_STATES = Object.freeze(["queued", "sent", "applied"]);

const isObj = (v) => !!v && typeof v === "object" && !Array.isArray(v);
const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** searchText is what the text filter looks in, lower case. */
function searchText(row) {
  return row.entries
    .map((e) => `${e.type || ""} ${e.message || ""} ${e.data === undefined ? "" : JSON.stringify(e.data)}`)
    .join(" ")
    .toLowerCase();
}

/** LogList holds at most max rows, oldest first. */
export class LogList {
  constructor({ max = MAX_ENTRIES } = {}) {
    this.max = max;
    this.clear();
  }

  /** clear forgets every row (the connection's position is not touched). */
  clear() {
    this.rows = []; // oldest first
    this.total = 0; // rows ever added, for "last N of M"
    this.bySeq = new Map(); // seq → uplink row, for retransmissions
    this.byDownlink = new Map(); // downlink_id → row
    this.lastCount = null; // uplink_count of the newest uplink
    this.nextId = 1;
  }

  /**
   * add takes one entry as it arrived (arrivedAt: the browser's clock, ms)
   * and returns {row, isNew}: the row added, or the existing row it updated.
   */
  add(entry, arrivedAt = Date.now()) {
    const d = isObj(entry.data) ? entry.data : null;

    // A retransmission of an uplink still in the list marks that uplink.
    if (entry.type === "status" && d && isObj(d.retransmission)) {
      const orig = this.bySeq.get(d.retransmission.of_seq);
      if (orig) {
        const n = d.retransmission.count;
        orig.retransmissions = isNum(n) ? Math.max(n, orig.retransmissions) : orig.retransmissions + 1;
        return this.update(orig, entry);
      }
    }
    // A downlink's later states update the row of its first one.
    if (entry.type === "downlink" && d && (typeof d.downlink_id === "number" || typeof d.downlink_id === "string")) {
      const row = this.byDownlink.get(String(d.downlink_id));
      if (row) {
        this.setDownlinkState(row, entry);
        return this.update(row, entry);
      }
    }

    const row = {
      id: this.nextId++,
      entry, // the newest entry of the row (what is drawn)
      entries: [entry], // every entry folded into the row, in arrival order
      type: entry.type,
      arrivedAt,
      version: 1, // bumped on every change, so a drawn node can be reused
      marker: null, // {kind: "missing"|"reboot", text} below this row
      retransmissions: 1, // copies of an uplink seen, once reported
      downlink: null, // {id, states: {queued, sent, applied}: timestamp}
      expanded: false,
      text: null, // searchText, made when a text filter first needs it
    };
    if (entry.type === "uplink" && d && isNum(d.uplink_count)) this.counterMarker(row, d);
    if (entry.type === "uplink" && Number.isSafeInteger(entry.seq)) this.bySeq.set(entry.seq, row);
    if (entry.type === "downlink" && d && d.downlink_id !== undefined && d.downlink_id !== null) {
      row.downlink = { id: String(d.downlink_id), states: {} };
      this.setDownlinkState(row, entry);
      this.byDownlink.set(row.downlink.id, row);
    }
    this.rows.push(row);
    this.total++;
    while (this.rows.length > this.max) this.forget(this.rows.shift());
    return { row, isNew: true };
  }

  update(row, entry) {
    row.entries.push(entry);
    if (entry.type === row.type) row.entry = entry;
    row.version++;
    row.text = null;
    return { row, isNew: false };
  }

  forget(row) {
    if (row.entry.type === "uplink" && this.bySeq.get(row.entry.seq) === row) this.bySeq.delete(row.entry.seq);
    if (row.downlink && this.byDownlink.get(row.downlink.id) === row) this.byDownlink.delete(row.downlink.id);
  }

  setDownlinkState(row, entry) {
    const state = entry.data.state || "sent"; // an entry without state is a send
    row.downlink.states[state] = entry.timestamp;
    row.downlink.state = DOWNLINK_STATES.filter((s) => row.downlink.states[s]).pop() || state;
  }

  // The device counts its uplinks: a jump says some never arrived, a drop
  // says it restarted counting (a reboot).
  counterMarker(row, d) {
    const c = d.uplink_count;
    const last = this.lastCount;
    this.lastCount = c;
    if (last === null) return;
    if (c > last + 1) {
      const n = c - last - 1;
      row.marker = { kind: "missing", count: n, text: `${n} uplink${n === 1 ? "" : "s"} missing (#${last} → #${c})` };
    } else if (c < last) {
      const why = isObj(d.reboot) && d.reboot.reason ? `reboot: ${d.reboot.reason}` : "reboot";
      row.marker = { kind: "reboot", text: `Counter reset #${last} → #${c} (${why})` };
    }
  }
}

/** Filter: which rows are shown. types: a Set of types (empty = all). */
export function matches(row, { types, text }) {
  if (isHistoryGap(row)) return true; // where history is missing is always shown
  if (types && types.size && !types.has(TYPES.includes(row.type) ? row.type : "status")) return false;
  if (!text) return true;
  if (row.text === null) row.text = searchText(row);
  return row.text.includes(text.toLowerCase());
}

/** isHistoryGap: the row of a status entry saying history was lost there. */
export const isHistoryGap = (row) => row.type === "status" && isObj(row.entry.data) && row.entry.data.recovered === false;
