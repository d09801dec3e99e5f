// How long a delivery lease lasts: longer than the slowest attempt (parse, wait for a request slot, request).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { leaseDurationMs } from '../../src/delivery/worker.js';
import { parseTestConfig, SECRET, tempDir } from '../helpers/app.js';

const yaml = (routes: string) => `
spool:
  path: spool.db
delivery:
  timeout_ms: 30000
routes:
${routes}`;

test('the lease outlasts a parse, a wait behind requests of the slowest route and its own request', () => {
  const dir = tempDir();
  const plain = parseTestConfig(yaml(`  - name: a\n    addresses: ["a@x.test"]\n    webhook: { url: "http://127.0.0.1:1/", secret: "${SECRET}" }\n`), dir);
  // parse ≤ 30 s, wait ≤ 30 s (every slot is held by a request that ends within 30 s), request ≤ 30 s
  assert.ok(leaseDurationMs(plain) > 30_000 * 3, `lease ${leaseDurationMs(plain)} ms`);
  // A route may allow its consumer longer than delivery.timeout_ms: that bounds the wait and the request.
  const slow = parseTestConfig(yaml(`  - name: a\n    addresses: ["a@x.test"]\n    webhook: { url: "http://127.0.0.1:1/", secret: "${SECRET}" }\n  - name: slow\n    addresses: ["s@x.test"]\n    webhook: { url: "http://127.0.0.1:1/", secret: "${SECRET}", timeout_ms: 120000 }\n`), dir);
  assert.ok(leaseDurationMs(slow) > 30_000 + 2 * 120_000, `lease ${leaseDurationMs(slow)} ms`);
  // A sink-only configuration still gets a lease (routes without a webhook finish at once).
  const sink = parseTestConfig(yaml(`  - name: s\n    addresses: ["s@x.test"]\n    sink: true\n`), dir);
  assert.ok(leaseDurationMs(sink) > 30_000);
});
