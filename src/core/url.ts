// A URL as messages and the admin API may show it: origin and path, never a user, password, query or fragment.

/** `scheme://host[:port]/path` of a URL (credentials and query strings can be secrets); "(invalid URL)" otherwise. */
export function endpointOf(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}
