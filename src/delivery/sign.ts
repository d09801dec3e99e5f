// Standard Webhooks signing: webhook-id, webhook-timestamp and a v1 HMAC-SHA256 signature.
import { createHmac } from 'node:crypto';

/** The webhook-signature value: v1, then the HMAC-SHA256 of "id.timestamp.body" under the key, in base64. */
export function webhookSignature(key: Uint8Array, id: string, timestampSeconds: number, body: Uint8Array | string): string {
  const hmac = createHmac('sha256', key);
  hmac.update(`${id}.${timestampSeconds}.`);
  hmac.update(body);
  return `v1,${hmac.digest('base64')}`;
}

/** The three headers of a signed request, from a signature made by webhookSignature with the same id and timestamp. */
export function signatureHeaders(id: string, timestampSeconds: number, signature: string): Record<string, string> {
  return {
    'webhook-id': id,
    'webhook-timestamp': String(timestampSeconds),
    'webhook-signature': signature,
  };
}

export function standardWebhookHeaders(key: Uint8Array, id: string, timestampSeconds: number, body: Uint8Array | string): Record<string, string> {
  return signatureHeaders(id, timestampSeconds, webhookSignature(key, id, timestampSeconds, body));
}
