// mailhook dashboard: a small hash-routed page over the admin API. Text goes in with textContent only (mail is untrusted).
const view = document.getElementById('view');
const toastBox = document.getElementById('toast');
let refreshTimer;
let renderSeq = 0;

// ---- helpers -------------------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, opts = {}) {
  const headers = { accept: 'application/json', ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}) };
  if (opts.method && opts.method !== 'GET') headers['x-mailhook-csrf'] = '1';
  const res = await fetch(path, { method: opts.method || 'GET', headers, body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined, credentials: 'same-origin' });
  if (res.status === 401) {
    location.reload(); // the session expired: the server answers / with the login page
    throw new Error('logged out');
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.message || `HTTP ${res.status}`);
  return body;
}

function toast(text, bad = false) {
  toastBox.textContent = text;
  toastBox.className = bad ? 'bad' : '';
  toastBox.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (toastBox.hidden = true), 4000);
}

const chip = (status, label) => el('span', { class: `chip s-${status}`, dataset: { status } }, label || status);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
function ago(iso) {
  if (!iso) return '—';
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}
const size = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
const ms = (v) => (v === null || v === undefined ? '—' : `${v} ms`);

function table(headers, rows, empty) {
  if (rows.length === 0) return el('div', { class: 'empty' }, empty);
  return el('table', {}, el('thead', {}, el('tr', {}, headers.map((h) => el('th', { class: h.num ? 'num' : undefined }, h.label ?? h)))), el('tbody', {}, rows));
}

function every(msInterval, fn) {
  clearInterval(refreshTimer);
  refreshTimer = setInterval(fn, msInterval);
}

// ---- views ---------------------------------------------------------------------------------------------------

const listState = { filters: {}, cursors: [], cursor: undefined };

async function messagesView(seq) {
  const f = listState.filters;
  const form = el('form', { class: 'toolbar', id: 'filters' },
    el('label', {}, 'Status', el('select', { name: 'status' }, ['', 'pending', 'delivering', 'delivered', 'dead', 'dropped'].map((s) => el('option', { value: s, selected: f.status === s }, s || 'any')))),
    el('label', {}, 'Route', el('input', { name: 'route', value: f.route || '', size: 12 })),
    el('label', {}, 'Recipient', el('input', { name: 'recipient', value: f.recipient || '', size: 22 })),
    el('label', {}, 'Sender', el('input', { name: 'sender', value: f.sender || '', size: 22 })),
    el('label', {}, 'Since', el('input', { name: 'since', type: 'datetime-local', value: f.since || '' })),
    el('label', {}, 'Until', el('input', { name: 'until', type: 'datetime-local', value: f.until || '' })),
    el('button', { type: 'submit' }, 'Filter'),
    el('button', { type: 'button', class: 'quiet', onclick: () => { listState.filters = {}; listState.cursors = []; listState.cursor = undefined; render(); } }, 'Clear'),
    el('span', { class: 'spacer' }),
    el('button', { type: 'button', class: 'quiet', id: 'refresh', onclick: () => render() }, 'Refresh'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    listState.filters = Object.fromEntries(Object.entries(data).filter(([, v]) => v !== ''));
    listState.cursors = [];
    listState.cursor = undefined;
    render();
  });
  const params = new URLSearchParams({ limit: '50' });
  for (const [k, v] of Object.entries(f)) params.set(k, k === 'since' || k === 'until' ? new Date(v).toISOString() : v);
  if (listState.cursor) params.set('cursor', listState.cursor);
  const page = await api(`/api/messages?${params}`);
  if (seq !== renderSeq) return;
  const rows = page.messages.map((m) =>
    el('tr', { class: 'link', dataset: { id: m.id }, onclick: () => (location.hash = `#/messages/${m.id}`) },
      el('td', { title: when(m.received_at) }, ago(m.received_at)),
      el('td', { class: 'wrap' }, m.mail_from || '<>'),
      el('td', { class: 'wrap' }, m.rcpt_to.join(', ')),
      el('td', { class: 'wrap' }, el('a', { href: `#/messages/${m.id}` }, m.subject ?? '(no subject)')),
      el('td', {}, m.deliveries.map((d) => chip(d.status, `${d.route}: ${d.status}`))),
      el('td', { class: 'num' }, size(m.size)),
    ),
  );
  const pager = el('div', { class: 'pager' },
    el('button', { class: 'quiet', disabled: listState.cursors.length === 0, onclick: () => { listState.cursor = listState.cursors.pop(); render(); } }, '← Newer'),
    el('button', { class: 'quiet', disabled: !page.next_cursor, onclick: () => { listState.cursors.push(listState.cursor); listState.cursor = page.next_cursor; render(); } }, 'Older →'),
  );
  view.replaceChildren(
    el('h1', {}, 'Messages'),
    form,
    table(['Received', 'From', 'To', 'Subject', 'Deliveries', { label: 'Size', num: true }], rows, 'No messages match.'),
    pager,
  );
  // The newest page follows new mail by itself.
  if (!listState.cursor) every(5000, () => { if (!document.hidden && !form.contains(document.activeElement)) render(); });
}

// A route gone from the configuration: the API replays none of its deliveries (they would be dead-lettered again).
const GONE_WHY = 'route no longer configured: add it back (or a route with renamed_from) and restart mailhook to replay';

// Which routes are gone changes only with a restart, and /api/routes counts every delivery: a message view, which
// refreshes itself every 1.5 s while a delivery is pending, asks when it opens and then at most once a minute.
const ROUTES_MAX_AGE_MS = 60_000;
let routesSeen = { message: '', at: 0, routes: [] };
async function routesFor(messageId) {
  if (routesSeen.message !== messageId || Date.now() - routesSeen.at > ROUTES_MAX_AGE_MS) {
    routesSeen = { message: messageId, at: Date.now(), routes: (await api('/api/routes')).routes };
  }
  return routesSeen.routes;
}

async function messageView(seq, id) {
  const m = await api(`/api/messages/${encodeURIComponent(id)}`);
  // A sink route's delivery is delivered without an attempt, and there is nothing to send it to.
  const offersReplay = (d) => d.status === 'dead' || (d.status === 'delivered' && d.attempts > 0);
  // The routes are asked for only when a button depends on them (this view refreshes itself while one is pending).
  const routes = m.deliveries.some(offersReplay) ? await routesFor(m.id) : [];
  if (seq !== renderSeq) return;
  const gone = new Set(routes.filter((r) => !r.configured).map((r) => r.route));
  const s = m.summary;
  const facts = (pairs) => el('dl', { class: 'facts' }, pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v ?? '—')]));
  const actions = el('div', { class: 'toolbar' },
    el('a', { class: 'button quiet', href: m.raw_url, download: `${m.id}.eml` }, 'Download .eml'),
    el('button', { class: 'quiet', id: 'redeliver-all', onclick: () => redeliver(m.id) }, 'Redeliver all'),
    el('span', { class: 'spacer' }),
    el('button', { class: 'danger', id: 'delete', onclick: () => deleteMessage(m.id) }, 'Delete message'),
  );
  const deliveries = m.deliveries.map((d) =>
    el('div', { class: 'card delivery', dataset: { delivery: d.id, route: d.route } },
      el('div', { class: 'delivery-head' },
        el('strong', {}, d.route), chip(d.status),
        el('span', { class: 'muted' }, `${d.attempts} attempt${d.attempts === 1 ? '' : 's'}${d.replays ? `, replayed ${d.replays}×` : ''}`),
        d.status === 'pending' ? el('span', { class: 'muted' }, `next try ${when(d.next_attempt_at)}`) : null,
        el('span', { class: 'spacer' }),
        !offersReplay(d) ? null
          : gone.has(d.route) ? el('span', { class: 'muted', title: GONE_WHY }, 'route no longer configured')
          : el('button', { class: d.status === 'dead' ? '' : 'quiet', onclick: () => replayIds([d.id], d.status) }, d.status === 'dead' ? 'Replay' : 'Send again'),
        d.status === 'pending' ? el('button', { class: 'retry', onclick: () => retryNow({ ids: [d.id] }) }, 'Retry now') : null,
      ),
      el('div', { class: 'muted mono' }, `delivery ${d.id} → ${d.recipients.map((r) => r.address + (r.key ? ` (key ${r.key})` : '')).join(', ')}`),
      d.last_error ? el('p', { class: 'error' }, `Last error: ${d.last_error}`) : null,
      table(['#', 'Started', { label: 'HTTP status', num: true }, { label: 'Latency', num: true }, 'Outcome', 'Error'],
        d.attempt_log.map((a) => el('tr', {}, el('td', {}, a.attempt), el('td', {}, when(a.started_at)), el('td', { class: 'num' }, a.status_code ?? '—'), el('td', { class: 'num' }, ms(a.latency_ms)), el('td', {}, chip(a.outcome === 'retry' ? 'pending' : a.outcome, a.outcome)), el('td', { class: 'wrap' }, a.error ?? ''))),
        'No attempts yet.'),
    ),
  );
  view.replaceChildren(
    el('p', {}, el('a', { href: '#/messages' }, '← Messages')),
    el('h1', {}, s?.subject ?? m.subject ?? '(no subject)', ' ', chip(m.status)),
    actions,
    el('div', { class: 'card' }, facts([
      ['Message id', el('span', { class: 'mono' }, m.id)],
      ['Received', `${when(m.received_at)} via ${m.source}`],
      ['Envelope from', m.envelope.mail_from || '<>'],
      ['Envelope to', m.envelope.rcpt_to.join(', ')],
      ['Client', [m.envelope.remote_address, m.envelope.helo && `HELO ${m.envelope.helo}`, m.envelope.tls && `TLS ${m.envelope.tls.protocol}`].filter(Boolean).join(' · ') || '—'],
      ['Size', size(m.size)],
      ['Header From', s?.from], ['Header To', s ? s.to.join(', ') : undefined], ['Date', s?.date], ['Message-ID', s?.message_id],
      ['Attachments', s ? (s.attachments.length ? s.attachments.map((a) => `${a.filename ?? '(unnamed)'} (${a.content_type}, ${size(a.size)})`).join('; ') : 'none') : undefined],
      ['Parse error', m.parse_error ?? undefined],
    ])),
    s?.text_excerpt ? el('pre', { class: 'excerpt' }, s.text_excerpt) : null,
    el('h2', {}, 'Deliveries'),
    ...deliveries,
  );
  if (m.deliveries.some((d) => d.status === 'pending' || d.status === 'delivering')) every(1500, () => { if (!document.hidden) render(); });
}

async function deadView(seq) {
  const routeSel = el('select', { name: 'route', id: 'dead-route' }, el('option', { value: '' }, 'all routes'));
  const route = listState.deadRoute || '';
  const [page, health] = await Promise.all([
    api(`/api/messages?status=dead&limit=200${route ? `&route=${encodeURIComponent(route)}` : ''}`),
    api('/api/routes'),
  ]);
  if (seq !== renderSeq) return;
  for (const r of health.routes) routeSel.append(el('option', { value: r.route, selected: r.route === route }, `${r.route} (${r.queue.dead})`));
  routeSel.addEventListener('change', () => { listState.deadRoute = routeSel.value; render(); });
  // A route gone from the configuration (GONE_WHY): its deliveries are neither replayed nor counted.
  const gone = new Map(health.routes.filter((r) => !r.configured).map((r) => [r.route, r.queue.dead]));
  const rows = [];
  for (const m of page.messages) {
    for (const d of m.deliveries.filter((x) => x.status === 'dead' && (!route || x.route === route))) {
      rows.push(el('tr', { dataset: { delivery: d.id, message: m.id } },
        el('td', { title: when(m.received_at) }, ago(m.received_at)),
        el('td', { class: 'wrap' }, el('a', { href: `#/messages/${m.id}` }, m.subject ?? '(no subject)')),
        el('td', { class: 'wrap' }, d.recipients.map((r) => r.address).join(', ')),
        el('td', {}, d.route),
        el('td', { class: 'num' }, d.attempts),
        el('td', { class: 'num' }, d.last_status_code ?? '—'),
        el('td', { class: 'wrap error' }, d.last_error ?? ''),
        el('td', {}, gone.has(d.route)
          ? el('span', { class: 'muted', title: GONE_WHY }, 'route no longer configured')
          : el('button', { class: 'replay', onclick: (e) => { e.target.disabled = true; replayIds([d.id]); } }, 'Replay')),
      ));
    }
  }
  const total = route ? (gone.has(route) ? 0 : (health.routes.find((r) => r.route === route)?.queue.dead ?? 0)) : health.totals.dead - [...gone.values()].reduce((a, b) => a + b, 0);
  const bulk = el('button', { id: 'replay-all', disabled: total === 0, title: gone.has(route) ? GONE_WHY : undefined, onclick: () => replayAll(route, total) }, `Replay all ${total} dead-lettered${route ? ` of ${route}` : ''}`);
  view.replaceChildren(
    el('h1', {}, 'Dead letters'),
    el('p', { class: 'muted' }, 'Deliveries that failed for good. A replay sends again now with a fresh attempt budget; the attempt history stays.'),
    el('div', { class: 'toolbar' }, el('label', {}, 'Route', routeSel), el('span', { class: 'spacer' }), bulk),
    table(['Received', 'Subject', 'Recipients', 'Route', { label: 'Attempts', num: true }, { label: 'Last status', num: true }, 'Last error', ''], rows, 'No dead-lettered deliveries. 🎉'),
  );
  every(5000, () => { if (!document.hidden) render(); });
}

async function routesView(seq) {
  const windowSel = el('select', { id: 'window' }, ['15m', '1h', '24h', '7d'].map((w) => el('option', { value: w, selected: (listState.window || '1h') === w }, w)));
  windowSel.addEventListener('change', () => { listState.window = windowSel.value; render(); });
  const h = await api(`/api/routes?window=${listState.window || '1h'}`);
  if (seq !== renderSeq) return;
  const rate = (r) => (r === null ? '—' : el('span', { class: r >= 0.95 ? 'rate-good' : r < 0.8 ? 'rate-bad' : '' }, `${(r * 100).toFixed(1)} %`));
  const rows = h.routes.map((r) =>
    el('tr', { dataset: { route: r.route } },
      el('td', {}, el('strong', {}, r.route), r.configured ? null : el('div', { class: 'muted' }, 'not in the configuration'),
        r.consumer.failing_since ? el('div', { class: 'error consumer-failing' }, `consumer failing since ${ago(r.consumer.failing_since)}`) : null,
        r.consumer.paused_until ? el('div', { class: 'muted consumer-paused' }, `paused until ${new Date(r.consumer.paused_until).toLocaleTimeString()} (Retry-After)`) : null),
      el('td', {}, r.kind + (r.format ? ` (${r.format})` : '')),
      el('td', { class: 'wrap mono' }, r.endpoint ?? '—'),
      el('td', { class: 'num' }, r.queue.pending),
      el('td', { class: 'num' }, r.queue.delivering),
      el('td', { class: 'num' }, r.queue.dead ? el('a', { href: '#/dead', onclick: () => (listState.deadRoute = r.route) }, r.queue.dead) : 0),
      el('td', { class: 'num' }, rate(r.window.success_rate), el('div', { class: 'muted' }, `${r.window.attempts} attempt${r.window.attempts === 1 ? '' : 's'}`)),
      el('td', { class: 'num' }, `${ms(r.window.latency_ms.p50)} / ${ms(r.window.latency_ms.p95)}`),
      el('td', { class: 'wrap' }, r.last_failure ? [el('div', {}, `${ago(r.last_failure.at)}${r.last_failure.status_code ? ` · HTTP ${r.last_failure.status_code}` : ''}`), el('div', { class: 'muted' }, r.last_failure.error ?? '')] : '—'),
      el('td', {}, r.queue.pending && r.kind !== 'sink' ? el('button', { class: 'retry quiet', onclick: (e) => { e.target.disabled = true; retryNow({ route: r.route }); } }, `Retry ${r.queue.pending} pending now`) : null),
    ),
  );
  view.replaceChildren(
    el('h1', {}, 'Routes'),
    el('div', { class: 'toolbar' },
      el('span', {}, 'Queue: ', chip('pending', `${h.totals.pending} pending`), chip('delivering', `${h.totals.delivering} in flight`), chip('dead', `${h.totals.dead} dead`), chip('delivered', `${h.totals.delivered} delivered`)),
      el('span', { class: 'spacer' }), el('label', {}, 'Window', windowSel)),
    table(['Route', 'Kind', 'Endpoint', { label: 'Pending', num: true }, { label: 'In flight', num: true }, { label: 'Dead', num: true }, { label: 'Success', num: true }, { label: 'p50 / p95', num: true }, 'Last failure', ''], rows, 'No routes.'),
  );
  every(5000, () => { if (!document.hidden) render(); });
}

async function mailboxesView(seq) {
  const r = await api('/api/mailboxes');
  if (seq !== renderSeq) return;
  const fields = [...new Set(r.mailboxes.flatMap((m) => Object.keys(m)).filter((k) => k !== 'name' && k !== 'state'))];
  const show = (v) => (v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  view.replaceChildren(
    el('h1', {}, 'IMAP mailboxes'),
    !r.enabled
      ? el('div', { class: 'empty' }, 'No IMAP bridge is configured.')
      : table(['Mailbox', 'State', ...fields], r.mailboxes.map((m) => el('tr', {}, el('td', {}, m.name), el('td', {}, chip(/error|fail|down/i.test(m.state) ? 'dead' : /idle|ok|connected|sync/i.test(m.state) ? 'delivered' : 'pending', m.state)), fields.map((k) => el('td', { class: 'wrap' }, show(m[k]))))), 'No mailboxes.'),
  );
  every(5000, () => { if (!document.hidden) render(); });
}

// ---- actions -------------------------------------------------------------------------------------------------

/** status: the deliveries' own, dead or delivered (the API replays only deliveries in the status it is given). */
async function replayIds(ids, status = 'dead') {
  try {
    const r = await api('/api/deliveries/replay', { method: 'POST', body: { ids, status } });
    // The API says why it left a named delivery out (its route, or a status changed since this page showed it).
    const why = (r.skipped ?? []).map((s) => s.reason).join('; ');
    toast(r.replayed ? `Replayed ${r.replayed} deliver${r.replayed === 1 ? 'y' : 'ies'}` : `Nothing replayed: ${why || 'its state changed meanwhile'}`);
  } catch (err) {
    toast(err.message, true);
  }
  render();
}

async function replayAll(route, expected) {
  const btn = document.getElementById('replay-all');
  btn.disabled = true;
  let done = 0;
  let asOf;
  try {
    for (;;) {
      const r = await api('/api/deliveries/replay', { method: 'POST', body: route ? { route, as_of: asOf, limit: 500 } : { all: true, as_of: asOf, limit: 500 } });
      asOf = r.as_of;
      done += r.replayed;
      btn.textContent = `Replaying… ${done}/${Math.max(expected, done)}`;
      if (r.remaining === 0 || r.replayed === 0) break;
    }
    toast(`Replayed ${done} deliver${done === 1 ? 'y' : 'ies'}`);
  } catch (err) {
    toast(err.message, true);
  }
  render();
}

/** body: { ids } or { route }. Pending deliveries waiting out a backoff or Retry-After become due now; attempt counts stay. */
async function retryNow(body) {
  try {
    const r = await api('/api/deliveries/retry', { method: 'POST', body });
    const resumed = r.resumed?.length ? `${r.retried ? '; ' : ''}resumed ${r.resumed.join(', ')} (paused by its consumer's Retry-After${r.released ? `; ${r.released} more going out` : ''})` : '';
    toast(r.retried ? `Retrying ${r.retried} deliver${r.retried === 1 ? 'y' : 'ies'} now${resumed}` : resumed ? resumed[0].toUpperCase() + resumed.slice(1) : 'Nothing was waiting to retry (its state changed meanwhile)');
  } catch (err) {
    toast(err.message, true);
  }
  render();
}

async function redeliver(id) {
  try {
    const r = await api(`/api/messages/${id}/redeliver`, { method: 'POST', body: {} });
    toast(`Requeued ${r.requeued.length} deliver${r.requeued.length === 1 ? 'y' : 'ies'}${r.skipped.length ? `; skipped ${r.skipped.length}` : ''}`);
  } catch (err) {
    toast(err.message, true);
  }
  render();
}

async function deleteMessage(id) {
  const btn = document.getElementById('delete');
  if (btn.dataset.armed !== '1') {
    btn.dataset.armed = '1';
    btn.textContent = 'Click again to delete for good';
    return;
  }
  try {
    await api(`/api/messages/${id}`, { method: 'DELETE' });
    toast('Message deleted');
    location.hash = '#/messages';
  } catch (err) {
    toast(err.message, true);
  }
}

// ---- router --------------------------------------------------------------------------------------------------

async function render() {
  const seq = ++renderSeq;
  clearInterval(refreshTimer);
  const hash = location.hash || '#/messages';
  const [, name, arg] = hash.split('/');
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === (name === 'messages' && arg ? 'messages' : name));
  try {
    if (name === 'messages' && arg) await messageView(seq, decodeURIComponent(arg));
    else if (name === 'dead') await deadView(seq);
    else if (name === 'routes') await routesView(seq);
    else if (name === 'mailboxes') await mailboxesView(seq);
    else await messagesView(seq);
  } catch (err) {
    if (seq === renderSeq) view.replaceChildren(el('div', { class: 'empty error' }, `Cannot load: ${err.message}`));
  }
}

document.getElementById('logout').addEventListener('click', async () => {
  await fetch('/api/session', { method: 'DELETE', headers: { 'x-mailhook-csrf': '1' }, credentials: 'same-origin' });
  location.reload();
});
window.addEventListener('hashchange', render);
render();
