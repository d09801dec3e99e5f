// Consumer-side helpers for the service-format tests: read a posted form as a real parser does, fixtures, sending raw mail.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sendMail } from '../helpers/smtp-client.js';
import type { ReceivedRequest } from '../helpers/consumer.js';
import type { TestApp } from '../helpers/app.js';
import type { FormatContext } from '../../src/delivery/formats/types.js';
import type { ResolvedWebhook } from '../../src/config/load.js';
import type { Recipient } from '../../src/spool/types.js';

export const FIXTURES = join(fileURLToPath(new URL('.', import.meta.url)), '..', 'fixtures', 'formats');

export function fixture(name: string): Buffer {
  return readFileSync(join(FIXTURES, name));
}

/** Sends the exact bytes of a message over SMTP with nodemailer (a real client; it dot-stuffs, nothing else). */
export async function sendRaw(port: number, raw: Buffer, to: string[], from = 'sender@example.test'): Promise<void> {
  await sendMail(port, { envelope: { from, to }, raw });
}

export interface ParsedForm {
  fields: Map<string, string[]>;
  files: Map<string, File>;
  field(name: string): string;
}

/** Parses a multipart/form-data or urlencoded request body with undici's FormData parser (what fetch's Response.formData() runs). */
export async function parseForm(req: ReceivedRequest): Promise<ParsedForm> {
  const type = String(req.headers['content-type'] ?? '');
  const form = await new Response(new Uint8Array(req.body), { headers: { 'content-type': type } }).formData();
  const fields = new Map<string, string[]>();
  const files = new Map<string, File>();
  for (const [name, value] of form.entries()) {
    if (typeof value === 'string') fields.set(name, [...(fields.get(name) ?? []), value]);
    else files.set(name, value);
  }
  return {
    fields,
    files,
    field(name: string) {
      const v = fields.get(name);
      if (!v || v.length !== 1) throw new Error(`expected one field "${name}", got ${v?.length ?? 0}`);
      return v[0] as string;
    },
  };
}

/**
 * The exact bytes of a named part of a multipart body: form parsers decode text fields as UTF-8, so a test of a raw
 * message field (body-mime, email) looks at the bytes on the wire.
 */
export function rawPart(req: ReceivedRequest, name: string): Buffer {
  const type = String(req.headers['content-type'] ?? '');
  const boundary = /boundary=([^;]+)/.exec(type)?.[1];
  if (!boundary) throw new Error(`not multipart: ${type}`);
  const delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1');
  const body = Buffer.concat([Buffer.from('\r\n'), req.body]);
  let at = body.indexOf(delimiter);
  while (at !== -1) {
    const next = body.indexOf(delimiter, at + delimiter.length);
    if (next === -1) break;
    const part = body.subarray(at + delimiter.length + 2, next);
    const headerEnd = part.indexOf('\r\n\r\n');
    const head = part.subarray(0, headerEnd).toString('utf8');
    if (new RegExp(`name="${name}"(;|\\r|$)`).test(head)) return part.subarray(headerEnd + 4);
    at = next;
  }
  throw new Error(`no part named ${name}`);
}

/** A FormatContext for encoder unit tests, with fixed ids and clock. */
export function formatContext(raw: Buffer, opts: { recipients: Recipient[]; webhook?: Partial<ResolvedWebhook>; meta?: Record<string, unknown> | null; mailFrom?: string }): FormatContext {
  const webhook: ResolvedWebhook = {
    url: 'https://app.example.test/hook',
    format: 'json',
    timeoutMs: 1000,
    signingKey: undefined,
    signingKeyBytes: undefined,
    options: { mime: false, raw_email: false, send_raw: false },
    ...opts.webhook,
  };
  return {
    message: {
      id: 'msg_fixture0001',
      receivedAt: Date.UTC(2024, 0, 5, 9, 0, 0),
      source: 'smtp',
      envelope: { mailFrom: opts.mailFrom ?? 'bounce@example.test', rcptTo: opts.recipients.map((r) => r.address), remoteAddress: '192.0.2.25', helo: 'mx.example.test', tls: null },
      size: raw.length,
      dedupeKey: null,
      meta: opts.meta ?? null,
    },
    delivery: {
      id: 'dlv_fixture0001',
      messageId: 'msg_fixture0001',
      route: 'r',
      recipients: opts.recipients,
      status: 'delivering',
      attempts: 1,
      nextAttemptAt: 0,
      leaseToken: null,
      lastStatusCode: null,
      lastError: null,
      createdAt: 0,
      updatedAt: 0,
      finishedAt: null,
    },
    route: { name: 'r', addresses: ['*@in.test'], sink: false, webhook } as FormatContext['route'],
    webhook,
    raw,
    nowSeconds: 1_704_445_200,
    hostname: 'mx.test',
  };
}

/** Deterministic "random" bytes for encoder unit tests. */
export function counterBytes(): (n: number) => Buffer {
  let c = 0;
  return (n) => Buffer.from(Array.from({ length: n }, () => c++ & 0xff));
}

export interface DeliveryState {
  status: string;
  attempts: number;
  last_status_code: number | null;
  last_error: string | null;
}

/** The deliveries of a route, oldest first, read from the spool database. */
export function deliveriesOf(app: TestApp, route: string): DeliveryState[] {
  return app.spool.db
    .prepare('SELECT status, attempts, last_status_code, last_error FROM deliveries WHERE route = ? ORDER BY created_at, id')
    .all(route) as DeliveryState[];
}
