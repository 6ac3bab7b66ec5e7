// DiMint dashboard: polls /api/status and renders it; every value goes in through textContent.
"use strict";

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, build) {
  const body = document.querySelector(`#${tableId} tbody`);
  const fresh = document.createElement("tbody");
  rows.forEach((item) => {
    const tr = document.createElement("tr");
    build(tr, item);
    fresh.appendChild(tr);
  });
  body.replaceWith(fresh);
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function describeEvent(event) {
  const skip = new Set(["time_ms", "event"]);
  return Object.keys(event).filter((k) => !skip.has(k)).map((k) => `${k}=${JSON.stringify(event[k])}`).join(" ");
}

function render(status) {
  const shards = status.shards || [];
  document.getElementById("summary").textContent =
    `${shards.length} shards, map epoch ${status.map_epoch}, ${status.replication_mode}, ` +
    `placement ${status.placement}, ${status.ops_per_s} ops/s (answered by ${status.answered_by})`;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const rb = status.rebalance;
  document.getElementById("rebalance").textContent = rb
    ? `Rebalancing (${rb.reason}): ` + rb.moves.map((m) => `${m.source}\u2192${m.target} ${m.state}` +
        (m.keys !== undefined ? ` (${m.keys} keys)` : "")).join(", ")
    : "No rebalance in progress.";
  fill("shards", shards, (tr, s) => {
    tr.dataset.shard = s.shard_id;
    cell(tr, s.shard_id);
    cell(tr, s.master || "none", s.master ? "" : "bad");
    cell(tr, (s.slaves || []).map((n) => `${n} (${s.lag && s.lag[n] !== null ? s.lag[n] : "?"})`).join(", "));
    cell(tr, (s.in_sync || []).join(", "));
    cell(tr, s.shard_epoch);
    cell(tr, s.keys);
    cell(tr, bytes(s.bytes));
    cell(tr, s.ops_per_s);
    const p = s.placement;
    cell(tr, p ? `${(100 * p.share).toFixed(1)} %` + (p.ranges !== null ? ` in ${p.ranges} ranges` : "") : "");
  });
  const nodes = Object.entries(status.nodes || {});
  fill("nodes", nodes, (tr, [id, n]) => {
    cell(tr, id);
    cell(tr, n.role);
    cell(tr, n.shard_id >= 0 ? n.shard_id : "");
    cell(tr, n.address);
    cell(tr, n.applied_seq);
    cell(tr, n.keys);
    cell(tr, n.ops_per_s);
    cell(tr, n.staleness_ms);
    cell(tr, n.cpu_percent === null || n.cpu_percent === undefined ? "" : n.cpu_percent.toFixed(1));
    cell(tr, bytes(n.rss_bytes));
    cell(tr, n.fenced ? "yes" : "no", n.fenced && n.role === "master" ? "bad" : "");
  });
  fill("overlords", status.overlords || [], (tr, o) => {
    cell(tr, o.address);
    cell(tr, o.overlord);
    cell(tr, o.role, o.role === "unreachable" ? "bad" : "");
  });
  const events = (status.events || []).slice().reverse();
  fill("event-log", events, (tr, e) => {
    if (e.event.startsWith("failover")) tr.className = "failover";
    if (e.event.startsWith("move") || e.event.startsWith("rebalance")) tr.className = "migration";
    cell(tr, e.time_ms);
    cell(tr, e.event);
    cell(tr, describeEvent(e));
  });
}

async function poll() {
  try {
    const response = await fetch("/api/status");
    const data = await response.json();
    if (response.ok) render(data);
    else document.getElementById("summary").textContent = `status unavailable: ${data.reason}`;
  } catch (err) {
    document.getElementById("summary").textContent = `status unavailable: ${err}`;
  }
}

function splitArgs(text) {
  const args = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let match;
  while ((match = re.exec(text)) !== null) {
    args.push(match[1] !== undefined ? match[1].replace(/\\(.)/g, "$1") : match[2]);
  }
  return args;
}

async function post(url, payload) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
  });
  return response.json();
}

function showArgHelp() {
  const option = document.getElementById("command").selectedOptions[0];
  document.getElementById("arg-help").textContent = `arguments: ${option.dataset.args}`;
  document.getElementById("weak").disabled = option.dataset.write === "true";
}

document.getElementById("command").addEventListener("change", showArgHelp);
document.getElementById("command-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const command = document.getElementById("command").value;
  const weak = document.getElementById("weak");
  const payload = {
    command, args: splitArgs(document.getElementById("args").value),
    consistency: weak.checked && !weak.disabled ? "weak" : "strong",
  };
  const out = document.getElementById("result");
  out.textContent = "\u2026";
  const reply = await post("/api/command", payload);
  out.textContent = reply.ok ? JSON.stringify(reply.value) : `error ${reply.error}: ${reply.reason}`;
  out.className = reply.ok ? "ok" : "bad";
});

let pendingToken = null;
async function askAdmin(payload) {
  const reply = await post("/api/admin", payload);
  const out = document.getElementById("admin-result");
  if (reply.confirm) {
    pendingToken = reply.confirm;
    document.getElementById("confirm-text").textContent = reply.message;
    document.getElementById("confirm-box").hidden = false;
    out.textContent = "";
  } else {
    out.textContent = reply.ok === false ? `error ${reply.error}: ${reply.reason}` : JSON.stringify(reply);
  }
}
document.getElementById("add-shard").addEventListener("click", () => askAdmin({ action: "add_shard" }));
document.getElementById("drain-shard").addEventListener("click", () =>
  askAdmin({ action: "remove_shard", shard_id: document.getElementById("drain-id").value }));
document.getElementById("confirm-no").addEventListener("click", () => {
  pendingToken = null;
  document.getElementById("confirm-box").hidden = true;
});
document.getElementById("confirm-yes").addEventListener("click", async () => {
  document.getElementById("confirm-box").hidden = true;
  const token = pendingToken;
  pendingToken = null;
  if (token) await askAdmin({ confirm: token });
});

showArgHelp();
poll();
setInterval(poll, 2000);
