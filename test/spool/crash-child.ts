// Child process for crash.test.ts: accepts messages as fast as it can and prints each id once accept() resolved.
import { Spool } from '../../src/spool/spool.js';

const path = process.argv[2] as string;
const spool = new Spool({ path, inlineMaxBytes: 4096, clock: { now: () => Date.now() } });
let n = 0;
async function session(): Promise<never> {
  for (;;) {
    const i = n++;
    // every 7th message is large enough to become a file
    const size = i % 7 === 0 ? 20_000 : 300;
    const body = Buffer.from(`Subject: m${i}\r\n\r\n${'b'.repeat(size)}\r\n`);
    const r = await spool.accept({
      source: 'smtp',
      envelope: { mailFrom: 'a@b.test', rcptTo: ['x@in.test'], remoteAddress: '127.0.0.1', helo: 'c', tls: null },
      deliveries: [{ route: 'r', recipients: [{ address: 'x@in.test', key: null }] }],
      body: (async function* () {
        yield body;
      })(),
      maxBytes: 1 << 20,
    });
    process.stdout.write(`${r.id} ${r.size}\n`);
  }
}
for (let s = 0; s < 20; s++) void session();
