// teal dashboard: follows GET /v1/events and acts through POST /v1/actions/*.
//
// Everything shown comes from proxies and operators and is hostile text:
// the DOM is built with createElement, textContent and setAttribute only,
// never from markup. The server's CSP forbids inline script and style, so
// widths are set through CSSOM (el.style.width), which it allows. A module
// script: strict, and nothing of it leaks into the page's globals.

const TOKEN_KEY = "teal.token";
const TYPES = ["CDS", "EDS", "LDS", "RDS"];
// Cuts for text from outside: long enough to read, short enough that a
// 10,000-character node id cannot push the layout apart (CSS narrows what
// is left further, with an ellipsis).
const CUT = { id: 200, text: 160, title: 2000 };
// Bidi overrides and control characters are shown, not obeyed: "\u202egnp.exe"
// must not read as "exe.png".
const HIDDEN_CHARS = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

const $ = (id) => document.getElementById(id);

// ---- DOM helpers -------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c); // strings become text nodes
  return node;
}

// Sets text only when it changed: thousands of rows are updated per event
// and most cells stay the same.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}

// Shows outside text cut to `max` characters with an ellipsis; the whole
// (up to CUT.title) stays readable in the tooltip.
function clip(node, text, max) {
  text = visible(text == null ? "" : String(text));
  if (text.length > max) {
    setText(node, text.slice(0, max) + "…");
    setAttr(node, "title", text.slice(0, CUT.title));
  } else {
    setText(node, text);
    if (node.hasAttribute("title")) node.removeAttribute("title");
  }
}

function visible(text) {
  return text.replace(HIDDEN_CHARS, (c) => "⟨U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "⟩");
}

// ---- words -------------------------------------------------------------

function pct(x) {
  return (Math.round(x * 1000) / 10).toFixed(1) + "%";
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

// "1 proxy", "3 proxies".
function count(n, one, many) {
  return n + " " + (n === 1 ? one : many);
}

function ago(ms) {
  return duration(ms) + " ago";
}

function splitWords(split) {
  const parts = Object.entries(split || {}).map(([f, w]) => f + " " + w);
  return parts.length ? parts.join(", ") : "none";
}

// "blue 100 → 0, green 0 → 100": only the fleets whose weight moves.
function moveWords(from, to) {
  const fleets = new Set([...Object.keys(from || {}), ...Object.keys(to || {})]);
  const moves = [];
  for (const f of fleets) {
    const a = (from || {})[f] || 0, b = (to || {})[f] || 0;
    if (a !== b) moves.push(f + " " + a + " → " + b);
  }
  return moves.length ? moves.join(", ") : "no weight moves";
}

// Where a change goes, as "to green" or "to green 50%": the fleet that
// gains the most weight from `from` to `target`.
function targetWords(from, target) {
  const entries = Object.entries(target || {});
  const total = entries.reduce((n, [, w]) => n + w, 0);
  if (!entries.length || total === 0) return "";
  const gain = ([f, w]) => w - ((from || {})[f] || 0);
  const [fleet, w] = entries.reduce((a, b) => (gain(b) > gain(a) || (gain(b) === gain(a) && b[1] > a[1]) ? b : a));
  return w === total ? "to " + fleet : "to " + fleet + " " + Math.round((100 * w) / total) + "%";
}

// A proxy's state, as the spec defines it for page and test alike.
function proxyState(p) {
  const states = TYPES.map((t) => (p.types && p.types[t] ? p.types[t].state : "SYNCED"));
  if (states.includes("NACKED")) return "nacked";
  if (states.includes("STALE") || states.includes("NOT SENT")) return "pending";
  return "acked";
}

// Envoy's words for the NACK in force, else for the last one it sent: a
// NACK a rollback undid is gone from the state within a moment, and an
// operator asking "why did it roll back" still wants to read it.
function nackMessage(p) {
  let past = null;
  for (const t of TYPES) {
    const ty = p.types && p.types[t];
    if (!ty || !ty.nack) continue;
    if (ty.state === "NACKED") return { now: true, text: t + ": " + ty.nack.message };
    past = past || { now: false, text: "earlier, " + t + " " + ty.nack.version + ": " + ty.nack.message };
  }
  return past;
}

// ---- state -------------------------------------------------------------

const model = {
  hello: null,
  status: null,
  proxies: null,
  byNode: new Map(), // node id -> proxy JSON of the latest proxies event
  clockSkew: 0, // server clock minus ours, from the latest status
};
// Raw event data not yet applied: only the latest of each kind is kept, so
// a slow render skips states instead of queueing them.
const queued = { hello: null, status: null, proxies: null };
const auth = { token: null, actor: null };

const serverNow = () => Date.now() + model.clockSkew;

// ---- event stream ------------------------------------------------------

let source = null;

function connect() {
  source = new EventSource("/v1/events");
  source.addEventListener("open", () => {
    setLive(true);
    if ($("notice").dataset.from === "stream") $("notice").hidden = true;
  });
  for (const kind of ["hello", "status", "proxies"]) {
    source.addEventListener(kind, (e) => {
      queued[kind] = e.data;
      scheduleRender();
    });
  }
  source.addEventListener("error", (e) => {
    // A server's own `event: error` carries data; a dropped connection not.
    if (e.data) notice("error", "event stream: " + safeError(e.data), "stream");
    setLive(false);
    // EventSource retries by itself after a dropped stream, but gives up
    // for good on a refused one (503 at the stream limit): retry then.
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      setTimeout(connect, 3000 + Math.random() * 2000);
    }
  });
}

function safeError(data) {
  try {
    return String(JSON.parse(data).error);
  } catch {
    return String(data);
  }
}

function setLive(live) {
  document.body.dataset.live = live ? "live" : "reconnecting";
  setText($("conn"), live ? "live" : "reconnecting…");
}

// ---- rendering ---------------------------------------------------------

let renderPending = false;

// Renders at the next frame, or within 250 ms where frames do not come
// (a hidden tab): never more than once per frame however fast events come.
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  const once = () => {
    if (renderPending) render();
  };
  requestAnimationFrame(once);
  setTimeout(once, 250);
}

// Runs one part of a render; a part that fails (a field this page does not
// know the shape of) leaves the others to show what they can.
function part(name, fn) {
  try {
    fn();
  } catch (e) {
    // Still reported as uncaught, where a developer (or a test) looks.
    queueMicrotask(() => {
      throw new Error("teal dashboard: could not show the " + name + ": " + e.message, { cause: e });
    });
  }
}

function render() {
  renderPending = false;
  const t0 = performance.now();
  const [hello, proxies, status] = [queued.hello, queued.proxies, queued.status];
  queued.hello = queued.proxies = queued.status = null;
  if (hello) part("hello", () => {
    model.hello = JSON.parse(hello);
    renderWhere();
    // A new stream may be a restarted teal with other tokens: ask again.
    if (auth.token) checkToken(auth.token, false);
  });
  if (proxies) part("proxies", () => {
    model.proxies = JSON.parse(proxies);
    model.byNode = new Map(model.proxies.proxies.map((p) => [p.node_id, p]));
    renderProxies();
  });
  if (status) part("status", () => {
    model.status = JSON.parse(status);
    model.clockSkew = model.status.at_unix_ms - Date.now();
    renderReplicas();
  });
  if (model.status) part("services", () => {
    renderServices();
    document.body.dataset.statusAt = String(model.status.at_unix_ms);
  });
  applyMode();
  // Kept to the last one: user-timing entries pile up otherwise.
  performance.clearMeasures("teal-render");
  performance.measure("teal-render", { start: t0 });
}

function renderWhere() {
  const h = model.hello;
  let words = "";
  if (h && h.replica) words = "replica " + h.replica + (h.leader ? " (leader)" : "");
  if (h && !h.leader) words = (words ? words + " · " : "") + "follower: actions go to " + (h.leader_admin || "the leader (unknown)");
  clip($("where"), words, CUT.text);
}

// ---- services ----------------------------------------------------------

const sections = new Map(); // service -> {root, parts}

// Whether a proxy was served version `v`. teal gives a change's version
// only to the groups routing its service, so holding it places the proxy.
function holds(p, v) {
  return !!v && TYPES.some((t) => {
    const ty = p.types && p.types[t];
    return ty && (ty.expected === v || ty.sent === v || ty.acked === v);
  });
}

function historyOf(svc) {
  const h = model.status.history && model.status.history[svc.name];
  if (h) return h;
  return svc.last_change ? [svc.last_change] : [];
}

// The proxies of the groups routing a service (its status's
// `applied.groups`), else every proxy shown.
function proxiesOf(name) {
  const all = model.proxies ? model.proxies.proxies : [];
  const svc = model.status && model.status.services.find((s) => s.name === name);
  const groups = svc && svc.applied && Array.isArray(svc.applied.groups) ? new Set(svc.applied.groups) : null;
  return groups ? all.filter((p) => groups.has(p.group)) : all;
}

function renderServices() {
  const host = $("services");
  const seen = new Set();
  for (const svc of model.status.services) {
    seen.add(svc.name);
    let s = sections.get(svc.name);
    if (!s) sections.set(svc.name, (s = buildSection(svc.name)));
    if (host.children[seen.size - 1] !== s.root) host.insertBefore(s.root, host.children[seen.size - 1] || null);
    updateSection(s, svc);
  }
  for (const [name, s] of sections) {
    if (!seen.has(name)) {
      s.root.remove();
      sections.delete(name);
    }
  }
  $("no-services").hidden = seen.size > 0;
}

function buildSection(name) {
  const f = (field, tag = "span") => el(tag, { "data-field": field });
  const parts = {
    live: f("live"),
    bars: el("div", { class: "bars" }),
    fleets: el("tbody"),
    rollback: f("rollback", "dd"),
    cost: f("cost-window", "dd"),
    operation: el("div", { "data-field": "operation", "data-phase": "", class: "operation" }),
    outcome: el("p", { "data-field": "last-outcome", class: "outcome" }),
    actions: el("div", { class: "actions" }),
    history: el("ol", { "data-field": "history", class: "history" }),
    sig: {},
  };
  const title = el("h2", {}, "");
  clip(title, name, CUT.id);
  const fleetTable = el("table", { class: "fleets" },
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Fleet"), el("th", { scope: "col" }, "Configured"),
      el("th", { scope: "col" }, "Confirmed"), el("th", { scope: "col" }, "Measured"),
      el("th", { scope: "col" }, "Errors"), el("th", { scope: "col" }, "Drain"))),
    parts.fleets);
  const root = el("section", { class: "svc panel", "data-service": name },
    el("header", {}, title, parts.live),
    parts.bars,
    el("div", { class: "scroll" }, fleetTable),
    el("dl", { class: "facts" }, el("dt", {}, "Rollback point"), parts.rollback, el("dt", {}, "Cost window"), parts.cost),
    parts.operation, parts.outcome, parts.actions,
    el("details", { class: "recent", open: "" }, el("summary", {}, "Recent changes"), parts.history));
  return { root, parts };
}

function updateSection(s, svc) {
  const p = s.parts;
  clip(p.live, svc.live ? "live: " + svc.live : "split: no fleet takes more than half", CUT.text);
  const confirmed = confirmedSplit(svc);
  renderBars(p, svc, confirmed);
  renderFleets(p, svc, confirmed);
  clip(p.rollback, svc.rollback_to ? splitWords(svc.rollback_to) + (svc.previous ? " (live " + svc.previous + ")" : "") : "none", CUT.text);
  p.cost.dataset.since = svc.both_fleets_since_unix_ms == null ? "" : String(svc.both_fleets_since_unix_ms);
  tickCost(p.cost);
  renderOperation(p, svc);
  renderOutcome(p.outcome, svc.last_change);
  renderActions(p, svc);
  renderHistory(p, svc);
}

// The split every proxy routing the service holds, as teal knows it
// (null until every one ACKed the weights served).
function confirmedSplit(svc) {
  return svc.confirmed_weights || null;
}

// One class per fleet: blue and green get their own colours, others a
// palette slot by position.
function fleetClass(fleet, i) {
  return fleet === "blue" || fleet === "green" ? "f-" + fleet : "f-" + (i % 4);
}

function shares(split) {
  const entries = Object.entries(split || {});
  const total = entries.reduce((n, [, w]) => n + w, 0);
  return entries.map(([f, w]) => [f, total ? w / total : 0]);
}

// Whether the proxies' load reports saw any request in their window: with
// none, a split of 0% and 0% says nothing.
function hasRequests(svc) {
  return svc.traffic.some((t) => t.requests > 0);
}

function renderBars(p, svc, confirmed) {
  const fleets = Object.keys(svc.weights);
  const measured = hasRequests(svc) ? Object.fromEntries(svc.traffic.map((t) => [t.fleet, t.share])) : null;
  const rows = [["configured", svc.weights], ["confirmed", confirmed], ["measured", measured]];
  const sig = fleets.join("\u0000");
  if (p.sig.bars !== sig) {
    p.sig.bars = sig;
    p.bars.replaceChildren(...rows.map(([label]) => el("div", { class: "bar-row" },
      el("span", { class: "bar-label" }, label),
      el("div", { class: "bar", role: "img" }, ...fleets.map((f, i) => el("span", { class: "seg " + fleetClass(f, i) }))))));
  }
  rows.forEach(([label, split], r) => {
    const bar = p.bars.children[r].lastChild;
    const parts = split ? shares(split) : [];
    const byFleet = new Map(parts);
    fleets.forEach((f, i) => {
      const share = byFleet.get(f) || 0;
      const seg = bar.children[i];
      seg.style.width = share * 100 + "%";
      // Words where they fit; the table below has every number anyway.
      const n = Math.round(share * 100) + "%";
      setText(seg, share >= 0.25 ? f + " " + n : share >= 0.1 ? n : "");
    });
    bar.classList.toggle("empty", !split);
    setAttr(bar, "aria-label", label + ": " + (split ? parts.map(([f, x]) => f + " " + Math.round(x * 100) + "%").join(", ") : "unknown"));
  });
}

function renderFleets(p, svc, confirmed) {
  const fleets = Object.keys(svc.weights);
  const sig = fleets.join("\u0000");
  if (p.sig.fleets !== sig) {
    p.sig.fleets = sig;
    p.fleets.replaceChildren(...fleets.map((f, i) => {
      const name = el("th", { scope: "row" }, el("span", { class: "swatch " + fleetClass(f, i) }), el("span", { class: "t" }));
      clip(name.lastChild, f, CUT.id);
      return el("tr", { "data-fleet": f }, name,
        el("td", { "data-field": "configured" }), el("td", { "data-field": "confirmed" }),
        el("td", { "data-field": "measured" }), el("td", { "data-field": "error-ratio" }), el("td", { "data-field": "drain" }));
    }));
  }
  const traffic = new Map(svc.traffic.map((t) => [t.fleet, t]));
  const drains = new Map(svc.drains.map((d) => [d.fleet, d]));
  const total = Object.values(svc.weights).reduce((a, b) => a + b, 0) || 1;
  for (const row of p.fleets.children) {
    const f = row.getAttribute("data-fleet");
    const [conf, meas, err, drain] = ["confirmed", "measured", "error-ratio", "drain"].map((k) => row.querySelector(`[data-field="${k}"]`));
    setText(row.querySelector('[data-field="configured"]'), pct(svc.weights[f] / total) + (svc.retired.includes(f) ? " (retired)" : ""));
    const ctotal = confirmed ? Object.values(confirmed).reduce((a, b) => a + b, 0) || 1 : 1;
    setText(conf, confirmed ? pct((confirmed[f] || 0) / ctotal) : "—");
    const t = hasRequests(svc) ? traffic.get(f) : null;
    setText(meas, t ? pct(t.share) : "—");
    setAttr(meas, "title", t ? count(t.requests, "request", "requests") + ", " + t.requests_per_second.toFixed(1) + "/s over " + t.window_ms / 1000 + " s, " + t.proxies_reporting + " of " + count(t.proxies_routing, "proxy", "proxies") + " reporting" : svc.traffic.length ? "no request in the proxies' last reports" : "no proxy reports load");
    setText(err, t && t.requests ? pct(t.error_ratio) : "—");
    const d = drains.get(f);
    setText(drain, !d ? "" : d.drained ? "drained" : d.in_flight + " in flight on " + count(d.proxies - d.idle, "proxy", "proxies"));
  }
}

function tickCost(node) {
  const since = node.dataset.since;
  setText(node, since ? "both fleets running for " + duration(Math.max(0, serverNow() - Number(since))) : "one fleet running");
}

function renderOperation(p, svc) {
  const op = svc.in_progress;
  const box = p.operation;
  setAttr(box, "data-phase", op ? op.phase : "");
  if (!op) {
    if (p.sig.op !== "") {
      p.sig.op = "";
      box.replaceChildren(el("span", { class: "quiet" }, "No operation running."));
    }
    return;
  }
  if (p.sig.op !== op.id) {
    p.sig.op = op.id;
    p.sig.grid = null;
    box.replaceChildren(el("p", { class: "op-title" }), el("p", { class: "op-counts" }), el("div", { class: "grid", role: "img" }), el("p", { class: "op-message" }));
  }
  const [title, counts, grid, message] = box.children;
  const step = op.steps > 1 ? ", step " + op.step + "/" + op.steps : "";
  clip(title, op.verb + " " + targetWords(svc.weights, op.target) + " · " + op.phase + step + " · operation #" + op.id, CUT.text);
  const nacked = renderGrid(p, grid, op);
  const pending = Math.max(0, op.total - op.acked - nacked);
  const words = op.total ? op.acked + "/" + op.total + " ACKed, " + nacked + " NACKed, " + pending + " pending" : "no proxy to wait for yet";
  setText(counts, words);
  setAttr(grid, "aria-label", words);
  const failed = (op.checks || []).filter((c) => !c.ok).map((c) => c.check + " on " + c.endpoint + ": " + c.detail);
  clip(message, [op.message, ...failed].filter(Boolean).join(" · "), CUT.text * 2);
}

// The proxies an operation waits for: once it has a version, those served
// it (and those it names); before, those of the service's groups.
function proxiesOfOp(op) {
  if (!op.version) return proxiesOf(op.service);
  const named = new Set([...op.waiting_for, ...(op.not_waiting_for || [])]);
  const all = model.proxies ? model.proxies.proxies : [];
  return all.filter((p) => named.has(p.node_id) || holds(p, op.version));
}

// One square per proxy of the operation, in node id order so squares do
// not jump as their states change; returns how many are NACKed.
function renderGrid(p, grid, op) {
  const proxies = proxiesOfOp(op);
  const ids = proxies.map((x) => x.node_id).sort();
  const sig = ids.join("\u0000");
  if (p.sig.grid !== sig) {
    p.sig.grid = sig;
    p.opGrid = new Map(ids.map((id) => [id, el("span", { class: "sq", title: visible(id.slice(0, CUT.title)) })]));
    grid.replaceChildren(...p.opGrid.values());
    // Smaller squares for more proxies, so a thousand still fit at a glance.
    grid.classList.toggle("dense", ids.length > 200);
    grid.classList.toggle("denser", ids.length > 1000);
  }
  const waiting = new Set(op.waiting_for);
  const skipped = new Set(op.not_waiting_for || []);
  let nacked = 0;
  for (const proxy of proxies) {
    let state = proxyState(proxy);
    if (state === "acked" && waiting.has(proxy.node_id)) state = "pending";
    if (skipped.has(proxy.node_id)) state = "skipped";
    if (state === "nacked") nacked++;
    setAttr(p.opGrid.get(proxy.node_id), "data-state", state);
  }
  return nacked;
}

function renderOutcome(node, c) {
  setAttr(node, "data-outcome", c ? c.outcome || "" : "");
  setAttr(node, "data-change-id", c ? String(c.id) : "");
  clip(node, c ? "Last: " + changeWords(c) : "No change yet.", CUT.text * 2);
}

// "succeeded: flip to green, 183 ms" or "refused: flip to green: <reason>"
function changeWords(c) {
  let words = c.outcome + ": " + c.verb + " " + targetWords(c.from, c.target || c.to);
  if (c.convergence_ms != null) words += ", " + c.convergence_ms + " ms";
  if (c.reason) words += ": " + c.reason;
  return words;
}

function renderHistory(p, svc) {
  const changes = historyOf(svc);
  const sig = JSON.stringify(changes.map((c) => [c.id, c.outcome, c.finished_unix_ms]));
  if (p.sig.history === sig) return;
  p.sig.history = sig;
  p.history.replaceChildren(...changes.map((c) => {
    const when = new Date(c.started_unix_ms).toLocaleTimeString();
    const line = el("span", { class: "t" });
    clip(line, "#" + c.id + " " + changeWords(c) + " · " + moveWords(c.from, c.to) + " · by " + c.actor, CUT.text * 2);
    return el("li", { "data-change-id": String(c.id), "data-outcome": c.outcome || "" }, el("time", {}, when), " ", line);
  }));
  if (!changes.length) p.history.append(el("li", { class: "quiet" }, "No change yet."));
}

// An action button, disabled unless this page may act. `none` marks one
// that has nothing to do (no rollback point, an operation already running).
function actionButton(action, text, attrs, none) {
  const b = el("button", Object.assign({ type: "button", "data-action": action }, attrs));
  if (none) b.setAttribute("data-none", "");
  clip(b, text, CUT.text);
  b.disabled = !canAct() || !!none;
  return b;
}

// Buttons are rebuilt only when what they offer changes, so a click is not
// lost to a re-render in between.
function renderActions(p, svc) {
  const fleets = Object.keys(svc.weights).filter((f) => !svc.retired.includes(f));
  const total = Object.values(svc.weights).reduce((a, b) => a + b, 0);
  const flips = fleets.filter((f) => svc.weights[f] < total);
  const retiring = svc.retirement && svc.retirement.fleet;
  const retires = fleets.filter((f) => svc.weights[f] === 0 && f !== retiring);
  const op = svc.in_progress;
  // teal runs one operation per service at a time, and cannot stop a
  // rollback or an undo.
  const busy = !!op;
  const abortable = op && op.verb !== "rollback" && op.phase !== "rolling-back";
  const sig = JSON.stringify([flips, retires, fleets.length, !!svc.rollback_to, op && op.id, abortable]);
  if (p.sig.actions === sig) return;
  p.sig.actions = sig;
  p.actions.replaceChildren(
    ...flips.map((f) => actionButton("flip", "Flip to " + f, { "data-to": f }, busy)),
    ...(fleets.length > 1 ? [actionButton("shift", "Shift…", {}, busy)] : []),
    actionButton("rollback", "Roll back", {}, busy || !svc.rollback_to),
    ...retires.map((f) => actionButton("retire", "Retire " + f, { "data-fleet": f }, busy)),
    ...(abortable ? [actionButton("abort", "Abort #" + op.id, { class: "danger" })] : []));
}

// ---- proxies -----------------------------------------------------------

const rows = new Map(); // node id -> {tr, cells, last}

function renderProxies() {
  const list = model.proxies.proxies;
  const body = $("proxy-rows");
  const now = new Set();
  let cursor = body.firstChild;
  const counts = { acked: 0, pending: 0, nacked: 0 };
  for (const p of list) {
    now.add(p.node_id);
    let row = rows.get(p.node_id);
    if (!row) rows.set(p.node_id, (row = buildRow(p.node_id)));
    counts[updateRow(row, p)]++;
    // Moves a row only when the server's order put it elsewhere.
    if (row.tr === cursor) cursor = cursor.nextSibling;
    else body.insertBefore(row.tr, cursor);
  }
  for (const [id, row] of rows) {
    if (!now.has(id)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  const { total, shown } = model.proxies;
  $("proxies").classList.toggle("no-replica", !list.some((p) => p.replica));
  // Rows out of view skip layout only with many of them: a few are cheap,
  // and skipped rows would come out blank in a whole-page screenshot.
  $("proxies").classList.toggle("many", list.length > 200);
  const here = model.hello && model.hello.replica ? " to this replica" : "";
  let words = (total ?? list.length) + " connected" + here + ": " + counts.acked + " ACKed, " + counts.pending + " pending, " + counts.nacked + " NACKed";
  if (total > shown) words += " (showing " + shown + ": NACKed and pending first)";
  setText($("proxies-summary"), words);
}

function buildRow(id) {
  const cells = {};
  const td = (field) => (cells[field] = el("span", { "data-field": field, role: "cell" }));
  const tr = el("div", { "data-node": id, class: "prow", role: "row" },
    td("node-id"), td("state"), td("xds"), td("nack"), td("group"), td("identity"),
    td("replica"), td("cordon"), td("last-report"), td("action"));
  clip(cells["node-id"], id, CUT.id);
  setAttr(cells["node-id"], "title", visible(id.slice(0, CUT.title)));
  for (const f of ["node-id", "group", "nack", "identity", "replica", "cordon"]) cells[f].classList.add("t");
  return { tr, cells, last: "", age: "" };
}

// What a row shows but the report age, as one string: most proxies do not
// change between two events, and comparing this skips them whole.
function rowSignature(p) {
  let sig = p.group + "\u0000" + p.identity + "\u0000" + p.replica + "\u0000" + p.cordoned + "\u0000" + p.cordon_reason + "\u0000" + !!p.load;
  for (const t of TYPES) {
    const ty = p.types && p.types[t];
    if (ty) sig += "\u0000" + ty.state + ty.sent + "/" + ty.acked + "/" + ty.expected + (ty.nack ? ty.nack.version + ty.nack.message : "");
  }
  return sig;
}

// The age of a proxy's last load report now, in whole seconds (finer would
// rewrite every row every second). teal sends the proxies again only when
// their xDS state changes or every few seconds, so the age is counted from
// the event's time, not taken as it was then.
function reportAge(p) {
  if (!p.load) return "no load stream";
  if (p.load.age_ms == null) return "none yet";
  const at = model.proxies ? model.proxies.at_unix_ms : serverNow();
  const age = Math.max(0, serverNow() - (at - p.load.age_ms));
  return age < 1000 ? "< 1 s ago" : ago(Math.floor(age / 1000) * 1000);
}

// Moves every row's report age on with the clock.
function tickAges() {
  if (!model.proxies) return;
  for (const p of model.proxies.proxies) {
    const row = rows.get(p.node_id);
    if (!row) continue;
    const age = reportAge(p);
    if (row.age !== age) setText(row.cells["last-report"], (row.age = age));
  }
}

function updateRow(row, p) {
  const state = proxyState(p);
  const age = reportAge(p);
  if (row.age !== age) setText(row.cells["last-report"], (row.age = age));
  const sig = rowSignature(p);
  if (row.last === sig) return state;
  row.last = sig;
  const c = row.cells;
  setAttr(row.tr, "data-state", state);
  clip(c.group, p.group, CUT.id);
  setText(c.state, state === "nacked" ? "NACKED" : state);
  // The types not in sync, by name ("RDS stale"); each type's versions in
  // the tooltip.
  const behind = [], detail = [];
  for (const t of TYPES) {
    const ty = p.types && p.types[t];
    if (!ty) continue;
    if (ty.state !== "SYNCED") behind.push(t + " " + ty.state.toLowerCase());
    detail.push(t + " " + ty.state.toLowerCase() + ": sent " + (ty.sent || "—") + ", ACKed " + (ty.acked || "—") + ", expected " + (ty.expected || "—"));
  }
  setText(c.xds, behind.length ? behind.join(", ") : "all synced");
  setAttr(c.xds, "title", detail.join("\n"));
  c.xds.classList.toggle("behind", state === "pending");
  c.xds.classList.toggle("rejected", state === "nacked");
  const nack = nackMessage(p);
  clip(c.nack, nack ? nack.text : "", CUT.text);
  c.nack.classList.toggle("past", !!nack && !nack.now);
  clip(c.identity, p.identity || "", CUT.id);
  clip(c.replica, p.replica || "", CUT.id);
  clip(c.cordon, p.cordoned ? "cordoned" + (p.cordon_reason ? ": " + p.cordon_reason : "") : "", CUT.text);
  const action = p.cordoned ? "uncordon" : "cordon";
  if (!c.action.firstChild || c.action.firstChild.getAttribute("data-action") !== action) {
    c.action.replaceChildren(actionButton(action, p.cordoned ? "Uncordon" : "Cordon", { class: "small" }));
  }
  return state;
}

function renderReplicas() {
  const replicas = model.status.replicas || [];
  $("replicas-panel").hidden = !replicas.length;
  $("replicas").replaceChildren(...replicas.map((r) => {
    const li = el("li", { "data-replica": r.id, "data-leader": String(!!r.leader), class: "t" });
    clip(li, r.id + (r.leader ? " (leader)" : "") + " · admin " + r.admin + " · " + count(r.proxies, "proxy", "proxies") + (r.ineligible ? " · ineligible: " + r.ineligible : ""), CUT.text);
    return li;
  }));
}

// ---- token and mode ----------------------------------------------------

function canAct() {
  return !!auth.actor && !(model.hello && model.hello.leader === false);
}

let modeShown = null;

// Says the mode in words and enables the buttons when it changed; buttons
// made later take it on as they are made (actionButton), so thousands of
// rows are not swept at every event.
function applyMode() {
  const act = canAct();
  const key = [act, auth.actor, !!auth.token, model.hello && model.hello.tokens].join("\u0000");
  if (modeShown === key) return;
  modeShown = key;
  document.body.dataset.mode = auth.actor ? "act" : "read-only";
  let words;
  if (auth.actor) words = "Acting as " + auth.actor;
  else if (model.hello && model.hello.tokens === false) words = "Read-only: this teal accepts no token";
  else words = "Read-only: type a token to act";
  if (auth.actor && !act) words += " (follower: actions go to the leader)";
  clip($("mode"), words, CUT.text);
  for (const b of document.querySelectorAll("button[data-action]")) {
    b.disabled = !act || b.hasAttribute("data-none");
  }
  $("token-forget").disabled = !auth.token;
}

async function checkToken(token, typed) {
  let res;
  try {
    res = await fetch("/v1/whoami", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  } catch {
    if (typed) notice("error", "could not reach teal to check the token");
    return;
  }
  const body = await res.json().catch(() => ({}));
  if (res.ok && typeof body.actor === "string") {
    auth.token = token;
    auth.actor = body.actor;
    sessionStorage.setItem(TOKEN_KEY, token);
    if (typed) notice("ok", "token accepted: acting as " + body.actor);
  } else if (res.status === 401) {
    forgetToken();
    notice("error", "token refused and forgotten: " + (body.error || "unknown token"));
  } else if (typed) {
    notice("error", "could not check the token: " + (body.error || res.status));
  }
  applyMode();
}

function forgetToken() {
  auth.token = null;
  auth.actor = null;
  sessionStorage.removeItem(TOKEN_KEY);
  applyMode();
}

function useTypedToken() {
  const input = $("token");
  const token = input.value.trim();
  input.value = "";
  if (token) checkToken(token, true);
}

// ---- notices -----------------------------------------------------------

// `from` marks a notice about the stream, taken down once it is back.
function notice(kind, text, from) {
  const n = $("notice");
  n.dataset.kind = kind;
  n.dataset.from = from || "";
  clip(n, text, CUT.text * 3);
  n.hidden = false;
}

// ---- actions -----------------------------------------------------------

// Sends one action; `what` names it in the notice ("flip of web").
async function post(path, body, what) {
  let res;
  try {
    res = await fetch("/v1/actions/" + path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + auth.token },
      body: JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    notice("error", what + ": could not reach teal");
    return;
  }
  const answer = await res.json().catch(() => ({}));
  if (res.ok) {
    let result = "done";
    if (answer.id != null) result = "started as operation #" + answer.id;
    else if (answer.changed === false) result = "nothing to change, it already was";
    notice("ok", what + ": " + result);
    return;
  }
  if (res.status === 401) forgetToken();
  let text = what + " refused: " + (answer.error || "HTTP " + res.status);
  if (answer.kind === "not_leader" && answer.leader) text += " (leader: " + answer.leader + ")";
  notice("error", text);
}

// What the confirm dialog is about: a summary and the request it sends.
let pending = null;

function openConfirm(action) {
  pending = action;
  setText($("confirm-title"), action.title);
  $("shift-fields").hidden = !action.percents;
  $("reason-label").hidden = !action.reason;
  if (action.reason) $("cordon-reason").value = "";
  refreshConfirm();
  $("confirm").showModal();
}

function refreshConfirm() {
  const { summary, problem } = pending.describe();
  clip($("confirm-summary"), summary, CUT.text * 3);
  setText($("confirm-problem"), problem || "");
  $("confirm-ok").disabled = !!problem;
}

// How many proxies a change of a service waits for: teal's own count
// (`applied.total`, cordoned proxies left out), else those the page knows of.
function proxyCount(name) {
  const svc = serviceOf(name);
  const n = svc && svc.applied ? svc.applied.total : proxiesOf(name).length;
  return count(n, "proxy", "proxies");
}

// Percents as the server takes them: whole numbers, rising, the last at
// most 100.
function parsePercents(text) {
  const parts = text.split(",").map((s) => s.trim()).filter(Boolean);
  const nums = parts.map(Number);
  if (!nums.length || nums.some((n) => !Number.isInteger(n) || n < 1 || n > 100)) {
    return { problem: "steps are whole percents from 1 to 100, like 10,50,100" };
  }
  if (nums.some((n, i) => i && n <= nums[i - 1])) return { problem: "each step must be more than the one before" };
  return { nums };
}

// The wait after each step, as the CLI's --interval (default 30 s there too).
function parseInterval(text) {
  const s = Number(text);
  if (text.trim() === "" || !Number.isInteger(s) || s < 0 || s > 86400) {
    return { problem: "the wait is whole seconds, 0 to 86400" };
  }
  return { ms: s * 1000 };
}

function serviceOf(name) {
  return model.status && model.status.services.find((s) => s.name === name);
}

// What each button asks to confirm: a title, `describe()` (what will move,
// or the problem with what was typed) and `send()`. `svc` is the service's
// status as the button was clicked.
const ACTIONS = {
  flip(svc, button) {
    const name = svc.name, to = button.getAttribute("data-to");
    const target = Object.fromEntries(Object.keys(svc.weights).map((f) => [f, f === to ? 100 : 0]));
    return {
      title: "Flip " + name + " to " + to,
      describe: () => ({ summary: name + ": " + moveWords(svc.weights, target) + ", on " + proxyCount(name) }),
      send: () => post("flip", { service: name, to }, "flip of " + name + " to " + to),
    };
  },
  shift(svc) {
    const name = svc.name;
    const fleets = Object.keys(svc.weights).filter((f) => !svc.retired.includes(f));
    const to = fleets.find((f) => f !== svc.live) || fleets[0];
    const percents = () => parsePercents($("shift-percents").value);
    const interval = () => parseInterval($("shift-interval").value);
    return {
      title: "Shift " + name + " to " + to,
      percents: true,
      describe: () => {
        const { nums, problem } = percents();
        const wait = interval();
        if (problem || wait.problem) return { summary: name + ": shift to " + to, problem: problem || wait.problem };
        const target = shiftTarget(svc.weights, to, nums[nums.length - 1]);
        return {
          summary: name + ": to " + to + " in steps of " + nums.join("%, ") + "%: " + moveWords(svc.weights, target) +
            " (about), on " + proxyCount(name) + ", " + wait.ms / 1000 + " s between steps",
        };
      },
      send: () => post("shift", { service: name, to, percents: percents().nums, interval_ms: interval().ms }, "shift of " + name + " to " + to),
    };
  },
  rollback(svc) {
    const name = svc.name;
    return {
      title: "Roll " + name + " back",
      describe: () => ({
        summary: name + ": back to the rollback point " + splitWords(svc.rollback_to) + ": " +
          moveWords(svc.weights, svc.rollback_to) + ", on " + proxyCount(name),
      }),
      send: () => post("rollback", { service: name }, "rollback of " + name),
    };
  },
  retire(svc, button) {
    const name = svc.name, fleet = button.getAttribute("data-fleet");
    return {
      title: "Retire " + fleet + " of " + name,
      describe: () => ({
        summary: name + ": " + fleet + " (weight 0) is retired once drained: its endpoints go from " +
          proxyCount(name) + " and it takes no traffic until set again",
      }),
      send: () => post("retire", { service: name, fleet }, "retirement of " + fleet + " of " + name),
    };
  },
  abort(svc) {
    const op = svc.in_progress;
    return {
      title: "Abort operation #" + op.id,
      describe: () => ({
        summary: svc.name + ": abort " + op.verb + " " + targetWords(svc.weights, op.target) + " (" + op.phase +
          "): it ends before its next step; a step being confirmed is undone, earlier steps stay (roll back undoes them)",
      }),
      send: () => post("abort", { id: op.id }, "abort of operation #" + op.id),
    };
  },
  cordon(node, shown) {
    const reason = () => $("cordon-reason").value.trim();
    return {
      title: "Cordon a proxy",
      reason: true,
      describe: () => ({
        summary: "cordon " + shown + ": operations stop waiting for its ACKs and its NACKs no longer roll them back",
        problem: reason() ? "" : "say why, for the others",
      }),
      send: () => post("cordon", { node_id: node, reason: reason() }, "cordon of " + shown),
    };
  },
  uncordon(node, shown) {
    return {
      title: "Uncordon a proxy",
      describe: () => ({ summary: "uncordon " + shown + ": operations wait for its ACKs again" }),
      send: () => post("uncordon", { node_id: node }, "uncordon of " + shown),
    };
  },
};

// A shift's last step as a split: `to` at `percent`, the others sharing
// the rest as they share it now.
function shiftTarget(weights, to, percent) {
  const others = Object.keys(weights).filter((f) => f !== to);
  const rest = others.reduce((n, f) => n + (weights[f] || 0), 0);
  const target = { [to]: percent };
  for (const f of others) target[f] = rest ? Math.round(((weights[f] || 0) * (100 - percent)) / rest) : 0;
  return target;
}

function actionFor(button) {
  const kind = button.getAttribute("data-action");
  const row = button.closest("[data-node]");
  if (row) {
    const node = row.getAttribute("data-node");
    return ACTIONS[kind](node, node.length > 64 ? node.slice(0, 64) + "…" : node);
  }
  const svc = serviceOf(button.closest("[data-service]").getAttribute("data-service"));
  return svc ? ACTIONS[kind](svc, button) : null;
}

async function confirmed() {
  const action = pending;
  if (!action || action.describe().problem) return;
  $("confirm-ok").disabled = true;
  $("confirm").close();
  pending = null;
  await action.send();
}

// ---- wiring ------------------------------------------------------------

function start() {
  document.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-action]");
    if (!b || b.disabled || !canAct()) return;
    const action = actionFor(b);
    if (action) openConfirm(action);
  });
  $("confirm-ok").addEventListener("click", confirmed);
  $("confirm-cancel").addEventListener("click", () => $("confirm").close());
  $("confirm").addEventListener("close", () => (pending = null));
  for (const id of ["shift-percents", "shift-interval", "cordon-reason"]) {
    $(id).addEventListener("input", () => pending && refreshConfirm());
  }
  $("token-use").addEventListener("click", useTypedToken);
  $("token").addEventListener("keydown", (e) => {
    if (e.key === "Enter") useTypedToken();
  });
  $("token-forget").addEventListener("click", () => {
    forgetToken();
    notice("ok", "token forgotten: read-only");
  });
  // The cost window counts up between events.
  setInterval(() => {
    for (const s of sections.values()) tickCost(s.parts.cost);
    tickAges();
  }, 1000);
  // A token kept for this tab is checked once the stream says hello.
  auth.token = sessionStorage.getItem(TOKEN_KEY);
  applyMode();
  connect();
}

start();
