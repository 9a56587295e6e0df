// The Exosphere dashboard: a small single-page app over /api (server/web/routes.py). No build step, no framework;
// DAGs are drawn by cytoscape.js with the dagre layout (vendored in /static/vendor). Text from the server is only
// ever set with textContent, never as HTML.
"use strict";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const nsPick = document.getElementById("ns-pick");
const nsSelect = document.getElementById("ns-select");
const logoutButton = document.getElementById("logout");

const RUNNING = ["CREATED", "QUEUED", "EXECUTED"];
const FAILED = ["ERRORED", "TIMEDOUT", "NEXT_CREATED_ERROR"];
const RUN_STATUSES = ["PENDING", "SUCCESS", "FAILED", "CANCELLED"];
const COLORS = { ok: "#1e9e55", bad: "#d93a3a", run: "#2f6fd6", wait: "#c98a0b", off: "#9aa1ad", none: "#e4e7ec" };

let namespaces = [];
let cleanups = [];  // what the current page must stop when another is shown (timers, event streams)

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/api/login")) showLogin();
    throw new ApiError(response.status, (data && data.error) || response.statusText);
  }
  return data;
}

const enc = encodeURIComponent;
const time = (ms) => (ms ? new Date(ms).toLocaleString() : "–");
function duration(ms) {
  if (!ms || ms < 0) return "";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} m ${Math.round((ms % 60000) / 1000)} s`;
}
const badge = (status) => h("span", { class: `badge ${status}`, "data-status": status }, status);
const link = (href, text, attrs) => h("a", { href, ...attrs }, text);
function countsText(counts) {
  return Object.entries(counts || {}).sort().map(([s, n]) => `${s} ${n}`).join("  ");
}

// Call fn now (its error goes to the page, like any other), then every `ms` until the page changes; a later failure
// shows as a banner and the next tick tries again.
async function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const banner = h("div", { class: "error", "data-testid": "refresh-error", hidden: true });
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
      banner.hidden = true;
    } catch (err) {
      if (stopped) return;
      banner.textContent = `Could not refresh: ${err.message}`;
      banner.hidden = false;
      if (!banner.isConnected) main.prepend(banner);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  cleanups.push(() => { stopped = true; clearTimeout(timer); });
  await fn();
  timer = setTimeout(tick, ms);
}

// Routes run one at a time in effect: a page whose data arrives after the user moved on renders nothing.
let routeSeq = 0;
class Stale extends Error {}

function page(seq, title, ...children) {
  if (seq !== routeSeq) throw new Stale();
  main.replaceChildren(h("h1", {}, title), ...children.flat(2).filter((c) => c !== "" && c !== null && c !== undefined));
}

function showError(err) {
  main.append(h("div", { class: "error", "data-testid": "error" }, err.message || String(err)));
}

// ------------------------------------------------------------------ DAGs

function nodeColor(counts) {
  const n = (s) => (counts && counts[s]) || 0;
  if (!counts || Object.keys(counts).length === 0) return COLORS.none;
  if (FAILED.some((s) => n(s))) return COLORS.bad;
  if (n("QUEUED") || n("EXECUTED")) return COLORS.run;
  if (n("CREATED") || n("RETRY_CREATED") && !n("SUCCESS")) return COLORS.wait;
  if (n("SUCCESS")) return COLORS.ok;
  return COLORS.off;
}

function drawDag(container, graph, extraIds) {
  const elements = [];
  const ids = new Set();
  for (const node of (graph && graph.nodes) || []) {
    ids.add(node.identifier);
    elements.push({ data: { id: node.identifier, label: `${node.identifier}\n${node.node_name}` } });
  }
  for (const id of extraIds || []) {
    if (!ids.has(id)) { ids.add(id); elements.push({ data: { id, label: id } }); }
  }
  for (const node of (graph && graph.nodes) || []) {
    for (const next of node.next_nodes || []) {
      if (ids.has(next)) elements.push({ data: { id: `${node.identifier}->${next}`, source: node.identifier, target: next } });
    }
    if (node.unites && ids.has(node.unites)) {
      elements.push({
        data: { id: `${node.unites}=>${node.identifier}`, source: node.unites, target: node.identifier },
        classes: "unites",
      });
    }
  }
  const cy = cytoscape({
    container,
    elements,
    layout: { name: "dagre", rankDir: "LR", nodeSep: 30, rankSep: 70 },
    userZoomingEnabled: true,
    wheelSensitivity: 0.3,
    style: [
      {
        selector: "node",
        style: {
          shape: "round-rectangle", "background-color": COLORS.none, "border-width": 1, "border-color": "#8a93a3",
          label: "data(label)", "text-wrap": "wrap", "text-valign": "center", "font-size": 11, width: 150, height: 62,
          color: "#111",
        },
      },
      { selector: "edge", style: { width: 1.5, "line-color": "#8a93a3", "target-arrow-color": "#8a93a3", "target-arrow-shape": "triangle", "curve-style": "bezier" } },
      { selector: "edge.unites", style: { "line-style": "dashed", "line-color": "#b07cd8", "target-arrow-color": "#b07cd8" } },
    ],
  });
  cy.fit(undefined, 20);
  if (cy.zoom() > 1.2) { cy.zoom(1.2); cy.center(); }
  return cy;
}

// ------------------------------------------------------------------ login and navigation

function showLogin() {
  const seq = ++routeSeq;  // whatever page was loading is abandoned
  for (const stop of cleanups.splice(0)) stop();
  nav.replaceChildren();
  nsPick.hidden = true;
  logoutButton.hidden = true;
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", "data-testid": "api-key", placeholder: "API key" });
  const message = h("p", { class: "muted" }, "This scheduler needs an API key. It is sent once and kept on the server; the browser only holds a session cookie.");
  const form = h("form", { class: "stack", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("/api/login", { api_key: input.value });
      location.hash = "#/";
      await start();
    } catch (err) {
      message.textContent = `Login failed: ${err.message}`;
      message.className = "error";
    }
  } }, h("label", {}, "API key ", input), h("button", { type: "submit", "data-testid": "login" }, "Log in"));
  page(seq, "Log in", message, form);
}

function setNav(ns, active) {
  nav.replaceChildren(
    link(`#/ns/${enc(ns)}`, "Overview", { class: active === "overview" ? "active" : "" }),
    link(`#/ns/${enc(ns)}/graphs`, "Graphs", { class: active === "graphs" ? "active" : "" }),
    link(`#/ns/${enc(ns)}/runs`, "Runs", { class: active === "runs" ? "active" : "" }),
  );
  nsSelect.replaceChildren(...namespaces.map((n) => h("option", { value: n, selected: n === ns }, n)));
  nsPick.hidden = namespaces.length === 0;
  localStorage.setItem("exosphere-namespace", ns);
}

nsSelect.addEventListener("change", () => { location.hash = `#/ns/${enc(nsSelect.value)}`; });
logoutButton.addEventListener("click", async () => { await api("/api/logout", {}); showLogin(); });

async function route() {
  for (const stop of cleanups.splice(0)) stop();
  const seq = ++routeSeq;
  const parts = location.hash.split("?")[0].replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "ns" && parts[1]) {
      const ns = parts[1];
      if (parts[2] === "graphs" && parts[3]) return await graphPage(ns, parts[3]);
      if (parts[2] === "graphs") return await graphsPage(ns);
      if (parts[2] === "runs") return await runsPage(ns);
      return await overviewPage(ns);
    }
    if (parts[0] === "runs" && parts[1]) return await runPage(parts[1]);
    if (parts[0] === "states" && parts[1]) return await statePage(parts[1]);
    const remembered = localStorage.getItem("exosphere-namespace");
    const ns = namespaces.includes(remembered) ? remembered : namespaces[0];
    if (ns) { location.hash = `#/ns/${enc(ns)}`; return; }
    nav.replaceChildren();
    page(seq, "Exosphere", h("p", { class: "muted", "data-testid": "empty" }, "No namespace yet: start a runtime or apply a graph."));
  } catch (err) {
    if (err instanceof Stale || (err instanceof ApiError && err.status === 401)) return;
    if (seq !== routeSeq) return;
    page(seq, "Not available");
    showError(err);
  }
}

// ------------------------------------------------------------------ overview

async function overviewPage(ns) {
  const seq = routeSeq;
  setNav(ns, "overview");
  const stats = h("div", { class: "cards" });
  const replicas = h("div");
  const runtimes = h("div");
  const nodes = h("div");
  page(seq, `Overview · ${ns}`, stats, replicas, h("h2", {}, "Runtimes online"), runtimes, h("h2", {}, "Nodes"), nodes);
  await every(2000, async () => {
    const o = await api(`/api/namespaces/${enc(ns)}/overview`);
    const used = o.runtimes.reduce((a, r) => a + r.credit_used, 0);
    const total = o.runtimes.reduce((a, r) => a + r.credit, 0);
    const stat = (label, value, id) => h("div", { class: "card stat" }, h("div", { class: "muted" }, label), h("div", { class: "v", "data-testid": id }, value));
    stats.replaceChildren(
      stat("Runtimes online", o.runtimes.length, "runtimes-online"),
      stat("Credit in use", `${used} / ${total}`, "credit"),
      stat("States finished / s", o.states_per_second, "states-per-second"),
      stat("Pending runs", o.pending_runs, "pending-runs"),
    );
    // Cluster mode: every live replica, and for each runtime the replicas it holds a stream to.
    const cluster = o.replicas.length > 0;
    replicas.replaceChildren(...(cluster ? [h("h2", {}, `Scheduler replicas (${o.replicas.length})`), h("table", { "data-testid": "replicas" },
      h("tr", {}, ["Replica", "Address", "Shards owned", "Runtimes here", "Last heartbeat"].map((c) => h("th", {}, c))),
      o.replicas.map((r) => h("tr", { "data-replica": r.address },
        h("td", { class: "mono" }, r.replica_id, r.this ? h("span", { class: "muted" }, " (this one)") : ""), h("td", { class: "mono" }, r.address),
        h("td", {}, r.shards), h("td", {}, r.runtimes), h("td", {}, `${r.heartbeat_age_s.toFixed(1)} s ago`))))] : []));
    runtimes.replaceChildren(o.runtimes.length === 0 ? h("p", { class: "muted" }, "No runtime connected.") : h("table", { "data-testid": "runtimes" },
      h("tr", {}, ["Runtime", "Id", "Nodes", "Credit", "Connected", "Last heartbeat", cluster ? "Replicas" : null].filter(Boolean).map((c) => h("th", {}, c))),
      o.runtimes.map((r) => h("tr", {},
        h("td", {}, r.runtime_name, r.draining ? " (draining)" : ""), h("td", { class: "mono" }, r.runtime_id),
        h("td", {}, r.nodes.join(", ")), h("td", {}, `${r.credit_used} / ${r.credit}`),
        h("td", {}, time(r.connected_at_ms)), h("td", {}, `${((Date.now() - r.last_heartbeat_ms) / 1000).toFixed(1)} s ago`),
        cluster ? h("td", { class: "mono", "data-testid": "runtime-replicas" }, r.replicas.join(", ")) : null))));
    nodes.replaceChildren(h("table", { "data-testid": "nodes" },
      h("tr", {}, ["Node", "Status", "Queue depth"].map((c) => h("th", {}, c))),
      o.nodes.map((n) => h("tr", {}, h("td", {}, n.name), h("td", {}, badge(n.online ? "online" : "offline")), h("td", {}, n.queue_depth)))));
  });
}

// ------------------------------------------------------------------ graphs

async function graphsPage(ns) {
  const seq = routeSeq;
  setNav(ns, "graphs");
  const graphs = await api(`/api/namespaces/${enc(ns)}/graphs`);
  page(seq, `Graphs · ${ns}`);
  if (graphs.length === 0) main.append(h("p", { class: "muted" }, "No graph in this namespace."));
  const grid = h("div", { class: "grid2" });
  main.append(grid);
  for (const g of graphs) {
    const box = h("div", { class: "graph small" });
    grid.append(h("div", { class: "card", "data-testid": "graph-card" },
      h("h2", {}, link(`#/ns/${enc(ns)}/graphs/${enc(g.name)}`, g.name), h("span", { class: "muted" }, ` v${g.version} · ${g.nodes.length} node${g.nodes.length === 1 ? "" : "s"}`)),
      box));
    const cy = drawDag(box, g);
    cleanups.push(() => cy.destroy());
  }
}

async function graphPage(ns, name) {
  const seq = routeSeq;
  setNav(ns, "graphs");
  const g = await api(`/api/namespaces/${enc(ns)}/graphs/${enc(name)}`);
  const box = h("div", { class: "graph", "data-testid": "dag" });
  const fields = g.root_inputs.map((f) => h("label", {}, `${f.name}${f.required ? " *" : ""} `,
    h("input", { name: `input:${f.name}`, value: f.default, "data-testid": `input-${f.name}` })));
  const storeKeys = [...new Set([...g.store_keys, ...Object.keys(g.store_defaults)])];
  const storeFields = storeKeys.map((k) => h("label", {}, `store.${k}${g.store_keys.includes(k) ? " *" : ""} `,
    h("input", { name: `store:${k}`, value: g.store_defaults[k] || "", "data-testid": `store-${k}` })));
  const message = h("div");
  const form = h("form", { class: "stack card", "data-testid": "trigger-form", onsubmit: async (event) => {
    event.preventDefault();
    const inputs = {};
    const store = {};
    for (const input of form.querySelectorAll("input")) {
      const [kind, key] = input.name.split(/:(.*)/s);
      if (kind === "input") inputs[key] = input.value;
      else if (input.value !== "" || g.store_keys.includes(key)) store[key] = input.value;
    }
    try {
      const { run_id } = await api(`/api/namespaces/${enc(ns)}/trigger`, { graph_name: name, inputs, store });
      location.hash = `#/runs/${enc(run_id)}`;
    } catch (err) {
      message.replaceChildren(h("div", { class: "error", "data-testid": "error" }, err.message));
    }
  } }, h("h2", {}, `Trigger (root: ${g.root})`), fields, storeFields, h("button", { type: "submit", "data-testid": "trigger" }, "Trigger run"), message);
  page(seq, `Graph · ${name}`, h("p", { class: "muted" }, `version ${g.version} · updated ${time(g.updated_at_ms)}`,
    g.secret_names.length ? ` · secrets: ${g.secret_names.join(", ")}` : ""),
    box, h("p", {}, link(`#/ns/${enc(ns)}/runs?graph=${enc(name)}`, "Runs of this graph")), form);
  const cy = drawDag(box, g);
  cleanups.push(() => cy.destroy());
}

// ------------------------------------------------------------------ runs

// Runs per page; older pages are reached by the cursor the server gives with each page (after=<cursor>).
const RUNS_PAGE = 100;

async function runsPage(ns) {
  const seq = routeSeq;
  setNav(ns, "runs");
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  const graphs = await api(`/api/namespaces/${enc(ns)}/graphs`);
  const graphSelect = h("select", { "data-testid": "filter-graph" }, h("option", { value: "" }, "all graphs"),
    graphs.map((g) => h("option", { value: g.name, selected: g.name === query.get("graph") }, g.name)));
  const statusSelect = h("select", { "data-testid": "filter-status" }, h("option", { value: "" }, "any status"),
    RUN_STATUSES.map((s) => h("option", { value: s, selected: s === query.get("status") }, s)));
  const table = h("div");
  const pager = h("div", { class: "filters pager", "data-testid": "pager" });
  page(seq, `Runs · ${ns}`, h("div", { class: "filters" }, "Graph", graphSelect, "Status", statusSelect, h("span", { class: "muted" }, "live")), table, pager);
  // The cursor of every page from the first (""), the one shown last; the filters stay the same from page to page.
  let cursors = [""];
  let shown = 0;  // the last refresh asked for; an older answer arriving late is dropped
  const refresh = async () => {
    const ticket = ++shown;
    const params = new URLSearchParams({ graph: graphSelect.value, status: statusSelect.value, limit: String(RUNS_PAGE), after: cursors[cursors.length - 1] });
    const { runs, next } = await api(`/api/namespaces/${enc(ns)}/runs?${params}`);
    if (ticket !== shown) return;
    table.replaceChildren(runs.length === 0 ? h("p", { class: "muted" }, "No run.") : h("table", { "data-testid": "runs" },
      h("tr", {}, ["Run", "Graph", "Status", "Created", "States"].map((c) => h("th", {}, c))),
      runs.map((r) => h("tr", { "data-run": r.run_id },
        h("td", { class: "mono" }, link(`#/runs/${enc(r.run_id)}`, r.run_id)), h("td", {}, `${r.graph_name} v${r.graph_version}`),
        h("td", {}, badge(r.status), r.waiting_for_runtime.length ? h("span", { class: "muted" }, " waiting for a runtime") : ""),
        h("td", {}, time(r.created_at_ms)), h("td", {}, countsText(r.state_counts))))));
    const go = (move) => async () => {
      move();
      try { await refresh(); } catch (err) { showError(err); }
    };
    pager.replaceChildren(
      h("button", { "data-testid": "newer", disabled: cursors.length === 1, onclick: go(() => cursors.pop()) }, "← Newer"),
      h("span", { class: "muted", "data-testid": "page" }, `page ${cursors.length} · ${runs.length} run${runs.length === 1 ? "" : "s"}`),
      h("button", { "data-testid": "older", disabled: !next, onclick: go(() => cursors.push(next)) }, "Older →"));
  };
  const filtered = async () => {
    cursors = [""];
    const params = new URLSearchParams();
    if (graphSelect.value) params.set("graph", graphSelect.value);
    if (statusSelect.value) params.set("status", statusSelect.value);
    // The filters go in the address (to share or reload it) without a hashchange, which would rebuild the page.
    history.replaceState(null, "", `#/ns/${enc(ns)}/runs${params.size ? `?${params}` : ""}`);
    try { await refresh(); } catch (err) { showError(err); }
  };
  graphSelect.addEventListener("change", filtered);
  statusSelect.addEventListener("change", filtered);
  await every(1500, refresh);
}

async function runPage(runId) {
  const seq = routeSeq;
  const first = await api(`/api/runs/${enc(runId)}`);
  if (first.run.run_id !== runId) { location.replace(`#/runs/${enc(first.run.run_id)}`); return; }  // a prefix
  const ns = first.run.namespace;
  setNav(ns, "runs");
  const header = h("div", { class: "cards" });
  const waiting = h("div");
  const box = h("div", { class: "graph", "data-testid": "dag" });
  const states = h("div");
  const actions = h("div");
  page(seq, `Run ${runId}`, header, waiting, actions, box,
    h("p", { class: "legend muted" }, ["succeeded", "running", "waiting", "failed", "not started"].map((t, i) =>
      h("span", {}, h("span", { class: "swatch", style: `background:${[COLORS.ok, COLORS.run, COLORS.wait, COLORS.bad, COLORS.none][i]}` }), ` ${t}`))),
    h("h2", {}, "States"), states);
  const cy = drawDag(box, first.graph, Object.keys(first.nodes));
  box._cy = cy;  // for the browser tests: the colour of a node
  cleanups.push(() => cy.destroy());
  cy.on("tap", "node", (event) => {
    const row = states.querySelector(`tr[data-identifier="${CSS.escape(event.target.id())}"]`);
    if (row) row.scrollIntoView({ behavior: "smooth", block: "center" });
  });

  const show = (view) => {
    const r = view.run;
    const cards = (label, value, attrs) => h("div", { class: "card stat" }, h("div", { class: "muted" }, label), h("div", { class: "v", ...attrs }, value));
    header.replaceChildren(
      cards("Status", badge(r.status), { "data-testid": "run-status" }),
      cards("Graph", link(`#/ns/${enc(ns)}/graphs/${enc(r.graph_name)}`, `${r.graph_name} v${r.graph_version}`)),
      cards("Started", time(r.created_at_ms)),
      cards("Duration", duration((r.status === "PENDING" ? Date.now() : r.updated_at_ms) - r.created_at_ms)),
      cards("States", countsText(r.state_counts) || view.states_total),
    );
    waiting.replaceChildren(r.waiting_for_runtime.length ? h("div", { class: "warn", "data-testid": "waiting" },
      `Waiting for a runtime: no connected runtime hosts ${r.waiting_for_runtime.join(", ")}.`) : "",
      view.owned_elsewhere !== null ? h("p", { class: "muted", "data-testid": "owned-elsewhere" },
        `This run is held by the scheduler replica ${view.owned_elsewhere || "that owns its shard"} and read here from the database, `
        + "as last committed: a state a runtime is executing reads CREATED until it finishes.") : "");
    actions.replaceChildren(r.status === "PENDING" ? h("button", { class: "danger", "data-testid": "cancel", onclick: async () => {
      await api(`/api/runs/${enc(runId)}/cancel`, {});
    } }, "Cancel run") : "");
    cy.batch(() => {
      for (const [id, info] of Object.entries(view.nodes)) {
        const node = cy.getElementById(id);
        if (node.empty()) continue;
        const total = Object.values(info.counts).reduce((a, b) => a + b, 0);
        const counts = total > 1 ? `\n${countsText(info.counts)}` : "";
        node.data("label", `${id}\n${info.node_name}${counts}\n${duration(info.last_ms - info.first_ms)}`);
        node.style("background-color", nodeColor(info.counts));
        node.data("status", total === 1 ? Object.keys(info.counts)[0] : "");
      }
    });
    states.replaceChildren(h("table", { "data-testid": "states" },
      h("tr", {}, ["Identifier", "Node", "Status", "Attempt", "Created", "Ran on", "Took", "State"].map((c) => h("th", {}, c))),
      view.states.map((s) => h("tr", { "data-identifier": s.identifier },
        h("td", {}, s.identifier), h("td", {}, s.node_name), h("td", {}, badge(s.status)), h("td", {}, s.attempt),
        h("td", {}, time(s.created_at_ms)), h("td", {}, s.runtime_name), h("td", {}, s.runtime_name ? duration(s.ran_ms) || "0 ms" : ""),
        h("td", { class: "mono" }, link(`#/states/${enc(s.state_id)}`, s.state_id, { "data-testid": `state-${s.identifier}` }))))),
      view.states_total > view.states.length ? h("p", { class: "muted" }, `${view.states_total - view.states.length} more states not listed (counts per node are in the graph).`) : "");
  };
  show(first);
  if (first.run.status === "PENDING") {
    const events = new EventSource(`/api/runs/${enc(runId)}/events`);
    events.onmessage = (message) => {
      const view = JSON.parse(message.data);
      show(view);
      if (view.run.status !== "PENDING") events.close();
    };
    cleanups.push(() => events.close());
  }
}

// ------------------------------------------------------------------ a state

async function statePage(stateId) {
  const seq = routeSeq;
  const view = await api(`/api/states/${enc(stateId)}`);
  const s = view.state;
  setNav(view.run.namespace, "runs");
  const pairs = (obj) => h("table", {}, Object.entries(obj || {}).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "mono" }, v))));
  const message = h("div");
  const retry = FAILED.includes(s.status) || s.status === "CANCELLED" ? h("button", { "data-testid": "retry", onclick: async () => {
    try {
      const { state_id } = await api(`/api/states/${enc(stateId)}/retry`, {});
      location.hash = `#/states/${enc(state_id)}`;
    } catch (err) {
      message.replaceChildren(h("div", { class: "error", "data-testid": "error" }, err.message));
    }
  } }, "Retry this state") : "";
  page(seq, `State ${s.identifier}`,
    h("p", {}, "Run ", link(`#/runs/${enc(view.run.run_id)}`, view.run.run_id, { "data-testid": "run-link" }), " · ", badge(view.run.status)),
    h("div", { class: "cards" },
      h("div", { class: "card stat" }, h("div", { class: "muted" }, "Status"), h("div", { class: "v", "data-testid": "state-status" }, badge(s.status))),
      h("div", { class: "card stat" }, h("div", { class: "muted" }, "Node"), h("div", { class: "v" }, s.node_name)),
      h("div", { class: "card stat" }, h("div", { class: "muted" }, "Attempt"), h("div", { class: "v" }, s.attempt)),
      h("div", { class: "card stat" }, h("div", { class: "muted" }, "Created → updated"), h("div", {}, `${time(s.created_at_ms)} → ${time(s.updated_at_ms)}`)),
      h("div", { class: "card stat" }, h("div", { class: "muted" }, "Ran on"), h("div", { "data-testid": "ran-on" },
        s.runtime_name ? `${s.runtime_name}, from ${time(s.started_at_ms)}, took ${duration(s.ran_ms) || "0 ms"}` : "not run yet"))),
    retry, message,
    h("h2", {}, "Inputs"), pairs(s.inputs),
    h("h2", {}, "Outputs"), s.outputs ? h("pre", {}, JSON.stringify(s.outputs, null, 2)) : h("p", { class: "muted" }, "none"),
    s.error ? [h("h2", {}, "Error"), h("div", { class: "error", "data-testid": "state-error" }, `${s.error.type || "Error"}: ${s.error.message || ""}`),
      s.error.traceback ? h("pre", { "data-testid": "traceback" }, s.error.traceback) : ""] : "",
    s.pruned_data ? [h("h2", {}, "Pruned"), h("pre", {}, s.pruned_data)] : "",
    h("h2", {}, "Attempts"), h("table", { "data-testid": "attempts" },
      h("tr", {}, ["Attempt", "Status", "Created", "Ran on", "Error", "State"].map((c) => h("th", {}, c))),
      view.attempts.map((a) => h("tr", {}, h("td", {}, a.attempt), h("td", {}, badge(a.status)), h("td", {}, time(a.created_at_ms)),
        h("td", {}, a.runtime_name ? `${a.runtime_name} (${duration(a.ran_ms) || "0 ms"})` : ""),
        h("td", {}, a.error ? `${a.error.type || ""}: ${a.error.message || ""}` : "",
          a.error && a.error.traceback ? h("details", {}, h("summary", { class: "muted" }, "traceback"), h("pre", {}, a.error.traceback)) : ""),
        h("td", { class: "mono" }, link(`#/states/${enc(a.state_id)}`, a.state_id))))));
  // A state still waiting or running is shown again until it settles (its page is not a watch).
  if (["CREATED", "QUEUED", "EXECUTED"].includes(s.status)) {
    setTimeout(() => { if (seq === routeSeq) statePage(stateId).catch(() => {}); }, 1000);
  }
}

// ------------------------------------------------------------------ start

async function start() {
  const session = await api("/api/session");
  if (session.login_required && !session.logged_in) return showLogin();
  logoutButton.hidden = !session.login_required;
  namespaces = await api("/api/namespaces");
  await route();
}

window.addEventListener("hashchange", route);
start();
