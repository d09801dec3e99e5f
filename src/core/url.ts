// URLs as messages and the admin API may show them (origin and path only), and whether one carries credentials.

/** `scheme://host[:port]/path` of a URL (credentials and query strings can be secrets); "(invalid URL)" otherwise. */
export function endpointOf(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

/** The URL has a user or a password (https://user:pass@host/…); false for text that is not a URL. */
export function hasCredentials(url: string): boolean {
  if (!URL.canParse(url)) return false;
  const u = new URL(url);
  return u.username !== '' || u.password !== '';
}
