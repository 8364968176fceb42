// The dashboard: counts from /predictions/stats and the latest rows from /predictions, drawn with plotly.js.
// Both need the server's admin token (Authorization: Bearer); it is typed once and kept for this tab only.
"use strict";

const TOKEN_KEY = "fruitlab-admin-token";

const PALETTE = ["#2f7d4f", "#e07b39", "#3d6fb6", "#c0392b", "#8e6bbf", "#d4a017", "#3aa3a3", "#7f8c8d",
  "#b5651d", "#5d9b2f", "#a0486b", "#34495e"];
const CONFIG = { displayModeBar: false, responsive: true };
const LAYOUT = {
  margin: { l: 50, r: 16, t: 10, b: 40 },
  paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  font: { family: "system-ui, sans-serif", size: 12, color: "#1d2330" },
  legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
};
const colours = new Map();

function colour(label) {
  if (!colours.has(label)) colours.set(label, PALETTE[colours.size % PALETTE.length]);
  return colours.get(label);
}

function query() {
  const params = new URLSearchParams();
  const seconds = Number(document.getElementById("window").value);
  if (seconds) params.set("since", new Date(Date.now() - seconds * 1000).toISOString());
  const tag = document.getElementById("tag").value.trim();
  const version = document.getElementById("version").value.trim();
  if (tag) params.set("tag", tag);
  if (version) params.set("model_version", version);
  return params;
}

async function getJson(url) {
  const token = document.getElementById("token").value.trim();
  const answer = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.detail || answer.status);
  return body;
}

function empty(id, text) {
  const node = document.getElementById(id);
  Plotly.purge(node);
  node.innerHTML = `<div class="empty">${text}</div>`;
}

const BUCKET_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };

function counts(max) {  // whole numbers on a count axis, whatever the scale
  return { rangemode: "tozero", tickformat: ",d", ...(max <= 8 ? { dtick: 1 } : {}) };
}

function utc(ms) {  // plotly takes zone-less date strings: these are UTC, like the axis title says
  return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

function drawTime(stats) {
  if (!stats.over_time.length) return empty("chart-time", "no predictions in this window");
  const step = BUCKET_MS[stats.bucket];
  const byLabel = new Map();
  for (const { time, label, count } of stats.over_time) {
    if (!byLabel.has(label)) byLabel.set(label, { x: [], y: [] });
    byLabel.get(label).x.push(time.replace("Z", ""));
    byLabel.get(label).y.push(count);
  }
  // each bar covers its bucket, from its start; the axis shows the whole window, however few buckets have data
  const traces = [...byLabel.entries()].map(([label, xy]) => ({
    type: "bar", name: label, x: xy.x, y: xy.y, width: step * 0.9, offset: 0, marker: { color: colour(label) },
  }));
  const seconds = Number(document.getElementById("window").value);
  const starts = stats.over_time.map((b) => Date.parse(b.time));
  const range = seconds
    ? [utc(Date.now() - seconds * 1000), utc(Date.now() + step)]
    : [utc(Math.min(...starts) - step), utc(Math.max(...starts) + 2 * step)];
  const node = document.getElementById("chart-time");
  node.innerHTML = "";
  const perBucket = new Map();
  for (const { time, count } of stats.over_time) perBucket.set(time, (perBucket.get(time) || 0) + count);
  Plotly.react(node, traces, { ...LAYOUT, margin: { ...LAYOUT.margin, t: 30 }, barmode: "stack",
    xaxis: { type: "date", range }, yaxis: { title: { text: "predictions" }, ...counts(Math.max(...perBucket.values())) },
  }, CONFIG);
}

function drawClasses(stats) {
  if (!stats.by_label.length) return empty("chart-class", "no predictions");
  const rows = [...stats.by_label].reverse();
  const node = document.getElementById("chart-class");
  node.innerHTML = "";
  Plotly.react(node, [{
    type: "bar", orientation: "h", x: rows.map((r) => r.count), y: rows.map((r) => r.label),
    marker: { color: rows.map((r) => colour(r.label)) }, text: rows.map((r) => r.count), textposition: "auto",
    width: 0.7,
  }], { ...LAYOUT, margin: { ...LAYOUT.margin, l: 130 }, showlegend: false, bargap: 0.3,
    xaxis: counts(Math.max(...rows.map((r) => r.count))) }, CONFIG);
}

function drawVersions(stats) {
  if (!stats.by_version.length) return empty("chart-version", "no predictions");
  const node = document.getElementById("chart-version");
  node.innerHTML = "";
  Plotly.react(node, [{
    type: "bar", x: stats.by_version.map((v) => `${v.model} v${v.version}`), y: stats.by_version.map((v) => v.count),
    marker: { color: "#3d6fb6" }, text: stats.by_version.map((v) => v.count), textposition: "auto",
    width: 0.5,
  }], { ...LAYOUT, showlegend: false, xaxis: { type: "category" },
    yaxis: counts(Math.max(...stats.by_version.map((v) => v.count))) }, CONFIG);
}

function td(text, className) {
  const cell = document.createElement("td");
  cell.textContent = text;
  if (className) cell.className = className;
  return cell;
}

function drawLatest(page) {
  const body = document.querySelector("#latest tbody");
  body.replaceChildren();
  for (const row of page.items) {
    const tr = document.createElement("tr");
    const first = Object.values(row.probabilities)[0] || {};
    const best = Math.max(...Object.values(first));
    tr.append(
      td(row.created_at.replace("T", " ").replace(/\.\d+/, "").replace("Z", "")),
      td(row.label),
      td(`${(best * 100).toFixed(1)}%`),
      td(`${row.model_name} v${row.model_version}`),
      td(row.client_tag || "–"),
      td(`${row.format} ${row.width}×${row.height}`),
      td(`${Math.round(row.latency_ms)} ms`),
    );
    body.append(tr);
  }
  if (!page.items.length) {
    const tr = document.createElement("tr");
    tr.append(td("no predictions in this window", "empty"));
    tr.firstChild.colSpan = 7;
    body.append(tr);
  }
}

function ms(value) {
  return value === null ? "–" : `${Math.round(value)}`;
}

async function refresh() {
  const params = query();
  const updated = document.getElementById("updated");
  try {
    const [stats, page] = await Promise.all([
      getJson(`/predictions/stats?${params}`),
      getJson(`/predictions?per_page=12&${params}`),
    ]);
    for (const row of stats.by_label) colour(row.label);
    document.getElementById("kpi-total").textContent = stats.total.toLocaleString();
    document.getElementById("kpi-classes").textContent = stats.by_label.length;
    const latency = stats.latency_ms;
    document.getElementById("kpi-latency").textContent = `${ms(latency.p50)} / ${ms(latency.p95)} ms`;
    document.getElementById("bucket").textContent = `per ${stats.bucket}`;
    drawTime(stats);
    drawClasses(stats);
    drawVersions(stats);
    drawLatest(page);
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    updated.classList.remove("error");
  } catch (err) {
    updated.textContent = `could not load: ${err.message}`;
    updated.classList.add("error");
  }
}

async function showModel() {
  const header = document.getElementById("model");
  const tile = document.getElementById("kpi-model");
  try {
    const answer = await fetch("/ready");
    const body = await answer.json();
    const text = answer.ok ? `${body.model.name} v${body.model.version}` : "not ready";
    header.textContent = `model: ${text}`;
    tile.textContent = text;
  } catch (err) {
    header.textContent = "model: unreachable";
  }
}

for (const id of ["window", "tag", "version"]) document.getElementById(id).addEventListener("change", refresh);
const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
tokenInput.addEventListener("change", () => { sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim()); refresh(); });
showModel();
refresh();
setInterval(() => { showModel(); refresh(); }, 15000);
