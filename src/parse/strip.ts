// Reply stripping for the services' "stripped" fields: the new text above quotes and signatures, never an empty result.
import EmailReplyParser from 'email-reply-parser';

export interface StrippedText {
  /** the reply without quoted text and signature; the whole text when stripping would leave nothing */
  text: string;
  /** the signature block that was cut off ("" when none, or when the whole text was kept) */
  signature: string;
  /** false when the full text was kept */
  stripped: boolean;
}

/**
 * Above this size the text is returned whole: the parser's regular expressions run on every line, and a reply is
 * short; 64 KB of text is a document, not a reply (crafted 250 KB texts took 0.4 s and more).
 */
export const STRIP_MAX_CHARS = 64 * 1024;

/**
 * The parser's regular expressions are quadratic in the length of a line (without RE2: 16 KB takes ~70 ms, 64 KB
 * seconds), so text with a longer line is returned whole; a real paragraph that long is rare.
 */
export const STRIP_MAX_LINE_CHARS = 4096;

/**
 * Nor text of more lines than this: several of the parser's expressions start at every line with `^\s*` (multiline),
 * which runs over the blank lines after it, so many lines cost the square of their number (20,000 blank lines took
 * 11 s on the event loop, where mailgun and postmark build their payloads). A reply is not that long.
 */
export const STRIP_MAX_LINES = 1000;

function tooManyLines(text: string): boolean {
  let n = 0;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) if (++n > STRIP_MAX_LINES) return true;
  return false;
}

function hasLongLine(text: string): boolean {
  let start = 0;
  for (;;) {
    const nl = text.indexOf('\n', start);
    const end = nl === -1 ? text.length : nl;
    if (end - start > STRIP_MAX_LINE_CHARS) return true;
    if (nl === -1) return false;
    start = nl + 1;
  }
}

/**
 * Strips quoted text and the signature from a plain-text reply with email-reply-parser (Crisp's maintained port of
 * GitHub's parser). When that would leave nothing visible (a message that is all quote, or a parser that takes a
 * real paragraph for a quote header), the full text is returned instead: losing content is worse than keeping a quote.
 */
export function stripReply(text: string): StrippedText {
  const whole: StrippedText = { text, signature: '', stripped: false };
  if (!text.trim() || text.length > STRIP_MAX_CHARS || hasLongLine(text) || tooManyLines(text)) return whole;
  let email;
  try {
    // Lines of nothing but spaces are read as empty: `^\s*` would otherwise run over all of them from every line
    // (999 lines of 250 spaces took 8 s); what is visible does not change.
    email = new EmailReplyParser().read(text.replace(/^[ \t]+$/gm, ''));
  } catch {
    return whole;
  }
  const visible = email.getVisibleText().replace(/^(?:[ \t]*\r?\n)+/, '').trimEnd();
  if (!visible.trim()) return whole;
  const signature = email
    .getFragments()
    .filter((f) => f.isSignature() && !f.isQuoted())
    .map((f) => f.getContent().trim())
    .filter(Boolean)
    .join('\n');
  return { text: visible, signature, stripped: true };
}

/** Classes of the containers Gmail, Yahoo, Thunderbird and ProtonMail put quoted text in. */
const QUOTE_CLASSES = /(?:^|\s)(?:gmail_quote|yahoo_quoted|moz-cite-prefix|protonmail_quote)(?:\s|$)/i;

/** Outlook writes no container: the quote is everything from this marker (and the <hr> after it) to the end of the body. */
const OUTLOOK_MARKER = /\bid\s*=\s*["']?(?:appendonsend|divrplyfwdmsg)\b/;

/**
 * Removes quoted elements (blockquotes and the quote containers Gmail, Yahoo, Thunderbird, ProtonMail and Outlook
 * write) from an HTML reply. Like stripReply, it never returns something with no visible text: then the whole HTML
 * is kept. Every scan here is linear: the HTML comes from strangers.
 */
export function stripQuotedHtml(html: string): string {
  if (html.length > STRIP_MAX_CHARS * 4) return html;
  let out = removeQuoteElements(html);
  const lower = out.toLowerCase();
  const marker = OUTLOOK_MARKER.exec(lower);
  if (marker) {
    const tagStart = lower.lastIndexOf('<', marker.index);
    if (tagStart !== -1 && lower.startsWith('<div', tagStart) && !lower.slice(tagStart, marker.index).includes('>')) {
      const bodyEnd = lower.indexOf('</body', marker.index);
      out = out.slice(0, tagStart) + (bodyEnd === -1 ? '' : out.slice(bodyEnd));
    }
  }
  return hasVisibleText(out) ? out : html;
}

function hasVisibleText(html: string): boolean {
  const lower = html.toLowerCase();
  let text = '';
  let i = 0;
  // Drop <script>/<style>/<head> contents, then tags, then look for anything but white space.
  for (;;) {
    const m = /<(script|style|head)\b/g;
    m.lastIndex = i;
    const open = m.exec(lower);
    if (!open) break;
    text += html.slice(i, open.index);
    const close = lower.indexOf(`</${open[1]}`, open.index);
    if (close === -1) {
      i = html.length;
      break;
    }
    i = close + 2;
  }
  text += html.slice(i);
  return /\S/.test(text.replace(/<[^<>]*>/g, '').replace(/&nbsp;|&#160;|&#xa0;/gi, ' '));
}

/** The element name when this opening tag starts a quote (a blockquote, or a div of a quote class). */
function quoteElement(tag: string): string | undefined {
  const name = /^<([a-z][a-z0-9]*)/i.exec(tag)?.[1]?.toLowerCase();
  if (name === 'blockquote') return name;
  if (name !== 'div') return undefined;
  const cls = /\sclass\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))/i.exec(tag);
  return cls && QUOTE_CLASSES.test(cls[1] ?? cls[2] ?? cls[3] ?? '') ? name : undefined;
}

/** Removes each quote element with everything inside it, counting nested tags of its name. */
function removeQuoteElements(html: string): string {
  let out = '';
  let i = 0;
  let gt = -2; // the first '>' at or after the current '<' (-1: none left), found again only once passed
  for (;;) {
    const lt = html.indexOf('<', i);
    if (lt === -1) break;
    if (gt !== -1 && gt < lt) gt = html.indexOf('>', lt);
    const next = html.indexOf('<', lt + 1);
    const tag = gt === -1 || (next !== -1 && next < gt) ? '' : html.slice(lt, gt + 1);
    const name = tag ? quoteElement(tag) : undefined;
    if (!name) {
      out += html.slice(i, lt + 1);
      i = lt + 1;
      continue;
    }
    out += html.slice(i, lt);
    const end = matchingClose(html, gt + 1, name);
    if (end === -1) return out; // unclosed: the quote runs to the end
    i = end;
  }
  return out + html.slice(i);
}

/** The index just after the close tag that ends the element whose opening tag ends at `from`, or -1. */
function matchingClose(html: string, from: number, name: string): number {
  const tag = new RegExp(`<(/?)${name}\\b[^<>]*>`, 'gi');
  tag.lastIndex = from;
  let depth = 1;
  for (let m = tag.exec(html); m; m = tag.exec(html)) {
    if (m[1]) depth--;
    else if (!m[0].endsWith('/>')) depth++;
    if (depth === 0) return m.index + m[0].length;
  }
  return -1;
}
