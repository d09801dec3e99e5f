// Worker-thread entry of the parse pool: parses messages with mailparser (json payload or inbound view, see job.ts) off the event loop that serves SMTP.
import { parentPort } from 'node:worker_threads';
import { parseHere, toPost, type ParseRequest } from './job.js';

interface Request {
  id: number;
  raw: Uint8Array;
  request: ParseRequest;
}

if (!parentPort) throw new Error('src/parse/worker is a worker-thread entry point');
const port = parentPort;
// One message at a time, in the order given (the pool times the first it is waiting for; pool.ts PIPELINE_DEPTH).
let previous: Promise<void> = Promise.resolve();
port.on('message', (req: Request) => {
  previous = previous.then(() => parseOne(req));
});

function parseOne(req: Request): Promise<void> {
  const raw = Buffer.from(req.raw.buffer, req.raw.byteOffset, req.raw.byteLength);
  return parseHere(raw, req.request)
    .then((value) => {
      const { result, transfer } = toPost(req.request, value);
      port.postMessage({ id: req.id, result }, transfer);
    })
    // A parse error, or a result that could not be posted: the message is bad, the thread is fine.
    .catch((err: unknown) => port.postMessage({ id: req.id, error: err instanceof Error ? err.message : String(err) }));
}
// Loaded and listening: the pool hands this thread work from now on (a thread that fails to load never gets any).
port.postMessage({ ready: true });
