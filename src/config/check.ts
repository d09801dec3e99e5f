// What check-config tries beyond the schema, as serve would (the TLS key and certificate make a pair, the spool folder is writable), and the warnings serve logs at start-up.
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { diskSize, type DiskSize } from '../spool/disk.js';
import { dirname } from 'node:path';
import type { ConfigProblem } from '../core/errors.js';
import { isErrnoException } from '../core/errors.js';
import type { Config } from './load.js';
import { certificateWarnings, tlsIdentityProblem } from '../smtp/tls.js';

/**
 * Settings that work but are probably a mistake, logged at start-up (warn) and printed by check-config; not
 * problems: what the file's text showed (Config.fileWarnings: a secret cut short by a comment), a secret variable
 * in the environment that names no route or mailbox (Config.envWarnings), sender authentication behind a local
 * relay that does not forward its client (XFORWARD, smtp.xforward_hosts: else SPF judges the relay's address),
 * a route refusing DMARC failures behind such a relay (the relay bounces what mailhook refuses: backscatter),
 * and a plain IMAP connection (ssl: false, start_tls: false), which sends the password or token in clear: on
 * loopback that is a local server's choice, elsewhere worth a warning.
 */
export function configWarnings(config: Config): Array<{ path: string; message: string }> {
  const warnings: Array<{ path: string; message: string }> = [...(config.fileWarnings ?? []), ...(config.envWarnings ?? [])];
  const smtp = config.smtp;
  const listeners = [smtp.listen, ...(smtp.tls?.implicit_listen ? [smtp.tls.implicit_listen] : [])];
  // A relay trusted for XFORWARD (smtp.xforward_hosts) names the client itself, as a PROXY balancer does; on a
  // loopback-only listener that relay connects from a loopback address of the listener's family (::1 listed for a
  // relay reaching 127.0.0.1 is never offered XFORWARD).
  const forwarded = smtp.xforward_hosts.some((h) => listeners.some((l) => loopbackPeerOf(l.host, h)));
  if (smtp.sender_auth.enabled && smtp.proxy_protocol === false && !forwarded && listeners.every((l) => isLoopback(l.host))) {
    warnings.push({ path: 'smtp.sender_auth.enabled', message: `SMTP listens on loopback only (${listeners.map((l) => `${l.host}:${l.port}`).join(', ')}), so its client is a relay on this machine (Postfix): SPF would be checked against the relay's address, not the sender's server. Have the relay pass the client with XFORWARD: list its address in smtp.xforward_hosts (e.g. ["127.0.0.1"]) and have Postfix send it to mailhook (smtp_send_xforward_command=yes on mailhook's transport, deploy/postfix/master.cf); a load balancer on this machine can pass the client's address with smtp.proxy_protocol` });
  }
  // Behind a relay the refusal comes after the relay accepted the message, so the relay bounces it, to an envelope
  // sender that for a DMARC failure is usually forged: backscatter (deploy/postfix/README.md). A relay is in front
  // when SMTP listens on loopback only, speaks LMTP (only an MTA does), or takes XFORWARD.
  const relay =
    smtp.lmtp ? 'SMTP speaks LMTP, so its client is a relay (an MTA)'
    : smtp.xforward_hosts.length > 0 ? 'smtp.xforward_hosts is set, so a relay (an MTA) forwards its clients\' mail'
    : smtp.proxy_protocol === false && listeners.every((l) => isLoopback(l.host)) ? 'SMTP listens on loopback only, so its client is a relay on this machine (Postfix)'
    : undefined;
  if (relay) {
    config.routes.forEach((r, i) => {
      if (r.dmarcReject) warnings.push({ path: `routes[${i}].dmarc_reject`, message: `${relay}, which has accepted the message when mailhook refuses it: the relay bounces it to the sender, for a DMARC failure usually forged (backscatter). Behind a relay remove dmarc_reject (the payload's authentication still says dmarc=fail, for the application to decide) and refuse in the relay instead (OpenDMARC), while the client is still connected` });
    });
  }
  config.imap.forEach((m, i) => {
    if (m.method !== 'imap' || m.ssl || m.startTls || isLoopback(m.host)) return;
    warnings.push({ path: `imap[${i}]`, message: `ssl: false and start_tls: false: mailbox "${m.name}" sends its ${m.auth.kind === 'password' ? 'password' : 'OAuth token'} to ${m.host}:${m.port} unencrypted; set start_tls: true (port 143) or ssl: true (port 993)` });
  });
  return warnings;
}

/**
 * A spool made before mailhook created it private (database 0600, message folder 0700) may be readable by other users, and it
 * holds message bodies: said by path and mode, with the fix. Nothing is changed (an operator may have a reason).
 */
export function spoolModeWarnings(path: string): Array<{ path: string; message: string }> {
  const warnings: Array<{ path: string; message: string }> = [];
  // The folder holding them is left out: a 0755 state folder (systemd's StateDirectory, a container's volume) shows
  // only file names.
  for (const [file, fix] of [[path, "600 it and the database's -wal and -shm files"], [`${path}.blobs`, '700 it']] as const) {
    let mode: number;
    try {
      mode = statSync(file).mode & 0o777;
    } catch {
      continue; // not made yet: mailhook creates it private
    }
    if ((mode & 0o077) !== 0) warnings.push({ path: 'spool.path', message: `${file} is readable by other users (mode ${mode.toString(8).padStart(4, '0')}) and holds message bodies; chmod ${fix}` });
  }
  return warnings;
}

/**
 * smtp.limits.min_free_disk_bytes against the spool's file system: more than it can ever have free means every MAIL
 * gets 452 4.3.1 for good; less free than it now means 452 until room is made. Nothing is refused (a volume can
 * grow, files can be deleted), but a mistyped size should not be found out from senders' queues.
 */
export function spoolDiskWarnings(config: Config, size: (dir: string) => DiskSize = diskSize): Array<{ path: string; message: string }> {
  const min = config.smtp.limits.min_free_disk_bytes;
  if (min === 0) return [];
  let dir = dirname(config.spool.path);
  let disk: DiskSize | undefined;
  for (;;) {
    try {
      disk = size(dir);
      break;
    } catch {
      const up = dirname(dir); // not made yet: the file system it will be made on
      if (up === dir) return [];
      dir = up;
    }
  }
  const key = 'smtp.limits.min_free_disk_bytes';
  if (min >= disk.usable) return [{ path: key, message: `${bytes(min)} is more than the spool's file system (${dir}) holds, ${bytes(disk.usable)}: every MAIL would get 452 4.3.1 for good; lower it (the default is 100 MiB) or give the spool a larger volume` }];
  if (disk.free < min) return [{ path: key, message: `the spool's file system (${dir}) has ${bytes(disk.free)} free, less than ${bytes(min)}: every MAIL gets 452 4.3.1 until room is made` }];
  return [];
}

function bytes(n: number): string {
  return n >= 1024 * 1024 ? `${n} bytes (${(n / 1024 / 1024).toFixed(1)} MiB)` : `${n} bytes`;
}

/** Whether a client at `peer` could connect to a loopback listener on `host` (127.x, ::1, localhost). */
function loopbackPeerOf(host: string, peer: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  // An IPv4 peer in IPv6 form (::ffff:127.0.0.1) is the IPv4 peer, as smtp-server compares them.
  const p = peer.toLowerCase().replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
  if (h === 'localhost') return isLoopback(p);
  if (h === '::1') return p === '::1';
  return /^127\./.test(h) && /^127\./.test(p);
}

function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

/** What serve warns of when it loads the TLS certificate (see certificateWarnings), for check-config. */
export function tlsWarnings(config: Config, nowMs: number): Array<{ path: string; message: string }> {
  const material = tlsFiles(config);
  return material ? certificateWarnings(material, config.smtp.hostname, nowMs).map((message) => ({ path: 'smtp.tls.cert_file', message })) : [];
}

/** smtp.tls's key and certificate as serve reads them; undefined without TLS or when one cannot be read (the loader reports that). */
function tlsFiles(config: Config): { key: Buffer; cert: Buffer } | undefined {
  const tls = config.smtp.tls;
  if (!tls) return undefined;
  try {
    return { key: readFileSync(tls.key_file), cert: readFileSync(tls.cert_file) };
  } catch {
    return undefined;
  }
}

/** Problems serve would meet at start-up that a loaded configuration does not show; nothing is created or changed. */
export function checkResources(config: Config): ConfigProblem[] {
  return [...checkTls(config), ...checkSpool(config.spool.path)];
}

function checkTls(config: Config): ConfigProblem[] {
  const material = tlsFiles(config);
  if (!material) return [];
  // The check serve's start makes (loadTlsMaterial), as a problem instead of an error.
  const problem = tlsIdentityProblem(material);
  return problem ? [{ path: `smtp.tls.${problem.key}`, message: problem.message }] : [];
}

/** The spool database's folder must exist and be writable, or be creatable: its nearest existing ancestor a writable folder. */
function checkSpool(path: string): ConfigProblem[] {
  const problem = (message: string): ConfigProblem[] => [{ path: 'spool.path', message }];
  try {
    if (statSync(path).isDirectory()) return problem(`${path} is a folder; give the database file inside it, e.g. ${path.replace(/\/+$/, '')}/spool.db`);
  } catch {
    // not there yet: created at start-up
  }
  let dir = dirname(path);
  for (;;) {
    let isDir: boolean | undefined;
    try {
      isDir = statSync(dir).isDirectory();
    } catch (err) {
      if (!(isErrnoException(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR'))) {
        return problem(`cannot create the folder ${dirname(path)}: ${isErrnoException(err) ? err.code : 'unreadable'} at ${dir}; check spool.path`);
      }
    }
    if (isDir === false) return problem(`cannot create the folder ${dirname(path)}: ${dir} is a file, not a folder; check spool.path`);
    if (isDir === true) {
      try {
        accessSync(dir, constants.W_OK | constants.X_OK);
      } catch {
        return problem(`${dir} is not writable by this user, so the spool (${path}) cannot be ${dir === dirname(path) ? 'written' : 'created'} there; give mailhook's user write access, or run check-config as that user (sudo -u mailhook)`);
      }
      return [];
    }
    const up = dirname(dir);
    if (up === dir) return [];
    dir = up;
  }
}
