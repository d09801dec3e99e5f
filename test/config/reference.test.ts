import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { configReferenceMarkdown } from '../../src/config/reference.js';

test('docs/configuration.md is the reference generated from the schema (regenerate: mailhook config-reference)', () => {
  const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
  const generated = configReferenceMarkdown();
  assert.ok(generated.includes('| `smtp.max_message_bytes` | integer | `26214400` |'), 'reference lists keys with defaults');
  assert.ok(generated.includes('`routes[].webhook.url`'), 'reference lists route keys');
  assert.equal(doc, generated, 'docs/configuration.md is out of date: run `node bin/mailhook config-reference > docs/configuration.md`');
});
