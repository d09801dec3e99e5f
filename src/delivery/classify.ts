// What a webhook response means for the delivery: delivered, retry later, or dead-letter. Pure.
export type Outcome =
  | { kind: 'delivered' }
  | { kind: 'retry'; reason: string }
  | { kind: 'dead'; reason: string; /** a misconfiguration the operator must fix: logged at error */ loud?: boolean }
  /** finished without a request, by the route's choice (drop_automatic) */
  | { kind: 'dropped'; reason: string };

/**
 * Standard rule: 2xx delivered; 408, 429, 5xx retry; any other status means the consumer refused it. A 3xx is a
 * misconfiguration: the signed POST is not sent on to another address (it could be anyone's), so the operator
 * must point webhook.url at the new one.
 */
export function classifyStatus(status: number, location?: string): Outcome {
  if (status >= 200 && status < 300) return { kind: 'delivered' };
  if (status >= 300 && status < 400) {
    const to = location ? `redirects to ${withoutUserinfo(location)}` : 'redirects (no Location header)';
    return { kind: 'dead', reason: `HTTP ${status}: the consumer ${to}; redirects are not followed: set the route's webhook.url to the new address`, loud: true };
  }
  if (status === 408 || status === 429 || status >= 500) return { kind: 'retry', reason: `HTTP ${status}` };
  if (status === 401 || status === 403) return { kind: 'dead', reason: `HTTP ${status}: the consumer refused our credentials; check the route's secret`, loud: true };
  return { kind: 'dead', reason: `HTTP ${status}: the consumer refused the message` };
}

/** Network errors and timeouts are always worth another try. */
export function classifyError(err: unknown): Outcome {
  const e = err as { code?: string; message?: string };
  return { kind: 'retry', reason: `${e.code ?? 'ERROR'}: ${e.message ?? String(err)}` };
}

/**
 * A URL as it may be logged: user and password (if any) replaced, the query and fragment left out (they can hold
 * a token, as the webhook URL's own can: the admin API shows that one without them too), at most 300 characters.
 */
function withoutUserinfo(location: string): string {
  let shown = location;
  if (URL.canParse(location)) {
    const u = new URL(location);
    if (u.username || u.password) {
      u.username = '***';
      u.password = '';
    }
    const hidden = u.search !== '' || u.hash !== '';
    u.search = '';
    u.hash = '';
    shown = hidden ? `${u.href} (its query not shown)` : u.href;
  }
  return shown.length > 300 ? `${shown.slice(0, 299)}…` : shown;
}
