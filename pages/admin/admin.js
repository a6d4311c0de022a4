// The admin page: the admin API with the key the operator typed. The key lives in this
// tab's sessionStorage only; any 401 forgets it and asks again.

const $ = (id) => document.getElementById(id);
const KEY = "ticketgate-admin-key";
const REFRESH_MS = 3000;
const KEYS_EVERY = 5; // refreshes between two reads of the signing keys

/** The headline series of /metrics: [label, series name, label filter]. */
const HEADLINES = [
  ["Sockets open", "ticketgate_connections", {}],
  ["Sessions connected", "ticketgate_sessions_connected", {}],
  ["Logins", "ticketgate_logins_total", { outcome: "ok" }],
  ["Tickets minted", "ticketgate_mints_total", { outcome: "ok" }],
  ["Admissions", "ticketgate_admissions_total", { outcome: "ok" }],
  ["Refreshes", "ticketgate_refreshes_total", { outcome: "ok" }],
  ["Refusals", "ticketgate_refusals_total", {}],
  ["Kicked (4503)", "ticketgate_closes_total", { code: "4503" }],
  ["Replaced (4509)", "ticketgate_closes_total", { code: "4509" }],
  ["Expired (4004)", "ticketgate_closes_total", { code: "4004" }],
  ["QR logins confirmed", "ticketgate_qr_total", { event: "confirmed" }],
  ["Pushes published", "ticketgate_pushes_total", {}],
  ["Push deliveries", "ticketgate_push_deliveries_total", {}],
  ["Push acks", "ticketgate_push_acks_total", {}],
  ["Push recoveries", "ticketgate_push_recoveries_total", { recovered: "true" }],
];

class Unauthorized extends Error {}

let timer = null;
let rounds = 0;
const lastValues = new Map();

function key() {
  return sessionStorage.getItem(KEY);
}

/** An admin call; a 401 forgets the key and shows the key form again. */
async function call(method, path, body) {
  const k = key();
  if (!k) throw new Unauthorized("no key");
  const init = { method, headers: { Authorization: `Bearer ${k}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    forget("The key was refused (401): enter it again.");
    throw new Unauthorized("refused");
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try {
      const err = JSON.parse(text);
      message = `${err.error}: ${err.message}`;
    } catch {
      // not JSON: show it as it came
    }
    throw new Error(`${response.status} ${message}`);
  }
  const type = response.headers.get("content-type") ?? "";
  return type.includes("application/json") ? JSON.parse(text) : text;
}

function forget(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  timer = null;
  $("dashboard").hidden = true;
  $("key-card").hidden = false;
  $("key-error").textContent = message ?? "";
  $("key-error").hidden = !message;
  $("admin-key").focus();
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
  return td;
}

// ---------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------

/** Prometheus text → [{name, labels, value}]. Comments and malformed lines are skipped. */
export function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (raw.startsWith("#")) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] ?? "").matchAll(label)) labels[l[1]] = l[2];
    const value = Number(m[3]);
    if (Number.isFinite(value)) samples.push({ name: m[1], labels, value });
  }
  return samples;
}

function sum(samples, name, filter) {
  return samples
    .filter((s) => s.name === name && Object.entries(filter).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0);
}

async function showMetrics() {
  const samples = parseMetrics(await call("GET", "/metrics"));
  const box = $("metrics");
  box.replaceChildren();
  for (const [title, name, filter] of HEADLINES) {
    const value = sum(samples, name, filter);
    const div = document.createElement("div");
    div.className = "metric";
    div.dataset.metric = title;
    const before = lastValues.get(title);
    if (before !== undefined && before !== value) div.classList.add("moved");
    lastValues.set(title, value);
    const v = document.createElement("span");
    v.className = "value";
    v.textContent = String(value);
    const n = document.createElement("span");
    n.className = "name";
    n.textContent = title;
    div.append(v, n);
    box.append(div);
  }
}

async function showConnections() {
  const overview = await call("GET", "/admin/v1/connections");
  $("conn-total").textContent = String(overview.total);
  const nodes = $("nodes").tBodies[0];
  nodes.replaceChildren();
  for (const node of overview.nodes) {
    const row = nodes.insertRow();
    cell(row, node.node_id);
    cell(row, String(node.connections));
  }
  const users = $("users").tBodies[0];
  users.replaceChildren();
  for (const user of overview.users) {
    const row = users.insertRow();
    row.dataset.user = user.user_id;
    cell(row, user.user_id);
    cell(row, String(user.connections));
    cell(row, Object.entries(user.nodes).map(([n, c]) => `${n}: ${c}`).join(", "));
    const actions = cell(row, "");
    const pick = document.createElement("button");
    pick.type = "button";
    pick.className = "quiet";
    pick.textContent = "Select";
    pick.addEventListener("click", () => {
      $("action-user").value = user.user_id;
      $("pub-user").value = user.user_id;
    });
    actions.append(pick);
  }
  if (overview.users.length === 0) {
    const row = users.insertRow();
    cell(row, "no live connection").colSpan = 4;
  }
  $("users-truncated").hidden = !overview.users_truncated;
}

async function showKeys() {
  const keys = await call("GET", "/admin/v1/keys");
  $("keys-signing").textContent = keys.signing;
  const body = $("keys").tBodies[0];
  body.replaceChildren();
  for (const k of keys.keys) {
    const row = body.insertRow();
    row.dataset.kid = k.kid;
    cell(row, k.kid);
    cell(row, k.created_at ? new Date(k.created_at * 1000).toLocaleString() : "first key");
    cell(row, k.status);
  }
}

async function refresh() {
  try {
    const reads = [showConnections(), showMetrics()];
    if (rounds % KEYS_EVERY === 0) reads.push(showKeys());
    rounds += 1;
    await Promise.all(reads);
    $("updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("updated").textContent = `failed: ${err.message}`;
  }
}

async function open() {
  $("key-card").hidden = true;
  $("dashboard").hidden = false;
  rounds = 0;
  await refresh();
  if (key() && !timer) timer = setInterval(refresh, REFRESH_MS);
}

// ---------------------------------------------------------------------------------
// Acting
// ---------------------------------------------------------------------------------

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("admin-key").value);
  $("admin-key").value = "";
  $("key-error").hidden = true;
  open();
});

$("forget-key").addEventListener("click", () => forget());

async function act(verb) {
  const user = $("action-user").value.trim();
  if (!user) {
    $("action-result").textContent = "enter a user";
    return;
  }
  const body = verb === "kick" && $("action-reason").value ? { reason: $("action-reason").value } : {};
  try {
    const answer = await call("POST", `/admin/v1/users/${encodeURIComponent(user)}/${verb}`, body);
    $("action-result").textContent = `${verb} ${user}: ${JSON.stringify(answer)}`;
    refresh();
  } catch (err) {
    $("action-result").textContent = `${verb} ${user} failed: ${err.message}`;
  }
}
for (const verb of ["kick", "block", "unblock"]) {
  $(verb).addEventListener("click", () => act(verb));
}

$("publish-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  let data;
  try {
    data = JSON.parse($("pub-data").value);
  } catch {
    $("publish-result").textContent = "the data is not JSON";
    return;
  }
  try {
    const answer = await call("POST", "/admin/v1/publish", {
      user_id: $("pub-user").value.trim(),
      topic: $("pub-topic").value,
      data,
    });
    $("publish-result").textContent = `push ${answer.id}: delivered to ${answer.delivered} socket(s)`;
  } catch (err) {
    $("publish-result").textContent = `publish failed: ${err.message}`;
  }
});

if (key()) open();
else forget();
