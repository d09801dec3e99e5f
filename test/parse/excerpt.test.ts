// htmlExcerpt: the admin views' short text of an HTML-only message, in one pass over the input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { htmlExcerpt } from '../../src/parse/excerpt.js';

test('tags dropped, head, title, script and style contents skipped, common entities decoded, white space collapsed', () => {
  const html = '<html><head><title>ACME Newsletter</title><style>p { color: red }</style><script>var x = "<b>";</script></head>\n<body><h1>Order&nbsp;#42</h1>\n\n<p>Fish &amp; chips &lt;3 &#39;now&#39; &unknown; <a href="http://x.test/">track it</a></p></body></html>';
  assert.equal(htmlExcerpt(html, 2000), "Order #42 Fish & chips <3 'now' &unknown; track it");
});

test('inline elements run on inside a word; block elements and br separate words', () => {
  assert.equal(htmlExcerpt('H<b>e</b>llo wor<span>ld</span><br>next<div>line</div><td>a</td><td>b</td>', 100), 'Hello world next line a b');
});

test('bounded: at most max characters, and an unclosed tag or a lone ampersand ends nothing', () => {
  assert.equal(htmlExcerpt('<p>' + 'word '.repeat(1000) + '</p>', 12), 'word word wo');
  assert.equal(htmlExcerpt('a & b &amp c <unclosed', 100), 'a & b &amp c');
  assert.equal(htmlExcerpt('<SCRIPT>hidden</SCRIPT>shown', 100), 'shown');
  assert.equal(htmlExcerpt('', 100), '');
});

test('hostile input is read once: a megabyte of "<", of "&", of unclosed script', () => {
  // Correctness on inputs that make backtracking scanners quadratic; each is a single pass here.
  assert.equal(htmlExcerpt('<'.repeat(1_000_000), 100), '');
  assert.equal(htmlExcerpt('&'.repeat(1_000_000), 5), '&&&&&');
  assert.equal(htmlExcerpt('<script>'.repeat(100_000) + 'x', 10), '');
});
