// The one ingest entry: stream a message into the spool and resolve only once it is durably committed.
import { MailhookError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Clock } from '../core/clock.js';
import type { Db } from './db.js';
import type { BlobStore, BlobWriter } from './blobs.js';
import type { Envelope, PlannedDelivery } from './types.js';

export interface AcceptInput {
  source: 'smtp' | 'imap' | 'graph';
  envelope: Envelope;
  deliveries: PlannedDelivery[];
  body: AsyncIterable<Buffer>;
  /** bytes beyond this are not stored and the accept fails with MESSAGE_TOO_LARGE (the stream is still drained) */
  maxBytes: number;
  /** a message already stored under this key is not stored again (IMAP UIDs, Message-ID fallbacks) */
  dedupeKey?: string;
  meta?: Record<string, unknown>;
}

export interface AcceptResult {
  id: string;
  size: number;
  /** true when dedupeKey matched an earlier message; id is then that message's */
  duplicate: boolean;
  deliveryIds: string[];
}

interface PendingCommit {
  row: MessageRow;
  deliveries: Array<{ id: string; route: string; recipients: string; status: string }>;
  resolve: (r: AcceptResult) => void;
  reject: (err: unknown) => void;
}

interface MessageRow {
  id: string;
  received_at: number;
  source: string;
  mail_from: string;
  rcpt_to: string;
  remote_address: string | null;
  helo: string | null;
  tls: string | null;
  size: number;
  raw: Buffer | null;
  raw_file: string | null;
  dedupe_key: string | null;
  meta: string | null;
}

/**
 * Group commit: every message whose bytes are ready in the same event-loop turn is committed in one
 * SQLite transaction, so concurrent sessions share one WAL fsync (synchronous=FULL).
 */
export class Acceptor {
  private queue: PendingCommit[] = [];
  private scheduled = false;
  private closed = false;
  private readonly insertMessage;
  private readonly insertDelivery;
  private readonly findDuplicate;
  /** called after each commit with the ids of new deliveries, so delivery can wake up */
  onCommitted: (deliveryIds: string[]) => void = () => {};

  constructor(
    private readonly db: Db,
    private readonly blobs: BlobStore,
    private readonly clock: Clock,
    private readonly inlineMaxBytes: number,
  ) {
    this.insertMessage = db.prepare(
      `INSERT INTO messages (id, received_at, source, mail_from, rcpt_to, remote_address, helo, tls, size, raw, raw_file, dedupe_key, meta)
       VALUES (@id, @received_at, @source, @mail_from, @rcpt_to, @remote_address, @helo, @tls, @size, @raw, @raw_file, @dedupe_key, @meta)`,
    );
    this.insertDelivery = db.prepare(
      `INSERT INTO deliveries (id, message_id, route, recipients, status, attempts, next_attempt_at, created_at, updated_at, finished_at)
       VALUES (@id, @message_id, @route, @recipients, @status, 0, @now, @now, @now, @finished_at)`,
    );
    this.findDuplicate = db.prepare(`SELECT id, size FROM messages WHERE dedupe_key = ?`);
  }

  /** Stops taking new messages; messages already queued for commit still commit. */
  close(): void {
    this.closed = true;
    if (this.queue.length > 0) this.flush();
  }

  async accept(input: AcceptInput): Promise<AcceptResult> {
    if (this.closed) throw new MailhookError('SPOOL_CLOSED', 'the spool is shutting down');
    if (input.dedupeKey) {
      const dup = this.findDuplicate.get(input.dedupeKey) as { id: string; size: number } | undefined;
      if (dup) {
        await drain(input.body);
        return { id: dup.id, size: dup.size, duplicate: true, deliveryIds: [] };
      }
    }
    const now = this.clock.now();
    const id = newId(now);
    const stored = await this.storeBody(id, input.body, input.maxBytes);
    const row: MessageRow = {
      id,
      received_at: now,
      source: input.source,
      mail_from: input.envelope.mailFrom,
      rcpt_to: JSON.stringify(input.envelope.rcptTo),
      remote_address: input.envelope.remoteAddress,
      helo: input.envelope.helo,
      tls: input.envelope.tls ? JSON.stringify(input.envelope.tls) : null,
      size: stored.size,
      raw: stored.inline,
      raw_file: stored.file,
      dedupe_key: input.dedupeKey ?? null,
      meta: input.meta ? JSON.stringify(input.meta) : null,
    };
    const deliveries = input.deliveries.map((d) => ({
      id: newId(now),
      route: d.route,
      recipients: JSON.stringify(d.recipients),
      status: d.status ?? 'pending',
    }));
    try {
      return await new Promise<AcceptResult>((resolve, reject) => {
        this.queue.push({ row, deliveries, resolve, reject });
        if (!this.scheduled) {
          this.scheduled = true;
          setImmediate(() => this.flush());
        }
      });
    } catch (err) {
      if (stored.file) await this.blobs.remove(stored.file);
      throw err;
    }
  }

  private async storeBody(id: string, body: AsyncIterable<Buffer>, maxBytes: number): Promise<{ size: number; inline: Buffer | null; file: string | null }> {
    const chunks: Buffer[] = [];
    let size = 0;
    let writer: BlobWriter | undefined;
    let tooLarge = false;
    try {
      for await (const chunk of body) {
        if (tooLarge) continue; // drain so the client gets its reply
        size += chunk.length;
        if (size > maxBytes) {
          tooLarge = true;
          chunks.length = 0;
          continue;
        }
        if (writer) {
          await writer.write(chunk);
        } else if (size > this.inlineMaxBytes) {
          writer = await this.blobs.create(`${id}.eml`);
          for (const c of chunks) await writer.write(c);
          chunks.length = 0;
          await writer.write(chunk);
        } else {
          chunks.push(chunk);
        }
      }
      if (tooLarge) throw new MailhookError('MESSAGE_TOO_LARGE', `message exceeds ${maxBytes} bytes`, { userFault: true });
      if (writer) {
        await writer.finish();
        await this.blobs.syncDir();
        return { size, inline: null, file: writer.name };
      }
      return { size, inline: Buffer.concat(chunks, size), file: null };
    } catch (err) {
      if (writer) await writer.abort();
      if (err instanceof MailhookError) throw err;
      throw new MailhookError('SPOOL_UNAVAILABLE', `cannot store the message: ${(err as Error).message}`, { cause: err });
    }
  }

  private flush(): void {
    this.scheduled = false;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return;
    const results: Array<{ p: PendingCommit; result: AcceptResult | undefined; error?: unknown }> = [];
    const now = this.clock.now();
    const commit = this.db.transaction(() => {
      for (const p of batch) {
        // A dedupe key seen twice in one batch, or already committed: keep the first message.
        if (p.row.dedupe_key) {
          const dup = this.findDuplicate.get(p.row.dedupe_key) as { id: string; size: number } | undefined;
          if (dup) {
            results.push({ p, result: { id: dup.id, size: dup.size, duplicate: true, deliveryIds: [] } });
            continue;
          }
        }
        this.insertMessage.run(p.row);
        for (const d of p.deliveries) {
          this.insertDelivery.run({ ...d, message_id: p.row.id, now, finished_at: d.status === 'delivered' ? now : null });
        }
        results.push({ p, result: { id: p.row.id, size: p.row.size, duplicate: false, deliveryIds: p.deliveries.map((d) => d.id) } });
      }
    });
    try {
      commit();
    } catch (err) {
      const error = new MailhookError('SPOOL_UNAVAILABLE', `spool commit failed: ${(err as Error).message}`, { cause: err });
      for (const p of batch) p.reject(error);
      return;
    }
    const newDeliveries: string[] = [];
    for (const { p, result } of results) {
      if (!result) continue;
      if (result.duplicate && p.row.raw_file) this.blobs.removeSync(p.row.raw_file);
      newDeliveries.push(...result.deliveryIds);
      p.resolve(result);
    }
    if (newDeliveries.length > 0) this.onCommitted(newDeliveries);
  }
}

async function drain(body: AsyncIterable<Buffer>): Promise<void> {
  for await (const _ of body) {
    /* discard */
  }
}
