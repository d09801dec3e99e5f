// Form bodies for the service formats: multipart/form-data (RFC 7578) and application/x-www-form-urlencoded. Pure.

/** A text field (a Buffer value is sent byte for byte, e.g. a raw message) or a file. */
export type FormField =
  | { name: string; value: string | Buffer }
  | { name: string; filename: string; contentType: string; data: Buffer };

export type RandomBytes = (size: number) => Buffer;

export interface EncodedForm {
  contentType: string;
  body: Buffer;
}

/**
 * WHATWG HTML "multipart/form-data encoding algorithm": names and filenames go out as UTF-8 inside quotes, with
 * LF, CR and '"' percent-encoded. RFC 7578 §4.2 leaves the filename's encoding open and advises against RFC 5987
 * `filename*`, which many parsers ignore; browsers, undici and busboy all read this form.
 */
export function escapeDispositionValue(s: string): string {
  return s.replace(/\n/g, '%0A').replace(/\r/g, '%0D').replace(/"/g, '%22');
}

/** Header values must not carry line breaks; a content type that does is replaced by the generic one. */
function safeContentType(type: string): string {
  return /^[\x21-\x7e][\x20-\x7e]*$/.test(type) ? type : 'application/octet-stream';
}

function partHeader(field: FormField): string {
  let h = `Content-Disposition: form-data; name="${escapeDispositionValue(field.name)}"`;
  if ('filename' in field) {
    h += `; filename="${escapeDispositionValue(field.filename)}"\r\nContent-Type: ${safeContentType(field.contentType)}`;
  }
  // RFC 7578 §4.4: a text field carries no Content-Type (text/plain is implied); it is UTF-8, as browsers send it.
  return h + '\r\n\r\n';
}

function partData(field: FormField): Buffer {
  if ('filename' in field) return field.data;
  return typeof field.value === 'string' ? Buffer.from(field.value, 'utf8') : field.value;
}

/**
 * A boundary that occurs in no part (RFC 2046 §5.1.1: at most 70 characters, from the safe set). Random bytes make
 * a clash all but impossible; the check makes it impossible.
 */
export function chooseBoundary(fields: readonly FormField[], randomBytes: RandomBytes): string {
  for (;;) {
    const boundary = `----mailhook-${randomBytes(18).toString('hex')}`;
    const needle = Buffer.from(boundary, 'latin1');
    if (!fields.some((f) => partData(f).includes(needle))) return boundary;
  }
}

/** RFC 7578 multipart/form-data with the given boundary; CRLF line breaks throughout. */
export function encodeMultipart(fields: readonly FormField[], boundary: string): EncodedForm {
  const chunks: Buffer[] = [];
  for (const f of fields) {
    chunks.push(Buffer.from(`--${boundary}\r\n${partHeader(f)}`, 'utf8'), partData(f), Buffer.from('\r\n', 'latin1'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`, 'latin1'));
  return { contentType: `multipart/form-data; boundary=${boundary}`, body: Buffer.concat(chunks) };
}

export function multipartForm(fields: readonly FormField[], randomBytes: RandomBytes): EncodedForm {
  return encodeMultipart(fields, chooseBoundary(fields, randomBytes));
}

/** application/x-www-form-urlencoded (WHATWG URL): UTF-8, percent-encoded, space as "+". */
export function encodeUrlForm(fields: ReadonlyArray<{ name: string; value: string }>): EncodedForm {
  const params = new URLSearchParams();
  for (const f of fields) params.append(f.name, f.value);
  return { contentType: 'application/x-www-form-urlencoded', body: Buffer.from(params.toString(), 'utf8') };
}
