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
 * short; a megabyte of text is a document, not a reply.
 */
export const STRIP_MAX_CHARS = 256 * 1024;

/**
 * Strips quoted text and the signature from a plain-text reply with email-reply-parser (Crisp's maintained port of
 * GitHub's parser). When that would leave nothing visible (a message that is all quote, or a parser that takes a
 * real paragraph for a quote header), the full text is returned instead: losing content is worse than keeping a quote.
 */
export function stripReply(text: string): StrippedText {
  const whole: StrippedText = { text, signature: '', stripped: false };
  if (!text.trim() || text.length > STRIP_MAX_CHARS) return whole;
  let email;
  try {
    email = new EmailReplyParser().read(text);
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

/** Opening tags of elements that hold quoted text in the HTML that mail clients write. */
const QUOTE_OPENERS: readonly RegExp[] = [
  /^<blockquote\b/i, // most clients; Gmail adds class="gmail_quote", Apple Mail type="cite"
  /^<div\b[^>]*\bclass\s*=\s*["']?[^"'>]*\b(?:gmail_quote|yahoo_quoted|moz-cite-prefix|protonmail_quote)\b/i,
];

/** Outlook writes no container: the quote is everything from this marker (and the <hr> after it) to the end of the body. */
const OUTLOOK_QUOTE_START = /<div\b[^>]*\bid\s*=\s*["']?(?:appendonsend|divRplyFwdMsg)\b/i;

/**
 * Removes quoted elements (blockquotes and the quote containers Gmail, Yahoo, Thunderbird, ProtonMail and Outlook
 * write) from an HTML reply. Like stripReply, it never returns something with no visible text: then the whole HTML
 * is kept.
 */
export function stripQuotedHtml(html: string): string {
  if (html.length > STRIP_MAX_CHARS * 4) return html;
  let out = html;
  for (const opener of QUOTE_OPENERS) out = removeElements(out, opener);
  const outlook = OUTLOOK_QUOTE_START.exec(out);
  if (outlook) {
    const bodyEnd = out.search(/<\/body\s*>/i);
    out = out.slice(0, outlook.index) + (bodyEnd > outlook.index ? out.slice(bodyEnd) : '');
  }
  const visibleText = out
    .replace(/<(script|style|head)\b[\s\S]*?<\/\1\s*>/gi, '')
    .replace(/<[^>]*>/g, '')
    .replace(/&nbsp;|&#160;|&#xa0;/gi, ' ')
    .trim();
  return visibleText ? out : html;
}

/** Removes each element whose opening tag matches, with everything inside it, counting nested tags of its name. */
function removeElements(html: string, opener: RegExp): string {
  let out = '';
  let i = 0;
  for (;;) {
    const lt = html.indexOf('<', i);
    if (lt === -1) break;
    const rest = html.slice(lt, lt + 512);
    if (!opener.test(rest)) {
      out += html.slice(i, lt + 1);
      i = lt + 1;
      continue;
    }
    const name = (/^<([a-z0-9]+)/i.exec(rest)?.[1] ?? '').toLowerCase();
    const end = matchingClose(html, lt, name);
    out += html.slice(i, lt);
    if (end === -1) return out; // unclosed: the quote runs to the end
    i = end;
  }
  return out + html.slice(i);
}

/** The index just after the close tag that matches the element opened at `start`, or -1. */
function matchingClose(html: string, start: number, name: string): number {
  const tag = new RegExp(`<(/?)${name}\\b[^>]*?(/?)>`, 'gi');
  tag.lastIndex = start;
  let depth = 0;
  for (let m = tag.exec(html); m; m = tag.exec(html)) {
    if (m[1]) depth--;
    else if (!m[2]) depth++;
    if (depth === 0) return m.index + m[0].length;
  }
  return -1;
}
