// Prometheus metrics for every part, on one registry built per process (tests build their own).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export function createMetrics() {
  const registry = new Registry();
  return {
    registry,
    messagesAccepted: new Counter({ name: 'mailhook_messages_accepted_total', help: 'Messages committed to the spool', labelNames: ['source'], registers: [registry] }),
    messagesRejected: new Counter({ name: 'mailhook_messages_rejected_total', help: 'Messages refused at end of DATA', labelNames: ['reason'], registers: [registry] }),
    recipientsRejected: new Counter({ name: 'mailhook_recipients_rejected_total', help: 'Recipients refused at RCPT', labelNames: ['reason'], registers: [registry] }),
    smtpConnections: new Counter({ name: 'mailhook_smtp_connections_total', help: 'SMTP connections opened', registers: [registry] }),
    smtpRefused: new Counter({ name: 'mailhook_smtp_refused_total', help: 'SMTP connections and MAIL commands refused by a limit', labelNames: ['reason'], registers: [registry] }),
    deliveries: new Counter({ name: 'mailhook_deliveries_total', help: 'Delivery attempts by outcome', labelNames: ['route', 'outcome'], registers: [registry] }),
    deliveryLatency: new Histogram({
      name: 'mailhook_delivery_duration_seconds',
      help: 'Webhook request duration',
      labelNames: ['route'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    deliveriesWaiting: new Gauge({
      name: 'mailhook_deliveries_waiting',
      help: 'Deliveries waiting for one of their route\'s request slots (per_route_concurrency); prepared="true": payload built ahead, "false": a large message read only once a slot is free',
      labelNames: ['route', 'prepared'],
      registers: [registry],
    }),
    queueDepth: new Gauge({ name: 'mailhook_queue_depth', help: 'Deliveries in the spool by route and status', labelNames: ['route', 'status'], registers: [registry] }),
    oldestUndelivered: new Gauge({
      name: 'mailhook_oldest_undelivered_seconds',
      help: 'Age of the oldest message of the route not yet delivered (pending or being delivered), from when it came in; 0 when none',
      labelNames: ['route'],
      registers: [registry],
    }),
    routeFailing: new Gauge({
      name: 'mailhook_route_failing',
      help: 'Whether the route\'s consumer is failing: 1 after several failed requests in a row (network errors, timeouts, 408, 429, 5xx, 401/403, redirects), 0 again once one is delivered or the route has nothing left to deliver',
      labelNames: ['route'],
      registers: [registry],
    }),
    tlsHandshakes: new Counter({ name: 'mailhook_smtp_tls_handshakes_total', help: 'TLS handshakes (STARTTLS and the implicit-TLS listener) by result: ok, or why it failed (protocol_version, no_shared_cipher, certificate_rejected, not_tls, timeout, closed, other); absent without TLS', labelNames: ['result'], registers: [registry] }),
    tlsCertificateExpiry: new Gauge({ name: 'mailhook_tls_certificate_expiry_timestamp_seconds', help: 'When the certificate STARTTLS serves stops being valid, as a Unix time, by smtp.tls.cert_file; absent without TLS', labelNames: ['file'], registers: [registry] }),
    spoolBytes: new Gauge({ name: 'mailhook_spool_bytes', help: 'Spool size on disk (database, WAL and message files)', registers: [registry] }),
    spoolRemoved: new Counter({ name: 'mailhook_spool_removed_total', help: 'Messages removed by retention (spool.retention)', registers: [registry] }),
    mailboxState: new Gauge({ name: 'mailhook_mailbox_state', help: 'IMAP/Graph mailbox state: 1 for the current state (connecting, connected, idle, polling, backoff, stopped), 0 for the others', labelNames: ['mailbox', 'state'], registers: [registry] }),
    mailboxErrors: new Counter({ name: 'mailhook_mailbox_errors_total', help: 'IMAP/Graph mailbox session failures by kind (network, tls, auth, server, token, …)', labelNames: ['mailbox', 'kind'], registers: [registry] }),
    mailboxMessages: new Counter({ name: 'mailhook_mailbox_messages_total', help: 'Messages taken from IMAP/Graph mailboxes by outcome (accepted, duplicate, unmatched, too_large, refused)', labelNames: ['mailbox', 'outcome'], registers: [registry] }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
