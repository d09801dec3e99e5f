// Worker-thread entry of the parse pool: parses messages with mailparser (json payload or inbound view, see job.ts) off the event loop that serves SMTP.
import { parentPort } from 'node:worker_threads';
import { parseHere, toPost, type ParseRequest } from './job.js';

interface Request {
  id: number;
  raw: Uint8Array;
  request: ParseRequest;
}

const port = parentPort;
if (!port) throw new Error('src/parse/worker is a worker-thread entry point');
port.on('message', (req: Request) => {
  const raw = Buffer.from(req.raw.buffer, req.raw.byteOffset, req.raw.byteLength);
  parseHere(raw, req.request)
    .then((value) => {
      const { result, transfer } = toPost(req.request, value);
      port.postMessage({ id: req.id, result }, transfer);
    })
    // A parse error, or a result that could not be posted: the message is bad, the thread is fine.
    .catch((err: unknown) => port.postMessage({ id: req.id, error: err instanceof Error ? err.message : String(err) }));
});
// Loaded and listening: the pool hands this thread work from now on (a thread that fails to load never gets any).
port.postMessage({ ready: true });
