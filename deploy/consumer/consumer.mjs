// An example webhook consumer for deploy/compose.yaml: verifies mailhook's Standard Webhooks signature and logs each message.
// No dependencies: node deploy/consumer/consumer.mjs (PORT, MAILHOOK_WEBHOOK_SECRET from the environment).
import { createServer } from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';

const secret = process.env.MAILHOOK_WEBHOOK_SECRET ?? '';
if (!secret.startsWith('whsec_')) {
  console.error('set MAILHOOK_WEBHOOK_SECRET to the route secret (whsec_…)');
  process.exit(2);
}
const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
const TOLERANCE_SECONDS = 5 * 60;

/** Standard Webhooks: HMAC-SHA256 over "id.timestamp." and the body bytes; any v1 signature may match. */
function verify(headers, body) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > TOLERANCE_SECONDS) return false;
  const expected = createHmac('sha256', key).update(`${id}.${timestamp}.`).update(body).digest();
  return signatures.split(' ').some((s) => {
    const [version, value] = s.split(',');
    const got = Buffer.from(value ?? '', 'base64');
    return version === 'v1' && got.length === expected.length && timingSafeEqual(got, expected);
  });
}

const server = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return void res.end('ok');
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (!verify(req.headers, body)) {
      res.writeHead(401).end('bad signature');
      return;
    }
    // A consumer must be idempotent: webhook-id is the same on every retry of one delivery.
    const type = String(req.headers['content-type'] ?? '');
    if (type.startsWith('application/json')) {
      const p = JSON.parse(body.toString('utf8'));
      console.log(JSON.stringify({ id: req.headers['webhook-id'], route: p.route, from: p.envelope?.mail_from, to: p.recipients?.map((r) => r.address), subject: p.message?.subject, automatic: p.automatic }));
    } else {
      console.log(JSON.stringify({ id: req.headers['webhook-id'], route: req.headers['mailhook-route'], to: req.headers['mailhook-rcpt-to'], bytes: body.length }));
    }
    res.writeHead(204).end();
  });
});
server.listen(Number(process.env.PORT ?? 8080), process.env.HOST ?? '0.0.0.0', () => {
  console.log(`listening on ${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
