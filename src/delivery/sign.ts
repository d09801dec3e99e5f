// Standard Webhooks signing: webhook-id, webhook-timestamp and a v1 HMAC-SHA256 signature.
import { createHmac } from 'node:crypto';

export function standardWebhookHeaders(key: Buffer, id: string, timestampSeconds: number, body: Buffer | string): Record<string, string> {
  const hmac = createHmac('sha256', key);
  hmac.update(`${id}.${timestampSeconds}.`);
  hmac.update(body);
  return {
    'webhook-id': id,
    'webhook-timestamp': String(timestampSeconds),
    'webhook-signature': `v1,${hmac.digest('base64')}`,
  };
}
