// Ember's web UI: renders the REST API (/api/v1) and refreshes it while the page is open.
// No framework and no build step: the page must work offline from the binary alone.
"use strict";

const REFRESH_MS = Math.max(200, Number(document.querySelector('meta[name="ember-refresh-ms"]').content) || 1000);
const main = document.getElementById("main");
const live = document.getElementById("live");
const liveText = document.getElementById("live-text");

// ---------- helpers ----------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function fmtNum(n) {
  return n == null ? "" : Number(n).toLocaleString("en-US");
}

function fmtBytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}

function fmtMs(ms) {
  if (ms == null) return "";
  if (ms < 1000) return ms.toFixed(0) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  const m = Math.floor(ms / 60000);
  const s = Math.round((ms % 60000) / 1000);
  if (m < 60) return m + " min " + s + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function fmtAgo(iso) {
  if (!iso) return "";
  const ms = Date.now() - new Date(iso).getTime();
  return ms < 1500 ? "just now" : fmtMs(ms) + " ago";
}

function badge(state) {
  return `<span class="badge state-${esc(state)}">${esc(state)}</span>`;
}

function progress(done, total, state) {
  const pct = total > 0 ? Math.round((100 * done) / total) : (state === "succeeded" ? 100 : 0);
  return `<div class="progress state-${esc(state)}" title="${done}/${total} tasks">` +
    `<div class="bar" style="width:${pct}%"></div><span>${fmtNum(done)}/${fmtNum(total)}</span></div>`;
}

function isLive(state) {
  return state === "queued" || state === "running" || state === "pending";
}

function quantile(sorted, q) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}

class ApiError extends Error {
  constructor(status, message, sqlstate) {
    super(message);
    this.status = status;
    this.sqlstate = sqlstate;
  }
}

async function api(path, options = {}) {
  const response = await fetch("/api/v1" + path, { credentials: "same-origin", ...options });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || text || response.statusText, body && body.sqlstate);
  }
  return body;
}

function toast(message, kind = "info") {
  const el = document.createElement("div");
  el.className = "toast " + kind;
  el.textContent = message;
  document.body.appendChild(el);
  setTimeout(() => el.remove(), 4000);
}

async function cancelQuery(id) {
  try {
    await api(`/queries/${encodeURIComponent(id)}/cancel`, {
      method: "POST",
      headers: { "X-Requested-By": "ember-ui" },
    });
    toast(`Cancel requested for query ${id.slice(0, 8)}`);
  } catch (e) {
    toast(`Cancel failed: ${e.message}`, "error");
  }
  schedule(0);
}

// ---------- router and refresh loop ----------

let view = null;
let timer = null;
let inFlight = false;

function route() {
  const hash = location.hash || "#/queries";
  const [, name, arg] = hash.split("/");
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === (name === "query" ? "queries" : name));
  });
  if (view && view.leave) view.leave();
  if (name === "query" && arg) view = new QueryView(decodeURIComponent(arg));
  else if (name === "executors") view = new ExecutorsView();
  else if (name === "cluster") view = new ClusterView();
  else view = new QueriesView();
  main.innerHTML = "";
  view.mount(main);
  schedule(0);
}

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(tick, delay);
}

async function tick() {
  if (inFlight || !view) return;
  inFlight = true;
  const current = view;
  try {
    await current.refresh();
    live.classList.remove("error");
    liveText.textContent = current.done ? "final" : "live";
    live.classList.toggle("idle", Boolean(current.done));
  } catch (e) {
    live.classList.add("error");
    liveText.textContent = e.status === 401 ? "sign in" : "offline";
    if (current === view && current.showError) current.showError(e);
  } finally {
    inFlight = false;
  }
  if (current === view && !current.done) schedule(document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
}

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });

// ---------- queries ----------

class QueriesView {
  mount(root) {
    root.innerHTML = `
      <h1>Queries</h1>
      <div class="toolbar">
        <input id="query-search" type="search" placeholder="Search SQL, query id, user, session…" autocomplete="off">
        <select id="query-state">
          <option value="">All states</option>
          <option value="running">Running</option>
          <option value="queued">Queued</option>
          <option value="succeeded">Succeeded</option>
          <option value="failed">Failed</option>
          <option value="cancelled">Cancelled</option>
        </select>
        <span class="counts" id="query-counts"></span>
      </div>
      <div class="error-banner" id="error" hidden></div>
      <table class="grid" id="queries-table">
        <thead><tr>
          <th>Query</th><th>State</th><th>User</th><th>Frontend</th><th>Submitted</th>
          <th class="num">Duration</th><th>Progress</th><th class="num">Rows</th><th>SQL</th><th></th>
        </tr></thead>
        <tbody></tbody>
      </table>`;
    this.search = root.querySelector("#query-search");
    this.state = root.querySelector("#query-state");
    this.body = root.querySelector("tbody");
    this.counts = root.querySelector("#query-counts");
    this.error = root.querySelector("#error");
    this.queries = [];
    this.search.addEventListener("input", () => this.render());
    this.state.addEventListener("change", () => this.render());
    this.body.addEventListener("click", (event) => {
      const button = event.target.closest("button.cancel");
      if (button) {
        button.disabled = true;
        cancelQuery(button.dataset.queryId);
      }
    });
  }

  async refresh() {
    this.queries = await api("/queries?limit=1000");
    this.error.hidden = true;
    this.render();
  }

  showError(e) {
    this.error.hidden = false;
    this.error.textContent = e.message;
  }

  render() {
    const needle = this.search.value.trim().toLowerCase();
    const state = this.state.value;
    const shown = this.queries.filter((q) =>
      (!state || q.state === state) &&
      (!needle || [q.sql, q.query_id, q.user, q.session_id, q.frontend].some((f) => String(f).toLowerCase().includes(needle))));
    const running = this.queries.filter((q) => q.state === "running").length;
    const queued = this.queries.filter((q) => q.state === "queued").length;
    this.counts.textContent = `${shown.length} of ${this.queries.length} shown · ${running} running · ${queued} queued`;
    if (!shown.length) {
      this.body.innerHTML = `<tr><td colspan="10" class="empty">${this.queries.length ? "No query matches." : "No queries yet: run one from psql, Flight SQL or ember sql."}</td></tr>`;
      return;
    }
    this.body.innerHTML = shown.map((q) => `
      <tr class="query-row" data-query-id="${esc(q.query_id)}">
        <td><a href="#/query/${encodeURIComponent(q.query_id)}" class="mono">${esc(q.query_id.slice(0, 8))}</a></td>
        <td>${badge(q.state)}</td>
        <td>${esc(q.user)}</td>
        <td>${esc(q.frontend)}</td>
        <td title="${esc(q.submitted_at)}">${esc(fmtTime(q.submitted_at))}</td>
        <td class="num">${esc(fmtMs(q.duration_ms))}</td>
        <td>${progress(q.tasks_succeeded, q.num_tasks, q.state)}
            <div class="sub">stages ${q.stages_succeeded}/${q.num_stages}${q.tasks_running ? ` · ${q.tasks_running} running` : ""}</div></td>
        <td class="num">${esc(fmtNum(q.result_rows))}</td>
        <td class="sql-cell" title="${esc(q.sql)}">${esc(q.sql.replace(/\s+/g, " ").slice(0, 160))}
          ${q.error ? `<div class="err">${esc(q.sqlstate || "")} ${esc(q.error.slice(0, 200))}</div>` : ""}</td>
        <td>${isLive(q.state) ? `<button class="cancel" data-query-id="${esc(q.query_id)}" title="Cancel this query">Cancel</button>` : ""}</td>
      </tr>`).join("");
  }
}

// ---------- one query ----------

const PALETTE = ["#2563eb", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626", "#4f46e5", "#0d9488"];

function stageColor(id) {
  return PALETTE[id % PALETTE.length];
}

class QueryView {
  constructor(id) {
    this.id = id;
    this.selected = "all";
    this.sort = { key: "stage", dir: 1 };
    this.planRendered = false;
    this.done = false;
  }

  mount(root) {
    root.innerHTML = `
      <div class="crumbs"><a href="#/queries">Queries</a> / <span class="mono">${esc(this.id)}</span></div>
      <div class="error-banner" id="error" hidden></div>
      <div id="summary"></div>
      <pre class="sql" id="sql"></pre>
      <section>
        <h2>Stages <span class="hint">each box is a stage; arrows are shuffles; <span class="critical-key">orange</span>: the critical path</span></h2>
        <div class="dag-wrap" id="dag"></div>
      </section>
      <section>
        <h2>Timeline <span class="hint">stages, then tasks per executor</span></h2>
        <div id="timeline" class="timeline-wrap"></div>
      </section>
      <section>
        <h2>Stage detail
          <select id="stage-select" aria-label="Stage"></select>
        </h2>
        <div class="two-col">
          <div><h3>Task durations</h3><div id="distribution"></div></div>
          <div><h3>Operators <span class="hint">metrics summed over tasks</span></h3><div id="operators"></div></div>
        </div>
        <h3>Tasks <span class="hint" id="task-count"></span></h3>
        <div class="table-scroll">
          <table class="grid" id="tasks-table">
            <thead><tr>
              <th data-sort="stage">Stage</th><th data-sort="partition">Partition</th><th data-sort="attempt">Attempt</th>
              <th data-sort="state">State</th><th data-sort="executor">Executor</th><th>Spec.</th>
              <th data-sort="duration" class="num">Duration</th><th data-sort="rows" class="num">Rows</th>
              <th data-sort="bytes" class="num">Written</th><th data-sort="read" class="num">Shuffle read</th>
              <th data-sort="memory" class="num">Peak memory</th><th data-sort="spill" class="num">Spill</th><th>Error</th>
            </tr></thead>
            <tbody></tbody>
          </table>
        </div>
      </section>
      <section>
        <h2>Physical plan</h2>
        <div id="plans"></div>
      </section>`;
    this.el = (id) => root.querySelector("#" + id);
    this.stageSelect = this.el("stage-select");
    this.stageSelect.addEventListener("change", () => {
      this.selected = this.stageSelect.value;
      this.renderStageDetail();
    });
    this.el("dag").addEventListener("click", (event) => {
      const node = event.target.closest(".stage-node");
      if (node) {
        this.selected = node.dataset.stageId;
        this.stageSelect.value = this.selected;
        this.renderStageDetail();
        this.el("stage-select").scrollIntoView({ behavior: "smooth", block: "start" });
      }
    });
    root.querySelector("#tasks-table thead").addEventListener("click", (event) => {
      const th = event.target.closest("th[data-sort]");
      if (!th) return;
      const key = th.dataset.sort;
      this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : (key === "duration" ? -1 : 1) };
      this.renderTasks();
    });
    // On an element of this view: `root` outlives it and would keep the listener.
    this.el("summary").addEventListener("click", (event) => {
      if (event.target.id === "cancel-query") {
        event.target.disabled = true;
        cancelQuery(this.id);
      }
    });
  }

  showError(e) {
    const el = this.el("error");
    el.hidden = false;
    el.textContent = e.status === 404 ? `Query ${this.id} is not known to this coordinator.` : e.message;
    if (e.status === 404) this.done = true;
  }

  async refresh() {
    const q = await api(`/queries/${encodeURIComponent(this.id)}`);
    this.el("error").hidden = true;
    this.q = q;
    this.renderSummary();
    this.renderDag();
    this.renderTimeline();
    this.renderStageOptions();
    this.renderStageDetail();
    if (!this.planRendered) this.renderPlans();
    // A finished query no longer changes: stop polling it.
    this.done = !isLive(q.state);
  }

  renderSummary() {
    const q = this.q;
    this.el("sql").textContent = q.sql;
    const cards = [
      ["State", badge(q.state)],
      ["User", esc(q.user)],
      ["Frontend", esc(q.frontend)],
      ["Session", `<span class="mono">${esc(q.session_id)}</span>`],
      ["Submitted", esc(fmtTime(q.submitted_at))],
      ["Duration", esc(fmtMs(q.duration_ms))],
      ["Stages", `${q.stages_succeeded}/${q.num_stages}`],
      ["Tasks", progress(q.tasks_succeeded, q.num_tasks, q.state)],
      ["Rows", esc(fmtNum(q.result_rows))],
    ];
    this.el("summary").innerHTML = `
      <div class="cards">${cards.map(([k, v]) => `<div class="card"><div class="k">${k}</div><div class="v">${v}</div></div>`).join("")}
      ${isLive(q.state) ? `<div class="card action"><button id="cancel-query" class="cancel big">Cancel query</button></div>` : ""}</div>
      ${q.error ? `<div class="error-banner"><strong>${esc(q.sqlstate || "")}</strong> ${esc(q.error)}</div>` : ""}`;
  }

  renderDag() {
    const stages = this.q.stages;
    const depth = new Map();
    const depthOf = (s) => {
      if (depth.has(s.stage_id)) return depth.get(s.stage_id);
      depth.set(s.stage_id, 0);
      const d = s.input_stages.length ? 1 + Math.max(...s.input_stages.map((i) => depthOf(stages[i]))) : 0;
      depth.set(s.stage_id, d);
      return d;
    };
    stages.forEach(depthOf);
    const columns = [];
    stages.forEach((s) => { (columns[depth.get(s.stage_id)] ||= []).push(s); });
    const W = 200, H = 74, GX = 64, GY = 22, PAD = 12;
    const pos = new Map();
    columns.forEach((col, c) => col.forEach((s, r) => pos.set(s.stage_id, { x: PAD + c * (W + GX), y: PAD + r * (H + GY) })));
    const width = PAD * 2 + columns.length * (W + GX) - GX;
    const height = PAD * 2 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
    const critical = new Set(this.q.critical_path);
    const criticalEdge = (from, to) => {
      const i = this.q.critical_path.indexOf(from);
      return i >= 0 && this.q.critical_path[i + 1] === to;
    };
    let edges = "";
    stages.forEach((s) => s.input_stages.forEach((i) => {
      const a = pos.get(i), b = pos.get(s.stage_id);
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      edges += `<path class="edge${criticalEdge(i, s.stage_id) ? " critical" : ""}" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 6},${y2}" marker-end="url(#arrow${criticalEdge(i, s.stage_id) ? "-critical" : ""})"/>`;
    }));
    const nodes = stages.map((s) => {
      const p = pos.get(s.stage_id);
      const pct = s.num_tasks ? s.tasks_succeeded / s.num_tasks : (s.state === "succeeded" ? 1 : 0);
      return `<g class="stage-node state-${esc(s.state)}${critical.has(s.stage_id) ? " critical" : ""}" data-stage-id="${s.stage_id}" transform="translate(${p.x},${p.y})">
        <title>Stage ${s.stage_id} (${esc(s.kind)}) — ${esc(s.state)}; ${s.tasks_succeeded}/${s.num_tasks} tasks; ${fmtNum(s.rows)} rows; output ${esc(s.output_partitioning)}${(s.adaptive || []).length ? `; adaptive: ${esc(s.adaptive.join("; "))}` : ""}</title>
        <rect class="box" width="${W}" height="${H}" rx="8"/>
        <text x="12" y="22" class="title">Stage ${s.stage_id}</text>
        <text x="${W - 12}" y="22" class="kind" text-anchor="end">${esc(s.kind)}</text>
        <text x="12" y="42" class="meta">${fmtNum(s.tasks_succeeded)}/${fmtNum(s.num_tasks)} tasks${s.tasks_running ? ` · ${s.tasks_running} running` : ""}</text>
        <text x="${W - 12}" y="42" class="meta" text-anchor="end">${esc(fmtMs(s.duration_ms))}</text>
        <rect class="track" x="12" y="54" width="${W - 24}" height="8" rx="4"/>
        <rect class="fill" x="12" y="54" width="${((W - 24) * pct).toFixed(1)}" height="8" rx="4"/>
      </g>`;
    }).join("");
    this.el("dag").innerHTML = `<svg class="dag" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="Stage graph">
      <defs>
        <marker id="arrow" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker>
        <marker id="arrow-critical" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" class="arrowhead critical"/></marker>
      </defs>${edges}${nodes}</svg>`;
  }

  renderTimeline() {
    const q = this.q;
    const t0 = new Date(q.submitted_at).getTime();
    const tEnd = q.finished_at ? new Date(q.finished_at).getTime() : Date.now();
    const span = Math.max(1, tEnd - t0);
    const W = 1100, LABEL = 150, ROW = 14, GAP = 2;
    const x = (t) => LABEL + ((t - t0) / span) * (W - LABEL - 10);
    let y = 22;
    let out = "";
    // Ticks.
    const step = niceStep(span / 8);
    for (let t = 0; t <= span; t += step) {
      out += `<line class="tick" x1="${x(t0 + t)}" x2="${x(t0 + t)}" y1="16" y2="100%"/>` +
        `<text class="tick-label" x="${x(t0 + t)}" y="11" text-anchor="middle">${esc(fmtMs(t))}</text>`;
    }
    // Stage bars.
    q.stages.forEach((s) => {
      if (!s.started_at) return;
      const a = new Date(s.started_at).getTime();
      const b = s.finished_at ? new Date(s.finished_at).getTime() : tEnd;
      out += `<text class="lane-label" x="4" y="${y + ROW - 3}">Stage ${s.stage_id}</text>` +
        `<rect class="stage-bar${q.critical_path.includes(s.stage_id) ? " critical" : ""}" x="${x(a)}" y="${y}" width="${Math.max(2, x(b) - x(a))}" height="${ROW}" rx="3" fill="${stageColor(s.stage_id)}"><title>Stage ${s.stage_id}: ${esc(fmtMs(b - a))}</title></rect>`;
      y += ROW + GAP;
    });
    y += 8;
    // Tasks per executor, packed into lanes where they overlap.
    const byExecutor = new Map();
    q.stages.forEach((s) => s.tasks.forEach((t) => {
      if (!t.started_at || !t.executor_id) return;
      const a = new Date(t.started_at).getTime();
      const b = t.finished_at ? new Date(t.finished_at).getTime() : tEnd;
      (byExecutor.get(t.executor_id) || byExecutor.set(t.executor_id, []).get(t.executor_id)).push({ s, t, a, b });
    }));
    [...byExecutor.keys()].sort().forEach((executor) => {
      const tasks = byExecutor.get(executor).sort((p, r) => p.a - r.a);
      const lanes = [];
      tasks.forEach((item) => {
        let lane = lanes.findIndex((end) => end <= item.a);
        if (lane < 0) { lane = lanes.length; lanes.push(0); }
        lanes[lane] = item.b;
        item.lane = lane;
      });
      const laneH = 8;
      const h = Math.max(ROW, lanes.length * (laneH + 1));
      out += `<rect class="lane-bg" x="0" y="${y - 1}" width="${W}" height="${h + 2}"/>` +
        `<text class="lane-label" x="4" y="${y + 11}">${esc(executor.slice(0, 18))}</text>`;
      tasks.forEach(({ s, t, a, b, lane }) => {
        out += `<rect class="task-bar state-${esc(t.state)}" x="${x(a)}" y="${y + lane * (laneH + 1)}" width="${Math.max(1.5, x(b) - x(a))}" height="${laneH}" fill="${stageColor(s.stage_id)}"><title>Stage ${s.stage_id} partition ${t.partition} attempt ${t.attempt} on ${esc(executor)}: ${esc(t.state)}, ${esc(fmtMs(b - a))}</title></rect>`;
      });
      y += h + 6;
    });
    this.el("timeline").innerHTML = `<svg class="timeline" viewBox="0 0 ${W} ${y + 4}" width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="Timeline">${out}</svg>`;
  }

  renderStageOptions() {
    const wanted = ["all", ...this.q.stages.map((s) => String(s.stage_id))];
    const have = [...this.stageSelect.options].map((o) => o.value);
    if (wanted.join() !== have.join()) {
      this.stageSelect.innerHTML = `<option value="all">All stages</option>` +
        this.q.stages.map((s) => `<option value="${s.stage_id}">Stage ${s.stage_id} (${esc(s.kind)}, ${s.num_tasks} tasks)</option>`).join("");
    }
    this.stageSelect.value = this.selected;
  }

  selectedStages() {
    return this.selected === "all" ? this.q.stages : this.q.stages.filter((s) => String(s.stage_id) === this.selected);
  }

  renderStageDetail() {
    if (!this.q) return;
    this.renderDistribution();
    this.renderOperators();
    this.renderTasks();
  }

  taskRows() {
    return this.selectedStages().flatMap((s) => s.tasks.map((t) => ({ s, t })));
  }

  stragglerLimit(rows) {
    const finished = rows.filter(({ t }) => t.state === "succeeded" && t.duration_ms != null).map(({ t }) => t.duration_ms).sort((a, b) => a - b);
    const median = quantile(finished, 0.5);
    return { finished, median, limit: median == null ? Infinity : Math.max(median * 1.5, median + 50) };
  }

  renderDistribution() {
    const rows = this.taskRows();
    const { finished, median, limit } = this.stragglerLimit(rows);
    if (!finished.length) {
      this.el("distribution").innerHTML = `<p class="empty">No finished task yet.</p>`;
      return;
    }
    const max = finished[finished.length - 1];
    const bins = 24;
    const width = Math.max(1, max) / bins;
    const counts = new Array(bins).fill(0);
    finished.forEach((d) => { counts[Math.min(bins - 1, Math.floor(d / width))]++; });
    const top = Math.max(...counts);
    const W = 480, H = 120, BW = W / bins;
    const bars = counts.map((c, i) => {
      const h = top ? (c / top) * (H - 14) : 0;
      const straggle = (i + 1) * width > limit;
      return `<rect class="hist${straggle ? " straggler" : ""}" x="${i * BW + 1}" y="${H - h}" width="${BW - 2}" height="${h}"><title>${c} tasks, ${esc(fmtMs(i * width))}–${esc(fmtMs((i + 1) * width))}</title></rect>`;
    }).join("");
    const stragglers = finished.filter((d) => d > limit).length;
    const stats = [["min", finished[0]], ["median", median], ["p90", quantile(finished, 0.9)], ["max", max]];
    this.el("distribution").innerHTML = `
      <svg class="histogram" viewBox="0 0 ${W} ${H + 16}" width="100%" role="img" aria-label="Task duration distribution">${bars}
        <text class="tick-label" x="0" y="${H + 13}">0</text><text class="tick-label" x="${W}" y="${H + 13}" text-anchor="end">${esc(fmtMs(max))}</text></svg>
      <div class="stats">${stats.map(([k, v]) => `<span><b>${k}</b> ${esc(fmtMs(v))}</span>`).join("")}
        <span><b>skew</b> ${median ? (max / median).toFixed(1) + "×" : "–"}</span>
        <span class="${stragglers ? "warn" : ""}"><b>stragglers</b> ${stragglers}</span></div>`;
  }

  renderOperators() {
    const stages = this.selectedStages();
    const metricCell = (m, name, fmt) => (m[name] == null ? "" : fmt(m[name]));
    const rows = stages.map((s) => {
      const adaptive = (s.adaptive || []).length ? `<tr class="adaptive"><td colspan="5">Adaptive: ${s.adaptive.map(esc).join("; ")}</td></tr>` : "";
      const head = `<tr class="group"><td colspan="5">Stage ${s.stage_id} · ${esc(s.kind)} · ${s.tasks_succeeded}/${s.num_tasks} tasks reported</td></tr>${adaptive}`;
      if (!s.operators.length) return head + `<tr><td colspan="5" class="empty">No metrics yet (they arrive as tasks succeed).</td></tr>`;
      return head + s.operators.map((o) => {
        const m = o.metrics;
        const known = new Set(["output_rows", "elapsed_compute", "spilled_bytes"]);
        const fmtMetric = (k, v) => `${k}=${/time|elapsed/.test(k) ? fmtMs(v / 1e6) : /bytes|mem/.test(k) ? fmtBytes(v) : fmtNum(v)}`;
        // The non-zero ones first, a few shown and all of them on hover.
        const rest = Object.entries(m).filter(([k]) => !known.has(k)).sort((a, b) => (b[1] > 0) - (a[1] > 0));
        const all = rest.map(([k, v]) => fmtMetric(k, v)).join("\n");
        const others = rest.filter(([, v]) => v > 0).slice(0, 3).map(([k, v]) => esc(fmtMetric(k, v))).join(" · ") +
          (rest.length > 3 ? ` <span class="more">+${rest.length - Math.min(3, rest.filter(([, v]) => v > 0).length)}</span>` : "");
        return `<tr class="operator-row"><td class="op" style="padding-left:${8 + o.depth * 16}px" title="${esc(o.description)}">${esc(o.description.length > 110 ? o.description.slice(0, 110) + "…" : o.description)}</td>
          <td class="num">${metricCell(m, "output_rows", fmtNum)}</td>
          <td class="num">${metricCell(m, "elapsed_compute", (v) => fmtMs(v / 1e6))}</td>
          <td class="num">${metricCell(m, "spilled_bytes", fmtBytes)}</td>
          <td class="others" title="${esc(all)}">${others}</td></tr>`;
      }).join("");
    }).join("");
    this.el("operators").innerHTML = `<div class="table-scroll short"><table class="grid compact" id="operators-table">
      <thead><tr><th>Operator</th><th class="num">Output rows</th><th class="num">Compute</th><th class="num">Spill</th><th>Other metrics</th></tr></thead>
      <tbody>${rows}</tbody></table></div>`;
  }

  renderTasks() {
    const rows = this.taskRows();
    const { limit } = this.stragglerLimit(rows);
    const key = {
      stage: (r) => r.s.stage_id * 1e6 + r.t.partition,
      partition: (r) => r.t.partition,
      attempt: (r) => r.t.attempt,
      state: (r) => r.t.state,
      executor: (r) => r.t.executor_id || "",
      duration: (r) => r.t.duration_ms ?? -1,
      rows: (r) => r.t.rows,
      bytes: (r) => r.t.bytes,
      read: (r) => r.t.shuffle_read_bytes,
      memory: (r) => r.t.peak_memory_bytes,
      spill: (r) => r.t.spilled_bytes,
    }[this.sort.key];
    rows.sort((a, b) => {
      const ka = key(a), kb = key(b);
      return (ka < kb ? -1 : ka > kb ? 1 : 0) * this.sort.dir;
    });
    this.el("task-count").textContent = `${rows.length} tasks · click a column to sort`;
    const tbody = this.el("tasks-table").querySelector("tbody");
    tbody.innerHTML = rows.map(({ s, t }) => {
      const straggler = t.state === "succeeded" && t.duration_ms > limit;
      return `<tr class="task-row${straggler ? " straggler" : ""}" data-stage-id="${s.stage_id}">
        <td>${s.stage_id}</td><td>${t.partition}</td><td>${t.attempt}</td><td>${badge(t.state)}</td>
        <td class="mono">${esc(t.executor_id || "")}</td><td>${t.speculative ? "yes" : ""}</td>
        <td class="num">${esc(fmtMs(t.duration_ms))}</td><td class="num">${esc(fmtNum(t.rows))}</td>
        <td class="num">${esc(fmtBytes(t.bytes))}</td><td class="num">${esc(fmtBytes(t.shuffle_read_bytes))}</td>
        <td class="num">${t.peak_memory_bytes ? esc(fmtBytes(t.peak_memory_bytes)) : ""}</td>
        <td class="num">${t.spilled_bytes ? esc(fmtBytes(t.spilled_bytes)) : ""}</td>
        <td class="err">${t.error ? `<b>${esc(t.sqlstate || "")}</b> ${esc(t.error)}` : ""}</td></tr>`;
    }).join("");
  }

  renderPlans() {
    if (!this.q.stages.length) return;
    this.el("plans").innerHTML = this.q.stages.map((s) =>
      `<details${s.stage_id === this.q.stages.length - 1 ? " open" : ""}><summary>Stage ${s.stage_id} · ${esc(s.kind)} · output ${esc(s.output_partitioning)}</summary><pre class="plan">${esc(s.plan)}</pre></details>`).join("");
    this.planRendered = true;
  }
}

function niceStep(raw) {
  const pow = Math.pow(10, Math.floor(Math.log10(Math.max(1, raw))));
  for (const m of [1, 2, 5, 10]) if (raw <= m * pow) return m * pow;
  return 10 * pow;
}

// ---------- executors ----------

class ExecutorsView {
  mount(root) {
    root.innerHTML = `
      <h1>Executors</h1>
      <div class="error-banner" id="error" hidden></div>
      <div class="cards" id="executor-cards"></div>
      <div class="table-scroll"><table class="grid" id="executors-table">
        <thead><tr><th>Executor</th><th>Address</th><th>State</th><th class="num">Slots</th><th class="num">Active tasks</th>
          <th>Memory used / peak / pool</th><th class="num">Disk</th><th class="num">Shuffle written</th>
          <th class="num">Tasks ok</th><th class="num">Tasks failed</th><th>Last heartbeat</th><th>Allocation</th></tr></thead>
        <tbody></tbody></table></div>
      <div id="allocations"></div>`;
    this.body = root.querySelector("tbody");
    this.allocations = root.querySelector("#allocations");
    this.cards = root.querySelector("#executor-cards");
    this.error = root.querySelector("#error");
  }

  showError(e) {
    this.error.hidden = false;
    this.error.textContent = e.message;
  }

  async refresh() {
    const [executors, allocations] = await Promise.all([api("/executors"), api("/allocations")]);
    this.error.hidden = true;
    this.allocations.innerHTML = allocations.length ? `
      <h2>Allocations not registered <span class="hint">requested of the cluster manager; their executors have not registered</span></h2>
      <div class="table-scroll"><table class="grid" id="allocations-table">
        <thead><tr><th>Allocation</th><th>State</th><th class="num">Slots</th><th class="num">Memory</th><th class="num">In this state</th><th>Reason</th></tr></thead>
        <tbody>${allocations.map((a) => `<tr class="allocation-row" data-allocation-id="${esc(a.allocation_id)}">
          <td class="mono">${esc(a.allocation_id)}</td><td>${badge(a.state)}</td>
          <td class="num">${a.slots == null ? "any" : a.slots}</td><td class="num">${a.memory_bytes == null ? "any" : esc(fmtBytes(a.memory_bytes))}</td>
          <td class="num">${esc(fmtMs(a.state_ms))}</td><td>${esc(a.reason || "")}</td></tr>`).join("")}</tbody></table></div>` : "";
    const live = executors.filter((e) => e.state === "alive" || e.state === "decommissioning");
    const sum = (f) => live.reduce((n, e) => n + f(e), 0);
    this.cards.innerHTML = [
      ["Executors alive", fmtNum(executors.filter((e) => e.state === "alive").length)],
      ["Slots", fmtNum(sum((e) => e.slots))],
      ["Tasks running", fmtNum(sum((e) => e.running_tasks))],
      ["Memory used", fmtBytes(sum((e) => e.memory_used_bytes))],
      ["Disk used", fmtBytes(sum((e) => e.disk_used_bytes))],
    ].map(([k, v]) => `<div class="card"><div class="k">${k}</div><div class="v">${esc(v)}</div></div>`).join("");
    if (!executors.length) {
      this.body.innerHTML = `<tr><td colspan="12" class="empty">No executor has registered.</td></tr>`;
      return;
    }
    this.body.innerHTML = executors.map((e) => {
      const pool = e.memory_bytes;
      const pct = pool ? Math.min(100, (100 * e.memory_used_bytes) / pool) : 0;
      return `<tr class="executor-row" data-executor-id="${esc(e.executor_id)}">
        <td class="mono">${esc(e.executor_id)}</td><td class="mono">${esc(e.host)}:${e.flight_port}</td><td>${badge(e.state)}</td>
        <td class="num">${e.slots}</td><td class="num">${e.active_tasks}</td>
        <td><div class="progress mem" title="${pct.toFixed(0)}% of the pool"><div class="bar" style="width:${pct}%"></div>
          <span>${esc(fmtBytes(e.memory_used_bytes))} / ${esc(fmtBytes(e.memory_peak_bytes))} / ${pool ? esc(fmtBytes(pool)) : "unbounded"}</span></div></td>
        <td class="num">${esc(fmtBytes(e.disk_used_bytes))}</td><td class="num">${esc(fmtBytes(e.shuffle_write_bytes))}</td>
        <td class="num">${fmtNum(e.tasks_succeeded)}</td><td class="num${e.tasks_failed ? " warn" : ""}">${fmtNum(e.tasks_failed)}</td>
        <td title="${esc(e.last_heartbeat)}">${esc(fmtAgo(e.last_heartbeat))}</td><td class="mono">${esc(e.allocation_id || "")}</td></tr>`;
    }).join("");
  }
}

// ---------- cluster ----------

class ClusterView {
  mount(root) {
    root.innerHTML = `<h1>Cluster</h1><div class="error-banner" id="error" hidden></div><div id="cluster"></div>
      <h2>Configuration <span class="hint">effective settings; secrets masked</span></h2><div id="config"></div>`;
    this.root = root.querySelector("#cluster");
    this.config = root.querySelector("#config");
    this.error = root.querySelector("#error");
    this.configShown = false;
  }

  showError(e) {
    this.error.hidden = false;
    this.error.textContent = e.message;
  }

  async refresh() {
    const c = await api("/cluster");
    this.error.hidden = true;
    const list = (obj) => Object.entries(obj).map(([k, v]) => `<span class="pill">${esc(k)} <b>${fmtNum(v)}</b></span>`).join(" ");
    this.root.innerHTML = `
      <div class="cards">
        <div class="card"><div class="k">Version</div><div class="v">${esc(c.version)}</div></div>
        <div class="card"><div class="k">Up for</div><div class="v">${esc(fmtMs(c.uptime_ms))}</div></div>
        <div class="card"><div class="k">Started</div><div class="v">${esc(new Date(c.started_at).toLocaleString("en-GB"))}</div></div>
        <div class="card"><div class="k">Slots</div><div class="v">${fmtNum(c.slots)}</div></div>
      </div>
      <table class="grid kv" id="cluster-table"><tbody>
        <tr><th>Executors</th><td>${list(c.executors)}</td></tr>
        <tr><th>Queries</th><td>${list(c.queries)}</td></tr>
        <tr><th>Sessions</th><td>${c.sessions.length ? c.sessions.map((s) => `<span class="pill">${esc(s.frontend)} <b>${fmtNum(s.sessions)}</b></span>`).join(" ") : "none"}</td></tr>
      </tbody></table>`;
    if (!this.configShown) {
      this.config.innerHTML = Object.entries(c.configuration).map(([section, values]) => `
        <details open><summary>[${esc(section)}]</summary><table class="grid kv compact"><tbody>
        ${Object.entries(values).map(([k, v]) => `<tr><th>${esc(k)}</th><td class="mono">${esc(typeof v === "string" ? v : JSON.stringify(v))}</td></tr>`).join("")}
        </tbody></table></details>`).join("");
      this.configShown = true;
    }
  }
}

route();
