// The upload page: choose or drop images, POST them to /predict in one request, show each with its labels.
"use strict";

const form = document.getElementById("upload");
const input = document.getElementById("files");
const drop = document.getElementById("drop");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

async function showModel() {
  const target = document.getElementById("model");
  try {
    const answer = await fetch("/ready");
    const body = await answer.json();
    target.textContent = answer.ok
      ? `model: ${body.model.name} v${body.model.version}`
      : `model: not ready (${body.detail})`;
  } catch (err) {
    target.textContent = "model: unreachable";
  }
}

function card(file) {
  const node = el("article", "card pending");
  const img = el("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  const body = el("div", "body");
  body.append(el("div", "name", file.name), el("div", "label", "predicting…"));
  node.append(img, body);
  results.append(node);
  return node;
}

function fill(node, prediction, multiTask) {
  node.className = "card done";
  const body = node.querySelector(".body");
  body.querySelector(".label").textContent = prediction.label;
  for (const [task, top] of Object.entries(prediction.tasks)) {
    if (multiTask) body.append(el("div", "task", task));
    for (const { label, probability } of top) {
      const row = el("div", "prob");
      const track = el("div", "track");
      const bar = el("div", "fill");
      bar.style.width = `${(probability * 100).toFixed(1)}%`;
      track.append(bar);
      row.append(el("span", "", label), el("span", "pct", `${(probability * 100).toFixed(1)}%`), track);
      body.append(row);
    }
  }
  body.append(el("div", "meta", `${prediction.format} ${prediction.width}×${prediction.height} · sha256 ${prediction.sha256.slice(0, 10)}…`));
}

async function predict(files) {
  if (!files.length) return;
  results.replaceChildren();
  const cards = files.map(card);
  const data = new FormData();
  for (const file of files) data.append("files", file, file.name);
  const tag = document.getElementById("tag").value.trim();
  if (tag) data.append("tag", tag);
  setStatus(`predicting ${files.length} image${files.length > 1 ? "s" : ""}…`);
  let answer, body;
  try {
    answer = await fetch("/predict", { method: "POST", body: data });
    body = await answer.json();
  } catch (err) {
    body = { detail: `no answer from the server (${err})` };
  }
  if (!answer || !answer.ok) {
    for (const node of cards) {
      node.className = "card failed";
      node.querySelector(".label").textContent = "not classified";
    }
    setStatus(`${answer ? answer.status : "error"}: ${body.detail}`, true);
    return;
  }
  const multiTask = Object.keys(body.predictions[0].tasks).length > 1;
  body.predictions.forEach((p, i) => fill(cards[i], p, multiTask));
  setStatus(`${body.predictions.length} image${body.predictions.length > 1 ? "s" : ""} classified by ` +
    `${body.model.name} v${body.model.version} in ${Math.round(body.latency_ms)} ms`);
}

input.addEventListener("change", () => {
  const files = [...input.files];
  input.value = "";  // choosing the same files again is a new prediction
  predict(files);
});
form.addEventListener("submit", (event) => { event.preventDefault(); predict([...input.files]); });
for (const kind of ["dragenter", "dragover"]) {
  drop.addEventListener(kind, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const kind of ["dragleave", "drop"]) {
  drop.addEventListener(kind, (event) => { event.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (event) => predict([...event.dataTransfer.files]));
showModel();
