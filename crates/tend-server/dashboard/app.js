// tend dashboard: a small single-page app over the v1 API. No build step, no dependencies.
// Every view is level-triggered: it re-reads what it shows from the API when an event arrives on
// the live stream (or every few seconds), and keeps no state the API does not have.

const $ = (sel) => document.querySelector(sel);
const main = $('#main');
const PAGE = 50;
const state = {
  token: sessionStorage.getItem('tend.token'),
  events: [], // recent events, newest last (from the stream)
  lastSeq: 0,
  live: false,
  view: null,
  timer: null,
  stream: null,
  stepSeen: new Map(), // "service/plan/phase/step" -> { status, since }
  page: 0,
  filter: '',
};

// ---------- helpers ----------

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function ago(ms) {
  if (ms == null) return '—';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function when(tsMs) {
  if (!tsMs) return '—';
  const d = Date.now() - tsMs;
  return d >= 0 ? `${ago(d)} ago` : `in ${ago(-d)}`;
}

function badge(text, cls) {
  return `<span class="badge ${cls || ''}">${esc(text)}</span>`;
}

const STATUS_CLASS = {
  complete: 'ok', running: 'ok', up: 'ok', ready: 'ok', succeeded: 'ok',
  started: 'info', starting: 'info', prepared: 'info', launching: 'info', updating: 'info', in_progress: 'info',
  rolling_back: 'warn', waiting: 'warn', stopped: 'warn', replacing: 'warn', degraded: 'warn', crash_looping: 'warn',
  decommissioning: 'warn', unknown: 'warn', reserved: 'info', pending: '',
  error: 'bad', blocked: 'bad', failed: 'bad', lost: 'bad', unreachable: 'bad', timed_out: 'bad',
  // Job-instance statuses (ecChronos' words).
  COMPLETED: 'ok', ON_TIME: 'info', LATE: 'warn', OVERDUE: 'bad', BLOCKED: 'bad', aborted: 'bad',
};

const statusBadge = (s) => badge(String(s).replace(/_/g, ' '), STATUS_CLASS[s]);

function naturalKey(name) {
  const m = /^(.*)-(\d+)$/.exec(name);
  return m ? [m[1], Number(m[2])] : [name, -1];
}

function byInstance(a, b) {
  const [pa, ia] = naturalKey(a.instance);
  const [pb, ib] = naturalKey(b.instance);
  return pa < pb ? -1 : pa > pb ? 1 : ia - ib;
}

function toast(msg, bad) {
  const t = $('#toast');
  t.textContent = msg;
  t.className = bad ? 'toast bad' : 'toast';
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 3000);
}

function confirmAction(title, text) {
  return new Promise((resolve) => {
    const m = $('#modal');
    $('#modal-title').textContent = title;
    $('#modal-text').textContent = text;
    m.hidden = false;
    const done = (ok) => { m.hidden = true; $('#modal-ok').onclick = null; $('#modal-cancel').onclick = null; resolve(ok); };
    $('#modal-ok').onclick = () => done(true);
    $('#modal-cancel').onclick = () => done(false);
    $('#modal-ok').focus();
  });
}

// ---------- API ----------

class ApiError extends Error {}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method: opts.method || 'GET', headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  if (r.status === 401) { signOut('Your token is no longer valid; sign in again.'); throw new ApiError('signed out'); }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!r.ok) throw new ApiError(body?.error?.message || `${r.status} ${r.statusText}`);
  return body;
}

async function act(title, text, path, body) {
  if (!(await confirmAction(title, text))) return;
  try {
    await api(path, { method: 'POST', body: body || {} });
    toast(`${title}: done`);
    refreshSoon();
  } catch (e) {
    if (!(e instanceof ApiError && e.message === 'signed out')) toast(`${title}: ${e.message}`, true);
  }
}

// ---------- live event stream (Server-Sent Events over fetch, so the token stays in a header) ----------

function setLive(on) {
  state.live = on;
  const l = $('#live');
  l.className = on ? 'live on' : 'live off';
  l.textContent = on ? 'live' : 'reconnecting';
}

async function runStream() {
  const ctl = new AbortController();
  state.stream = ctl;
  for (let attempt = 0; state.token && !ctl.signal.aborted; attempt++) {
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' };
      const r = await fetch(`/v1/events/stream?since=${state.lastSeq}`, { headers, signal: ctl.signal });
      if (r.status === 401) { signOut('Your token is no longer valid; sign in again.'); return; }
      if (!r.ok || !r.body) throw new Error(`stream: ${r.status}`);
      setLive(true);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let data = '';
          for (const line of block.split('\n')) if (line.startsWith('data:')) data += line.slice(5).trimStart();
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, Math.min(5000, 500 * (attempt + 1))));
  }
}

function onEvent(e) {
  if (e.seq <= state.lastSeq) return;
  state.lastSeq = e.seq;
  state.events.push(e);
  if (state.events.length > 500) state.events.splice(0, state.events.length - 500);
  const v = state.view;
  if (v && (!v.service || e.service === v.service || e.kind === 'agent')) refreshSoon();
}

function refreshSoon() {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, 200);
}

async function refresh() {
  clearTimeout(state.timer);
  const v = state.view;
  if (!v) return;
  try {
    await v.refresh();
    const err = document.getElementById('view-error');
    if (err && state.view === v) err.textContent = '';
  } catch (e) {
    // A view left while its data was on the way has nothing to show it in.
    if (state.view === v && !(e instanceof ApiError && e.message === 'signed out')) {
      const err = document.getElementById('view-error');
      if (err) err.textContent = e.message;
    }
  }
  if (state.view === v) state.timer = setTimeout(refresh, 5000);
}

// ---------- sign in ----------

function signOut(msg) {
  state.token = null;
  sessionStorage.removeItem('tend.token');
  if (state.stream) state.stream.abort();
  route(msg);
}

function signInView(msg) {
  $('#nav').hidden = true;
  $('#live').hidden = true;
  $('#signout').hidden = true;
  main.innerHTML = `
    <form class="card signin" id="signin">
      <h1>Sign in to tend</h1>
      <p class="muted">Paste an API token: the one in <code>.tend/token</code> of <code>tend dev</code>, or one made with <code>tend token create</code>.</p>
      <input type="password" id="token" autocomplete="current-password" placeholder="API token" required>
      <button class="primary" type="submit">Sign in</button>
      <p class="error" id="signin-error">${esc(msg || '')}</p>
    </form>`;
  $('#signin').onsubmit = async (ev) => {
    ev.preventDefault();
    const token = $('#token').value.trim();
    const r = await fetch('/v1/services', { headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) { $('#signin-error').textContent = r.status === 401 ? 'This token is not valid.' : `Sign-in failed: ${r.status}`; return; }
    state.token = token;
    sessionStorage.setItem('tend.token', token);
    start();
  };
}

async function start() {
  $('#nav').hidden = false;
  $('#live').hidden = false;
  $('#signout').hidden = false;
  try {
    const recent = await api('/v1/events?last=100');
    state.events = recent;
    state.lastSeq = recent.length ? recent[recent.length - 1].seq : 0;
  } catch { /* the stream starts from 0 then */ }
  runStream();
  route();
}

// ---------- views ----------

function health(s) {
  if (s.error) return ['blocked', s.error];
  const bad = s.plans.find((p) => p.status === 'blocked' || p.status === 'error');
  if (bad) return ['blocked', `plan ${bad.name}: ${bad.status}`];
  const MOVING = ['prepared', 'starting', 'started', 'waiting', 'in_progress'];
  const moving = s.plans.find((p) => p.name !== 'recovery' && MOVING.includes(p.status));
  if (moving) return ['updating', `plan ${moving.name}: ${moving.status.replace(/_/g, ' ')}`];
  const rec = s.plans.find((p) => p.name === 'recovery' && p.status !== 'complete');
  if (s.running < s.instances || rec) return ['degraded', `${s.running} of ${s.instances} running`];
  return ['ready', `${s.running} of ${s.instances} running`];
}

const HEALTH_CLASS = { ready: 'ok', degraded: 'warn', updating: 'info', blocked: 'bad' };

function eventList(events) {
  if (!events.length) return '<p class="muted">No events yet.</p>';
  return `<ul class="events">${events.slice().reverse().map((e) =>
    `<li><span class="muted small">${esc(new Date(e.time_ms).toLocaleTimeString())}</span> ${badge(e.kind)} ${e.service ? `<b>${esc(e.service)}</b> ` : ''}${esc(e.message)}</li>`).join('')}</ul>`;
}

const overview = {
  skeleton() {
    return `<h1>Overview</h1><p class="error" id="view-error"></p>
      <h2>Services</h2><div class="cards" id="services"></div>
      <h2>Agents</h2><div id="agents"></div>
      <h2>Open alarms</h2><div id="alarms"></div>
      <h2>Recent events</h2><div id="events"></div>`;
  },
  async refresh() {
    const [services, agents, alarms] = await Promise.all([api('/v1/services'), api('/v1/agents'), api('/v1/jobs/alarms')]);
    $('#services').innerHTML = services.length ? services.map((s) => {
      const [h, why] = health(s);
      return `<div class="card service" data-service="${esc(s.name)}"><a href="#/services/${encodeURIComponent(s.name)}"><b>${esc(s.name)}</b></a>
        ${badge(h, HEALTH_CLASS[h])}<div class="muted small">${esc(why)} · generation ${s.generation}</div>
        <div class="small">${s.pods.map((p) => `${esc(p.name)} ×${p.count}`).join(', ')}</div>
        <div class="small">${s.plans.map((p) => `${esc(p.name)} ${statusBadge(p.status)}`).join(' ')}</div></div>`;
    }).join('') : '<p class="muted">No services. Deploy one with <code>tend service deploy SPEC</code>.</p>';
    const up = agents.filter((a) => a.state === 'up').length;
    $('#agents').innerHTML = `<p>${up} of ${agents.length} agents up · <a href="#/agents">details</a></p>`;
    $('#alarms').innerHTML = alarms.length ? `<table><tr><th>Service</th><th>Job</th><th>Instance</th><th>Alarm</th></tr>${alarms.map((a) =>
      `<tr><td>${esc(a.service)}</td><td>${esc(a.job)}</td><td>${esc(a.instance)}</td><td>${badge(a.alarm, 'bad')}</td></tr>`).join('')}</table>` : '<p class="muted">None.</p>';
    $('#events').innerHTML = eventList(state.events.slice(-30));
  },
};

function planHtml(service, p) {
  const base = `/v1/services/${encodeURIComponent(service)}/plans/${encodeURIComponent(p.name)}`;
  const btn = (action, label) => `<button data-act="${esc(base)}/${action}" data-title="${esc(label)} plan ${esc(p.name)}">${label}</button>`;
  const actions = p.name === 'recovery' ? '' : (p.interrupted ? btn('continue', 'Continue') : btn('interrupt', 'Interrupt')) + ' ' + btn('restart', 'Restart');
  const now = Date.now();
  const idle = p.status === 'pending' && p.phases.every((ph) => ph.steps.every((st) => st.status === 'pending'));
  if (idle) {
    const steps = p.phases.reduce((n, ph) => n + ph.steps.length, 0);
    return `<div class="card plan idle" data-plan="${esc(p.name)}"><b>${esc(p.name)}</b> ${statusBadge(p.status)} <span class="muted small">not run: ${p.phases.length} phase(s), ${steps} step(s)</span>${p.interrupted ? ' ' + badge('interrupted', 'warn') : ''} <span class="toolbar inline">${actions}</span></div>`;
  }
  const phases = p.phases.map((ph) => {
    const steps = ph.steps.map((st) => {
      const key = `${service}/${p.name}/${ph.name}/${st.name}`;
      const seen = state.stepSeen.get(key);
      if (!seen || seen.status !== st.status) state.stepSeen.set(key, { status: st.status, since: now });
      return `<span class="step ${esc(st.status)}" title="${esc(st.message || st.status)}">${esc(st.name)} ${statusBadge(st.status)}</span>`;
    }).join('');
    const stuck = ph.steps.filter((st) => !['complete', 'pending'].includes(st.status)).map((st) => {
      const since = state.stepSeen.get(`${service}/${p.name}/${ph.name}/${st.name}`).since;
      const still = now - since > 10000 ? ` (no change for ${ago(now - since)})` : '';
      const why = st.message || (p.interrupted || ph.interrupted ? 'the plan is interrupted' : `the step is ${st.status.replace(/_/g, ' ')}`);
      return `<div class="stuck">why is ${esc(st.name)} not moving${esc(still)}: ${esc(why)}</div>`;
    }).join('');
    return `<div class="phase">${esc(ph.name)} ${statusBadge(ph.status)}${ph.interrupted ? ' ' + badge('interrupted', 'warn') : ''}<div class="steps">${steps}</div>${stuck}</div>`;
  }).join('');
  return `<div class="card plan" data-plan="${esc(p.name)}"><b>${esc(p.name)}</b> ${statusBadge(p.status)}${p.interrupted ? ' ' + badge('interrupted', 'warn') : ''} <span class="toolbar inline">${actions}</span>${phases}</div>`;
}

function podRow(service, p) {
  // Tasks that ran to completion (once/finish) are done, not unready.
  const live = p.tasks.filter((t) => !(t.state === 'exited' && t.exit_code === 0));
  const ready = live.filter((t) => t.ready).length;
  const restarts = p.tasks.reduce((n, t) => n + (t.restarts || 0), 0);
  const ports = Object.entries(p.ports || {}).map(([k, v]) => `${esc(k)}:${v}`).join(' ');
  const base = `/v1/services/${encodeURIComponent(service)}/pods/${encodeURIComponent(p.instance)}`;
  const line = p.recovery || p.pending_reason || p.detail || '';
  return `<tr data-instance="${esc(p.instance)}"><td><b>${esc(p.instance)}</b></td><td>${statusBadge(p.state)}</td><td>${esc(p.agent || '—')}</td>
    <td class="num">${p.incarnation}</td><td class="small">${ports}</td><td class="num ready">${ready}/${live.length}</td>
    <td class="num restarts">${restarts}</td><td class="small recovery">${esc(line)}</td>
    <td><button data-act="${esc(base)}/restart" data-title="Restart ${esc(p.instance)}" data-text="Stop and start ${esc(p.instance)} in place, on the same agent and volumes.">Restart</button>
    <button class="danger" data-act="${esc(base)}/replace" data-title="Replace ${esc(p.instance)}" data-text="Place ${esc(p.instance)} anew, possibly on another agent, with fresh volumes; the old volumes are retained, not deleted.">Replace</button></td></tr>`;
}

function serviceView(name) {
  const enc = encodeURIComponent(name);
  return {
    service: name,
    skeleton() {
      return `<h1>${esc(name)} <span id="health"></span></h1><p class="muted" id="summary"></p><p class="error" id="view-error"></p>
        <p><a href="#/services/${enc}/jobs">Maintenance jobs</a></p>
        <h2>Instances</h2>
        <div class="toolbar"><input type="text" id="filter" placeholder="filter (instance, state, agent)" value="${esc(state.filter)}"><span id="count" class="muted"></span></div>
        <table id="pods"><thead><tr><th>Instance</th><th>State</th><th>Agent</th><th>Incarnation</th><th>Ports</th><th>Ready</th><th>Restarts</th><th>Recovery</th><th></th></tr></thead><tbody></tbody></table>
        <div class="pager"><button id="prev">‹ Previous</button><span id="page"></span><button id="next">Next ›</button></div>
        <h2>Plans</h2><div id="plans"></div>
        <h2>Recent events</h2><div id="events"></div>`;
    },
    mounted() {
      $('#filter').oninput = (e) => { state.filter = e.target.value; state.page = 0; this.draw(); };
      $('#prev').onclick = () => { state.page = Math.max(0, state.page - 1); this.draw(); };
      $('#next').onclick = () => { state.page += 1; this.draw(); };
    },
    pods: [],
    draw() {
      const f = state.filter.toLowerCase();
      const rows = this.pods.filter((p) => !f || `${p.instance} ${p.state} ${p.agent || ''}`.toLowerCase().includes(f));
      const pages = Math.max(1, Math.ceil(rows.length / PAGE));
      state.page = Math.min(state.page, pages - 1);
      const shown = rows.slice(state.page * PAGE, (state.page + 1) * PAGE);
      $('#pods tbody').innerHTML = shown.map((p) => podRow(name, p)).join('');
      $('#count').textContent = `${rows.length} of ${this.pods.length} instances`;
      $('#page').textContent = `page ${state.page + 1} of ${pages}`;
      $('#prev').disabled = state.page === 0;
      $('#next').disabled = state.page >= pages - 1;
    },
    async refresh() {
      const [svc, plans, pods, events] = await Promise.all([
        api(`/v1/services/${enc}`), api(`/v1/services/${enc}/plans`), api(`/v1/services/${enc}/pods`),
        api(`/v1/events?service=${enc}&last=40`),
      ]);
      if (state.view !== this) return;
      const [h, why] = health(svc);
      $('#health').innerHTML = badge(h, HEALTH_CLASS[h]);
      $('#summary').textContent = `${why} · generation ${svc.generation} · ${svc.pods.map((p) => `${p.name} ×${p.count}`).join(', ')}`;
      $('#plans').innerHTML = plans.map((p) => planHtml(name, p)).join('');
      this.pods = pods.sort(byInstance);
      this.draw();
      // For benchmarks: when the service page first showed its instances.
      if (!this.shown) { this.shown = true; performance.mark('tend:service-rendered'); }
      $('#events').innerHTML = eventList(events);
    },
  };
}

function jobsView(name) {
  const enc = encodeURIComponent(name);
  return {
    service: name,
    skeleton() {
      return `<h1><a href="#/services/${enc}">${esc(name)}</a> · maintenance jobs</h1><p class="error" id="view-error"></p>
        <table id="jobs"><thead><tr><th>Job</th><th>Instance</th><th>Status</th><th>Priority</th><th>Alarm</th><th>Last success</th><th>Due</th><th></th></tr></thead><tbody></tbody></table>
        <h2>Blackout windows (no job starts in them)</h2><div id="windows"></div>
        <h2>History</h2><div id="history"></div>`;
    },
    async refresh() {
      const [jobs, windows] = await Promise.all([api(`/v1/services/${enc}/jobs`), api('/v1/jobs/windows')]);
      if (state.view !== this) return;
      $('#jobs tbody').innerHTML = jobs.map((j) => `<tr data-job="${esc(j.job)}" data-instance="${esc(j.instance)}"><td><b>${esc(j.job)}</b></td><td>${esc(j.instance)}</td>
        <td>${statusBadge(j.running ? 'running' : j.status)}${j.reason ? `<div class="muted small">${esc(j.reason)}</div>` : ''}</td>
        <td class="num">${j.priority ?? '—'}</td><td>${j.alarm ? badge(j.alarm, 'bad') : '—'}</td><td>${when(j.last_success_ms)}</td><td>${when(j.due_ms)}</td>
        <td><button data-act="/v1/services/${enc}/jobs/${encodeURIComponent(j.job)}/run" data-body='${esc(JSON.stringify({ instance: j.instance }))}' data-title="Run ${esc(j.job)} on ${esc(j.instance)} now">Run now</button></td></tr>`).join('');
      const hhmm = (m) => `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
      const utc = (o) => `UTC${o < 0 ? '−' : '+'}${hhmm(Math.abs(o))}`;
      $('#windows').innerHTML = windows.length ? `<table><tr><th>Id</th><th>From</th><th>To</th><th>Clock</th><th>Job</th><th>Pods</th></tr>${windows.map((w) =>
        `<tr><td>${esc(w.id)}</td><td>${hhmm(w.start)}</td><td>${hhmm(w.end)}</td><td>${utc(w.utc_offset_minutes)}</td><td>${esc(w.job || 'every job')}</td><td>${esc((w.pods || []).join(', ') || 'every pod')}</td></tr>`).join('')}</table>` : '<p class="muted">No blackout windows: jobs may start at any time.</p>';
      const names = [...new Set(jobs.map((j) => j.job))];
      const histories = await Promise.all(names.map((j) => api(`/v1/services/${enc}/jobs/${encodeURIComponent(j)}/history`).then((h) => [j, h])));
      $('#history').innerHTML = histories.map(([j, runs]) => `<h3>${esc(j)}</h3>${runs.length ? `<table><tr><th>Instance</th><th>Result</th><th>Started</th><th>Took</th><th>Agent</th><th>Output (tail)</th></tr>${runs.slice(-20).reverse().map((r) =>
        `<tr class="run"><td>${esc(r.instance)}</td><td>${statusBadge(r.status)}${r.on_demand ? ' ' + badge('on demand') : ''}</td><td>${when(r.start_ms)}</td><td>${r.end_ms ? ago(r.end_ms - r.start_ms) : 'running'}</td><td>${esc(r.agent)}</td><td>${r.output_tail ? `<pre class="tail">${esc(r.output_tail)}</pre>` : ''}</td></tr>`).join('')}</table>` : '<p class="muted">No runs yet.</p>'}`).join('');
    },
  };
}

const agentsView = {
  skeleton() {
    return `<h1>Agents</h1><p class="error" id="view-error"></p>
      <table id="agents"><thead><tr><th>Agent</th><th>Host</th><th>State</th><th>Last heartbeat</th><th>CPUs used / total</th><th>Memory MB used / total</th><th>Disk MB</th><th>Tasks</th><th>Attributes</th></tr></thead><tbody></tbody></table>`;
  },
  async refresh() {
    const agents = await api('/v1/agents');
    $('#agents tbody').innerHTML = agents.map((a) => `<tr data-agent="${esc(a.id)}"><td><b>${esc(a.id)}</b>${a.conflict ? `<div class="error small">${esc(a.conflict)}</div>` : ''}</td><td>${esc(a.host)}</td>
      <td>${statusBadge(a.state)}</td><td>${a.last_seen_ms_ago == null ? '—' : `${ago(a.last_seen_ms_ago)} ago`}</td>
      <td class="num">${a.reserved_cpus.toFixed(2)} / ${a.resources.cpus}</td><td class="num">${a.reserved_memory_mb} / ${a.resources.memory_mb}</td>
      <td class="num">${a.resources.disk_mb}</td><td class="num">${a.tasks}</td>
      <td class="small">${Object.entries(a.attributes).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(' ')}</td></tr>`).join('');
  },
};

const eventsView = {
  skeleton() { return '<h1>Events</h1><p class="error" id="view-error"></p><div id="events"></div>'; },
  async refresh() { $('#events').innerHTML = eventList(state.events.slice(-200)); },
};

// ---------- routing ----------

function route(msg) {
  if (!state.token) { state.view = null; signInView(msg); return; }
  const h = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  const parts = h.split('/');
  let v;
  if (parts[0] === 'services' && parts[1] && parts[2] === 'jobs') v = jobsView(parts[1]);
  else if (parts[0] === 'services' && parts[1]) v = serviceView(parts[1]);
  else if (parts[0] === 'agents') v = agentsView;
  else if (parts[0] === 'events') v = eventsView;
  else v = overview;
  if (!state.view || state.view.service !== v.service) { state.page = 0; state.filter = ''; }
  state.view = v;
  main.innerHTML = v.skeleton();
  if (v.mounted) v.mounted();
  refresh();
}

main.addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-act]');
  if (!b) return;
  const body = b.dataset.body ? JSON.parse(b.dataset.body) : {};
  act(b.dataset.title, b.dataset.text || `${b.dataset.title}?`, b.dataset.act, body);
});

window.addEventListener('hashchange', () => route());
$('#signout').onclick = () => signOut();
document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && !$('#modal').hidden) $('#modal-cancel').click(); });

if (state.token) start(); else route();
