// export.js: the entries shown, as a file: JSON lines (one entry as
// received per line) or CSV (seq, timestamp, deviceId, type, message, data).
// Both list the entries oldest first, as a log file does.

/** CSV_COLUMNS is the CSV header. */
export const CSV_COLUMNS = Object.freeze(["seq", "timestamp", "deviceId", "type", "message", "data"]);

/** toJSONLines: one JSON object per line, each ending in "\n". */
export function toJSONLines(entries) {
  return entries.map((e) => JSON.stringify(e) + "\n").join("");
}

// A cell a spreadsheet would run as a formula (=, +, -, @, tab, CR) gets a
// leading apostrophe (OWASP's CSV-injection advice); numbers stay numbers.
function cell(v) {
  if (v === undefined || v === null) return "";
  let s = typeof v === "string" ? v : typeof v === "number" ? String(v) : JSON.stringify(v);
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** toCSV: RFC 4180, CRLF line ends, a header row. */
export function toCSV(entries) {
  const lines = [CSV_COLUMNS.join(",")];
  for (const e of entries) lines.push(CSV_COLUMNS.map((k) => cell(e[k])).join(","));
  return lines.join("\r\n") + "\r\n";
}

/** download offers text as a file named name. */
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  // The download has the blob by now; free it a moment later.
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** fileName: nbiot-<device>-<UTC time>.<ext>, safe on every file system. */
export function fileName(deviceId, ext, now = new Date()) {
  return `nbiot-${deviceId}-${now.toISOString().replace(/[:.]/g, "-")}.${ext}`;
}
