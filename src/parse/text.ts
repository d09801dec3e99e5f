// Header bytes as text: UTF-8 when valid (RFC 6532), Latin-1 otherwise, so that no byte is lost. Pure.

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Bytes as text: UTF-8 when they are valid UTF-8 (RFC 6532 headers), otherwise Latin-1 so that no byte is lost. */
export function bytesToText(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  }
}
