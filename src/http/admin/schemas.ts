// JSON schemas of the admin API: they validate every request, shape every response and feed the OpenAPI document.
import { DELIVERY_STATUSES } from '../../spool/queries.js';
import { FAILING_AFTER } from '../../delivery/route-health.js';
import { ROUTE_PAUSE_MAX_MS } from '../../delivery/backoff.js';

const nullable = <T extends Record<string, unknown>>(s: T) => ({ ...s, type: [s.type as string, 'null'] });

export const problem = {
  type: 'object',
  description: 'What went wrong, in words an operator can act on',
  properties: {
    error: { type: 'string', description: 'stable code: bad_request, unauthorized, not_found, conflict, admin_api_disabled, internal_error' },
    message: { type: 'string' },
  },
  required: ['error', 'message'],
} as const;

const time = { type: 'string', format: 'date-time' } as const;
const timeParam = { type: 'string', minLength: 1, maxLength: 40, description: 'ISO 8601 time (2024-05-01T12:00:00Z) or milliseconds since the epoch' } as const;
export const idSchema = { type: 'string', pattern: '^[a-z0-9]{1,64}$' } as const;

export const idParams = {
  type: 'object',
  properties: { id: { ...idSchema, description: 'message id (the one in the SMTP reply "queued as …")' } },
  required: ['id'],
  additionalProperties: false,
} as const;

const filterProperties = {
  route: { type: 'string', minLength: 1, maxLength: 200, description: 'route name' },
  recipient: { type: 'string', minLength: 1, maxLength: 320, description: 'envelope recipient address (case-insensitive)' },
  key: { type: 'string', minLength: 1, maxLength: 200, description: 'the %{key} part a route template took from the recipient' },
  sender: { type: 'string', maxLength: 320, description: 'envelope sender (MAIL FROM), case-insensitive; empty for the null sender' },
  since: { ...timeParam, description: 'received at or after this time (ISO 8601 or ms since the epoch)' },
  until: { ...timeParam, description: 'received before this time (ISO 8601 or ms since the epoch)' },
} as const;

export const listQuery = {
  type: 'object',
  properties: {
    status: { type: 'string', enum: DELIVERY_STATUSES, description: 'a delivery of the message has this status (with route/recipient/key: the same delivery)' },
    ...filterProperties,
    cursor: { type: 'string', minLength: 1, maxLength: 200, description: 'next_cursor from the previous page' },
    limit: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
  },
  additionalProperties: false,
} as const;

const recipient = {
  type: 'object',
  properties: { address: { type: 'string' }, key: { type: ['string', 'null'] } },
  required: ['address', 'key'],
} as const;

const deliverySummaryProps = {
  id: { type: 'string', description: 'delivery id, also the webhook-id header' },
  route: { type: 'string' },
  recipients: { type: 'array', items: recipient },
  status: { type: 'string', enum: DELIVERY_STATUSES },
  attempts: { type: 'integer', description: 'attempts since the delivery was created or last replayed' },
  replays: { type: 'integer', description: 'times an operator replayed or redelivered it' },
  next_attempt_at: time,
  last_status_code: { type: ['integer', 'null'] },
  last_error: { type: ['string', 'null'] },
  finished_at: nullable(time),
} as const;

const deliverySummary = { type: 'object', properties: deliverySummaryProps, required: Object.keys(deliverySummaryProps) } as const;

const messageSummaryProps = {
  id: { type: 'string' },
  received_at: time,
  source: { type: 'string', description: 'smtp, imap, …' },
  mail_from: { type: 'string' },
  rcpt_to: { type: 'array', items: { type: 'string' } },
  size: { type: 'integer', description: 'bytes as received' },
  subject: { type: ['string', 'null'] },
  status: { type: 'string', enum: [...DELIVERY_STATUSES, 'none'], description: 'pending/delivering while a delivery is unfinished, else dead if one is dead, else delivered' },
} as const;

export const listResponse = {
  type: 'object',
  properties: {
    messages: {
      type: 'array',
      items: { type: 'object', properties: { ...messageSummaryProps, deliveries: { type: 'array', items: deliverySummary } }, required: [...Object.keys(messageSummaryProps), 'deliveries'] },
    },
    next_cursor: { type: ['string', 'null'], description: 'pass as cursor for the next (older) page; null on the last page' },
  },
  required: ['messages', 'next_cursor'],
} as const;

const attempt = {
  type: 'object',
  properties: {
    attempt: { type: 'integer' },
    started_at: time,
    latency_ms: { type: 'integer', description: 'time the webhook request took' },
    status_code: { type: ['integer', 'null'], description: 'HTTP status of the answer; null when none came (timeout, refused connection)' },
    outcome: { type: 'string', description: 'delivered, retry, dead or dropped' },
    error: { type: ['string', 'null'] },
  },
  required: ['attempt', 'started_at', 'latency_ms', 'status_code', 'outcome', 'error'],
} as const;

export const detailResponse = {
  type: 'object',
  properties: {
    ...messageSummaryProps,
    envelope: {
      type: 'object',
      properties: {
        mail_from: { type: 'string' },
        rcpt_to: { type: 'array', items: { type: 'string' } },
        remote_address: { type: ['string', 'null'] },
        helo: { type: ['string', 'null'] },
        tls: { type: ['object', 'null'], properties: { protocol: { type: 'string' }, cipher: { type: 'string' } } },
      },
      required: ['mail_from', 'rcpt_to', 'remote_address', 'helo', 'tls'],
    },
    dedupe_key: { type: ['string', 'null'] },
    meta: { type: ['object', 'null'], additionalProperties: true },
    summary: {
      type: ['object', 'null'],
      description: 'the parsed message (null when it cannot be parsed; see parse_error)',
      properties: {
        message_id: { type: ['string', 'null'] },
        subject: { type: ['string', 'null'] },
        from: { type: ['string', 'null'] },
        to: { type: 'array', items: { type: 'string' } },
        cc: { type: 'array', items: { type: 'string' } },
        date: { type: ['string', 'null'] },
        text_excerpt: { type: ['string', 'null'], description: 'the first 2000 characters of the text part, or for an HTML-only message of the text in its HTML (tags dropped)' },
        attachments: {
          type: 'array',
          items: { type: 'object', properties: { filename: { type: ['string', 'null'] }, content_type: { type: 'string' }, size: { type: 'integer' } }, required: ['filename', 'content_type', 'size'] },
        },
      },
    },
    parse_error: { type: ['string', 'null'] },
    raw_url: { type: 'string' },
    deliveries: {
      type: 'array',
      items: {
        type: 'object',
        properties: { ...deliverySummaryProps, created_at: time, updated_at: time, attempt_log: { type: 'array', items: attempt } },
        required: [...Object.keys(deliverySummaryProps), 'created_at', 'updated_at', 'attempt_log'],
      },
    },
  },
  required: [...Object.keys(messageSummaryProps), 'envelope', 'summary', 'deliveries', 'raw_url'],
} as const;

export const redeliverBody = {
  type: 'object',
  properties: { route: { type: 'string', minLength: 1, maxLength: 200, description: 'only the delivery to this route (default: every finished delivery of the message)' } },
  additionalProperties: false,
} as const;

/** A delivery a redeliver or replay leaves out, and why. */
const skippedItem = { type: 'object', properties: { id: { type: 'string' }, route: { type: 'string' }, status: { type: 'string' }, reason: { type: 'string' } }, required: ['id', 'route', 'status', 'reason'] } as const;

export const redeliverResponse = {
  type: 'object',
  properties: {
    message_id: { type: 'string' },
    requeued: { type: 'array', items: { type: 'string' }, description: 'delivery ids now pending, due now' },
    skipped: { type: 'array', items: skippedItem },
  },
  required: ['message_id', 'requeued', 'skipped'],
} as const;

/** What a bulk request (replay, retry) acts on: ids, or the filter fields, or with neither `all` (what `everyone` says). */
function bulkSelection(verb: string, everyone: string) {
  return {
    ids: { type: 'array', items: idSchema, minItems: 1, maxItems: 1000, uniqueItems: true, description: `delivery ids to ${verb} (instead of a filter)` },
    ...filterProperties,
    all: { type: 'boolean', description: `with no ids and no filter: ${verb} ${everyone}` },
  } as const;
}

export const replayBody = {
  type: 'object',
  properties: {
    ...bulkSelection('replay', 'every matching delivery (a guard against an empty request replaying everything)'),
    status: { type: 'string', enum: ['dead', 'delivered'], default: 'dead', description: 'dead: dead-lettered deliveries; delivered: send delivered ones again' },
    as_of: { ...timeParam, description: 'only deliveries finished at or before this time; pass as_of from the first batch so deliveries that die again are not replayed twice' },
    limit: { type: 'integer', minimum: 1, maximum: 5000, default: 1000, description: 'deliveries replayed by this call; call again while remaining > 0' },
    dry_run: { type: 'boolean', default: false, description: 'count what would be replayed, change nothing' },
  },
  additionalProperties: false,
} as const;

export const retryBody = {
  type: 'object',
  properties: {
    ...bulkSelection('retry now', 'every pending delivery waiting for its next attempt'),
    dry_run: { type: 'boolean', default: false, description: 'count what would be retried, change nothing' },
  },
  additionalProperties: false,
} as const;

export const retryResponse = {
  type: 'object',
  properties: {
    retried: { type: 'integer', description: 'pending deliveries made due now (with dry_run: that would be)' },
    dry_run: { type: 'boolean' },
    resumed: { type: 'array', items: { type: 'string' }, description: 'routes that waited out a consumer\'s Retry-After and go on now (their due deliveries are counted in released, not retried); empty with dry_run' },
    released: { type: 'integer', description: 'deliveries of the resumed routes that were already due, held only by the pause: they go out now too' },
  },
  required: ['retried', 'dry_run', 'resumed', 'released'],
} as const;

export const replayResponse = {
  type: 'object',
  properties: {
    replayed: { type: 'integer' },
    ids: { type: 'array', items: { type: 'string' } },
    remaining: { type: 'integer', description: 'deliveries still matching after this call (with the same as_of)' },
    as_of: time,
    dry_run: { type: 'boolean' },
    skipped: {
      type: 'array',
      items: skippedItem,
      description: 'ids named in the request that this replay left out, with why and what to do: a sink route\'s, a route no longer in the configuration\'s, or a delivery whose status is not the one asked for (pending, in flight, dropped, delivered or dead-lettered)',
    },
  },
  required: ['replayed', 'ids', 'remaining', 'as_of', 'dry_run', 'skipped'],
} as const;

export const deleteQuery = {
  type: 'object',
  properties: { force: { type: 'boolean', default: false, description: 'delete even while a delivery is in flight' } },
  additionalProperties: false,
} as const;

export const deleteResponse = {
  type: 'object',
  properties: { id: { type: 'string' }, deleted: { type: 'boolean' } },
  required: ['id', 'deleted'],
} as const;

export const routesQuery = {
  type: 'object',
  properties: { window: { type: 'string', pattern: '^[0-9]{1,4}(m|h|d)$', default: '1h', description: 'how far back success rate and latency look: 15m, 1h, 24h, 7d (at most 7d)' } },
  additionalProperties: false,
} as const;

const statusCounts = { type: 'object', properties: Object.fromEntries(DELIVERY_STATUSES.map((s) => [s, { type: 'integer' }])), required: [...DELIVERY_STATUSES] } as const;

export const routesResponse = {
  type: 'object',
  properties: {
    window: { type: 'string' },
    since: time,
    totals: statusCounts,
    routes: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          route: { type: 'string' },
          configured: { type: 'boolean', description: 'false for a route that is in the spool but no longer in the configuration' },
          kind: { type: 'string', enum: ['webhook', 'sink', 'unknown'] },
          format: { type: ['string', 'null'] },
          endpoint: { type: ['string', 'null'], description: 'the webhook URL without credentials or query' },
          queue: statusCounts,
          window: {
            type: 'object',
            properties: {
              attempts: { type: 'integer' },
              delivered: { type: 'integer' },
              retried: { type: 'integer' },
              dead: { type: 'integer' },
              dropped: { type: 'integer', description: 'deliveries dropped by drop_automatic (no request made; not in attempts)' },
              success_rate: { type: ['number', 'null'], description: 'delivered attempts / attempts in the window' },
              latency_ms: {
                type: 'object',
                properties: { avg: { type: ['integer', 'null'] }, p50: { type: ['integer', 'null'] }, p95: { type: ['integer', 'null'] }, max: { type: ['integer', 'null'] } },
                required: ['avg', 'p50', 'p95', 'max'],
              },
            },
            required: ['attempts', 'delivered', 'retried', 'dead', 'dropped', 'success_rate', 'latency_ms'],
          },
          last_delivered_at: nullable(time),
          last_failure: {
            type: ['object', 'null'],
            properties: { at: time, status_code: { type: ['integer', 'null'] }, error: { type: ['string', 'null'] } },
          },
          consumer: {
            type: 'object',
            description: 'the delivery loop\'s view of the consumer since mailhook started',
            properties: {
              failing_since: { ...nullable(time), description: `when ${FAILING_AFTER} requests in a row had failed (network errors, timeouts, 408, 429, 5xx, 401/403, redirects; for mailgun and postmark every 4xx but 406/403); null once one is delivered or the route has nothing left to deliver` },
              paused_until: { ...nullable(time), description: `no request of the route starts before then: the consumer answered with Retry-After (at most ${ROUTE_PAUSE_MAX_MS / 60_000} minutes)` },
            },
            required: ['failing_since', 'paused_until'],
          },
        },
        required: ['route', 'configured', 'kind', 'format', 'endpoint', 'queue', 'window', 'last_delivered_at', 'last_failure', 'consumer'],
      },
    },
  },
  required: ['window', 'since', 'totals', 'routes'],
} as const;

export const mailboxesResponse = {
  type: 'object',
  properties: {
    enabled: { type: 'boolean', description: 'false when no IMAP bridge runs' },
    mailboxes: {
      type: 'array',
      items: { type: 'object', properties: { name: { type: 'string' }, state: { type: 'string' } }, required: ['name', 'state'], additionalProperties: true },
    },
  },
  required: ['enabled', 'mailboxes'],
} as const;

export const sessionBody = {
  type: 'object',
  properties: { token: { type: 'string', minLength: 1, maxLength: 4096 } },
  required: ['token'],
  additionalProperties: false,
} as const;

export const sessionResponse = {
  type: 'object',
  properties: { authenticated: { type: 'boolean' }, via: { type: 'string', enum: ['bearer', 'session'] } },
  required: ['authenticated'],
} as const;
