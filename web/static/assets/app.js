// devstatus dashboard: a plain-JavaScript client of the read API (no build
// step, no dependency). Views: #/ (fleet) and #/device/<url-encoded id>.
// Every string from the API is put in the page with textContent, never as
// HTML (device ids are arbitrary printable UTF-8).
'use strict';

const STATUSES = ['registered', 'connected', 'temporarily_offline', 'disconnected'];
const LABEL = {
  registered: 'registered', connected: 'connected', temporarily_offline: 'temporarily offline',
  disconnected: 'disconnected', unknown: 'not registered yet',
};
const PAGE = 50;
const TOKEN_KEY = 'devstatus_token';

const S = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  role: '', name: '', // from GET /v1/whoami: "admin" or "viewer"
  es: null, // EventSource
  lastEventId: '', // the stream's last event id, to resume after a new ticket
  retry: 0, // consecutive stream failures (backoff)
  view: null, // {name, ...} the rendered view, for live updates
  feed: [], // recent transitions, newest first
};

// ---- DOM helpers -----------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const app = () => document.getElementById('app');
function show(...nodes) { app().replaceChildren(...nodes); }

function badge(st) { return h('span', { class: 'badge ' + st, 'data-status': st }, LABEL[st] || st); }

function ago(iso) {
  if (!iso) return 'never';
  let d = (Date.now() - new Date(iso).getTime()) / 1000;
  const fut = d < 0; d = Math.abs(d);
  let t;
  if (d < 60) t = Math.round(d) + 's';
  else if (d < 3600) t = Math.round(d / 60) + 'm';
  else if (d < 86400) t = (d / 3600).toFixed(d < 36000 ? 1 : 0) + 'h';
  else t = (d / 86400).toFixed(d < 864000 ? 1 : 0) + 'd';
  return fut ? 'in ' + t : t + ' ago';
}
function when(iso) { return h('time', { datetime: iso || '', title: iso ? new Date(iso).toLocaleString() : '', 'data-ago': iso || '' }, ago(iso)); }
// fmtTick formats an axis time with the precision the span needs.
function fmtTick(d, spanMs) {
  if (spanMs <= 2 * 3600e3) return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: spanMs <= 600e3 ? '2-digit' : undefined });
  if (spanMs <= 2 * 86400e3) return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

// Device URLs. An id is one path segment: percent-encoded, every "." too
// (%2E), so no id reads as a dot segment in a link. That is not enough for
// the API: browsers (the WHATWG URL standard) also drop the segments "%2E"
// and "%2E%2E" ("/v1/devices/%2E%2E/transitions" would be sent as
// "/v1/transitions"), so for the ids "." and ".." the path carries "~" and
// the id goes in the "id" query parameter (pkg/httpx.DeviceIDs).
function encodeId(id) { return encodeURIComponent(id).replace(/\./g, '%2E'); }
function devHref(id) { return '#/device/' + encodeId(id); }
// devURL returns the API URL of a device's resource: sub is "" (the device)
// or "transitions", "status" …; params an object of query parameters.
function devURL(id, sub, params) {
  const q = new URLSearchParams(params || {});
  let seg = encodeId(id);
  if (id === '.' || id === '..') { seg = '~'; q.set('id', id); }
  const qs = q.toString();
  return '/v1/devices/' + seg + (sub ? '/' + sub : '') + (qs ? '?' + qs : '');
}

// ---- API -------------------------------------------------------------------

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// api calls the API with the token; opts: method, body (JSON), or raw (a
// string sent as is) with contentType.
async function api(path, opts = {}) {
  const headers = { Authorization: 'Bearer ' + S.token };
  let body;
  if (opts.raw !== undefined) { headers['Content-Type'] = opts.contentType; body = opts.raw; }
  else if (opts.body !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(opts.body); }
  const resp = await fetch(path, { method: opts.method || 'GET', headers, cache: 'no-store', body });
  let data = null;
  const text = await resp.text();
  if (text) { try { data = JSON.parse(text); } catch (e) { data = null; } }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    if (resp.status === 401) signOut('The token was refused.');
    throw new APIError(resp.status, err.code || 'http_' + resp.status, err.message || resp.statusText);
  }
  return data;
}

// ---- sign-in ---------------------------------------------------------------

const isAdmin = () => S.role === 'admin';

// whoami asks the API what the token may do (GET /v1/whoami).
async function whoami() {
  const me = await api('/v1/whoami');
  S.role = me.role; S.name = me.name;
  document.body.dataset.role = me.role;
  document.getElementById('who').textContent = me.name && me.name !== me.role ? me.name + ' · ' + me.role : me.role;
}

function signOut(msg) {
  S.token = ''; S.role = ''; S.lastEventId = '';
  sessionStorage.removeItem(TOKEN_KEY);
  if (S.es) { S.es.close(); S.es = null; }
  document.body.dataset.role = '';
  document.getElementById('who').textContent = '';
  setLive(false);
  renderLogin(msg);
}

function renderLogin(msg) {
  S.view = null;
  document.getElementById('signout').hidden = true;
  document.getElementById('live').hidden = true; // no stream before sign-in: no pill
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'current-password', placeholder: 'API token', required: true });
  const out = h('p', { class: 'error' }, msg || '');
  const form = h('form', { class: 'panel login', id: 'login' },
    h('h2', {}, 'Sign in'),
    h('p', { class: 'note' }, 'An API token: the admin token (--admin-token; a dev run prints it and keeps it in data/admin-token) ' +
      'or a viewer token (POST /v1/tokens), which sees everything and changes nothing. ' +
      'It stays in this tab only (sessionStorage): closing the tab signs out.'),
    input, h('button', { class: 'primary', type: 'submit' }, 'Sign in'), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    S.token = input.value.trim();
    try {
      await whoami();
    } catch (e) {
      out.textContent = e.status === 401 ? 'Wrong token.' : 'Cannot reach the API: ' + e.message;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, S.token);
    start();
  });
  show(form);
  input.focus();
}

// ---- live stream -----------------------------------------------------------

function setLive(on) {
  const el = document.getElementById('live');
  el.dataset.live = on ? '1' : '0';
  el.textContent = on ? 'live' : 'offline';
}

// connectStream opens /v1/stream with a fresh stream ticket (POST
// /v1/stream/ticket): EventSource cannot send the token, and the token never
// goes in a URL or a cookie. The ticket opens the stream for 60 s, so the
// page never lets EventSource reconnect by itself with an old one: on any
// error it closes it and reconnects with a new ticket, resuming after the
// last event it had (last_event_id).
async function connectStream() {
  if (S.es) { S.es.close(); S.es = null; }
  if (!S.token) return;
  let tk;
  try {
    tk = await api('/v1/stream/ticket', { method: 'POST' });
  } catch (e) {
    setLive(false);
    if (S.token && e.status !== 401) setTimeout(connectStream, Math.min(30000, 1000 * 2 ** S.retry++));
    return;
  }
  if (!S.token) return;
  const q = new URLSearchParams({ ticket: tk.ticket });
  if (S.lastEventId) q.set('last_event_id', S.lastEventId);
  const es = new EventSource('/v1/stream?' + q);
  S.es = es;
  es.addEventListener('open', () => { S.retry = 0; setLive(true); });
  es.addEventListener('error', () => {
    if (S.es !== es) return;
    es.close(); S.es = null;
    setLive(false);
    setTimeout(() => { if (!S.es) connectStream(); }, Math.min(30000, 1000 * 2 ** S.retry++));
  });
  es.addEventListener('transition', (ev) => { if (ev.lastEventId) S.lastEventId = ev.lastEventId; onTransition(JSON.parse(ev.data)); });
  es.addEventListener('lagging', () => {
    // Too far behind: what we show may be stale. Reload and start afresh.
    es.close();
    S.es = null; S.lastEventId = '';
    route();
    setTimeout(connectStream, 1000);
  });
}

function onTransition(t) {
  S.feed.unshift(t);
  S.feed.length = Math.min(S.feed.length, 30);
  const v = S.view;
  if (!v) return;
  if (v.name === 'fleet') v.onTransition(t);
  if (v.name === 'device' && v.id === t.device) v.onTransition(t);
}

// ---- shared controls -------------------------------------------------------

// tokenBox shows a device token once, with a copy button.
function tokenBox(id, token, what) {
  const code = h('code', { class: 'token', 'data-token': token }, token);
  const copied = h('span', { class: 'note' });
  const copy = h('button', { class: 'copy', type: 'button', onclick: async () => {
    try { await navigator.clipboard.writeText(token); copied.textContent = 'copied'; } catch (e) {
      const r = document.createRange(); r.selectNodeContents(code);
      getSelection().removeAllRanges(); getSelection().addRange(r);
      copied.textContent = 'selected: press Ctrl+C';
    }
  } }, 'Copy');
  return h('div', { class: 'tokenbox', id: 'token-box' },
    h('p', {}, what, ' ', h('b', {}, id), '. Its token is shown only now: give it to the device.'),
    h('div', { class: 'tokline' }, code, copy, copied));
}

// confirmBox asks before a change that cannot be undone: ok runs on "yes".
function confirmBox(text, yes, ok) {
  const box = h('div', { class: 'confirm', id: 'confirm', role: 'alertdialog' },
    h('p', {}, text),
    h('button', { class: 'danger', id: 'confirm-yes', type: 'button', onclick: () => { box.remove(); ok(); } }, yes),
    h('button', { id: 'confirm-no', type: 'button', onclick: () => box.remove() }, 'Cancel'));
  return box;
}

// Availability bars: the status over a window in equal slots, each coloured
// by the worst status it saw (disconnected, then temporarily offline, …),
// like an uptime monitor's beats. Built from the device's transitions of the
// window (one request per row, at most BAR_PARALLEL at once).
const BAR_WINDOWS = { '3600': 'last hour', '86400': 'last 24 h', '604800': 'last 7 days' };
const BAR_SLOTS = 30;
const BAR_PARALLEL = 4;
const SEVERITY = { unknown: 0, registered: 1, connected: 2, temporarily_offline: 3, disconnected: 4 };
const barQueue = [];
let barRunning = 0;
function queueBars(job) { barQueue.push(job); pumpBars(); }
function pumpBars() {
  while (barRunning < BAR_PARALLEL && barQueue.length) {
    const job = barQueue.shift();
    barRunning++;
    // (a microtask later: the row that queued it is in the page by then)
    Promise.resolve().then(job).catch(() => {}).finally(() => { barRunning--; pumpBars(); });
  }
}

// slotsOf returns BAR_SLOTS slots {worst, ms: {status: ms}} over [t0, t1].
function slotsOf(t0, t1, d, trs) {
  const reg = d.registered_at ? new Date(d.registered_at).getTime() : t0;
  const segs = [];
  let cur = trs.length ? trs[0].from : d.status, since = t0;
  if (reg > t0) { segs.push(['unknown', t0, reg]); since = reg; }
  for (const t of trs) {
    const at = Math.max(new Date(t.at).getTime(), since);
    if (at > since) segs.push([cur, since, at]);
    cur = t.to; since = at;
  }
  segs.push([cur, since, t1]);
  const w = (t1 - t0) / BAR_SLOTS;
  const slots = [];
  for (let i = 0; i < BAR_SLOTS; i++) {
    const a = t0 + i * w, b = a + w, ms = {};
    let worst = 'unknown';
    for (const [st, x, y] of segs) {
      const o = Math.min(b, y) - Math.max(a, x);
      if (o <= 0) continue;
      ms[st] = (ms[st] || 0) + o;
      if (SEVERITY[st] > SEVERITY[worst]) worst = st;
    }
    slots.push({ a, b, worst, ms });
  }
  return slots;
}

function barsOf(slots, t0, t1) {
  const up = slots.reduce((n, sl) => n + (sl.ms.connected || 0), 0);
  const known = slots.reduce((n, sl) => n + Object.entries(sl.ms).filter(([k]) => k !== 'unknown').reduce((m, [, v]) => m + v, 0), 0);
  return h('div', { class: 'bars' },
    h('div', { class: 'beats' }, slots.map((sl) => h('span', {
      class: 'beat ' + sl.worst, 'data-status': sl.worst,
      title: new Date(sl.a).toLocaleString() + ' – ' + new Date(sl.b).toLocaleTimeString() + ': ' +
        (Object.entries(sl.ms).map(([k, v]) => LABEL[k] + ' ' + Math.round(100 * v / (sl.b - sl.a)) + '%').join(', ') || 'no data'),
    }))),
    h('span', { class: 'pct', title: 'connected share of the known time' }, known > 0 ? (100 * up / known).toFixed(1) + '%' : '—'));
}

// holdBanner shows the outage hold of GET /v1/summary (absent: no banner).
function holdBanner(hold) {
  const el = document.getElementById('banner');
  const on = !!(hold && hold.active);
  el.hidden = !on;
  if (on) el.replaceChildren(h('b', {}, 'Outage hold: '), 'devices are not marked offline or disconnected' +
    (hold.since ? ' since ' + new Date(hold.since).toLocaleString() : '') + (hold.reason ? ' (' + hold.reason + ')' : '') + '.');
}

// registerForm registers a device (POST /v1/devices) and shows its token.
function registerForm(done) {
  const id = h('input', { id: 'reg-id', placeholder: 'device id', required: true, maxlength: 256 });
  const group = h('input', { id: 'reg-group', placeholder: 'group (optional)' });
  const probe = h('input', { id: 'reg-probe', placeholder: 'probe URL (optional)', type: 'url' });
  const out = h('div', { id: 'reg-out' });
  const form = h('form', { class: 'subpanel', id: 'register' },
    h('h3', {}, 'Register a device'), h('div', { class: 'filters' }, id, group, probe,
      h('button', { class: 'primary', type: 'submit' }, 'Register'),
      h('button', { type: 'button', onclick: () => form.remove() }, 'Close')), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { id: id.value, group: group.value };
    if (probe.value.trim()) body.probe_url = probe.value.trim();
    try {
      const r = await api('/v1/devices', { method: 'POST', body });
      out.replaceChildren(tokenBox(r.id, r.token, 'Registered'));
      id.value = '';
      done();
    } catch (e) {
      out.replaceChildren(h('p', { class: 'error' }, e.status === 409 ? 'A device ' + body.id + ' exists already.' : 'Not registered: ' + e.message));
    }
  });
  setTimeout(() => id.focus(), 0);
  return form;
}

// importAvailable tells whether the server has POST /v1/devices/import: an
// empty body registers nothing; a server without the route answers 404/405.
let importCheck = null;
function importAvailable() {
  if (!importCheck) {
    importCheck = fetch('/v1/devices/import', { method: 'POST', headers: { Authorization: 'Bearer ' + S.token, 'Content-Type': 'application/x-ndjson' }, body: '' })
      .then((r) => r.status !== 404 && r.status !== 405, () => false);
  }
  return importCheck;
}

// importForm posts an NDJSON or CSV file to POST /v1/devices/import and
// shows the answer of every line, tokens included (shown only now).
function importForm(done) {
  const file = h('input', { type: 'file', id: 'import-file', accept: '.ndjson,.jsonl,.json,.csv,text/csv,application/x-ndjson' });
  const out = h('div', { id: 'import-out' });
  const form = h('form', { class: 'subpanel', id: 'import' },
    h('h3', {}, 'Import devices'),
    h('p', { class: 'note' }, 'NDJSON (one {"id", "group", "probe_url"?, "gateway"?} a line) or CSV with a header row (id,group,…); up to 10 000 devices. ' +
      'Each line is answered; a failed line does not stop the others.'),
    h('div', { class: 'filters' }, file, h('button', { class: 'primary', type: 'submit' }, 'Import'),
      h('button', { type: 'button', onclick: () => form.remove() }, 'Close')), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) { out.replaceChildren(h('p', { class: 'error' }, 'Choose a file.')); return; }
    const text = await f.text();
    const csv = /\.csv$/i.test(f.name) || f.type === 'text/csv';
    out.replaceChildren(h('p', { class: 'note' }, 'Importing ' + f.name + '…'));
    let r;
    try {
      r = await api('/v1/devices/import', { method: 'POST', raw: text, contentType: csv ? 'text/csv' : 'application/x-ndjson' });
    } catch (e) { out.replaceChildren(h('p', { class: 'error' }, 'Import refused: ' + e.message)); return; }
    const res = r.results || [];
    const created = r.created !== undefined ? r.created : res.filter((x) => x.token).length;
    const failed = r.failed !== undefined ? r.failed : res.length - created;
    const tokens = res.filter((x) => x.token).map((x) => x.id + ',' + x.token).join('\n');
    const copy = h('button', { type: 'button', id: 'import-copy', onclick: () => navigator.clipboard.writeText('id,token\n' + tokens).catch(() => {}) }, 'Copy tokens as CSV');
    out.replaceChildren(
      h('p', { id: 'import-summary' }, h('b', {}, created + ' registered'), ', ', h('b', { class: failed ? 'error' : '' }, failed + ' failed'),
        '. The tokens are shown only now. ', tokens ? copy : ''),
      h('div', { class: 'scroll import-table' }, h('table', { id: 'import-results' },
        h('thead', {}, h('tr', {}, ['line', 'device', 'status', 'token or error'].map((x) => h('th', {}, x)))),
        h('tbody', {}, res.map((x) => h('tr', { 'data-line': x.line, class: x.error ? 'failed' : 'ok' },
          h('td', { class: 'n' }, x.line), h('td', { class: 'id' }, x.id || ''), h('td', {}, x.status),
          h('td', { class: x.error ? 'error' : 'id' }, x.error ? (x.error.code + ': ' + x.error.message) : x.token)))))));
    done();
  });
  return form;
}

// ---- fleet view ------------------------------------------------------------

function fleetView(params) {
  const q = {
    prefix: params.get('prefix') || '', status: params.get('status') || '', group: params.get('group') || '',
    stale_for: params.get('stale_for') || '', sort: params.get('sort') || 'id',
    bars: BAR_WINDOWS[params.get('bars')] ? params.get('bars') : '86400',
  };
  const v = { name: 'fleet', q, cursors: [''], page: 0, summary: null, rows: new Map() };
  S.view = v;

  const cards = h('div', { class: 'cards', id: 'summary' });
  const groups = h('tbody');
  const tbody = h('tbody', { id: 'devices' });
  const info = h('span', { class: 'muted' });
  const prev = h('button', { id: 'prev', onclick: () => { if (v.page > 0) { v.page--; loadPage(); } } }, '‹ Previous');
  const next = h('button', { id: 'next', onclick: () => { v.page++; loadPage(); } }, 'Next ›');
  const feed = h('ul', { class: 'feed', id: 'feed' });

  const setQ = (k, val) => {
    q[k] = val;
    const p = new URLSearchParams();
    for (const [key, x] of Object.entries(q)) if (x && !(key === 'sort' && x === 'id') && !(key === 'bars' && x === '86400')) p.set(key, x);
    history.replaceState(null, '', '#/' + (p.toString() ? '?' + p : ''));
    if (k !== 'bars') { v.cursors = ['']; v.page = 0; }
    loadPage();
    renderCards();
  };
  const search = h('input', { type: 'search', id: 'search', placeholder: 'device id starts with…', value: q.prefix });
  let timer = null;
  search.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(() => setQ('prefix', search.value), 250); });
  const sel = (id, key, options) => {
    const el = h('select', { id, onchange: () => setQ(key, el.value) },
      options.map(([val, text]) => h('option', { value: val, selected: q[key] === val }, text)));
    return el;
  };
  const group = h('input', { type: 'search', id: 'group', placeholder: 'group', list: 'groups', value: q.group });
  group.addEventListener('change', () => setQ('group', group.value));
  const groupList = h('datalist', { id: 'groups' });

  function renderCards() {
    const sum = v.summary;
    if (!sum) return;
    const card = (key, label, n) => h('div', {
      class: 'card ' + key + (q.status === key || (key === 'total' && !q.status) ? ' sel' : ''), 'data-key': key,
      onclick: () => { statusSel.value = key === 'total' ? '' : key; setQ('status', statusSel.value); },
    }, h('div', { class: 'n', 'data-count': key }, n.toLocaleString()), h('div', { class: 'l' }, label));
    cards.replaceChildren(...STATUSES.map((st) => card(st, LABEL[st], sum[st])), card('total', 'all devices', sum.total));
    const gs = Object.entries(sum.groups).sort((a, b) => b[1].total - a[1].total);
    groups.replaceChildren(...gs.slice(0, 12).map(([g, c]) => h('tr', {},
      h('td', { title: g }, h('a', { href: '#/?group=' + encodeURIComponent(g) }, g || '(none)')),
      ...['connected', 'temporarily_offline', 'disconnected', 'total'].map((k) => h('td', { class: 'n' }, c[k].toLocaleString())))));
    if (gs.length > 12) groups.append(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, `… and ${gs.length - 12} more groups`)));
    groupList.replaceChildren(...gs.slice(0, 200).map(([g]) => h('option', { value: g })));
  }

  async function loadSummary() {
    try { v.summary = await api('/v1/summary'); renderCards(); holdBanner(v.summary.outage_hold); } catch (e) { /* shown by the table */ }
  }

  function row(d) {
    const tr = h('tr', { 'data-id': d.id, 'data-status': d.status },
      h('td', { class: 'id' }, h('a', { class: 'dev-link', href: devHref(d.id) }, d.id)),
      h('td', { class: 'grp' }, d.group || h('span', { class: 'muted' }, '—')),
      h('td', { class: 'st' }, badge(d.status)),
      h('td', { class: 'since' }, when(d.status_since)),
      h('td', { class: 'reason' }, d.reason || ''),
      h('td', { class: 'hb' }, when(d.last_heartbeat_at)),
      h('td', { class: 'avail' }, h('div', { class: 'bars loading' })));
    tr.dev = d;
    loadBars(tr);
    return tr;
  }

  // loadBars draws a row's availability bars (queued: a page of rows does not
  // send all its requests at once).
  function loadBars(tr) {
    queueBars(async () => {
      if (S.view !== v || !tr.isConnected) return;
      const t1 = Date.now(), t0 = t1 - Number(q.bars) * 1000;
      try {
        const r = await api(devURL(tr.dev.id, 'transitions', { from: new Date(t0).toISOString(), to: new Date(t1).toISOString(), limit: 1000 }));
        const d = { ...tr.dev, status: tr.dataset.status };
        tr.querySelector('.avail').replaceChildren(barsOf(slotsOf(t0, t1, d, r.transitions), t0, t1));
      } catch (e) {
        tr.querySelector('.avail').replaceChildren(h('span', { class: 'error', title: e.message }, '—'));
      }
    });
  }

  async function loadPage() {
    const p = new URLSearchParams({ limit: PAGE });
    for (const [k, x] of Object.entries(q)) if (x) p.set(k, x);
    if (v.cursors[v.page]) p.set('cursor', v.cursors[v.page]);
    try {
      const page = await api('/v1/devices?' + p);
      if (S.view !== v) return;
      v.cursors[v.page + 1] = page.next_cursor || null;
      v.rows = new Map();
      tbody.replaceChildren(...page.devices.map((d) => { const tr = row(d); v.rows.set(d.id, tr); return tr; }));
      if (!page.devices.length) tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No device matches.')));
      prev.disabled = v.page === 0;
      next.disabled = !page.next_cursor;
      info.textContent = `page ${v.page + 1} · ${page.devices.length} devices`;
    } catch (e) {
      tbody.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'error' }, e.message)));
    }
  }

  function feedItem(t) {
    return h('li', { 'data-device': t.device },
      h('a', { href: devHref(t.device), class: 'id' }, t.device), ' ', badge(t.from), ' → ', badge(t.to),
      h('div', { class: 'when' }, when(t.at), ' · ', t.reason));
  }

  // At a high transition rate the page redraws the counts once per frame
  // and re-reads the summary at most every 3 s (a throttle, not a debounce:
  // a busy fleet must not postpone it forever).
  let sumTimer = null, frame = 0;
  v.onTransition = (t) => {
    // Counts move at once; a full summary read corrects them shortly after.
    if (v.summary) {
      const adj = (c) => { if (c[t.from] !== undefined) c[t.from]--; if (c[t.to] !== undefined) c[t.to]++; };
      adj(v.summary);
      if (v.summary.groups[t.group]) adj(v.summary.groups[t.group]);
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderCards(); });
    }
    if (!sumTimer) sumTimer = setTimeout(() => { sumTimer = null; if (S.view === v) loadSummary(); }, 3000);
    feed.prepend(feedItem(t));
    while (feed.children.length > 30) feed.lastChild.remove();
    const tr = v.rows.get(t.device);
    if (tr) {
      tr.dataset.status = t.to;
      tr.querySelector('.st').replaceChildren(badge(t.to));
      tr.querySelector('.since').replaceChildren(when(t.at));
      tr.querySelector('.reason').textContent = t.reason;
      tr.classList.toggle('left', !!q.status && q.status !== t.to);
      tr.classList.remove('flash'); void tr.offsetWidth; tr.classList.add('flash');
      clearTimeout(tr.barTimer);
      tr.barTimer = setTimeout(() => loadBars(tr), 500); // once the projection has it
    }
  };

  const statusSel = sel('status', 'status', [['', 'any status'], ...STATUSES.map((st) => [st, LABEL[st]])]);
  const tools = h('div', { class: 'tools', id: 'tools' });
  const toolsBar = isAdmin() ? h('div', { class: 'actions admin-only' },
    h('button', { id: 'open-register', type: 'button', onclick: () => tools.replaceChildren(registerForm(() => { v.cursors = ['']; v.page = 0; setTimeout(loadPage, 400); loadSummary(); })) }, '+ Register device'),
    h('button', { id: 'open-import', type: 'button', hidden: true, onclick: () => tools.replaceChildren(importForm(() => { setTimeout(loadPage, 400); loadSummary(); })) }, 'Import file…')) : '';
  if (isAdmin()) importAvailable().then((ok) => { const b = document.getElementById('open-import'); if (b) b.hidden = !ok; });
  show(
    cards,
    h('div', { class: 'layout' },
      h('div', {},
        h('section', { class: 'panel' },
          h('div', { class: 'panel-head' }, h('h2', {}, 'Devices'), h('span', { class: 'spacer' }), toolsBar),
          tools,
          h('div', { class: 'filters' }, search, statusSel, group, groupList,
            sel('stale', 'stale_for', [['', 'any last heartbeat'], ['60', 'silent > 1 min'], ['300', 'silent > 5 min'],
              ['3600', 'silent > 1 hour'], ['86400', 'silent > 1 day']]),
            sel('sort', 'sort', [['id', 'sort: id'], ['-status_since', 'sort: status changed, newest'],
              ['status_since', 'sort: status changed, oldest'], ['last_heartbeat_at', 'sort: last heartbeat, oldest'],
              ['-last_heartbeat_at', 'sort: last heartbeat, newest']]),
            sel('bars', 'bars', Object.entries(BAR_WINDOWS).map(([sec, t]) => [sec, 'bars: ' + t]))),
          h('div', { class: 'scroll' }, h('table', { class: 'devices' },
            h('thead', {}, h('tr', {}, ['device', 'group', 'status', 'since', 'reason', 'last heartbeat', 'availability'].map((x) => h('th', {}, x)))),
            tbody)),
          h('div', { class: 'pager' }, prev, next, info))),
      h('aside', {},
        h('section', { class: 'panel' }, h('h2', {}, 'Live transitions'), feed),
        h('section', { class: 'panel' }, h('h2', {}, 'Groups'),
          h('table', { class: 'groups' }, h('thead', {}, h('tr', {},
            [['group', 'group'], ['conn.', 'connected'], ['off.', 'temporarily offline'], ['disc.', 'disconnected'], ['total', 'all devices']]
              .map(([x, title]) => h('th', { title }, x)))), groups)))));
  feed.replaceChildren(...S.feed.map(feedItem));
  loadSummary();
  loadPage();
}

// ---- device view -----------------------------------------------------------

// Timeline windows: seconds before now, or 0 = since the registration.
const WINDOWS = [['last 5 min', 300], ['last hour', 3600], ['last 6 hours', 6 * 3600], ['last 24 hours', 86400],
  ['last 7 days', 7 * 86400], ['since registration', 0]];

function deviceView(id, params) {
  const w = params.get('w');
  // Without ?w= the window is chosen once the device is read: since its
  // registration, or the last 24 hours if it is older (a new device's whole
  // history shows at once).
  const v = { name: 'device', id, window: w === 'all' ? 0 : Number(w) || null, dev: null };
  S.view = v;
  const head = h('div', { class: 'dev-head' });
  const details = h('dl', { class: 'kv' });
  const metrics = h('div');
  const chart = h('div', { id: 'timeline' });
  const legend = h('div', { class: 'legend' });
  const hist = h('tbody', { id: 'history' });
  const msg = h('span', { class: 'note', id: 'action-msg' });
  const winSel = h('select', { id: 'window', onchange: () => { v.window = Number(winSel.value); loadTimeline(); } },
    WINDOWS.map(([t, sec]) => h('option', { value: sec, selected: sec === v.window }, t)));
  const panelOut = h('div', { id: 'device-out' });
  const audit = h('tbody', { id: 'audit' });
  const auditMore = h('button', { id: 'audit-more', type: 'button', hidden: true, onclick: () => loadAudit(true) }, 'Older events…');
  const auditBeats = h('input', { type: 'checkbox', id: 'audit-heartbeats', onchange: () => loadAudit(false) });

  async function act(label, fn) {
    msg.textContent = label + '…';
    try { msg.textContent = await fn(); } catch (e) { msg.textContent = label + ' failed: ' + e.message; }
  }
  const reconnect = h('button', { id: 'reconnect', onclick: () => act('Reconnect', async () => {
    await api(devURL(id, 'reconnect'), { method: 'POST' });
    setTimeout(() => loadAudit(false), 500);
    return 'Reconnect requested: the device is told on its next heartbeat.';
  }) }, 'Request reconnect');
  const remote = h('button', { id: 'remote', onclick: () => act('Remote control', async () => {
    const want = !(v.dev && v.dev.remote_control_enabled);
    await api(devURL(id), { method: 'PATCH', body: { remote_control_enabled: want } });
    setTimeout(() => { loadDevice(); loadAudit(false); }, 500);
    return 'Remote control ' + (want ? 'enabled' : 'disabled') + ' (applied through the event log).';
  }) }, 'Remote control');
  const rekey = h('button', { id: 'rekey', onclick: () => panelOut.replaceChildren(confirmBox(
    'Re-key ' + id + '? Its current token stops working now; the device needs the new one.', 'Yes, re-key', () => act('Re-key', async () => {
      const r = await api(devURL(id, 'token'), { method: 'POST' });
      panelOut.replaceChildren(tokenBox(id, r.token, 'New token for'));
      setTimeout(() => loadAudit(false), 500);
      return 'Re-keyed: the old token is refused from now on.';
    }))) }, 'Re-key…');
  const decommission = h('button', { id: 'decommission', class: 'danger', onclick: () => panelOut.replaceChildren(confirmBox(
    'Decommission ' + id + '? It leaves the fleet: its token stops working and it is no longer tracked. Its history stays readable.',
    'Yes, decommission', () => act('Decommission', async () => {
      await api(devURL(id), { method: 'DELETE' });
      setTimeout(() => { loadDevice(); loadAudit(false); }, 500);
      return 'Decommissioned.';
    }))) }, 'Decommission…');
  const probeIn = h('input', { id: 'probe-url', type: 'url', placeholder: 'http://10.0.0.7:8080/health' });
  const probeForm = h('form', { class: 'filters', id: 'probe-form' }, probeIn,
    h('button', { type: 'submit' }, 'Set probe URL'),
    h('button', { type: 'button', id: 'probe-clear', onclick: () => setProbe('') }, 'Clear'));
  async function setProbe(u) {
    await act('Probe URL', async () => {
      const r = await api(devURL(id), { method: 'PATCH', body: { probe_url: u } });
      probeIn.value = r.probe_url || '';
      setTimeout(() => loadAudit(false), 500);
      return r.probe_url ? 'Probe URL set: ' + r.probe_url : 'Probe URL cleared.';
    });
  }
  probeForm.addEventListener('submit', (ev) => { ev.preventDefault(); setProbe(probeIn.value.trim()); });

  // The audit trail: the device's input events from the log
  // (GET /v1/devices/{id}/events), oldest first; heartbeats only on demand.
  let auditAfter = 0;
  async function loadAudit(more) {
    const types = ['device_registered', 'device_decommissioned', 'reconnect_requested', 'reconnect_delivered', 'remote_control_changed', 'ping_result'];
    if (auditBeats.checked) types.push('heartbeat');
    const p = { types: types.join(','), limit: 100 };
    if (more && auditAfter) p.after = auditAfter;
    try {
      const r = await api(devURL(id, 'events', p));
      if (S.view !== v) return;
      const rows = r.events.map((e) => h('tr', { 'data-type': e.type }, h('td', {}, when(e.at)), h('td', {}, e.type.replace(/_/g, ' ')),
        h('td', {}, e.actor || ''), h('td', { class: 'detail' }, auditDetail(e))));
      if (more) audit.append(...rows); else audit.replaceChildren(...rows);
      if (!audit.children.length) audit.append(h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No event.')));
      auditAfter = r.next_after || 0;
      auditMore.hidden = !r.next_after;
    } catch (e) { audit.replaceChildren(h('tr', {}, h('td', { colspan: 4, class: e.status === 403 ? 'muted' : 'error' }, e.message))); }
  }

  async function loadDevice() {
    let d;
    try {
      d = await api(devURL(id));
      // Never show another device's data (a path a proxy rewrote …).
      if (d.id !== id) throw new APIError(0, 'wrong_device', 'the API answered for another device (' + d.id + ')');
    } catch (e) {
      head.replaceChildren(h('h1', {}, id), h('span', { class: 'error' }, e.status === 404 ? 'No such device.' : e.message));
      return;
    }
    if (S.view !== v) return;
    v.dev = d;
    head.replaceChildren(h('h1', {}, d.id), badge(d.status), h('span', { class: 'muted' }, 'since ', when(d.status_since)),
      h('span', { class: 'spacer' }), isAdmin() ? h('div', { class: 'actions admin-only' }, reconnect, remote, rekey, decommission) : '');
    if (v.window === null) {
      const reg = d.registered_at ? new Date(d.registered_at).getTime() : 0;
      v.window = reg && Date.now() - reg < 86400e3 ? 0 : 86400;
      winSel.value = String(v.window);
    }
    remote.textContent = d.remote_control_enabled ? 'Disable remote control' : 'Enable remote control';
    const kv = [
      ['group', d.group || '—'], ['reason', d.reason || '—'], ['reason code', d.reason_code || '—'],
      ['last heartbeat', when(d.last_heartbeat_at)],
      ['last ping', d.last_ping_at ? h('span', {}, when(d.last_ping_at), d.last_ping_ok ? ' · ok' : ' · failed') : 'never'],
      ['remote control', d.remote_control_enabled ? 'enabled' : 'disabled'],
      ['gateway', d.gateway || '—'], ['registered', when(d.registered_at)],
    ];
    details.replaceChildren(...kv.flatMap(([k, x]) => [h('dt', {}, k), h('dd', {}, x)]));
    const m = d.metrics || {};
    const keys = Object.keys(m).sort();
    metrics.replaceChildren(
      keys.length ? h('table', { id: 'metrics' }, h('tbody', {}, keys.map((k) => h('tr', {}, h('td', {}, k),
        h('td', {}, typeof m[k] === 'object' ? JSON.stringify(m[k]) : String(m[k])))))) :
        h('p', { class: 'muted' }, 'No metrics reported yet.'),
      d.metrics_at ? h('p', { class: 'note' }, 'reported ', when(d.metrics_at), ' with a heartbeat') : '');
  }

  async function loadTimeline() {
    if (v.window === null) await loadDevice();
    if (v.window === null) v.window = 86400;
    const to = new Date();
    let from = new Date(to.getTime() - v.window * 1000);
    if (!v.window) {
      if (!v.dev) await loadDevice();
      const reg = v.dev && (v.dev.registered_at || v.dev.status_since);
      from = reg ? new Date(Math.min(new Date(reg).getTime(), to.getTime() - 1000)) : new Date(to.getTime() - 86400000);
    }
    const iso = (d) => d.toISOString();
    let start, trs, av;
    try {
      [start, trs, av] = await Promise.all([
        api(devURL(id, 'status', { at: iso(from) })),
        api(devURL(id, 'transitions', { limit: 1000, from: iso(from), to: iso(to) })),
        api(devURL(id, 'availability', { from: iso(from), to: iso(to) })),
      ]);
    } catch (e) {
      chart.replaceChildren(h('p', { class: 'error' }, e.message));
      return;
    }
    if (S.view !== v) return;
    if (start.id !== id || av.id !== id) {
      chart.replaceChildren(h('p', { class: 'error' }, 'the API answered for another device'));
      return;
    }
    chart.replaceChildren(timeline(from, to, start.status || 'unknown', trs.transitions, v.dev && v.dev.registered_at));
    // (percent is exact; seconds are whole and a short stay may round to 0)
    legend.replaceChildren(...[...STATUSES, 'unknown'].filter((st) => av.percent[st] > 0 && (st !== 'unknown' || av.percent[st] >= 0.05)).map((st) =>
      h('span', { 'data-status': st }, h('span', { class: 'sw ' + st }), LABEL[st] + ' ' + av.percent[st].toFixed(1) + '%')));
    if (trs.transitions.length === 1000) legend.append(h('span', { class: 'note' }, 'only the first 1000 transitions of the window are drawn'));
  }

  async function loadHistory() {
    try {
      const r = await api(devURL(id, 'transitions', { limit: 50 }));
      if (S.view !== v) return;
      const rows = r.transitions.slice().reverse();
      hist.replaceChildren(...rows.map((t) => h('tr', {}, h('td', {}, when(t.at)), h('td', {}, badge(t.from), ' → ', badge(t.to)),
        h('td', {}, t.reason_code), h('td', {}, t.reason))));
      if (!rows.length) hist.append(h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No transition yet.')));
    } catch (e) { hist.replaceChildren(h('tr', {}, h('td', { colspan: 4, class: 'error' }, e.message))); }
  }

  let timer = null;
  v.onTransition = () => {
    clearTimeout(timer);
    // The projection applies the transition a moment after the stream has it.
    timer = setTimeout(() => { loadDevice(); loadTimeline(); loadHistory(); }, 300);
  };
  const adminPanel = isAdmin() ? h('section', { class: 'panel admin-only' }, h('h2', {}, 'Manage'),
    h('p', { class: 'note' }, 'Probe URL: where the ping service checks the device when it goes quiet (the probe policy applies).'),
    probeForm, panelOut) : '';

  show(h('p', {}, h('a', { href: '#/' }, '‹ fleet')), head,
    h('section', { class: 'panel' }, h('div', { class: 'filters' }, h('h2', {}, 'Status timeline'), winSel), chart, legend),
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h2', {}, 'Details'), details, h('p', {}, msg)),
      h('section', { class: 'panel' }, h('h2', {}, 'Latest metrics'), metrics)),
    adminPanel,
    h('section', { class: 'panel' }, h('h2', {}, 'Transitions (newest first)'),
      h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ['at', 'change', 'code', 'reason'].map((x) => h('th', {}, x)))), hist))),
    h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Audit trail (oldest first)'), h('span', { class: 'spacer' }),
      h('label', { class: 'note' }, auditBeats, ' heartbeats too')),
    h('div', { class: 'scroll' }, h('table', { id: 'audit-table' }, h('thead', {}, h('tr', {}, ['at', 'event', 'by', 'detail'].map((x) => h('th', {}, x)))), audit)),
    auditMore));
  loadDevice();
  loadTimeline();
  loadHistory();
  loadAudit(false);
}

// auditDetail says what an input event carried.
function auditDetail(e) {
  if (e.registered) return Object.entries(e.registered).filter(([, x]) => x !== '' && x !== null).map(([k, x]) => k + ' ' + x).join(' · ');
  if (e.remote_control) return e.remote_control.enabled ? 'enabled' : 'disabled';
  if (e.ping) return (e.ping.ok ? 'ok' : 'failed') + (e.ping.rtt_ms !== undefined ? ' · ' + e.ping.rtt_ms + ' ms' : '');
  if (e.delivered) return 'delivered (' + e.delivered.reason + ')';
  if (e.heartbeat && e.heartbeat.metrics) return 'metrics ' + JSON.stringify(e.heartbeat.metrics).slice(0, 120);
  return '';
}

// timeline draws the status over [from, to] as one bar of coloured segments
// (SVG, 1000 units wide), with a time axis. initial is the status at from
// ('unknown' before the registration, which registeredAt tells).
function timeline(from, to, initial, transitions, registeredAt) {
  const W = 1000, X0 = 10, X1 = 990, Y = 18, H = 34;
  const t0 = from.getTime(), t1 = to.getTime();
  const x = (t) => X0 + (X1 - X0) * (Math.min(Math.max(t, t0), t1) - t0) / (t1 - t0);
  const segs = [];
  let cur = initial, since = t0;
  const reg = registeredAt ? new Date(registeredAt).getTime() : NaN;
  if (cur === 'unknown' && reg >= t0 && reg < t1) { // (the API has microseconds, JavaScript milliseconds)
    if (reg > t0) segs.push(['unknown', t0, reg]);
    cur = transitions.length ? transitions[0].from : 'registered';
    since = reg;
  }
  for (const t of transitions) {
    const at = new Date(t.at).getTime();
    if (at > since) segs.push([cur, since, at]);
    cur = t.to; since = Math.max(since, at);
  }
  segs.push([cur, since, t1]);
  const svg = s('svg', { class: 'timeline', viewBox: `0 0 ${W} 80`, role: 'img', 'aria-label': 'status timeline' });
  svg.append(s('rect', { class: 'bg', x: X0, y: Y, width: X1 - X0, height: H }));
  for (const [st, a, b] of segs) {
    const r = s('rect', { class: 'seg ' + st, 'data-status': st, x: x(a), y: Y, width: Math.max(x(b) - x(a), 0.5), height: H },
      s('title', {}, `${LABEL[st]}: ${new Date(a).toLocaleString()} – ${new Date(b).toLocaleString()}`));
    svg.append(r);
  }
  const ticks = 6;
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + (t1 - t0) * i / ticks, xx = x(t);
    svg.append(s('line', { class: 'tick', x1: xx, x2: xx, y1: Y + H, y2: Y + H + 5 }));
    svg.append(s('text', { x: xx, y: Y + H + 18, 'text-anchor': i === 0 ? 'start' : i === ticks ? 'end' : 'middle' },
      i === ticks ? 'now' : fmtTick(new Date(t), t1 - t0)));
  }
  return svg;
}

// ---- routing ---------------------------------------------------------------

function route() {
  if (!S.token) { renderLogin(); return; }
  const hash = location.hash || '#/';
  const qi = hash.indexOf('?'); // ids in the hash are encoded: a raw "?" starts parameters
  const path = qi >= 0 ? hash.slice(0, qi) : hash;
  const params = new URLSearchParams(qi >= 0 ? hash.slice(qi + 1) : '');
  const m = path.match(/^#\/device\/(.+)$/);
  if (m) { deviceView(decodeURIComponent(m[1]), params); return; }
  fleetView(params);
}

async function start() {
  if (!S.role) {
    try { await whoami(); } catch (e) { if (e.status !== 401) renderLogin('Cannot reach the API: ' + e.message); return; }
  }
  document.getElementById('signout').hidden = false;
  document.getElementById('live').hidden = false;
  connectStream();
  route();
}

window.addEventListener('hashchange', () => { if (S.token) route(); });
document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
setInterval(() => {
  for (const el of document.querySelectorAll('time[data-ago]')) if (el.dataset.ago) el.textContent = ago(el.dataset.ago);
}, 5000);
// Earlier versions kept the token in a cookie for the stream: drop it.
document.cookie = 'devstatus_token=; path=/v1/stream; max-age=0; SameSite=Strict';
if (S.token) start(); else renderLogin();
