// The dashboard end to end in real headless Chromium: log in, see mail that just came in over SMTP, replay a dead letter,
// retry pending deliveries now.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, until, type TestApp } from '../helpers/app.js';
import { ADMIN_TOKEN, call, startAdminApp } from '../admin/helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
/** Where the last screenshot goes, for a person to look at. */
export const SCREENSHOT_DIR = process.env.MAILHOOK_SCREENSHOT_DIR;

const missing = !existsSync(CHROMIUM);
if (missing && process.env.CI === 'true') {
  test('chromium is installed', () => assert.fail(`${CHROMIUM} is missing; .ci/run installs the Debian chromium package`));
}

describe('dashboard in headless Chromium', { skip: missing ? `${CHROMIUM} is not installed (apt-get install chromium); the dashboard test needs it` : false }, () => {
  let app: TestApp;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  const ok = new Consumer();
  const flaky = new Consumer();
  /** Down for maintenance: its 503 asks for an hour's wait (Retry-After), so deliveries sit pending until retried now. */
  const later = new Consumer();
  const down = () => ({ status: 503, headers: { 'retry-after': '3600' }, body: 'down for maintenance' });
  /** Subjects of the messages with a delivery still waiting out that hour (read through the admin API). */
  const waiting = async (): Promise<string[]> => {
    const r = await call(app, 'GET', '/api/messages?status=pending');
    return r.body.messages.filter((m: any) => m.deliveries.some((d: any) => d.status === 'pending' && Date.parse(d.next_attempt_at) > Date.now() + 60_000)).map((m: any) => m.subject).sort();
  };
  const pageErrors: string[] = [];

  before(async () => {
    await ok.start();
    await flaky.start();
    await later.start();
    flaky.respond = () => ({ status: 410, body: 'gone for now' });
    app = await startAdminApp({
      routes: `
  - name: tickets
    addresses: ["support@in.test"]
    webhook: { url: "${ok.url}", secret: "${SECRET}" }
  - name: billing
    addresses: ["billing@in.test"]
    webhook: { url: "${flaky.url}", secret: "${SECRET}" }
  - name: orders
    addresses: ["orders@in.test"]
    webhook: { url: "${later.url}", secret: "${SECRET}" }
  - name: returns
    addresses: ["returns@in.test"]
    webhook: { url: "${later.url}", secret: "${SECRET}" }
  - name: archive
    addresses: ["*@archive.test"]
    sink: true
`,
    });
    profile = mkdtempSync(join(tmpdir(), 'mailhook-chromium-'));
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1280, height: 800 } });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (msg) => {
      if (msg.type() === 'error') pageErrors.push(msg.text());
    });
  });
  after(async () => {
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await app?.close();
    await ok.stop();
    await flaky.stop();
    await later.stop();
  });

  test('log in with the token; a wrong token is refused', async () => {
    await page.goto(app.httpUrl);
    await page.locator('#token').fill('not-the-right-token');
    await page.locator('button[type=submit]').click();
    await page.locator('#error').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#error').textContent(), 'the admin token is wrong');
    await page.locator('#token').fill(ADMIN_TOKEN);
    await page.locator('button[type=submit]').click();
    await page.locator('h1', { hasText: 'Messages' }).waitFor();
    assert.equal(await page.title(), 'mailhook');
  });

  test('a message just sent over SMTP shows up with its delivery status and detail', async () => {
    await sendMail(app.smtpPort, { from: 'Customer <customer@example.test>', to: 'support@in.test', subject: 'Printer on fire', text: 'Please help, the printer is on fire.' });
    await ok.waitFor(1);
    await until(() => app.spool.jobs.counts().delivered === 1, 5000, 'the delivery to be recorded');
    await page.locator('#refresh').click();
    const row = page.locator('tbody tr', { hasText: 'Printer on fire' });
    await row.waitFor();
    assert.match((await row.textContent()) ?? '', /customer@example\.test.*support@in\.test.*Printer on fire.*tickets: delivered/);
    await row.click();
    await page.locator('.delivery[data-route=tickets]').waitFor();
    const detail = (await page.locator('main').textContent()) ?? '';
    assert.match(detail, /Envelope fromcustomer@example\.test/);
    assert.match(detail, /Header FromCustomer <customer@example\.test>/);
    assert.match(detail, /Please help, the printer is on fire\./);
    const attempt = page.locator('.delivery[data-route=tickets] tbody tr').first();
    assert.match((await attempt.textContent()) ?? '', /^1.*200\d+ msdelivered$/);

    // A delivered delivery can be sent again from here.
    await page.locator('.delivery[data-route=tickets] .delivery-head button', { hasText: 'Send again' }).click();
    await page.locator('#toast', { hasText: 'Replayed 1 delivery' }).waitFor();
    await ok.waitFor(2);
    await page.locator('.delivery[data-route=tickets] .delivery-head', { hasText: 'replayed 1×' }).waitFor();

    // A sink route's delivery has nothing to be sent again to: no button.
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'keep@archive.test', subject: 'Kept only', text: 'x' });
    await page.locator('nav a', { hasText: 'Messages' }).click();
    await page.locator('#refresh').click();
    await page.locator('tbody tr', { hasText: 'Kept only' }).click();
    await page.locator('.delivery[data-route=archive] .delivery-head .chip[data-status=delivered]').waitFor();
    assert.equal(await page.locator('.delivery[data-route=archive] .delivery-head button').count(), 0);
  });

  test('a dead-lettered delivery is listed and replayed from the dead-letter page, then seen delivered', async () => {
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'billing@in.test', subject: 'Invoice 1234', text: 'Amount due: 10 EUR' });
    await flaky.waitFor(1);
    await until(() => app.spool.jobs.counts().dead === 1, 5000, 'the delivery to be dead-lettered');
    await page.locator('nav a', { hasText: 'Dead letters' }).click();
    const row = page.locator('tbody tr', { hasText: 'Invoice 1234' });
    await row.waitFor();
    assert.match((await row.textContent()) ?? '', /billing@in\.test.*billing.*410.*gone for now/);
    assert.equal(await page.locator('#replay-all').textContent(), 'Replay all 1 dead-lettered');

    flaky.respond = () => ({ status: 202 });
    await row.locator('button.replay').click();
    await page.locator('#toast', { hasText: 'Replayed 1 delivery' }).waitFor();
    await flaky.waitFor(2);
    await page.locator('.empty', { hasText: 'No dead-lettered deliveries' }).waitFor();

    await page.locator('nav a', { hasText: 'Messages' }).click();
    await page.locator('tbody tr', { hasText: 'Invoice 1234' }).click();
    // The detail view refreshes itself while a delivery is pending; wait for the final state.
    await page.locator('.delivery[data-route=billing] .delivery-head .chip[data-status=delivered]').waitFor();
    const attempts = await page.locator('.delivery[data-route=billing] tbody tr').allTextContents();
    assert.equal(attempts.length, 2);
    assert.match(attempts[0]!, /410.*dead.*gone for now/);
    assert.match(attempts[1]!, /202.*delivered/);
    assert.match((await page.locator('.delivery[data-route=billing] .delivery-head').textContent()) ?? '', /1 attempt, replayed 1×/);
  });

  test('a dead letter of a route no longer configured offers no replay: the dead-letter and message pages say why instead of "its state changed"', async () => {
    // A spool from before the route was removed (a replay would be dead-lettered again at once: the API leaves it out).
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'support@in.test', subject: 'Old route 9', text: 'x' });
    await until(() => app.spool.queries.listMessages({}, { limit: 10 }).messages.some((m) => m.subject === 'Old route 9' && m.status === 'delivered'), 5000, 'the message delivered');
    const row0 = app.spool.queries.listMessages({}, { limit: 10 }).messages.find((m) => m.subject === 'Old route 9')!;
    const id = row0.deliveries[0]!.id;
    app.spool.db.prepare(`UPDATE deliveries SET route = 'retired', status = 'dead', last_error = 'route removed' WHERE id = ?`).run(id);
    try {
      await page.locator('nav a', { hasText: 'Dead letters' }).click();
      const row = page.locator('tbody tr', { hasText: 'Old route 9' });
      await row.waitFor();
      assert.equal(await row.locator('button').count(), 0, 'no Replay button');
      assert.match((await row.textContent()) ?? '', /route no longer configured/);
      assert.equal(await page.locator('#replay-all').textContent(), 'Replay all 0 dead-lettered', 'the bulk replay counts what it would replay');
      await page.locator('#dead-route').selectOption('retired');
      await page.locator('#replay-all', { hasText: 'of retired' }).waitFor();
      assert.equal(await page.locator('#replay-all').isDisabled(), true);
      await page.locator('#dead-route').selectOption('');
      // Its message's page says the same where the Replay button would be.
      await page.locator('tbody tr', { hasText: 'Old route 9' }).locator('a').click();
      const head = page.locator('.delivery[data-route=retired] .delivery-head');
      await head.waitFor();
      assert.equal(await head.locator('button').count(), 0, 'no Replay button on the message page');
      const why = head.locator('span', { hasText: 'route no longer configured' });
      assert.equal(await why.getAttribute('title'), 'route no longer configured: add it back (or a route with renamed_from) and restart mailhook to replay');
      // Delivered, it offers no "Send again" either (the API would replay 0 of it too).
      app.spool.db.prepare(`UPDATE deliveries SET status = 'delivered' WHERE id = ?`).run(id);
      await page.reload();
      await head.locator('.chip[data-status=delivered]').waitFor();
      assert.equal(await head.locator('button').count(), 0, 'no Send again button');
      assert.match((await head.textContent()) ?? '', /route no longer configured/);
    } finally {
      app.spool.db.prepare(`UPDATE deliveries SET route = 'tickets', status = 'delivered', last_error = NULL WHERE id = ?`).run(id);
    }
  });

  test('a Replay clicked on a page gone stale says why nothing was replayed', async () => {
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'support@in.test', subject: 'Stale page 3', text: 'x' });
    const message = () => app.spool.queries.listMessages({}, { limit: 20 }).messages.find((m) => m.subject === 'Stale page 3');
    await until(() => message()?.status === 'delivered', 5000, 'the message delivered');
    const id = message()!.deliveries[0]!.id;
    app.spool.db.prepare(`UPDATE deliveries SET status = 'dead', last_error = 'consumer gone' WHERE id = ?`).run(id);
    try {
      await page.goto(`${page.url().split('#')[0]}#/messages/${message()!.id}`);
      const replay = page.locator('.delivery[data-route=tickets] .delivery-head button', { hasText: 'Replay' });
      await replay.waitFor();
      // Sent again from elsewhere (another operator, the CLI) while this page still shows it dead-lettered.
      app.spool.db.prepare(`UPDATE deliveries SET status = 'delivered', last_error = NULL WHERE id = ?`).run(id);
      await replay.click();
      await page.locator('#toast', { hasText: 'Nothing replayed: delivered: send it again with status delivered' }).waitFor();
      await page.locator('.delivery[data-route=tickets] .delivery-head button', { hasText: 'Send again' }).waitFor();
    } finally {
      app.spool.db.prepare(`UPDATE deliveries SET status = 'delivered', last_error = NULL WHERE id = ?`).run(id);
    }
  });

  test('a pending delivery waiting out a Retry-After is retried now from its detail view, attempt count kept', async () => {
    later.respond = down;
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'orders@in.test', subject: 'Order 77', text: 'One printer, fireproof' });
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'returns@in.test', subject: 'Return 5', text: 'x' });
    await later.waitFor(2);
    await until(() => app.spool.jobs.counts().pending === 2, 5000, 'both deliveries to wait out the Retry-After');
    await page.locator('nav a', { hasText: 'Messages' }).click();
    await page.locator('#refresh').click();
    await page.locator('tbody tr', { hasText: 'Order 77' }).click();
    const head = page.locator('.delivery[data-route=orders] .delivery-head');
    await head.locator('.chip[data-status=pending]').waitFor();
    assert.match((await head.textContent()) ?? '', /^orderspending1 attemptnext try .*Retry now$/);

    later.respond = () => ({ status: 200, body: 'ok' });
    await head.locator('button.retry').click();
    await page.locator('#toast', { hasText: 'Retrying 1 delivery now' }).waitFor();
    assert.deepEqual(await waiting(), ['Return 5']); // only this delivery: the other one keeps its wait
    const got = await later.waitFor(3);
    assert.match(got[2]!.body.toString(), /Order 77/);
    await head.locator('.chip[data-status=delivered]').waitFor();
    assert.equal(await head.locator('button.retry').count(), 0);
    assert.match((await head.textContent()) ?? '', /^ordersdelivered2 attemptsSend again$/); // counter kept, not a replay
    const attempts = await page.locator('.delivery[data-route=orders] tbody tr').allTextContents();
    assert.equal(attempts.length, 2);
    assert.match(attempts[0]!, /^1.*503.*retry/);
    assert.match(attempts[1]!, /^2.*200.*delivered/);
  });

  test('a message page refreshing itself while a delivery is pending asks for the routes once, not at every refresh', async () => {
    later.respond = down;
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: ['orders@in.test', 'support@in.test'], subject: 'Shipment 12', text: 'x' });
    const message = () => app.spool.queries.listMessages({}, { limit: 20 }).messages.find((m) => m.subject === 'Shipment 12');
    await until(() => message()?.deliveries.some((d) => d.route === 'orders' && d.status === 'pending' && d.attempts === 1) === true && message()?.deliveries.some((d) => d.route === 'tickets' && d.status === 'delivered') === true, 5000, 'one delivery pending, one delivered');
    const asked = { routes: 0, message: 0 };
    const count = (r: { url(): string }): void => {
      const path = new URL(r.url()).pathname;
      if (path === '/api/routes') asked.routes++;
      else if (path.startsWith('/api/messages/')) asked.message++;
    };
    page.on('request', count);
    try {
      await page.goto(`${page.url().split('#')[0]}#/messages/${message()!.id}`);
      await page.locator('.delivery[data-route=orders] .delivery-head .chip[data-status=pending]').waitFor();
      // The delivered one offers "Send again": a button that depends on the routes (a removed route gets none).
      await page.locator('.delivery[data-route=tickets] button', { hasText: 'Send again' }).waitFor();
      await until(() => asked.message >= 4, 15_000, 'three refreshes of the message page');
      assert.equal(asked.routes, 1, `routes asked ${asked.routes} times over ${asked.message} renders`);
    } finally {
      page.off('request', count);
      later.respond = () => ({ status: 200, body: 'ok' });
      const orders = message()!.deliveries.find((d) => d.route === 'orders')!.id;
      await call(app, 'POST', '/api/deliveries/retry', { body: { ids: [orders] } });
      await until(() => app.spool.getDelivery(orders)?.status === 'delivered', 5000, 'the pending delivery sent');
    }
  });

  test('a route\'s pending deliveries are retried now from the routes view', async () => {
    const before = later.requests.length;
    // Both first attempts are answered once both are in flight, so each gets one (whatever a Retry-After does to new attempts).
    const bothIn = later.received(before + 2);
    later.respond = () => bothIn.then(down);
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'orders@in.test', subject: 'Order 78', text: 'x' });
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'orders@in.test', subject: 'Order 79', text: 'x' });
    await later.waitFor(before + 2);
    await until(() => app.spool.jobs.counts().pending === 3, 5000, 'both deliveries to wait out the Retry-After'); // and Return 5
    // New mail for the paused route waits too: due, never tried, held only by the pause.
    await sendMail(app.smtpPort, { from: 'shop@example.test', to: 'orders@in.test', subject: 'Order 80', text: 'x' });
    await page.locator('nav a', { hasText: 'Routes' }).click();
    const button = page.locator('tr[data-route=orders] button.retry');
    await button.waitFor();
    assert.equal(await button.textContent(), 'Retry 3 pending now');
    // Its consumer asked to wait: the route is paused, and says so.
    assert.match((await page.locator('tr[data-route=orders] .consumer-paused').textContent()) ?? '', /^paused until .+ \(Retry-After\)$/);
    assert.equal(await page.locator('tr[data-route=returns] button.retry').textContent(), 'Retry 1 pending now');
    assert.equal(await page.locator('tr[data-route=tickets] button.retry').count(), 0); // nothing pending there

    later.respond = () => ({ status: 200, body: 'ok' });
    await button.click();
    await page.locator('#toast', { hasText: "Retrying 2 deliveries now; resumed orders (paused by its consumer's Retry-After; 1 more going out)" }).waitFor();
    assert.deepEqual(await waiting(), ['Return 5']); // the other route's delivery keeps its wait
    const got = await later.waitFor(before + 5);
    assert.deepEqual(got.slice(before + 2).map((r) => /Order [78]\d/.exec(r.body.toString())?.[0]).sort(), ['Order 78', 'Order 79', 'Order 80']);
    await until(() => { const c = app.spool.jobs.counts(); return c.pending === 1 && c.delivering === 0; }, 5000, 'both deliveries to be recorded');
    await page.locator('nav a', { hasText: 'Messages' }).click();
    await page.locator('#refresh').click();
    for (const subject of ['Order 78', 'Order 79', 'Order 80']) assert.match((await page.locator('tbody tr', { hasText: subject }).textContent()) ?? '', /orders: delivered/);
    await page.locator('nav a', { hasText: 'Routes' }).click();
    await page.locator('tr[data-route=orders]').waitFor();
    assert.equal(await button.count(), 0);
    assert.equal(await page.locator('tr[data-route=orders] .consumer-paused').count(), 0);
  });

  test('route health and the mailbox section render; the page looks sane', async () => {
    await page.locator('nav a', { hasText: 'Routes' }).click();
    const billing = page.locator('tr[data-route=billing]');
    await billing.waitFor();
    assert.match((await billing.textContent()) ?? '', /billingwebhook \(json\)http:\/\/127\.0\.0\.1:\d+\/hook000.*50\.0 %2 attempts/);
    await page.locator('nav a', { hasText: 'Mailboxes' }).click();
    await page.locator('.empty', { hasText: 'No IMAP bridge is configured.' }).waitFor();
    await page.locator('nav a', { hasText: 'Messages' }).click();
    await page.locator('tbody tr', { hasText: 'Invoice 1234' }).waitFor();
    if (SCREENSHOT_DIR) {
      await page.screenshot({ path: join(SCREENSHOT_DIR, 'messages.png'), fullPage: true });
      await page.locator('tbody tr', { hasText: 'Invoice 1234' }).click();
      await page.locator('.delivery[data-route=billing]').waitFor();
      await page.screenshot({ path: join(SCREENSHOT_DIR, 'detail.png'), fullPage: true });
      await page.locator('nav a', { hasText: 'Routes' }).click();
      await page.locator('tr[data-route=billing]').waitFor();
      await page.screenshot({ path: join(SCREENSHOT_DIR, 'routes.png'), fullPage: true });
    }
    // No script errors, and the CSP let everything load (a violation is a console error).
    assert.deepEqual(pageErrors.filter((e) => !/401 \(Unauthorized\)/.test(e)), []);
  });

  test('logging out ends the session', async () => {
    await page.locator('#logout').click();
    await page.locator('#login').waitFor();
    const res = await page.request.get(`${app.httpUrl}/api/messages`);
    assert.equal(res.status(), 401);
  });
});
