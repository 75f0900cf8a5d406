// pymosix web monitor: the agent pushes its state over a WebSocket; this page draws it and
// turns drags and clicks into requests that the agent carries out as the logged-in user.
"use strict";

const $ = (sel) => document.querySelector(sel);
let me = null;          // {uid, user, root, node, node_name}
let state = null;       // the last state pushed
let pending = null;     // a state that came while a job was being dragged
let dragging = false;
let socket = null;
let speedDraft = null;  // what was typed in the speed box: a redraw must not wipe it
const moving = new Set(); // job keys with a move under way
const MAX_BUBBLES = 16;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "K", "M", "G", "T"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + units[i];
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], {hour12: false});
}

function hue(s) {
  let h = 0;
  for (const c of s) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = "show" + (bad ? " bad" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, bad ? 7000 : 3500);
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const r = await fetch(path, opts);
  let data = {};
  try { data = await r.json(); } catch (e) { /* an empty or non-JSON answer */ }
  if (!r.ok) throw Object.assign(new Error(data.error || r.statusText), {status: r.status});
  return data;
}

// --- login ----------------------------------------------------------------------------------

function showLogin(message = "") {
  me = null;
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#token").focus();
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    me = await api("/api/login", {token: $("#token").value});
    $("#token").value = "";
    start();
  } catch (e) {
    $("#login-error").textContent = e.message;
  }
});

$("#logout").addEventListener("click", async () => {
  await api("/api/logout", {}).catch(() => {});
  showLogin();
});

function start() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = me.user + (me.root ? " (root)" : "");
  $("#title-node").textContent = "node " + me.node_name;
  connect();
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(proto + "//" + location.host + "/api/ws");
  socket.onmessage = (ev) => {
    const s = JSON.parse(ev.data);
    if (s.t !== "state") return;
    $("#live").className = "live on";
    $("#live").textContent = "live " + clock(s.at);
    if (dragging) pending = s; else render(s);
  };
  socket.onclose = async () => {
    $("#live").className = "live";
    $("#live").textContent = "reconnecting";
    socket = null;
    try { await api("/api/session"); } catch (e) { if (e.status === 401) return showLogin("session ended"); }
    setTimeout(() => { if (me && !socket) connect(); }, 1500);
  };
}

// --- drawing --------------------------------------------------------------------------------

function canDrag(job) {
  return job.state === "running" && job.home_node === state.me && (me.root || job.user === me.user);
}

function jobBubble(job, i, n) {
  const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
  const r = n > 10 ? 88 : 78;
  const x = 100 + r * Math.cos(angle), y = 100 + r * Math.sin(angle);
  const classes = ["job"];
  if (job.guest) classes.push("guest");
  if (job.node !== job.home_node) classes.push("away");
  if (job.cantmove) classes.push("cant");
  if (moving.has(job.key)) classes.push("moving");
  const draggable = canDrag(job);
  if (!draggable) classes.push("nodrag");
  const why = job.cantmove ? "\ncannot move: " + job.cantmove : "";
  const title = `job ${job.home_pid} of ${job.user}, home ${job.home_name}, ` +
    `${job.migrations} migration(s), ${job.cpu.toFixed(0)}% CPU, ${bytes(job.rss)}\n${job.command}${why}`;
  const b = el("div", {
    class: classes.join(" "), "data-job": job.key, draggable: draggable ? "true" : "false", title,
    style: `left:${x}px;top:${y}px;background:hsl(${hue(job.user)},65%,68%)`,
  }, job.home_pid, el("small", {}, job.user),
    el("small", {class: "mig"}, "\u2302" + job.home_name.slice(2) + " \u21bb" + job.migrations));
  // Holding a job keeps the map as it is (a redraw would take it from under the pointer).
  b.addEventListener("mousedown", () => { dragging = true; });
  b.addEventListener("dragstart", (ev) => {
    dragging = true;
    ev.dataTransfer.setData("text/plain", job.key);
    ev.dataTransfer.effectAllowed = "move";
  });
  b.addEventListener("dragend", release);
  return b;
}

function release() {
  dragging = false;
  if (pending) { const s = pending; pending = null; render(s); }
}
document.addEventListener("mouseup", release);

function bar(label, parts, text) {
  const b = el("div", {class: "bar"});
  for (const [cls, frac] of parts) {
    b.append(el("i", {class: cls, style: `width:${Math.max(0, Math.min(1, frac)) * 100}%`}));
  }
  return [el("label", {}, label), b, el("span", {}, text)];
}

function nodeCard(node, jobs) {
  const classes = ["node"];
  if (node.self) classes.push("self");
  if (!node.up) classes.push("down");
  const card = el("div", {class: classes.join(" "), "data-node": node.node_id});
  card.append(el("div", {class: "head"}, el("b", {}, node.name + (node.self ? " (this node)" : "")),
    el("span", {}, node.address)));
  const orbit = el("div", {class: "orbit"});
  const load = node.up && node.load !== undefined ? node.load.toFixed(2) : "--";
  orbit.append(el("div", {class: "disc"}, el("span", {class: "load"}, load), el("small", {}, "load")));
  // Room for MAX_BUBBLES around a disc; the rest are in the job list.
  const shown = jobs.length > MAX_BUBBLES ? jobs.slice(0, MAX_BUBBLES - 1) : jobs;
  const slots = Math.min(jobs.length, MAX_BUBBLES);
  shown.forEach((j, i) => orbit.append(jobBubble(j, i, slots)));
  if (shown.length < jobs.length) {
    const angle = -Math.PI / 2 + (2 * Math.PI * shown.length) / slots;
    orbit.append(el("div", {class: "job more nodrag", title: "see the job list",
      style: `left:${100 + 88 * Math.cos(angle)}px;top:${100 + 88 * Math.sin(angle)}px`},
      "+" + (jobs.length - shown.length)));
  }
  card.append(orbit);
  const bars = el("div", {class: "bars"});
  if (node.up || node.load !== undefined) {
    const used = node.mem_total ? (node.mem_total - node.mem_free) / node.mem_total : 0;
    bars.append(...bar("load", [["", Math.min(node.load / Math.max(node.ncpus, 1), 1)]], node.load.toFixed(2)));
    bars.append(...bar("util", [["", node.util]], (node.util * 100).toFixed(0) + "%"));
    bars.append(...bar("memory", [["used", used], ["free", 1 - used]],
      bytes(node.mem_total - node.mem_free) + "/" + bytes(node.mem_total)));
    bars.append(...bar("speed", [["", Math.min(node.speed / 20000, 1)]], node.speed));
    bars.append(el("label", {}, "cpus"), el("span", {}), el("span", {}, node.ncpus));
  }
  card.append(bars);
  const flags = el("div", {class: "flags"});
  if (!node.in_map) flags.append(el("span", {class: "flag dead"}, "down"));
  else if (!node.up) flags.append(el("span", {class: "flag dead"}, "no load information"));
  else if (node.age_ms > 3 * state.interval_ms) flags.append(el("span", {class: "flag stale"}, `stale ${(node.age_ms / 1000).toFixed(0)}s`));
  for (const f of ["stay", "lstay", "block"]) if (node[f]) flags.append(el("span", {class: "flag"}, f));
  if (node.self && state.flags && state.flags.quiet) flags.append(el("span", {class: "flag"}, "quiet"));
  card.append(flags);
  if (node.self && me.root) card.append(controls(state.flags || node));
  card.addEventListener("dragover", (ev) => { ev.preventDefault(); card.classList.add("over"); });
  card.addEventListener("dragleave", () => card.classList.remove("over"));
  card.addEventListener("drop", (ev) => {
    ev.preventDefault();
    card.classList.remove("over");
    const key = ev.dataTransfer.getData("text/plain");
    const job = state.jobs.find((j) => j.key === key);
    if (job && job.node !== node.node_id) migrate(job, node);
  });
  return card;
}

function controls(flags) {
  const box = el("div", {class: "controls"});
  for (const f of ["block", "stay", "lstay", "quiet"]) {
    box.append(el("button", {class: flags[f] ? "on" : "", "data-verb": f,
      title: flags[f] ? `no${f}` : f, onclick: () => command(flags[f] ? "no" + f : f)}, f));
  }
  box.append(el("button", {"data-verb": "expel", title: "send every guest home; blocks guests",
    onclick: () => command("expel")}, "expel"));
  box.append(el("button", {"data-verb": "bring", title: "bring this node's jobs home; lstay",
    onclick: () => command("bring")}, "bring"));
  const speed = el("input", {type: "number", min: 1, value: speedDraft ?? flags.speed, id: "speed",
    oninput: () => { speedDraft = speed.value; }});
  const set = () => { const v = Number(speed.value); speedDraft = null; command("setspeed", v); };
  box.append(speed, el("button", {"data-verb": "setspeed", onclick: set}, "setspeed"));
  return box;
}

async function command(verb, value) {
  try {
    const r = await api("/api/node", {verb, value});
    toast(r.message || `${verb}: done`);
  } catch (e) {
    toast(`${verb}: ${e.message}`, true);
  }
}

async function migrate(job, node) {
  moving.add(job.key);
  if (state) render(state);
  toast(`moving job ${job.home_pid} to ${node.name}...`);
  try {
    const r = await api("/api/migrate", {home_node: job.home_node, home_pid: job.home_pid, target: node.node_id});
    toast(`job ${job.home_pid} moved to ${node.name} in ${r.seconds} s`);
  } catch (e) {
    toast(`job ${job.home_pid} stays: ${e.message}`, true);
  } finally {
    moving.delete(job.key);
  }
}

function render(s) {
  state = s;
  const byNode = new Map();
  for (const j of s.jobs) {
    if (!byNode.has(j.node)) byNode.set(j.node, []);
    byNode.get(j.node).push(j);
  }
  const map = $("#map");
  const typing = document.activeElement && document.activeElement.id === "speed";
  map.replaceChildren(...s.nodes.map((n) => nodeCard(n, byNode.get(n.node_id) || [])));
  if (typing && $("#speed")) $("#speed").focus();  // the redraw goes on under the typing
  $("#jobs-scope").textContent = s.jobs_scope;
  const jobs = $("#jobs tbody");
  jobs.replaceChildren();
  for (const j of s.jobs) {
    jobs.append(el("tr", {"data-row": j.key},
      el("td", {class: "num"}, j.home_pid), el("td", {}, j.user), el("td", {}, j.home_name),
      el("td", {}, j.node === j.home_node ? "here" : j.node_name),
      el("td", {class: "num"}, j.cpu.toFixed(0)), el("td", {class: "num"}, bytes(j.rss)),
      el("td", {class: "num"}, j.migrations), el("td", {class: "cmd", title: j.command}, j.command)));
    const why = j.cantmove ? "cannot move: " + j.cantmove : j.last_failure ? "last move failed: " + j.last_failure : "";
    if (why) jobs.append(el("tr", {class: "reason"}, el("td", {}), el("td", {colspan: 7}, why)));
  }
  if (!s.jobs.length) jobs.append(el("tr", {}, el("td", {colspan: 8}, "no jobs (mosrun CMD starts one)")));
  const moves = $("#moves tbody");
  moves.replaceChildren();
  for (const m of s.moves) {
    moves.append(el("tr", {title: m.error},
      el("td", {}, clock(m.at)),
      el("td", {class: "num"}, m.home_pid), el("td", {}, m.source_name), el("td", {}, m.target_name),
      el("td", {}, m.reason), el("td", {class: "res-" + m.result}, m.result),
      el("td", {class: "num"}, m.freeze_s === null ? "" : m.freeze_s.toFixed(3) + " s"),
      el("td", {class: "num"}, bytes(m.image_bytes))));
  }
  if (!s.moves.length) moves.append(el("tr", {}, el("td", {colspan: 8}, "none yet")));
}

// --- start ----------------------------------------------------------------------------------

api("/api/session").then((m) => { me = m; start(); }).catch(() => showLogin());
