// The webhook client: its deadline holds even while undici still queues the request for a connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { Agent } from 'undici';
import { sendWebhook, WebhookTargets, WebhookTimeoutError } from '../../src/delivery/client.js';

test('a request still waiting for a connection ends at its deadline, not when the connection frees up', async () => {
  const held: ServerResponse[] = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => held.push(res));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  // One connection: the second request queues behind the first, which the server holds.
  const dispatcher = new Agent({ connections: 1 });
  const target = new WebhookTargets().of(`http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`);
  try {
    const first = sendWebhook(dispatcher, target, { headers: {}, body: 'one' }, 10_000);
    while (held.length === 0) await new Promise((r) => setImmediate(r));
    await assert.rejects(sendWebhook(dispatcher, target, { headers: {}, body: 'two' }, 200), WebhookTimeoutError);
    assert.equal(held.length, 1, 'the second request never reached the server: its deadline ran out while it waited for the connection');
    held[0]!.end('ok');
    assert.equal((await first).status, 200);
  } finally {
    for (const r of held) r.destroy();
    await dispatcher.close();
    server.close();
  }
});
