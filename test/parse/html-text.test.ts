// The HTML-to-text rendering the service formats use for HTML-only mail: text out, and a bound on nesting.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { htmlNestsDeeperThan, MAX_HTML_DEPTH, renderHtmlAsText } from '../../src/parse/html-text.js';

test('renders paragraphs, links and quotes as text', () => {
  const text = renderHtmlAsText('<html><head><style>p{}</style></head><body><p>Hello <b>there</b>.</p><blockquote><p>quoted</p></blockquote></body></html>');
  assert.equal(text, 'Hello there.\n\n> quoted', 'no style sheet text; the quote marked as a reply quote');
});

test('nesting: counted in one pass; void elements and elements a parser closes by itself add no level', () => {
  assert.equal(htmlNestsDeeperThan('<div>'.repeat(3) + '</div>'.repeat(3), 3), false);
  assert.equal(htmlNestsDeeperThan('<div>'.repeat(4), 3), true);
  assert.equal(htmlNestsDeeperThan('<div><span></span></div>'.repeat(10), 2), false, 'siblings are not nested');
  assert.equal(htmlNestsDeeperThan('<p>a<br><img src=x><li>b'.repeat(100), 3), false);
  assert.equal(htmlNestsDeeperThan('<div><x-y/>'.repeat(2) + '<hr/>', 2), false, 'self-closing tags');
});

test('HTML nested deeper than the bound is not rendered (html-to-text took 40 s for 200,000 levels); just below it is', () => {
  assert.equal(renderHtmlAsText('<div>'.repeat(200_000) + 'deep' + '</div>'.repeat(200_000)), '');
  const depth = MAX_HTML_DEPTH - 1;
  assert.equal(renderHtmlAsText('<span>'.repeat(depth) + 'fits' + '</span>'.repeat(depth)), 'fits');
});
