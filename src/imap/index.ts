// Builds one bridge per configured mailbox (IMAP or Microsoft Graph), all feeding spool.accept, and exposes
// their states for readiness, metrics and the admin API.
import type { Dispatcher } from 'undici';
import type { Clock, Random } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import type { Config } from '../config/load.js';
import type { Router } from '../routing/router.js';
import type { Spool } from '../spool/spool.js';
import { ImapBridge } from './bridge.js';
import { GraphInbox } from './graph/inbox.js';
import { MailboxIngest, ingestLimits } from './ingest.js';
import { OAuthTokenProvider } from './oauth.js';
import { MailboxState } from './state.js';
import type { MailboxStatus, MailboxStatusView } from './status.js';

export interface MailboxesDeps {
  config: Config;
  spool: Spool;
  router: Router;
  log: Logger;
  metrics: Metrics;
  clock: Clock;
  random: Random;
  /** HTTP client for token endpoints and Graph (tests pass their own) */
  dispatcher?: Dispatcher;
}

interface Bridge {
  readonly status: MailboxStatus;
  start(): void;
  stop(graceMs: number): Promise<void>;
}

export interface Mailboxes {
  readonly bridges: readonly Bridge[];
  start(): void;
  /** Stops every bridge (each finishes the batch in hand within graceMs). */
  stop(graceMs: number): Promise<void>;
  statuses(): MailboxStatusView[];
}

export function createMailboxes(deps: MailboxesDeps): Mailboxes {
  const { config } = deps;
  const log = deps.log.child({ part: 'imap' });
  const providers: OAuthTokenProvider[] = [];
  const bridges: Bridge[] = config.imap.map((settings) => {
    const ingestDeps = { router: deps.router, routes: config.routes, spool: deps.spool, metrics: deps.metrics, maxBytes: config.smtp.max_message_bytes, limits: ingestLimits(config.smtp.limits) };
    if (settings.method === 'microsoft_graph') {
      const tokens = new OAuthTokenProvider(
        { grant: 'client_credentials', tokenUrl: settings.tokenUrl, clientId: settings.clientId, clientSecret: settings.clientSecret, refreshToken: undefined, scope: `${settings.graphEndpoint}/.default` },
        { clock: deps.clock, dispatcher: deps.dispatcher, log: log.child({ mailbox: settings.name }) },
      );
      providers.push(tokens);
      const state = new MailboxState(deps.spool.db, settings.name, deps.clock);
      return new GraphInbox({ settings, ingest: new MailboxIngest(ingestDeps, settings, 'graph'), tokens, state, log, metrics: deps.metrics, clock: deps.clock, random: deps.random, dispatcher: deps.dispatcher });
    }
    const tokens =
      settings.auth.kind === 'oauth2'
        ? new OAuthTokenProvider(
            { grant: settings.auth.grant, tokenUrl: settings.auth.tokenUrl, clientId: settings.auth.clientId, clientSecret: settings.auth.clientSecret, refreshToken: settings.auth.refreshToken, scope: settings.auth.scope },
            { clock: deps.clock, dispatcher: deps.dispatcher, log: log.child({ mailbox: settings.name }) },
          )
        : undefined;
    if (tokens) providers.push(tokens);
    return new ImapBridge({ settings, ingest: new MailboxIngest(ingestDeps, settings, 'imap'), tokens, log, metrics: deps.metrics, clock: deps.clock, random: deps.random });
  });
  return {
    bridges,
    start: () => bridges.forEach((b) => b.start()),
    stop: async (graceMs) => {
      await Promise.all(bridges.map((b) => b.stop(graceMs)));
      // A token request still running (an endpoint that hangs; the bridges stopped waiting for it) is given up.
      for (const p of providers) p.close();
    },
    statuses: () => bridges.map((b) => b.status.view()),
  };
}
