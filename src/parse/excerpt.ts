// A short plain-text excerpt of a body for the admin views: one pass over the input, output bounded. Pure.

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ', '#39': "'" };
/** Elements whose content is not text to show. */
const SKIPPED = new Set(['head', 'title', 'script', 'style', 'template']);
/** Elements that start or end a line of text (the others, such as b or span, run on inside a word). */
const BLOCKS = new Set(['address', 'article', 'aside', 'blockquote', 'body', 'br', 'dd', 'div', 'dl', 'dt', 'fieldset', 'figure', 'footer', 'form', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'header', 'hr', 'html', 'img', 'li', 'main', 'nav', 'ol', 'p', 'pre', 'section', 'table', 'tbody', 'td', 'tfoot', 'th', 'thead', 'tr', 'ul']);

/**
 * The first `max` characters of an HTML body's text: tags dropped (and the contents of head, title, script and
 * style), block elements taken as line breaks, a few common entities decoded, white space collapsed. A single pass, so hostile HTML (a megabyte of "<") costs
 * no more than any other; not a rendering, only enough to recognise a message.
 */
export function htmlExcerpt(html: string, max: number): string {
  let out = '';
  let inTag = false;
  let tag = '';
  let skipUntil: string | null = null;
  let space = false;
  for (let i = 0; i < html.length && out.length < max; i++) {
    const c = html[i] as string;
    if (inTag) {
      if (c === '>') {
        inTag = false;
        const name = /^\/?([a-z0-9]+)/i.exec(tag)?.[1]?.toLowerCase() ?? '';
        if (skipUntil) {
          if (tag.startsWith('/') && name === skipUntil) skipUntil = null;
        } else if (!tag.startsWith('/') && SKIPPED.has(name)) skipUntil = name;
        if (BLOCKS.has(name)) space = true;
      } else if (tag.length < 16) tag += c;
      continue;
    }
    if (c === '<') {
      inTag = true;
      tag = '';
      continue;
    }
    if (skipUntil) continue;
    let ch = c;
    if (c === '&') {
      const semi = html.slice(i + 1, i + 7).indexOf(';');
      const decoded = semi > 0 ? ENTITIES[html.slice(i + 1, i + 1 + semi).toLowerCase()] : undefined;
      if (decoded !== undefined) {
        ch = decoded;
        i += semi + 1;
      }
    }
    if (/\s/.test(ch)) {
      space = true;
      continue;
    }
    if (space && out.length > 0) out += ' ';
    space = false;
    out += ch;
  }
  return out.slice(0, max);
}
