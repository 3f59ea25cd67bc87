/*
 * Fulcrum's live dashboard: plain JavaScript, no build step, served by the admin listener next
 * to uPlot. It reads `GET /events` (Server-Sent Events through fetch, so the request can carry
 * the bearer token), `GET /status` every few seconds (header, certificates, runtime changes), and drains, enables and disables
 * backends through the admin API. Everything is same-origin (the CSP allows nothing else).
 */
(() => {
  'use strict';

  /** Seconds of samples kept and charted (the server keeps the same five minutes). */
  const windowSeconds = 300;
  const tokenKey = 'fulcrum.admin-token';
  const statusEvery = 5000;
  /** A certificate with fewer whole days left is shown amber (the default of tls.expiry_warning). */
  const certificateWarningDays = 21;
  /** No message for this long: the stream is dead even if the socket is not. */
  const staleAfter = 5000;
  // No red: red means errors on these charts.
  const palette = ['#4f9cf9', '#f5a524', '#2ec4a6', '#a77bf3', '#f07cc0', '#8bd450', '#5bc0eb', '#ff8c42', '#ffd166', '#c3a6ff', '#9aa5b1'];
  const css = getComputedStyle(document.documentElement);
  const theme = {
    axis: css.getPropertyValue('--muted').trim() || '#8a94a6',
    grid: css.getPropertyValue('--grid').trim() || '#222936',
    bad: css.getPropertyValue('--bad').trim() || '#e5484d',
    warn: css.getPropertyValue('--warn').trim() || '#f5a524',
  };

  const byId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
  const el = {
    version: byId('version'),
    uptime: byId('uptime'),
    configFile: byId('config-file'),
    pools: byId('pools'),
    conn: byId('connection'),
    connLabel: document.querySelector('.conn-label'),
    rps: byId('rps-total'),
    requestsTotal: byId('requests-total'),
    errorRate: byId('error-rate'),
    p50: byId('p50'),
    p99: byId('p99'),
    inFlight: byId('in-flight'),
    tunnels: byId('tunnels-open'),
    rateLimited: byId('rate-limited'),
    rateLimitedTotal: byId('rate-limited-total'),
    tbody: byId('backend-rows'),
    noBackends: byId('no-backends'),
    backendCount: byId('backend-count'),
    actionError: byId('action-error'),
    certificates: byId('certificates'),
    certificateNote: byId('certificate-note'),
    certificateRows: byId('certificate-rows'),
    certificateTemplate: document.getElementById('certificate-template'),
    runtimeNote: byId('runtime-note'),
    runtimeList: byId('runtime-list'),
    tokenForm: byId('token-form'),
    tokenInput: byId('token-input'),
    tokenCancel: byId('token-cancel'),
    rowTemplate: document.getElementById('row-template'),
  };

  /** Writes text only when it changed (no needless layout work). */
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // ---------------------------------------------------------------- formatting

  const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const dash = '–';
  function fmtRate(v) {
    if (v == null) return dash;
    if (v >= 10000) return (v / 1000).toFixed(1) + 'k';
    if (v >= 100) return integer.format(v);
    return v.toFixed(1);
  }
  function fmtMs(v) {
    if (v == null) return dash;
    if (v >= 1000) return (v / 1000).toFixed(2) + ' s';
    if (v >= 100) return v.toFixed(0) + ' ms';
    if (v >= 10) return v.toFixed(1) + ' ms';
    return v.toFixed(2) + ' ms';
  }
  function fmtPct(share) {
    if (share == null) return dash;
    const p = share * 100;
    if (p === 0) return '0%';
    return (p < 1 ? p.toFixed(2) : p.toFixed(1)) + '%';
  }
  /** Bytes (per second) in decimal units: 950 B, 12.3 kB, 4.1 MB. */
  function fmtBytes(v) {
    if (v == null) return dash;
    if (v < 1000) return integer.format(v) + ' B';
    const units = ['kB', 'MB', 'GB', 'TB'];
    let i = -1;
    do {
      v /= 1000;
      i++;
    } while (v >= 1000 && i < units.length - 1);
    return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }
  function fmtDuration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, '0');
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${pad(m)}m`;
    if (m > 0) return `${m}m ${pad(s % 60)}s`;
    return `${s}s`;
  }
  /** HH:MM:SS (24 h, local) of an ISO time or epoch milliseconds. */
  function fmtClock(time) {
    const d = new Date(time);
    return Number.isNaN(d.getTime()) ? String(time) : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }

  // ---------------------------------------------------------------- token

  let token = null;
  /** Work to redo once a token is entered (a read that answered 401). */
  let afterToken = [];

  (function readToken() {
    const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (match) {
      try {
        token = decodeURIComponent(match[1]);
      } catch {
        token = match[1];
      }
      try {
        sessionStorage.setItem(tokenKey, token);
      } catch {
        /* storage off: the token lives for this page only */
      }
      // Out of the address bar (and the history) at once.
      const rest = location.hash.slice(1).split('&').filter((p) => !p.startsWith('token=')).join('&');
      history.replaceState(history.state, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    } else {
      try {
        token = sessionStorage.getItem(tokenKey);
      } catch {
        token = null;
      }
    }
  })();

  function headers(extra) {
    const h = Object.assign({}, extra);
    if (token) h.Authorization = 'Bearer ' + token;
    return h;
  }

  /** Shows the inline token form with why it is needed; `retry` runs once a token is given. */
  function askToken(reason, retry) {
    if (retry && !afterToken.includes(retry)) afterToken.push(retry);
    setText(el.tokenForm.querySelector('label'), reason);
    if (el.tokenForm.hidden) {
      el.tokenForm.hidden = false;
      el.tokenInput.value = '';
      el.tokenInput.focus();
    }
  }

  el.tokenForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = el.tokenInput.value.trim();
    if (!value) return;
    token = value;
    try {
      sessionStorage.setItem(tokenKey, token);
    } catch {
      /* kept in memory only */
    }
    el.tokenInput.value = '';
    el.tokenForm.hidden = true;
    hideError();
    const work = afterToken;
    afterToken = [];
    for (const f of work) f();
  });
  el.tokenCancel.addEventListener('click', () => {
    el.tokenForm.hidden = true;
    el.tokenInput.value = '';
    afterToken = [];
  });

  /** The `error` of an admin API answer, or its status. */
  async function errorOf(res) {
    try {
      const body = await res.json();
      if (body && typeof body.error === 'string') return body.error;
    } catch {
      /* not JSON */
    }
    return `HTTP ${res.status} ${res.statusText}`.trim();
  }

  // ---------------------------------------------------------------- /status

  let status = null;
  let statusAt = 0;
  /** The backend set of the last sample, to notice changes that /status describes. */
  let lastShape = null;
  let statusTimer = 0;

  async function refreshStatus() {
    clearTimeout(statusTimer);
    statusTimer = setTimeout(refreshStatus, statusEvery);
    try {
      const res = await fetch('/status', { headers: headers(), cache: 'no-store' });
      if (res.status === 401) {
        askToken('This admin address needs the admin token to show its status. Enter it below.', refreshStatus);
        return;
      }
      if (!res.ok) return;
      status = await res.json();
      statusAt = performance.now();
      renderStatus();
    } catch {
      /* the event stream shows the connection state */
    }
  }

  function renderStatus() {
    if (!status) return;
    setText(el.version, status.version ? 'v' + status.version : '');
    const file = status.config_file;
    setText(el.configFile, file ? file.split('/').pop() : 'none (embedded or demo)');
    el.configFile.classList.toggle('muted', !file);
    el.configFile.title = file || '';
    setText(el.pools, status.pools.map((p) => (p.protocol === 'tcp' ? `${p.name} · tcp · ${p.policy} · ${p.available}/${p.upstreams} up · ${integer.format(p.tcp_connections ?? 0)} open` : `${p.name} · ${p.policy} · ${p.available}/${p.upstreams} up`)).join('   ') || dash);
    renderUptime();
    renderCertificates(status.certificates || []);
    renderChanges(status);
  }

  /** `expired` (or its files failed: `bad`), within the listener's tls.expiry_warning (`warn`), or fine (`ok`). */
  function certificateLevel(c) {
    if (c.days_left < 0) return 'bad';
    return c.days_left < (c.warning_days ?? certificateWarningDays) ? 'warn' : 'ok';
  }

  /** `days_left` is rounded down: 0 is under a day left, -1 expired within the last day, -3 two whole days ago. */
  function fmtDaysLeft(days) {
    if (days === -1) return 'expired <1 day ago';
    if (days < 0) return `expired ${-days - 1} day${days === -2 ? '' : 's'} ago`;
    if (days === 0) return '<1 day';
    return `${days} day${days === 1 ? '' : 's'}`;
  }

  /** The certificates card: one row per certificate, hidden without https listeners. */
  function renderCertificates(certificates) {
    el.certificates.hidden = certificates.length === 0;
    const key = JSON.stringify(certificates);
    if (el.certificateRows.dataset.key === key) return;
    el.certificateRows.dataset.key = key;
    const counts = { warn: 0, bad: 0, error: 0 };
    const rowsOut = certificates.map((c) => {
      const tr = el.certificateTemplate.content.firstElementChild.cloneNode(true);
      const cell = (id) => byId(id, tr);
      const level = certificateLevel(c);
      counts[level] = (counts[level] ?? 0) + 1;
      if (c.error) counts.error++;
      tr.dataset.level = level;
      tr.dataset.serial = c.serial;
      tr.dataset.listener = c.listener;
      cell('certificate-names').textContent = c.names.join(', ');
      cell('certificate-names').title = `serial ${c.serial}`;
      cell('certificate-default').hidden = !c.is_default;
      cell('certificate-default').title = 'Shown to clients that send no server name (SNI)';
      cell('certificate-listener').textContent = c.listener;
      const days = cell('certificate-days');
      days.textContent = fmtDaysLeft(c.days_left);
      days.className = level === 'ok' ? '' : `badge small ${level}`;
      const expires = cell('certificate-expires');
      expires.textContent = c.not_after.slice(0, 10);
      expires.title = `valid from ${c.not_before} until ${c.not_after}`;
      const source = cell('certificate-source');
      source.textContent = c.source;
      source.title = c.source;
      const error = cell('certificate-error');
      error.textContent = c.error ? `${c.error} (the certificate loaded before is served)` : '';
      error.title = error.textContent;
      return tr;
    });
    el.certificateRows.replaceChildren(...rowsOut);
    const notes = [`${certificates.length} served`];
    if (counts.bad > 0) notes.push(`${counts.bad} expired`);
    if (counts.warn > 0) notes.push(`${counts.warn} expiring soon`);
    if (counts.error > 0) notes.push(`${counts.error} with a file problem`);
    setText(el.certificateNote, notes.join(' · '));
  }

  function renderUptime() {
    if (status) setText(el.uptime, fmtDuration(status.uptime_seconds + (performance.now() - statusAt) / 1000));
  }

  function renderChanges(s) {
    const changes = s.runtime_changes || [];
    let note;
    if (changes.length === 0) note = s.persisted ? 'none: API changes to upstreams are written to the configuration file (admin.persist)' : s.config_file ? 'none: the running configuration is the file\'s' : 'none';
    else note = `${changes.length} made through the admin API and not in the configuration file: lost on restart unless persisted (admin.persist)`;
    setText(el.runtimeNote, note);
    const list = el.runtimeList;
    const want = changes.map((c) => `${c.at}|${c.action}|${c.pool}|${c.upstream}|${c.weight ?? ''}`).join('\n');
    if (list.dataset.key === want) return;
    list.dataset.key = want;
    const items = changes.map((c) => {
      const li = document.createElement('li');
      li.dataset.testid = 'runtime-change';
      const time = document.createElement('span');
      time.className = 'muted mono';
      time.textContent = fmtClock(c.at);
      const action = document.createElement('span');
      action.className = `badge small ${c.action === 'drain' ? 'warn' : c.action === 'disable' || c.action === 'remove' ? 'bad' : 'ok'}`;
      action.textContent = c.action;
      const what = document.createElement('span');
      what.className = 'mono';
      what.textContent = `${c.upstream}`;
      const where = document.createElement('span');
      where.className = 'muted';
      where.textContent = `pool ${c.pool}${c.weight !== undefined ? ` · weight ${c.weight}` : ''}`;
      li.append(time, action, what, where);
      return li;
    });
    list.replaceChildren(...items);
  }

  // ---------------------------------------------------------------- the event stream

  /** Samples of the last five minutes, oldest first. */
  let samples = [];
  let lastMessage = 0;
  let backoff = 1000;
  let retryTimer = 0;
  let controller = null;
  let leaving = false;

  function setConnection(state, text) {
    if (el.conn.dataset.state !== state) el.conn.dataset.state = state;
    setText(el.connLabel, text);
  }

  /** Reads an SSE body (LF or CRLF lines) and calls `handle(event, data)` per message. */
  async function readEvents(body, handle) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r/g, '');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line === '' || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? '' : line.slice(colon + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
        }
        if (data.length > 0) handle(event, data.join('\n'));
      }
    }
  }

  async function connect() {
    clearTimeout(retryTimer);
    controller?.abort();
    const mine = new AbortController();
    controller = mine;
    if (samples.length > 0) setConnection('reconnecting', 'reconnecting');
    try {
      const res = await fetch('/events', { headers: headers({ accept: 'text/event-stream' }), cache: 'no-store', signal: mine.signal });
      if (res.status === 401) {
        controller = null;
        setConnection('error', 'token needed');
        askToken('This admin address needs the admin token to show live data. Enter it below.', connect);
        return;
      }
      if (!res.ok || !res.body) throw new Error(`/events answered ${res.status}`);
      lastMessage = performance.now();
      await readEvents(res.body, onEvent);
    } catch {
      /* reconnect below */
    }
    if (leaving || controller !== mine) return;
    controller = null;
    setConnection('reconnecting', `reconnecting in ${Math.round(backoff / 1000)}s`);
    retryTimer = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 15000);
  }

  function onEvent(type, data) {
    let value;
    try {
      value = JSON.parse(data);
    } catch {
      return;
    }
    lastMessage = performance.now();
    backoff = 1000;
    if (type === 'history') {
      samples = Array.isArray(value) ? value.slice(-windowSeconds) : [];
    } else if (type === 'sample') {
      samples.push(value);
      // Backends added, removed, drained or disabled: the runtime-changes panel and header follow at once.
      const shape = Array.isArray(value.backends) ? value.backends.map((b) => `${b.pool}/${b.id}/${b.enabled}/${b.draining}/${b.weight}`).join(' ') : '';
      if (lastShape !== null && shape !== lastShape) void refreshStatus();
      lastShape = shape;
      const oldest = value.t - windowSeconds * 1000;
      while (samples.length > 0 && (samples[0].t < oldest || samples.length > windowSeconds + 5)) samples.shift();
    } else {
      return;
    }
    setConnection('live', 'live');
    scheduleRender();
  }

  addEventListener('pagehide', () => {
    leaving = true;
    controller?.abort();
  });

  // Once a second: the uptime clock, and the watchdog for a stream that went quiet.
  setInterval(() => {
    renderUptime();
    if (controller && lastMessage > 0 && performance.now() - lastMessage > staleAfter) {
      lastMessage = 0;
      controller.abort();
    }
  }, 1000);

  // ---------------------------------------------------------------- rendering

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    const last = samples[samples.length - 1];
    el.noBackends.hidden = last !== undefined;
    if (last === undefined) return;
    renderTotals(last);
    renderTable(last);
    renderCharts(last);
  }

  function renderTotals(s) {
    setText(el.rps, fmtRate(s.rps));
    setText(el.requestsTotal, `${integer.format(s.requests_total)} requests`);
    setText(el.errorRate, fmtPct(s.error_rate));
    el.errorRate.classList.toggle('bad', s.error_rate >= 0.05);
    setText(el.p50, fmtMs(s.p50_ms));
    setText(el.p99, fmtMs(s.p99_ms));
    setText(el.inFlight, integer.format(s.in_flight));
    // Samples from a balancer without tunnel counts (an older version) show a dash.
    setText(el.tunnels, s.tunnels_open == null ? dash : integer.format(s.tunnels_open));
    setText(el.rateLimited, fmtRate(s.rate_limited_per_s));
    el.rateLimited.classList.toggle('warn', s.rate_limited_per_s > 0);
    setText(el.rateLimitedTotal, `${integer.format(s.rate_limited_total)} in total`);
  }

  const keyOf = (b) => b.pool + '\n' + b.id;
  /** Colours stay with a backend for the page's life, across chart rebuilds. */
  const colours = new Map();
  function colourOf(key) {
    let c = colours.get(key);
    if (c === undefined) {
      c = palette[colours.size % palette.length];
      colours.set(key, c);
    }
    return c;
  }

  /** The badge for a backend: what keeps it out of rotation, first the operator's choices. */
  function stateOf(b) {
    if (!b.enabled) return ['disabled', 'off'];
    if (b.draining) return ['draining', 'warn'];
    if (b.health === 'unhealthy') return ['unhealthy', 'bad'];
    if (b.ejected) return ['ejected', 'bad'];
    if (b.circuit === 'open') return ['circuit open', 'bad'];
    if (b.circuit === 'half-open') return ['half-open', 'warn'];
    return b.alive ? ['up', 'ok'] : ['down', 'bad'];
  }

  /** Table rows by backend, reused from sample to sample. */
  const rows = new Map();

  function makeRow(b) {
    const tr = el.rowTemplate.content.firstElementChild.cloneNode(true);
    const key = keyOf(b);
    tr.dataset.backend = b.id;
    tr.dataset.pool = b.pool;
    const cell = (id) => byId(id, tr);
    const row = {
      key,
      pool: b.pool,
      id: b.id,
      tr,
      last: b,
      busy: false,
      swatch: tr.querySelector('.swatch'),
      cells: {
        id: cell('backend-id'), pool: cell('pool'), state: cell('state'), health: cell('health'), weight: cell('weight'),
        rps: cell('rps'), p50: cell('p50'), p99: cell('p99'), errors: cell('errors'), inFlight: cell('in-flight'),
        tunnels: cell('tunnels'), bytes: cell('bytes'), ejections: cell('ejections'), requests: cell('requests'),
      },
      drain: cell('drain'),
      enable: cell('enable'),
      disable: cell('disable'),
    };
    row.cells.id.textContent = b.id;
    row.cells.pool.textContent = b.pool;
    // Only a tcp pool's backends carry byte rates: they are marked, and their in-flight count is open connections.
    if (b.bytes_in_per_s != null) {
      const badge = document.createElement('span');
      badge.className = 'badge small off';
      badge.dataset.testid = 'tcp';
      badge.textContent = 'tcp';
      badge.title = 'A TCP pool: In flight is its open connections';
      row.cells.pool.append(' ', badge);
    }
    row.swatch.style.background = colourOf(key);
    row.drain.addEventListener('click', () => act(row, 'drain'));
    row.enable.addEventListener('click', () => act(row, 'enable'));
    row.disable.addEventListener('click', () => act(row, 'disable'));
    return row;
  }

  function updateRow(row, b) {
    row.last = b;
    const c = row.cells;
    const [label, tone] = stateOf(b);
    setText(c.state, label);
    const cls = 'badge ' + tone;
    if (c.state.className !== cls) c.state.className = cls;
    if (row.tr.dataset.state !== label) row.tr.dataset.state = label;
    setText(c.health, b.health);
    c.health.classList.toggle('bad-text', b.health !== 'healthy');
    setText(c.weight, String(b.weight));
    setText(c.rps, fmtRate(b.rps));
    setText(c.p50, fmtMs(b.p50_ms));
    setText(c.p99, fmtMs(b.p99_ms));
    setText(c.errors, fmtPct(b.error_rate));
    c.errors.classList.toggle('bad-text', b.error_rate >= 0.05);
    setText(c.inFlight, integer.format(b.in_flight));
    setText(c.tunnels, b.tunnels_open == null ? dash : integer.format(b.tunnels_open));
    setText(c.bytes, b.bytes_in_per_s == null ? dash : `${fmtBytes(b.bytes_in_per_s)} / ${fmtBytes(b.bytes_out_per_s)}`);
    setText(c.ejections, integer.format(b.ejections));
    setText(c.requests, integer.format(b.requests));
    const out = b.draining || !b.enabled;
    if (row.drain.hidden !== out) row.drain.hidden = out;
    if (row.enable.hidden !== !out) row.enable.hidden = !out;
    row.drain.disabled = row.enable.disabled = row.busy;
    row.disable.disabled = row.busy || !b.enabled;
  }

  function renderTable(s) {
    const seen = new Set();
    const tbody = el.tbody;
    s.backends.forEach((b, i) => {
      const key = keyOf(b);
      seen.add(key);
      let row = rows.get(key);
      if (row === undefined) {
        row = makeRow(b);
        rows.set(key, row);
      }
      updateRow(row, b);
      const at = tbody.children[i];
      if (at !== row.tr) tbody.insertBefore(row.tr, at ?? null);
    });
    for (const [key, row] of rows) {
      if (!seen.has(key)) {
        row.tr.remove();
        rows.delete(key);
      }
    }
    const pools = new Set(s.backends.map((b) => b.pool)).size;
    const up = s.backends.filter((b) => b.alive).length;
    setText(el.backendCount, `${up} of ${s.backends.length} in rotation${pools > 1 ? ` · ${pools} pools` : ''}`);
  }

  // ---------------------------------------------------------------- actions

  const verbs = { drain: 'Drain', enable: 'Enable', disable: 'Disable' };

  function showError(text) {
    setText(el.actionError, text);
    el.actionError.hidden = false;
  }
  function hideError() {
    el.actionError.hidden = true;
  }
  el.actionError.addEventListener('click', hideError);
  el.actionError.title = 'Click to dismiss';

  async function act(row, action) {
    row.busy = true;
    updateRow(row, row.last);
    hideError();
    try {
      const res = await fetch('/backends/' + action, {
        method: 'POST',
        headers: headers({ 'content-type': 'application/json' }),
        body: JSON.stringify({ url: row.id, pool: row.pool }),
        cache: 'no-store',
      });
      if (!res.ok) {
        const message = await errorOf(res);
        showError(`${verbs[action]} ${row.id} failed: ${message}`);
        if (res.status === 401) askToken(`${verbs[action]} needs the admin token (${message}): enter it, then try again`);
        return;
      }
      const body = await res.json();
      if (body && body.backend) {
        const b = body.backend;
        row.last = Object.assign({}, row.last, {
          alive: b.alive, health: b.health, enabled: b.enabled, draining: b.draining, ejected: b.ejected,
          ejections: b.ejections, circuit: b.circuit, weight: b.weight, requests: b.requests,
        });
      }
      void refreshStatus();
    } catch (err) {
      showError(`${verbs[action]} ${row.id} failed: ${err && err.message ? err.message : err}`);
    } finally {
      row.busy = false;
      if (rows.get(row.key) === row) updateRow(row, row.last);
    }
  }

  // ---------------------------------------------------------------- charts

  const chartHeight = 170;
  const chartEls = { rps: byId('chart-rps'), p99: byId('chart-p99'), errors: byId('chart-errors') };
  const charts = { rps: null, p99: null, errors: null };
  let seriesSignature = null;
  let multiPool = false;

  /** A sample's backends by key, computed once per sample. */
  function backendsOf(s) {
    if (s._byKey === undefined) Object.defineProperty(s, '_byKey', { value: new Map(s.backends.map((b) => [keyOf(b), b])) });
    return s._byKey;
  }

  /** A legend value: the hovered point, or the newest one when the cursor is off the chart. */
  function latest(format) {
    return (u, v, sidx, idx) => {
      if (idx == null) {
        const column = u.data[sidx];
        v = column && column.length > 0 ? column[column.length - 1] : null;
      }
      return format(v);
    };
  }

  /** Axis ticks: short, no trailing zeros. */
  function fmtTick(v) {
    if (v == null) return '';
    if (Math.abs(v) >= 1000) return +(v / 1000).toFixed(1) + 'k';
    return String(+v.toFixed(2));
  }

  const fromZero = (_u, _min, max) => [0, max > 0 ? max * 1.15 : 1];

  function axes(extra) {
    const common = { stroke: theme.axis, font: '11px system-ui, sans-serif', grid: { stroke: theme.grid, width: 1 }, ticks: { stroke: theme.grid, width: 1, size: 4 } };
    const x = Object.assign({}, common, { space: 64, size: 26, values: (_u, splits) => splits.map((v) => fmtClock(v * 1000)) });
    return [x, ...extra.map((a) => Object.assign({}, common, a))];
  }

  function options(el, series, scales, axisList) {
    return {
      width: Math.max(200, el.clientWidth),
      height: chartHeight,
      padding: [6, series.some((x) => x.scale === 'rl') ? 4 : 22, 0, 0],
      cursor: { drag: { x: false, y: false, setScale: false }, points: { size: 6 } },
      // Values follow the cursor, and show the latest second when it is elsewhere.
      legend: { live: true, markers: { width: 0, fill: (u, i) => u.series[i]._colour || 'transparent' } },
      scales: Object.assign({ x: { time: true } }, scales),
      axes: axisList,
      series: [{ label: 'time', value: (_u, v) => (v == null ? dash : fmtClock(v * 1000)) }, ...series.map((x) => Object.assign({}, x, { _colour: x.stroke, value: latest(x.value) }))],
    };
  }

  function build(name, opts, data) {
    charts[name]?.destroy();
    charts[name] = new uPlot(opts, data, chartEls[name]);
  }

  function backendSeries(keys, value) {
    return keys.map((key) => {
      const [pool, id] = key.split('\n');
      return { label: multiPool ? `${pool}/${id}` : id, stroke: colourOf(key), width: 1.5, points: { show: false }, value };
    });
  }

  function renderCharts(last) {
    if (typeof uPlot !== 'function') return;
    const keys = last.backends.map(keyOf);
    multiPool = new Set(last.backends.map((b) => b.pool)).size > 1;
    const xs = samples.map((s) => s.t / 1000);
    const rps = [xs];
    const p99 = [xs];
    for (const key of keys) {
      rps.push(samples.map((s) => backendsOf(s).get(key)?.rps ?? null));
      p99.push(samples.map((s) => backendsOf(s).get(key)?.p99_ms ?? null));
    }
    const errors = [xs, samples.map((s) => Math.round(s.error_rate * 10000) / 100), samples.map((s) => s.rate_limited_per_s)];

    const signature = keys.join('\t');
    if (signature !== seriesSignature || charts.rps === null) {
      seriesSignature = signature;
      build('rps', options(chartEls.rps, backendSeries(keys, fmtRate), { y: { range: fromZero } }, axes([{ size: 44, values: (_u, v) => v.map(fmtTick) }])), rps);
      build('p99', options(chartEls.p99, backendSeries(keys, fmtMs), { y: { range: fromZero } }, axes([{ size: 44, values: (_u, v) => v.map(fmtTick) }])), p99);
    } else {
      charts.rps.setData(rps);
      charts.p99.setData(p99);
    }
    if (charts.errors === null) {
      build(
        'errors',
        options(
          chartEls.errors,
          [
            { label: 'error rate', scale: '%', stroke: theme.bad, fill: 'rgba(229, 72, 77, 0.12)', width: 1.5, points: { show: false }, value: (v) => (v == null ? dash : v + '%') },
            { label: 'rate limited/s', scale: 'rl', stroke: theme.warn, width: 1.5, points: { show: false }, value: fmtRate },
          ],
          { '%': { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] }, rl: { range: fromZero } },
          axes([
            { scale: '%', size: 44, values: (_u, v) => v.map((x) => fmtTick(x) + '%') },
            { scale: 'rl', side: 1, size: 44, grid: { show: false }, values: (_u, v) => v.map(fmtTick) },
          ]),
        ),
        errors,
      );
    } else {
      charts.errors.setData(errors);
    }
  }

  // Charts follow their card's width.
  const resize = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const name = Object.keys(chartEls).find((k) => chartEls[k] === entry.target);
      const chart = charts[name];
      const width = Math.max(200, Math.floor(entry.contentRect.width));
      if (chart && chart.width !== width) chart.setSize({ width, height: chartHeight });
    }
  });
  for (const node of Object.values(chartEls)) resize.observe(node);

  // ---------------------------------------------------------------- start

  void refreshStatus();
  void connect();
})();
