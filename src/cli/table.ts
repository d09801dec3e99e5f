// Plain-text tables for the CLI: columns padded to their widest cell, long cells cut with an ellipsis.

export function formatTable(headers: string[], rows: Array<Array<string | number | null | undefined>>, maxWidth = 60): string {
  const cells = rows.map((r) => r.map((c) => cut(c === null || c === undefined ? '-' : String(c), maxWidth)));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...cells.map(line)].join('\n') + '\n';
}

function cut(s: string, max: number): string {
  const one = oneLine(s);
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}

/**
 * Text from mail (subjects, addresses, a consumer's error body) made safe for a terminal: white space runs become
 * one space, and control characters (C0, DEL, C1: escape sequences that retitle the terminal or move the cursor
 * over earlier rows) and bidirectional overrides (which reorder what is shown) become U+FFFD.
 */
export function oneLine(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\s+/g, ' ').replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, '\ufffd');
}

/** "2024-05-01 12:00:03" in UTC: sortable and unambiguous in a terminal. */
export function shortTime(iso: string | null | undefined): string {
  if (!iso) return '-';
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
