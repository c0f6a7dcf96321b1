// Courier console. Reads the /v1 API with the key kept in sessionStorage.
// Every piece of task data reaches the page through textContent or an
// attribute set with setAttribute: never as HTML.
"use strict";

const KEY = "courier.key";
const TENANT = "courier.tenant";
const ADMIN = "courier.admin";
const SVG_NS = "http://www.w3.org/2000/svg";
const STATUSES = ["scheduled", "pending", "sending", "retrying", "succeeded", "failed", "cancelled", "active", "paused"];
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const FILTERS = ["status", "host", "created_after", "created_before", "business_id"];

const $ = (id) => document.getElementById(id);

/** el("td", {class: "mono", title: t}, child, "text", …): an element whose strings are text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API as the signed-in caller; throws ApiError with the API's message. */
async function api(path, options) {
  const opts = options || {};
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY) };
  const tenant = sessionStorage.getItem(TENANT);
  if (tenant && !path.startsWith("/v1/whoami") && !path.startsWith("/v1/tenants")) headers["X-Courier-Tenant"] = tenant;
  const resp = await fetch(path, { method: opts.method || "GET", headers, cache: "no-store" });
  const text = await resp.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch (_) {
    doc = null;
  }
  if (!resp.ok) {
    const msg = doc && doc.error ? doc.error.message : resp.status + " " + resp.statusText;
    if (resp.status === 401 && !opts.quiet) signOut("Signed out: " + msg);
    throw new ApiError(resp.status, msg);
  }
  return doc;
}

function time(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

function badge(status) {
  // The colour is a class from a fixed list; the text says the status too.
  const cls = STATUSES.includes(status) ? "s-" + status : "s-cancelled";
  return el("span", { class: "badge " + cls, "data-status": status }, status);
}

function show(section) {
  for (const id of ["signin", "overview", "list", "detail"]) $(id).hidden = id !== section;
  $("nav").hidden = section === "signin";
}

// ---- routing: the view and its filters live in the location hash -------

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { path, params: new URLSearchParams(query || "") };
}

function go(path, params) {
  const q = params && params.toString();
  location.hash = "#" + path + (q ? "?" + q : "");
}

async function route() {
  notice("");
  if (!sessionStorage.getItem(KEY)) {
    show("signin");
    $("key").focus();
    return;
  }
  const { path, params } = parseHash();
  try {
    if (path.startsWith("/task/")) {
      await showDetail(decodeURIComponent(path.slice("/task/".length)));
    } else if (path === "/tasks") {
      await showList(params);
    } else {
      await showOverview();
    }
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    notice(e.message);
  }
}

// ---- sign in / out ------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  $("signin-error").textContent = "";
  forget();
  sessionStorage.setItem(KEY, key);
  try {
    const me = await api("/v1/whoami", { quiet: true });
    if (me.caller === "admin") {
      const list = await api("/v1/tenants");
      if (list.tenants.length === 0) throw new ApiError(0, "no tenant exists yet: create one first (courier tenants create)");
      sessionStorage.setItem(ADMIN, "1");
      sessionStorage.setItem(TENANT, list.tenants[0].id);
    }
  } catch (e) {
    forget();
    show("signin");
    $("signin-error").textContent = "Sign-in failed: " + e.message;
    return;
  }
  $("key").value = "";
  await whoami();
  route();
}

function forget() {
  for (const k of [KEY, TENANT, ADMIN]) sessionStorage.removeItem(k);
}

/** Fills the header: who is signed in and, for the admin, the tenant picker. */
async function whoami() {
  const admin = sessionStorage.getItem(ADMIN) === "1";
  $("tenant-box").hidden = !admin;
  if (!admin) {
    const me = await api("/v1/whoami");
    $("who").textContent = "tenant " + (me.tenant ? me.tenant.name + " (" + me.tenant.id + ")" : "");
    return;
  }
  $("who").textContent = "admin";
  const list = await api("/v1/tenants");
  const sel = clear($("tenant-select"));
  const current = sessionStorage.getItem(TENANT);
  for (const t of list.tenants) {
    sel.append(el("option", { value: t.id, selected: t.id === current }, t.name + " (" + t.id + ")" + (t.enabled ? "" : " disabled")));
  }
}

function pickTenant() {
  sessionStorage.setItem(TENANT, $("tenant-select").value);
  if (parseHash().path.startsWith("/task/")) go("/tasks", new URLSearchParams());
  else route();
}

function signOut(message) {
  forget();
  $("who").textContent = "";
  $("tenant-box").hidden = true;
  show("signin");
  notice(message || "");
}

// ---- overview -------------------------------------------------------------

async function showOverview() {
  const stats = await api("/v1/stats");
  const box = clear($("counts"));
  for (const st of STATUSES) {
    const n = (stats.counts && stats.counts[st]) || 0;
    const link = el("a", { class: "count", href: "#/tasks?status=" + st, "data-count": st }, badge(st), el("strong", {}, n));
    box.append(link);
  }
  $("quota").textContent = "Active tasks: " + stats.active_tasks + " of at most " + stats.max_active_tasks +
    ". Counts follow changes within about a second.";
  const queues = clear($("queues"));
  if (stats.queues) {
    const d = stats.queues.delivery;
    queues.append(
      el("div", { class: "depth", "data-queue": "delivery" }, el("strong", {}, d.visible + d.delayed), "delivery queue: " + d.visible + " ready, " + d.delayed + " delayed"),
      el("div", { class: "depth", "data-queue": "in-flight" }, el("strong", {}, d.in_flight), "being delivered"),
      el("div", { class: "depth", "data-queue": "dlq" }, el("strong", {}, stats.queues.dlq.visible), "dead-letter queue"));
  } else {
    queues.append(el("p", { class: "hint" }, "The queues are shared by every tenant: their depths are shown to the admin key."));
  }
  drawChart(stats.per_minute || []);
  show("overview");
}

const SERIES = [["delivered", "Deliveries", "#1b7a3a"], ["retried", "Retries", "#8a5a00"], ["failed", "Failures", "#b3261e"]];

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** A line per series over the minutes, drawn as SVG: no library, no inline style. */
function drawChart(minutes) {
  const W = 720, H = 200, L = 40, R = 10, T = 10, B = 26;
  const max = Math.max(1, ...minutes.flatMap((m) => SERIES.map(([k]) => m[k] || 0)));
  const x = (i) => L + (minutes.length < 2 ? 0 : (i * (W - L - R)) / (minutes.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const totals = SERIES.map(([k]) => minutes.reduce((n, m) => n + (m[k] || 0), 0));
  const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", id: "activity",
    "aria-label": "Last hour per minute: " + SERIES.map(([, label], i) => totals[i] + " " + label.toLowerCase()).join(", ") });
  for (const v of [0, Math.round(max / 2), max]) {
    chart.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v));
  }
  const label = (i) => (minutes[i] ? new Date(minutes[i].minute).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }) : "");
  for (const i of [0, Math.floor((minutes.length - 1) / 2), minutes.length - 1]) {
    if (minutes[i]) chart.append(svg("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, label(i)));
  }
  for (const [k, , colour] of SERIES) {
    const points = minutes.map((m, i) => x(i).toFixed(1) + "," + y(m[k] || 0).toFixed(1)).join(" ");
    chart.append(svg("polyline", { points, fill: "none", stroke: colour, "stroke-width": 2, "data-series": k }));
  }
  minutes.forEach((m, i) => {
    // A hover target per minute with its figures.
    const w = (W - L - R) / Math.max(1, minutes.length - 1);
    chart.append(svg("rect", { x: x(i) - w / 2, y: T, width: w, height: H - T - B, fill: "transparent" },
      svg("title", {}, label(i) + ": " + SERIES.map(([key, name]) => (m[key] || 0) + " " + name.toLowerCase()).join(", "))));
  });
  clear($("chart-svg")).append(chart);
  const legend = clear($("chart-legend"));
  SERIES.forEach(([k, name], i) => legend.append(el("span", { class: "key k-" + k, "data-total": k }, name + ": " + totals[i])));
}

// ---- task list --------------------------------------------------------------

function fillFilters(params) {
  $("f-status").value = params.get("status") || "";
  $("f-host").value = params.get("host") || "";
  $("f-after").value = toLocalInput(params.get("created_after"));
  $("f-before").value = toLocalInput(params.get("created_before"));
  $("f-bid").value = params.get("business_id") || "";
}

function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const p = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + "T" + p(d.getHours()) + ":" + p(d.getMinutes());
}

function applyFilters(event) {
  event.preventDefault();
  const params = new URLSearchParams();
  const put = (name, value) => { if (value) params.set(name, value); };
  put("status", $("f-status").value);
  put("host", $("f-host").value.trim());
  put("created_after", $("f-after").value ? new Date($("f-after").value).toISOString() : "");
  put("created_before", $("f-before").value ? new Date($("f-before").value).toISOString() : "");
  put("business_id", $("f-bid").value.trim());
  go("/tasks", params);
}

/** Host and path of a URL (the listing's column); the whole URL is the hover text. */
function hostPath(url, host) {
  try {
    const u = new URL(url);
    return u.host + u.pathname;
  } catch (_) {
    return host || url || "";
  }
}

function row(t) {
  const finished = FINAL.has(t.status) ? time(t.updated_at) : "—";
  const url = t.url || "";
  return el("tr", { "data-id": t.id },
    el("td", { class: "mono" }, el("a", { href: "#/task/" + encodeURIComponent(t.id) }, t.id)),
    el("td", {}, t.method || "—"),
    el("td", { class: "mono" }, el("span", { class: "trunc", title: url || t.host }, hostPath(url, t.host))),
    el("td", {}, badge(t.status)),
    el("td", {}, t.attempts + "/" + t.max_attempts),
    el("td", {}, time(t.next_run_at)),
    el("td", {}, time(t.created_at)),
    el("td", {}, finished));
}

async function showList(params) {
  fillFilters(params);
  const body = clear($("tasks").querySelector("tbody"));
  let tasks = [];
  let next = null;
  const bid = params.get("business_id");
  if (bid) {
    // One business id names at most one task.
    try {
      const t = await api("/v1/tasks/by-business-id/" + encodeURIComponent(bid));
      tasks = [Object.assign({}, t, { method: t.request.method, url: t.request.url })];
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
    }
  } else {
    const q = new URLSearchParams();
    for (const f of ["status", "host", "created_after", "created_before", "cursor"]) {
      if (params.get(f)) q.set(f, params.get(f));
    }
    q.set("limit", "20");
    const page = await api("/v1/tasks?" + q.toString());
    tasks = page.tasks;
    next = page.next_cursor;
  }
  for (const t of tasks) body.append(row(t));
  $("empty").hidden = tasks.length > 0;
  $("next").hidden = !next;
  $("next").dataset.cursor = next || "";
  $("first").hidden = !params.get("cursor");
  show("list");
}

function pageTo(cursor) {
  const { params } = parseHash();
  if (cursor) params.set("cursor", cursor);
  else params.delete("cursor");
  go("/tasks", params);
}

// ---- task detail --------------------------------------------------------------

function kv(pairs) {
  const dl = el("dl", { class: "kv" });
  for (const [k, v] of pairs) {
    dl.append(el("dt", {}, k), el("dd", {}, v instanceof Node ? v : (v === null || v === undefined || v === "" ? "—" : String(v))));
  }
  return dl;
}

function headersTable(headers) {
  const entries = Object.entries(headers || {});
  if (entries.length === 0) return el("p", { class: "hint" }, "no headers");
  const t = el("table", { class: "headers" });
  for (const [k, v] of entries) t.append(el("tr", {}, el("th", { class: "mono" }, k), el("td", { class: "mono" }, v)));
  return t;
}

function expander(label, ...content) {
  return el("details", {}, el("summary", {}, label), ...content);
}

function retryText(r) {
  if (!r) return "—";
  if (r.intervals_ms) return r.max_attempts + " attempts, after " + r.intervals_ms.map((ms) => ms / 1000 + " s").join(", ");
  const b = r.backoff || {};
  return r.max_attempts + " attempts, backoff from " + b.initial_ms / 1000 + " s ×" + b.multiplier + " up to " +
    b.max_ms / 1000 + " s, jitter " + b.jitter;
}

function scheduleText(s) {
  if (!s) return "—";
  if (s.kind === "at") return "at " + time(s.at);
  if (s.kind === "cron") return "cron " + s.cron + " (" + s.timezone + ")";
  return "now";
}

function attemptsTable(attempts) {
  if (attempts.length === 0) return el("p", { class: "hint" }, "No attempt yet.");
  const t = el("table", { id: "attempts" },
    el("thead", {}, el("tr", {}, ...["#", "Started", "Status code", "Outcome", "Duration", "Error", "Request and response"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const a of attempts) {
    const req = a.request || {};
    body.append(el("tr", { "data-attempt": a.number },
      el("td", {}, a.number),
      el("td", {}, time(a.started_at)),
      el("td", {}, a.status_code === null || a.status_code === undefined ? "—" : a.status_code),
      el("td", {}, el("span", { class: "badge " + (a.outcome === "success" ? "s-succeeded" : "s-failed") }, a.outcome)),
      el("td", {}, a.duration_ms === null || a.duration_ms === undefined ? "—" : a.duration_ms + " ms"),
      el("td", {}, a.error || "—"),
      el("td", {},
        expander("Request",
          kv([["method", req.method], ["url", req.url], ["body", (req.body_size || 0) + " bytes"]]),
          headersTable(req.headers)),
        expander("Response",
          headersTable(a.response_headers),
          el("pre", { class: "response-body" }, a.response_body === null || a.response_body === undefined ? "(no body recorded)" : a.response_body)))));
  }
  t.append(body);
  return t;
}

function flowKeyOf(task) {
  if (task.flow_key) return task.flow_key;
  try {
    const u = new URL(task.request.url);
    return u.hostname + ":" + (u.port || (u.protocol === "https:" ? "443" : "80"));
  } catch (_) {
    return null;
  }
}

/** "name: value" for the set fields of an object, or `none`. */
function fields(obj, none) {
  const set = Object.entries(obj || {}).filter(([, v]) => v !== null && v !== undefined);
  return set.length ? set.map(([k, v]) => k + ": " + (typeof v === "object" ? JSON.stringify(v) : v)).join(", ") : none;
}

function flowRows(flow) {
  const st = flow.state || {};
  const b = st.breaker || {};
  const w = b.window || {};
  const breaker = (b.state || "closed") + (b.until ? " until " + time(b.until) : "") +
    " (" + (w.failures || 0) + " failed of " + (w.requests || 0) + " requests in this window, tripped " + (b.trips || 0) + " times)";
  const effective = Object.assign({}, flow.effective || {});
  if (effective.factor === 1) delete effective.factor;
  return [["key", flow.key], ["policy", flow.policy ? fields(flow.policy, "none") : "none"],
    ["limits in force", fields(effective, "no limits")], ["breaker", breaker], ["in flight", st.in_flight],
    ["paused until", st.paused_until ? time(st.paused_until) : null]];
}

async function showDetail(id) {
  const enc = encodeURIComponent(id);
  const [task, attempts] = await Promise.all([api("/v1/tasks/" + enc + "?include=body"), api("/v1/tasks/" + enc + "/attempts?limit=100")]);
  let flow = null;
  const key = flowKeyOf(task);
  if (key) {
    try {
      flow = await api("/v1/flows/" + encodeURIComponent(key));
    } catch (e) {
      flow = null;
    }
  }
  const box = clear($("detail-body"));
  box.append(el("h1", {}, "Task ", el("span", { class: "mono", id: "task-id" }, task.id), " ", badge(task.status)));
  if (task.failure_reason) box.append(el("p", { class: "reason", id: "failure-reason" }, "Failure reason: ", task.failure_reason));

  const actions = el("div", { class: "actions" });
  if (task.status === "failed") {
    const b = el("button", { type: "button", id: "retry" }, "Retry");
    b.addEventListener("click", () => act("Retry task " + task.id + "? It is sent again with a fresh set of attempts.",
      () => api("/v1/tasks/" + enc + "/retry", { method: "POST" }), id));
    actions.append(b);
  }
  if (task.status === "pending" || task.status === "scheduled" || task.status === "retrying" || task.status === "active" || task.status === "paused") {
    const b = el("button", { type: "button", id: "cancel", class: "danger" }, "Cancel");
    b.addEventListener("click", () => act("Cancel task " + task.id + "? It will not be sent again.",
      () => api("/v1/tasks/" + enc, { method: "DELETE" }), id));
    actions.append(b);
  }
  const refresh = el("button", { type: "button", id: "refresh", class: "secondary" }, "Refresh");
  refresh.addEventListener("click", () => route());
  actions.append(refresh);
  box.append(actions);

  const req = task.request || {};
  const url = el("span", { class: "mono", id: "task-url" }, req.url);
  box.append(el("div", { class: "grid2" },
    el("div", { class: "card" }, el("h2", {}, "Request"),
      kv([["method", req.method], ["url", url], ["body", (req.body_size || 0) + " bytes" + (req.body_encoding === "base64" ? " (binary, shown as base64)" : "")],
        ["auth", req.auth ? JSON.stringify(req.auth) : null], ["timeout", req.timeout_ms + " ms"],
        ["follows redirects", req.follow_redirects ? "yes" : "no"]]),
      expander("Headers (secrets masked)", headersTable(req.headers)),
      req.body === null || req.body === undefined ? null : expander("Body", el("pre", { id: "task-body" }, req.body))),
    el("div", { class: "card" }, el("h2", {}, "Schedule and policy"),
      kv([["kind", task.kind], ["business id", task.business_id], ["schedule", scheduleText(task.schedule)],
        ["next run", time(task.next_run_at)], ["attempts", task.attempts + "/" + task.max_attempts],
        ["retry", retryText(task.retry)], ["success codes", (task.success_codes || []).join(", ") || "2xx"],
        ["retry codes", (task.retry_codes || []).join(", ") || "default"], ["flow key", key],
        ["created", time(task.created_at)], ["updated", time(task.updated_at)]])),
    flow ? el("div", { class: "card", id: "flow" }, el("h2", {}, "Flow control"), kv(flowRows(flow))) : null));

  if (task.runs) {
    const runs = el("table", { id: "runs" }, el("thead", {}, el("tr", {}, ...["Run", "Status", "Attempts", "Next attempt", "Failure"].map((h) => el("th", {}, h)))));
    const rb = el("tbody");
    for (const r of task.runs) {
      rb.append(el("tr", {}, el("td", {}, time(r.scheduled_time)), el("td", {}, badge(r.status)), el("td", {}, r.attempts),
        el("td", {}, time(r.next_attempt_at)), el("td", {}, r.failure_reason || "—")));
    }
    runs.append(rb);
    box.append(el("h2", {}, "Cron runs"), el("div", { class: "table-wrap" }, runs));
  }
  box.append(el("h2", {}, "Attempts"), el("div", { class: "table-wrap" }, attemptsTable(attempts.attempts || [])));
  show("detail");
  document.title = "Task " + task.id + " · Courier console";
}

// ---- confirmed actions ------------------------------------------------------

function act(question, call, id) {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  dialog.returnValue = "";
  dialog.addEventListener("close", async function done() {
    dialog.removeEventListener("close", done);
    if (dialog.returnValue !== "ok") return;
    try {
      await call();
      await showDetail(id);
      notice("Done.");
    } catch (e) {
      notice(e.message);
    }
  });
  dialog.showModal();
  $("confirm-no").focus();
}

// ---- start ----------------------------------------------------------------------

function start() {
  const sel = $("f-status");
  for (const s of STATUSES) sel.append(el("option", { value: s }, s));
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut("Signed out."));
  $("tenant-select").addEventListener("change", pickTenant);
  $("filters").addEventListener("submit", applyFilters);
  $("f-clear").addEventListener("click", () => go("/tasks", new URLSearchParams()));
  $("next").addEventListener("click", () => pageTo($("next").dataset.cursor));
  $("first").addEventListener("click", () => pageTo(null));
  window.addEventListener("hashchange", route);
  if (sessionStorage.getItem(KEY)) whoami().catch((e) => notice(e.message));
  route();
}

document.addEventListener("DOMContentLoaded", start);
