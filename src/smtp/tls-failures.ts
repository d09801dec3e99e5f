// A failed TLS handshake (STARTTLS or the implicit-TLS listener) sorted into the few kinds an operator acts on differently.

/**
 * What went wrong, as the metric mailhook_smtp_tls_handshakes_total{result} and the log line name it:
 * - protocol_version: the client offered only versions below smtp.tls.min_version (or above what Node knows)
 * - no_shared_cipher: no cipher suite or signature algorithm in common
 * - certificate_rejected: the client refused the certificate mailhook served (unknown CA, expired, wrong name…)
 *   with a TLS alert: one client's trust store, or the certificate itself when many do (a client that checks it
 *   after the handshake, as Node's TLS does, and hangs up is no failure here)
 * - not_tls: the client did not speak TLS (plain text or HTTP on the implicit-TLS port)
 * - timeout: the handshake did not finish within smtp.socket_timeout_ms
 * - closed: the client hung up during the handshake (a port scan, a TCP health check)
 *   (for STARTTLS smtp-server reports neither as an error: the adapter's onStartTlsUnfinished does)
 * - other: anything else OpenSSL reported
 */
export type TlsFailureKind = 'protocol_version' | 'no_shared_cipher' | 'certificate_rejected' | 'not_tls' | 'timeout' | 'closed' | 'other';

/** What a handshake's result is counted as: ok, or one of the failure kinds. */
export type TlsHandshakeResult = 'ok' | TlsFailureKind;

export const TLS_HANDSHAKE_RESULTS: readonly TlsHandshakeResult[] = ['ok', 'protocol_version', 'no_shared_cipher', 'certificate_rejected', 'not_tls', 'timeout', 'closed', 'other'];

/** The error fields smtp-server passes on for a failed handshake (Node's code, OpenSSL's reason, its marks). */
export interface HandshakeError {
  code?: string;
  reason?: string;
  report?: boolean;
  meta?: { stage?: string };
}

/**
 * Whether an error from smtp-server is a failed TLS handshake: smtp-server marks those with meta.stage "connect"
 * (both the STARTTLS upgrade and the implicit-TLS listener), while a session's later errors carry no stage.
 */
export function isHandshakeFailure(err: HandshakeError): boolean {
  return err.meta?.stage === 'connect';
}

/** The kind of a failed handshake, from Node's error code (ERR_SSL_<OpenSSL reason>) and OpenSSL's reason text. */
export function tlsFailureKind(err: HandshakeError): TlsFailureKind {
  const code = err.code ?? '';
  // OpenSSL's reason as Node spells it in the code: "unsupported protocol" -> UNSUPPORTED_PROTOCOL.
  const reason = (err.reason ?? '').toUpperCase().replace(/ /g, '_');
  const either = (pattern: RegExp) => pattern.test(code) || pattern.test(reason);
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'timeout';
  if (either(/UNSUPPORTED_PROTOCOL|ALERT_PROTOCOL_VERSION|VERSION_TOO_LOW|VERSION_TOO_HIGH/)) return 'protocol_version';
  if (either(/NO_SHARED_CIPHER|NO_SHARED_SIGNATURE_ALGORITHMS|NO_SUITABLE_SIGNATURE_ALGORITHM|NO_CIPHERS_AVAILABLE|ALERT_INSUFFICIENT_SECURITY/)) return 'no_shared_cipher';
  if (either(/ALERT_(BAD_CERTIFICATE|CERTIFICATE_[A-Z]+|UNKNOWN_CA|UNSUPPORTED_CERTIFICATE|BAD_CERTIFICATE_STATUS_RESPONSE)/)) return 'certificate_rejected';
  if (either(/WRONG_VERSION_NUMBER|HTTP_REQUEST|HTTPS_PROXY_REQUEST|UNKNOWN_PROTOCOL|PACKET_LENGTH_TOO_LONG|RECORD_LENGTH_MISMATCH/)) return 'not_tls';
  if (err.report === false || code === 'ECONNRESET' || code === 'EPIPE') return 'closed';
  return 'other';
}
