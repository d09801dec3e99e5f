// The smtp.* and routes[] keys of the SMTP edge: defaults, and start-up problems named by key path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../../src/core/errors.js';
import { configYaml, parseTestConfig, tempDir } from '../helpers/app.js';

const ROUTES = '\n  - name: sink\n    addresses: ["user@in.test"]\n    sink: true\n';

function problems(smtpExtra: string, routes = ROUTES): string[] {
  const dir = tempDir();
  const yaml = configYaml({ dir, routes }).replace('  greeting_delay_ms: 0\n', `  greeting_delay_ms: 0\n${smtpExtra}\n`);
  try {
    parseTestConfig(yaml, dir);
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems.map((p) => `${p.path}: ${p.message}`);
  }
}

test('defaults: Postfix-like limits, bare LF normalized, no TLS, no PROXY, sender authentication off', () => {
  const dir = tempDir();
  const c = parseTestConfig(configYaml({ dir, routes: ROUTES }), dir);
  assert.equal(c.smtp.bare_lf, 'normalize');
  assert.equal(c.smtp.proxy_protocol, false);
  assert.equal(c.smtp.tls, undefined);
  assert.equal(c.smtp.sender_auth.enabled, false);
  assert.deepEqual(c.smtp.limits, {
    max_header_bytes: 1_048_576,
    max_received_headers: 100,
    max_mime_parts: 1000,
    max_mime_depth: 100,
    max_connections_per_ip: 50,
    max_messages_per_ip: 0,
    max_recipients_per_ip: 0,
    rate_window_ms: 60_000,
    exempt: ['127.0.0.0/8', '::1'],
    ipv6_prefix_length: 84,
    max_errors: 20,
    min_data_rate: 500,
    max_session_ms: 3_600_000,
    min_free_disk_bytes: 104_857_600,
  });
});

test('problems name the key and the fix', () => {
  assert.deepEqual(problems('  tls:\n    key_file: nope.key\n    cert_file: nope.crt'), [
    "smtp.tls.key_file: cannot read nope.key (ENOENT); check the path and that mailhook's user may read it",
    "smtp.tls.cert_file: cannot read nope.crt (ENOENT); check the path and that mailhook's user may read it",
  ]);
  assert.deepEqual(problems('  limits:\n    exempt: ["10.0.0.0/33"]'), ['smtp.limits.exempt[0]: must be an IP address or CIDR range, e.g. "192.0.2.10" or "10.0.0.0/8"']);
  assert.deepEqual(problems('  ip_literals:\n    "mx.example.com": example.com'), ['smtp.ip_literals.mx.example.com: the key must be an IP address, e.g. "192.0.2.10"']);
  assert.deepEqual(problems('  limits:\n    max_mime_parts: 5000'), ['smtp.limits.max_mime_parts: at most 1000: mailparser refuses a message of more MIME parts, so it could never be parsed']);
  assert.deepEqual(problems('  limits:\n    max_header_bytes: 2000000'), ['smtp.limits.max_header_bytes: at most 1048576: mailparser refuses a larger header section, so the message could never be parsed']);
  assert.deepEqual(problems('  bare_lf: keep'), ['smtp.bare_lf: Invalid option: expected one of "normalize"|"reject"']);
  assert.deepEqual(problems('  postmaster_route: ops'), ['smtp.postmaster_route: no route is named "ops"; name one of "sink"']);
  assert.deepEqual(problems('', `${ROUTES}    dmarc_reject: true\n`), ['routes[0].dmarc_reject: needs DMARC results: set smtp.sender_auth.enabled: true (or remove dmarc_reject)']);
  assert.deepEqual(problems('', `${ROUTES}    verify:\n      url: ftp://x\n`), ['routes[0].verify.url: must be an http:// or https:// URL']);
});

test('smtp.xforward_hosts: off by default; a list of relay addresses, never every peer (true, "*" or a range), each refusal naming the key and the fix', () => {
  const dir = tempDir();
  assert.deepEqual(parseTestConfig(configYaml({ dir, routes: ROUTES }), dir).smtp.xforward_hosts, []);
  const c = parseTestConfig(configYaml({ dir, routes: ROUTES }).replace('  greeting_delay_ms: 0\n', '  greeting_delay_ms: 0\n  xforward_hosts: [" 127.0.0.1 ", "::1", "10.0.0.5"]\n'), dir);
  assert.deepEqual(c.smtp.xforward_hosts, ['127.0.0.1', '::1', '10.0.0.5']);
  const everyPeer = 'trusting every peer is not offered: any client could then name any address as its own and pass SPF';
  assert.deepEqual(problems('  xforward_hosts: true'), [`smtp.xforward_hosts: must be a list of the relays' IP addresses, e.g. ["127.0.0.1"]; true is not accepted: ${everyPeer}`]);
  assert.deepEqual(problems('  xforward_hosts: ["127.0.0.1", "*", "10.0.0.0/8", "relay.example.com"]'), [
    `smtp.xforward_hosts[1]: must be one relay's IP address, e.g. "127.0.0.1": ${everyPeer}`,
    'smtp.xforward_hosts[2]: must be one relay\'s IP address, e.g. "127.0.0.1", not a range: list each relay (any host in a range could name any address as its own and pass SPF)',
    'smtp.xforward_hosts[3]: must be a relay\'s IP address, e.g. "127.0.0.1" (not a host name)',
  ]);
});

test('routes[].verify resolves with its defaults', () => {
  const dir = tempDir();
  const c = parseTestConfig(configYaml({ dir, routes: `${ROUTES}    verify:\n      url: http://127.0.0.1:9/verify\n` }), dir);
  assert.deepEqual(c.routes[0]?.verify, { url: 'http://127.0.0.1:9/verify', timeoutMs: 2000, cacheTtlMs: 300_000 });
  assert.equal(c.routes[0]?.dmarcReject, false);
});
