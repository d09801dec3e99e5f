// Worker-thread entry of the parse pool: parses messages with mailparser (to JSON text) off the event loop that serves SMTP.
import { parentPort } from 'node:worker_threads';
import { parseMessageJson } from './message.js';

interface Request {
  id: number;
  raw: Uint8Array;
}

const port = parentPort;
if (!port) throw new Error('src/parse/worker is a worker-thread entry point');
port.on('message', (req: Request) => {
  const raw = Buffer.from(req.raw.buffer, req.raw.byteOffset, req.raw.byteLength);
  parseMessageJson(raw).then(
    (json) => port.postMessage({ id: req.id, json }),
    (err: unknown) => port.postMessage({ id: req.id, error: err instanceof Error ? err.message : String(err) }),
  );
});
// Loaded and listening: the pool hands this thread work from now on (a thread that fails to load never gets any).
port.postMessage({ ready: true });
