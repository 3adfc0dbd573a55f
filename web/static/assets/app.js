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
  es: null, // EventSource
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

async function api(path, opts = {}) {
  const headers = { Authorization: 'Bearer ' + S.token };
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method: opts.method || 'GET', headers, cache: 'no-store',
    body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
  });
  let data = null;
  const text = await resp.text();
  if (text) { try { data = JSON.parse(text); } catch (e) { data = null; } }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    if (resp.status === 401) signOut('The admin token was refused.');
    throw new APIError(resp.status, err.code || 'http_' + resp.status, err.message || resp.statusText);
  }
  return data;
}

// ---- sign-in ---------------------------------------------------------------

function setStreamCookie(tok) {
  // EventSource cannot send an Authorization header: /v1/stream also reads
  // this cookie (only sent to that path, never cross-site).
  document.cookie = 'devstatus_token=' + (tok ? encodeURIComponent(tok) : '') +
    '; path=/v1/stream; SameSite=Strict' + (tok ? '' : '; max-age=0');
}

function signOut(msg) {
  S.token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  setStreamCookie('');
  if (S.es) { S.es.close(); S.es = null; }
  setLive(false);
  renderLogin(msg);
}

function renderLogin(msg) {
  S.view = null;
  document.getElementById('signout').hidden = true;
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'current-password', placeholder: 'admin token', required: true });
  const out = h('p', { class: 'error' }, msg || '');
  const form = h('form', { class: 'panel login', id: 'login' },
    h('h2', {}, 'Sign in'),
    h('p', { class: 'note' }, 'The admin token (--admin-token; a dev run prints it and keeps it in data/admin-token). ' +
      'It stays in this tab only (sessionStorage).'),
    input, h('button', { class: 'primary', type: 'submit' }, 'Sign in'), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    S.token = input.value.trim();
    try {
      await api('/v1/summary');
    } catch (e) {
      out.textContent = e.status === 401 ? 'Wrong token.' : 'Cannot reach the API: ' + e.message;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, S.token);
    setStreamCookie(S.token);
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

function connectStream() {
  if (S.es) S.es.close();
  const es = new EventSource('/v1/stream');
  S.es = es;
  es.addEventListener('open', () => setLive(true));
  es.addEventListener('error', () => {
    setLive(false);
    // The browser reconnects by itself (with Last-Event-ID) unless the
    // server refused the stream (401/503): then retry later.
    if (es.readyState === EventSource.CLOSED && S.es === es && S.token) setTimeout(() => { if (S.es === es) connectStream(); }, 5000);
  });
  es.addEventListener('transition', (ev) => onTransition(JSON.parse(ev.data)));
  es.addEventListener('lagging', () => {
    // Too far behind: what we show may be stale. Reload and start afresh.
    es.close();
    S.es = null;
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

// ---- fleet view ------------------------------------------------------------

function fleetView(params) {
  const q = {
    prefix: params.get('prefix') || '', status: params.get('status') || '', group: params.get('group') || '',
    stale_for: params.get('stale_for') || '', sort: params.get('sort') || 'id',
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
    for (const [key, x] of Object.entries(q)) if (x && !(key === 'sort' && x === 'id')) p.set(key, x);
    history.replaceState(null, '', '#/' + (p.toString() ? '?' + p : ''));
    v.cursors = ['']; v.page = 0;
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
      h('td', {}, h('a', { href: '#/?group=' + encodeURIComponent(g) }, g || '(none)')),
      ...['connected', 'temporarily_offline', 'disconnected', 'total'].map((k) => h('td', { class: 'n' }, c[k].toLocaleString())))));
    if (gs.length > 12) groups.append(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, `… and ${gs.length - 12} more groups`)));
    groupList.replaceChildren(...gs.slice(0, 200).map(([g]) => h('option', { value: g })));
  }

  async function loadSummary() {
    try { v.summary = await api('/v1/summary'); renderCards(); } catch (e) { /* shown by the table */ }
  }

  function row(d) {
    const tr = h('tr', { 'data-id': d.id, 'data-status': d.status },
      h('td', { class: 'id' }, h('a', { class: 'dev-link', href: devHref(d.id) }, d.id)),
      h('td', {}, d.group || h('span', { class: 'muted' }, '—')),
      h('td', { class: 'st' }, badge(d.status)),
      h('td', { class: 'since' }, when(d.status_since)),
      h('td', { class: 'reason' }, d.reason || ''),
      h('td', {}, when(d.last_heartbeat_at)));
    return tr;
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
      if (!page.devices.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No device matches.')));
      prev.disabled = v.page === 0;
      next.disabled = !page.next_cursor;
      info.textContent = `page ${v.page + 1} · ${page.devices.length} devices`;
    } catch (e) {
      tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'error' }, e.message)));
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
    }
  };

  const statusSel = sel('status', 'status', [['', 'any status'], ...STATUSES.map((st) => [st, LABEL[st]])]);
  show(
    cards,
    h('div', { class: 'layout' },
      h('div', {},
        h('section', { class: 'panel' },
          h('h2', {}, 'Devices'),
          h('div', { class: 'filters' }, search, statusSel, group, groupList,
            sel('stale', 'stale_for', [['', 'any last heartbeat'], ['60', 'silent > 1 min'], ['300', 'silent > 5 min'],
              ['3600', 'silent > 1 hour'], ['86400', 'silent > 1 day']]),
            sel('sort', 'sort', [['id', 'sort: id'], ['-status_since', 'sort: status changed, newest'],
              ['status_since', 'sort: status changed, oldest'], ['last_heartbeat_at', 'sort: last heartbeat, oldest'],
              ['-last_heartbeat_at', 'sort: last heartbeat, newest']])),
          h('table', { class: 'devices' },
            h('thead', {}, h('tr', {}, ['device', 'group', 'status', 'since', 'reason', 'last heartbeat'].map((x) => h('th', {}, x)))),
            tbody),
          h('div', { class: 'pager' }, prev, next, info))),
      h('aside', {},
        h('section', { class: 'panel' }, h('h2', {}, 'Live transitions'), feed),
        h('section', { class: 'panel' }, h('h2', {}, 'Groups'),
          h('table', { class: 'groups' }, h('thead', {}, h('tr', {},
            ['group', 'conn.', 'offline', 'disc.', 'total'].map((x) => h('th', {}, x)))), groups)))));
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
  const v = { name: 'device', id, window: w === 'all' ? 0 : Number(w) || 3600, dev: null };
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

  async function act(label, fn) {
    msg.textContent = label + '…';
    try { msg.textContent = await fn(); } catch (e) { msg.textContent = label + ' failed: ' + e.message; }
  }
  const reconnect = h('button', { id: 'reconnect', onclick: () => act('Reconnect', async () => {
    await api(devURL(id, 'reconnect'), { method: 'POST' });
    return 'Reconnect requested: the device is told on its next heartbeat.';
  }) }, 'Request reconnect');
  const remote = h('button', { id: 'remote', onclick: () => act('Remote control', async () => {
    const want = !(v.dev && v.dev.remote_control_enabled);
    await api(devURL(id), { method: 'PATCH', body: { remote_control_enabled: want } });
    setTimeout(loadDevice, 500);
    return 'Remote control ' + (want ? 'enabled' : 'disabled') + ' (applied through the event log).';
  }) }, 'Remote control');

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
      h('span', { class: 'spacer' }), h('div', { class: 'actions' }, reconnect, remote));
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

  show(h('p', {}, h('a', { href: '#/' }, '‹ fleet')), head,
    h('section', { class: 'panel' }, h('div', { class: 'filters' }, h('h2', {}, 'Status timeline'), winSel), chart, legend),
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h2', {}, 'Details'), details, h('p', {}, msg)),
      h('section', { class: 'panel' }, h('h2', {}, 'Latest metrics'), metrics)),
    h('section', { class: 'panel' }, h('h2', {}, 'Transitions (newest first)'),
      h('table', {}, h('thead', {}, h('tr', {}, ['at', 'change', 'code', 'reason'].map((x) => h('th', {}, x)))), hist)));
  loadDevice();
  loadTimeline();
  loadHistory();
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

function start() {
  document.getElementById('signout').hidden = false;
  setStreamCookie(S.token);
  connectStream();
  route();
}

window.addEventListener('hashchange', () => { if (S.token) route(); });
document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
setInterval(() => {
  for (const el of document.querySelectorAll('time[data-ago]')) if (el.dataset.ago) el.textContent = ago(el.dataset.ago);
}, 5000);
if (S.token) start(); else renderLogin();
