// Operator subcommands over the admin API: status, send-test, messages list|show|raw, replay, retry. Tables by default, --json for scripts.
import { open, rm, type FileHandle } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { AdminClient, CliError, resolveConnection, type ConnectionOptions } from './admin-client.js';
import { formatTable, oneLine, shortTime } from './table.js';
import { smtpSend, SmtpSendError } from './smtp-send.js';
import type { CliIo } from './index.js';

interface Delivery {
  id: string;
  route: string;
  recipients: Array<{ address: string; key: string | null }>;
  status: string;
  attempts: number;
  replays: number;
  next_attempt_at: string;
  last_status_code: number | null;
  last_error: string | null;
  finished_at: string | null;
}
interface MessageSummary {
  id: string;
  received_at: string;
  source: string;
  mail_from: string;
  rcpt_to: string[];
  size: number;
  subject: string | null;
  status: string;
  deliveries: Delivery[];
}
interface MessageDetail extends Omit<MessageSummary, 'deliveries'> {
  envelope: { mail_from: string; rcpt_to: string[]; remote_address: string | null; helo: string | null; tls: { protocol: string } | null };
  summary: { subject: string | null; from: string | null; to: string[]; date: string | null; message_id: string | null; attachments: Array<{ filename: string | null; content_type: string; size: number }> } | null;
  parse_error: string | null;
  deliveries: Array<Delivery & { attempt_log: Array<{ attempt: number; started_at: string; latency_ms: number; status_code: number | null; outcome: string; error: string | null }> }>;
}
interface RouteHealth {
  route: string;
  configured: boolean;
  kind: string;
  queue: Record<'pending' | 'delivering' | 'delivered' | 'dead' | 'dropped', number>;
  window: { attempts: number; success_rate: number | null };
  last_failure: { at: string; status_code: number | null; error: string | null } | null;
  consumer: { failing_since: string | null; paused_until: string | null };
}
interface MailboxView {
  name: string;
  method: string;
  state: string;
  since: string;
  healthy: boolean;
  consecutive_failures: number;
  last_error: { kind: string; message: string; at: string } | null;
}
interface ReplayResult {
  replayed: number;
  ids: string[];
  remaining: number;
  as_of: string;
  dry_run: boolean;
  /** named ids the replay left out (a sink route, a route no longer configured, another status), with why; absent from servers before it */
  skipped?: Array<{ id: string; route: string; status: string; reason: string }>;
}

/** Exit codes (sysexits.h where one fits): a send-test still pending at its deadline exits 75 (EX_TEMPFAIL). */
export const EXIT = { ok: 0, failed: 1, usage: 2, unavailable: 69, tempfail: 75, noperm: 77 } as const;

type Run = (fn: () => Promise<number>) => Promise<void>;

function connection(cmd: Command): Command {
  return cmd
    .option('--url <url>', 'base URL of the mailhook HTTP listener (default: MAILHOOK_URL, the config file, or http://127.0.0.1:8025)')
    .option('--token-file <file>', 'file holding the admin token (default: MAILHOOK_ADMIN_TOKEN, or the config file)')
    .option('-c, --config <file>', 'read the URL, token and SMTP address from this configuration file');
}

const filterFlags = (cmd: Command) =>
  cmd
    .option('--route <name>', 'only deliveries to this route')
    .option('--recipient <address>', 'only this envelope recipient')
    .option('--key <key>', 'only this %{key}')
    .option('--sender <address>', 'only this envelope sender')
    .option('--since <time>', 'received at or after (ISO 8601 or ms since the epoch)')
    .option('--until <time>', 'received before (ISO 8601 or ms since the epoch)');

/**
 * Opens --output for writing: a new file readable by its owner only, never one that exists (a mistyped name must
 * not overwrite a token file or the previous message). The message's stream is cancelled when it cannot be made.
 */
async function createOutput(path: string, given: string, body: Readable): Promise<FileHandle> {
  try {
    return await open(path, 'wx', 0o600);
  } catch (err) {
    body.destroy();
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new CliError(`--output ${given} exists; mailhook does not overwrite it: remove it or name a new file`, EXIT.failed);
    throw new CliError(`cannot create --output ${given}: ${code ?? (err as Error).message}; check that its folder exists and is writable`, EXIT.failed);
  }
}

export function registerAdminCommands(program: Command, io: CliIo, setExit: (code: number) => void): void {
  const run: Run = async (fn) => {
    try {
      setExit(await fn());
    } catch (err) {
      if (err instanceof CliError) {
        io.stderr(`mailhook: ${err.message}\n`);
        setExit(err.exitCode);
        return;
      }
      throw err;
    }
  };
  const client = (o: ConnectionOptions) => new AdminClient(resolveConnection(o, io.env, io.cwd));

  connection(
    program
      .command('send-test')
      .description('send a test message through the running server and wait for its delivery outcome')
      .requiredOption('--to <address>', 'recipient (one of your routes\' addresses)')
      .option('--from <address>', 'envelope and header sender', `mailhook-send-test@${hostname() || 'localhost'}`)
      .option('--subject <text>', 'subject line', 'mailhook send-test')
      .option('--smtp <host:port>', 'SMTP address (default: the config file\'s smtp.listen, or 127.0.0.1:2525)')
      .option('--timeout <seconds>', 'how long to wait for the outcome', '60')
      .option('--no-starttls', 'stay in plain text even when the server offers STARTTLS (used by default, unverified)')
      .option('--json', 'print the outcome as JSON'),
  ).action((o: ConnectionOptions & { to: string; from: string; subject: string; smtp?: string; timeout: string; starttls: boolean; json?: boolean }) =>
    run(async () => {
      const conn = resolveConnection(o, io.env, io.cwd);
      const api = new AdminClient(conn);
      const smtp = parseHostPort(o.smtp) ?? conn.smtp ?? { host: '127.0.0.1', port: 2525 };
      const timeoutMs = Number(o.timeout) * 1000;
      if (!(timeoutMs > 0)) throw new CliError('--timeout must be a positive number of seconds', EXIT.usage);
      const token = randomBytes(6).toString('hex');
      const data = [
        `From: ${o.from}`,
        `To: ${o.to}`,
        `Subject: ${o.subject}`,
        `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
        `Message-ID: <send-test.${token}@${hostname() || 'localhost'}>`,
        'MIME-Version: 1.0',
        'Content-Type: text/plain; charset=utf-8',
        'X-Mailhook-Send-Test: 1',
        '',
        `This is a test message sent by "mailhook send-test" (${token}).`,
      ].join('\r\n');
      let id: string;
      let tls: string | null;
      try {
        const reply = await smtpSend({ host: smtp.host, port: smtp.port, from: o.from, to: [o.to], data, timeoutMs: Math.min(timeoutMs, 30_000), lmtp: conn.smtp?.lmtp ?? false, starttls: o.starttls ? 'auto' : 'never' });
        tls = reply.tls;
        const m = /queued as ([a-z0-9]+)/i.exec(reply.text);
        if (!m) throw new CliError(`the server accepted the message but did not say its id: "${reply.code} ${reply.text}"`);
        id = m[1] as string;
      } catch (err) {
        if (err instanceof SmtpSendError) throw new CliError(err.message, err.reply ? EXIT.failed : EXIT.unavailable);
        throw err;
      }
      if (!o.json) io.stderr(`sent to ${o.to} via ${smtp.host}:${smtp.port}${tls ? ` (STARTTLS, ${tls})` : ''}: message ${id}; waiting for delivery…\n`);
      const deadline = Date.now() + timeoutMs;
      let m: MessageDetail;
      for (;;) {
        m = await api.json<MessageDetail>('GET', `/api/messages/${id}`);
        const unfinished = m.deliveries.some((d) => d.status === 'pending' || d.status === 'delivering');
        if (!unfinished || Date.now() >= deadline) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      const pending = m.deliveries.filter((d) => d.status === 'pending' || d.status === 'delivering');
      const failed = m.deliveries.filter((d) => d.status === 'dead' || d.status === 'dropped');
      const outcome = pending.length > 0 ? 'pending' : failed.length > 0 ? 'failed' : 'delivered';
      if (o.json) {
        io.stdout(`${JSON.stringify({ message_id: id, outcome, deliveries: m.deliveries.map(({ attempt_log, ...d }) => ({ ...d, attempt_log })) }, null, 2)}\n`);
      } else {
        io.stdout(formatTable(['ROUTE', 'STATUS', 'ATTEMPTS', 'HTTP', 'LATENCY', 'ERROR'], m.deliveries.map((d) => {
          const last = d.attempt_log[d.attempt_log.length - 1];
          return [d.route, d.status, d.attempts, last?.status_code, last ? `${last.latency_ms} ms` : '-', d.last_error];
        }), 80));
        io.stdout(outcome === 'delivered' ? `delivered: message ${id}\n` : outcome === 'failed' ? `FAILED: message ${id} was not delivered\n` : `still pending after ${o.timeout} s: message ${id}\n`);
      }
      return outcome === 'delivered' ? EXIT.ok : outcome === 'failed' ? EXIT.failed : EXIT.tempfail;
    }),
  );

  connection(program.command('status').description('each route\'s queue and consumer, each mailbox\'s state; exits 1 when a consumer is failing or a mailbox is not read'))
    .option('--window <w>', 'attempts and success rate over this window (1m…7d)', '1h')
    .option('--json', 'print the API responses as JSON')
    .action((o: ConnectionOptions & { window: string; json?: boolean }) =>
      run(async () => {
        const api = client(o);
        const routes = await api.json<{ window: string; routes: RouteHealth[] }>('GET', `/api/routes?window=${encodeURIComponent(o.window)}`);
        const boxes = await api.json<{ enabled: boolean; mailboxes: MailboxView[] }>('GET', '/api/mailboxes');
        const trouble = routes.routes.some((r) => r.consumer.failing_since !== null) || boxes.mailboxes.some((m) => !m.healthy);
        if (o.json) {
          io.stdout(`${JSON.stringify({ routes, mailboxes: boxes }, null, 2)}\n`);
          return trouble ? EXIT.failed : EXIT.ok;
        }
        io.stdout(formatTable(['ROUTE', 'KIND', 'PENDING', 'DEAD', `SUCCESS (${o.window})`, 'CONSUMER', 'LAST FAILURE'], routes.routes.map((r) => [
          r.configured ? r.route : `${r.route} (not configured)`,
          r.kind,
          r.queue.pending + r.queue.delivering,
          r.queue.dead,
          r.window.success_rate === null ? '-' : `${Math.round(r.window.success_rate * 1000) / 10}% of ${r.window.attempts}`,
          r.consumer.failing_since ? `FAILING since ${shortTime(r.consumer.failing_since)}` : r.consumer.paused_until ? `paused until ${shortTime(r.consumer.paused_until)}` : 'ok',
          r.last_failure ? `${shortTime(r.last_failure.at)} ${r.last_failure.status_code ?? ''} ${oneLine(r.last_failure.error ?? '')}`.replace(/\s+/g, ' ').trim() : '',
        ]), 60));
        if (boxes.enabled) {
          io.stdout('\n');
          io.stdout(formatTable(['MAILBOX', 'METHOD', 'STATE', 'SINCE (UTC)', 'FAILURES', 'LAST ERROR'], boxes.mailboxes.map((m) => [
            m.healthy ? m.name : `${m.name} (NOT READ)`,
            m.method,
            m.state,
            shortTime(m.since),
            m.consecutive_failures,
            m.last_error ? `${m.last_error.kind}: ${oneLine(m.last_error.message)}` : '',
          ]), 60));
        }
        return trouble ? EXIT.failed : EXIT.ok;
      }),
    );

  const messages = program.command('messages').description('look at the messages in the spool');

  filterFlags(connection(messages.command('list').description('list messages, newest first')))
    .option('--status <status>', 'only messages with a delivery in this status (pending, delivering, delivered, dead, dropped)')
    .option('--limit <n>', 'messages per page (1–500)', '50')
    .option('--cursor <cursor>', 'continue after the previous page')
    .option('--json', 'print the API response as JSON')
    .action((o: ConnectionOptions & Record<string, string | boolean | undefined>) =>
      run(async () => {
        const q = new URLSearchParams();
        for (const k of ['status', 'route', 'recipient', 'key', 'sender', 'since', 'until', 'limit', 'cursor']) if (typeof o[k] === 'string') q.set(k, o[k] as string);
        const page = await client(o).json<{ messages: MessageSummary[]; next_cursor: string | null }>('GET', `/api/messages?${q}`);
        if (o.json) {
          io.stdout(`${JSON.stringify(page, null, 2)}\n`);
          return EXIT.ok;
        }
        io.stdout(formatTable(['ID', 'RECEIVED (UTC)', 'FROM', 'TO', 'SUBJECT', 'DELIVERIES'], page.messages.map((m) => [
          m.id, shortTime(m.received_at), m.mail_from || '<>', m.rcpt_to.join(','), m.subject ?? '', m.deliveries.map((d) => `${d.route}:${d.status}`).join(' '),
        ]), 40));
        if (page.messages.length === 0) io.stderr('no messages match\n');
        if (page.next_cursor) io.stderr(`more: add --cursor ${page.next_cursor}\n`);
        return EXIT.ok;
      }),
    );

  connection(messages.command('show').description('a message: envelope, summary, deliveries and every attempt').argument('<id>', 'message id'))
    .option('--json', 'print the API response as JSON')
    .action((id: string, o: ConnectionOptions & { json?: boolean }) =>
      run(async () => {
        const m = await client(o).json<MessageDetail>('GET', `/api/messages/${encodeURIComponent(id)}`);
        if (o.json) {
          io.stdout(`${JSON.stringify(m, null, 2)}\n`);
          return EXIT.ok;
        }
        const facts: Array<[string, string]> = [
          ['id', m.id],
          ['received', `${shortTime(m.received_at)} via ${m.source}`],
          ['status', m.status],
          ['envelope from', m.envelope.mail_from || '<>'],
          ['envelope to', m.envelope.rcpt_to.join(', ')],
          ['client', [m.envelope.remote_address, m.envelope.helo && `HELO ${m.envelope.helo}`].filter(Boolean).join(' ') || '-'],
          ['size', `${m.size} bytes`],
          ['subject', m.summary?.subject ?? m.subject ?? '-'],
        ];
        if (m.summary) facts.push(['from', m.summary.from ?? '-'], ['to', m.summary.to.join(', ') || '-'], ['message-id', m.summary.message_id ?? '-']);
        if (m.summary?.attachments.length) facts.push(['attachments', m.summary.attachments.map((a) => `${a.filename ?? '(unnamed)'} ${a.content_type} ${a.size} B`).join('; ')]);
        if (m.parse_error) facts.push(['parse error', m.parse_error]);
        const w = Math.max(...facts.map(([k]) => k.length));
        io.stdout(facts.map(([k, v]) => `${k.padEnd(w)}  ${oneLine(v)}`).join('\n') + '\n');
        for (const d of m.deliveries) {
          io.stdout(`\ndelivery ${d.id}  route ${d.route}  ${d.status}  ${d.attempts} attempt(s)${d.replays ? `, replayed ${d.replays}x` : ''}\n`);
          io.stdout(`  to ${oneLine(d.recipients.map((r) => r.address + (r.key ? ` (key ${r.key})` : '')).join(', '))}\n`);
          if (d.status === 'pending') io.stdout(`  next attempt ${shortTime(d.next_attempt_at)}\n`);
          if (d.attempt_log.length > 0) {
            io.stdout(formatTable(['#', 'STARTED (UTC)', 'HTTP', 'LATENCY', 'OUTCOME', 'ERROR'], d.attempt_log.map((a) => [a.attempt, shortTime(a.started_at), a.status_code, `${a.latency_ms} ms`, a.outcome, a.error]), 80).replace(/^(?=.)/gm, '  '));
          }
        }
        return EXIT.ok;
      }),
    );

  connection(messages.command('raw').description('the message exactly as received (RFC 5322 bytes)').argument('<id>', 'message id'))
    .option('-o, --output <file>', 'write to this file instead of standard output')
    .action((id: string, o: ConnectionOptions & { output?: string }) =>
      run(async () => {
        const res = await client(o).stream(`/api/messages/${encodeURIComponent(id)}/raw`);
        const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
        // The connection can fail while the output file is being opened, before pipeline() listens: the error is
        // kept by the stream and reported below, not thrown as an unhandled 'error' event.
        body.on('error', () => undefined);
        if (o.output) {
          const path = resolve(io.cwd, o.output);
          const file = await createOutput(path, o.output, body);
          try {
            await pipeline(body, file.createWriteStream());
          } catch (err) {
            // A message cut short is not left behind looking whole (and in the way of the next try).
            await rm(path, { force: true });
            throw new CliError(`the download of ${id} failed (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); ${o.output} was removed: run the command again`, EXIT.failed);
          }
        } else {
          for await (const chunk of body) await writeBytes(io, chunk as Buffer);
        }
        return EXIT.ok;
      }),
    );

  filterFlags(connection(program.command('replay').description('replay dead-lettered deliveries (or send delivered ones again), in batches with progress')))
    .option('--dead', 'dead-lettered deliveries (what the filters select unless --delivered); alone, every one of them: a replay with no flag at all is refused')
    .option('--delivered', 'deliveries that succeeded: send them again')
    .option('--delivery <ids...>', 'these delivery ids')
    .option('--batch <n>', 'deliveries per request (1–5000)', '500')
    .option('--dry-run', 'only count what would be replayed')
    .option('--json', 'print the result as JSON')
    .action((o: ConnectionOptions & { dead?: boolean; delivered?: boolean; delivery?: string[]; batch: string; dryRun?: boolean; json?: boolean; route?: string; recipient?: string; key?: string; sender?: string; since?: string; until?: string }) =>
      run(async () => {
        if (o.dead && o.delivered) throw new CliError('choose --dead or --delivered, not both', EXIT.usage);
        const api = client(o);
        const filter = filterOf(o);
        const hasFilter = Object.keys(filter).length > 0 || o.delivery !== undefined;
        if (!hasFilter && !o.dead && !o.delivered) {
          throw new CliError('say what to replay: --dead (every dead-lettered delivery), --route R, another filter, or --delivery ID…', EXIT.usage);
        }
        const batch = Number(o.batch);
        if (!Number.isInteger(batch) || batch < 1 || batch > 5000) throw new CliError('--batch must be a whole number from 1 to 5000', EXIT.usage);
        const base = {
          ...(o.delivery ? { ids: o.delivery } : filter),
          ...(hasFilter ? {} : { all: true }),
          status: o.delivered ? 'delivered' : 'dead',
        };
        const kind = o.delivered ? 'delivered' : 'dead-lettered';
        const count = await api.json<ReplayResult>('POST', '/api/deliveries/replay', { ...base, dry_run: true });
        const total = count.remaining;
        // A bare "nothing to replay" would not say that a named delivery's route is gone, or that it is still
        // pending, nor what to do about it; a named delivery left out is a failure (exit 1) for a script.
        const leftOut = (list: ReplayResult['skipped']): { skipped?: NonNullable<ReplayResult['skipped']> } => {
          if (!list?.length) return {};
          if (!o.json) for (const s of list) io.stderr(`delivery ${s.id} not replayed: ${s.reason}\n`);
          return { skipped: list };
        };
        if (o.dryRun || total === 0) {
          const skipped = leftOut(count.skipped);
          if (o.json) io.stdout(`${JSON.stringify({ replayed: 0, matched: total, dry_run: true, ...skipped }, null, 2)}\n`);
          else io.stdout(`${total} ${kind} deliver${total === 1 ? 'y' : 'ies'} match${o.dryRun ? ' (dry run: nothing replayed)' : '; nothing to replay'}\n`);
          return skipped.skipped ? EXIT.failed : EXIT.ok;
        }
        let done = 0;
        const ids: string[] = [];
        const asOf = count.as_of;
        let last: ReplayResult;
        for (;;) {
          last = await api.json<ReplayResult>('POST', '/api/deliveries/replay', o.delivery ? { ...base } : { ...base, as_of: asOf, limit: batch });
          done += last.replayed;
          ids.push(...last.ids);
          if (!o.json) io.stderr(`replayed ${done}/${Math.max(total, done)}\n`);
          if (o.delivery || last.remaining === 0 || last.replayed === 0) break;
        }
        // Named ids: the replay's own answer says which it left out (the count's may have changed meanwhile).
        const skipped = leftOut(last.skipped);
        if (o.json) io.stdout(`${JSON.stringify({ replayed: done, matched: total, ids, as_of: asOf, ...skipped }, null, 2)}\n`);
        else io.stdout(`replayed ${done} ${kind} deliver${done === 1 ? 'y' : 'ies'}; they are due now\n`);
        return skipped.skipped ? EXIT.failed : EXIT.ok;
      }),
    );

  filterFlags(connection(program.command('retry').description('send pending deliveries that wait for their next attempt now (after a consumer outage); attempt counts stay')))
    .option('--all', 'every pending delivery of every route')
    .option('--delivery <ids...>', 'these delivery ids')
    .option('--dry-run', 'only count what would be retried now')
    .option('--json', 'print the result as JSON')
    .action((o: ConnectionOptions & { all?: boolean; delivery?: string[]; dryRun?: boolean; json?: boolean; route?: string; recipient?: string; key?: string; sender?: string; since?: string; until?: string }) =>
      run(async () => {
        const filter = filterOf(o);
        const hasFilter = Object.keys(filter).length > 0 || o.delivery !== undefined;
        if (!hasFilter && !o.all) throw new CliError('say what to retry: --all (every pending delivery), --route R, another filter, or --delivery ID…', EXIT.usage);
        const body = { ...(o.delivery ? { ids: o.delivery } : filter), ...(hasFilter ? {} : { all: true }), dry_run: o.dryRun === true };
        const r = await client(o).json<{ retried: number; dry_run: boolean; resumed?: string[]; released?: number }>('POST', '/api/deliveries/retry', body);
        const n = `${r.retried} pending deliver${r.retried === 1 ? 'y' : 'ies'}`;
        if (o.json) io.stdout(`${JSON.stringify(r, null, 2)}\n`);
        else io.stdout(o.dryRun ? `${n} ${r.retried === 1 ? 'waits for its' : 'wait for their'} next attempt (dry run: nothing changed)\n` : `${n} made due now\n`);
        if (!o.json && r.resumed?.length) {
          const released = r.released ? ` (${r.released} more deliver${r.released === 1 ? 'y' : 'ies'}, due and held only by the pause, go out now too)` : '';
          io.stdout(`resumed, after a pause for their consumer's Retry-After: ${r.resumed.join(', ')}${released}\n`);
        }
        return EXIT.ok;
      }),
    );
}

/** The filter flags given (filterFlags), as the admin API's bulk requests take them. */
function filterOf(o: Partial<Record<'route' | 'recipient' | 'key' | 'sender' | 'since' | 'until', string>>): Record<string, string> {
  return Object.fromEntries((['route', 'recipient', 'key', 'sender', 'since', 'until'] as const).flatMap((k) => (o[k] === undefined ? [] : [[k, o[k]]])));
}

async function writeBytes(io: CliIo, chunk: Buffer): Promise<void> {
  if (io.stdoutBytes) await io.stdoutBytes(chunk);
  else io.stdout(chunk.toString('utf8'));
}

function parseHostPort(value: string | undefined): { host: string; port: number } | undefined {
  if (value === undefined) return undefined;
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
  if (!m) throw new CliError(`--smtp must be host:port, like 127.0.0.1:2525 (got "${value}")`, EXIT.usage);
  return { host: (m[1] ?? m[2]) as string, port: Number(m[3]) };
}
