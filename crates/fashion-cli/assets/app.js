// The page: send dropped or picked photos to /v1/classify and show each answer.
"use strict";

const drop = document.getElementById("drop");
const input = document.getElementById("files");
const results = document.getElementById("results");
const status = document.getElementById("status");
const heatToggle = document.getElementById("heatmap");
const template = document.getElementById("card");

function pct(x) { return Math.round(100 * x) + "%"; }

function drawHeat(canvas, heat) {
  const n = heat.size;
  canvas.width = n; canvas.height = n;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(n, n);
  heat.values.forEach((v, i) => {
    // Blue (cold) to red (hot).
    img.data[4 * i] = Math.round(255 * v);
    img.data[4 * i + 1] = Math.round(80 * (1 - Math.abs(2 * v - 1)));
    img.data[4 * i + 2] = Math.round(255 * (1 - v));
    img.data[4 * i + 3] = 255;
  });
  ctx.putImageData(img, 0, 0);
}

function card(file, answer) {
  const node = template.content.firstElementChild.cloneNode(true);
  const img = node.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  node.querySelector(".name").textContent = file.name;
  if (answer.error) {
    const e = node.querySelector(".error");
    e.hidden = false;
    e.textContent = answer.error.message;
    return node;
  }
  const cats = node.querySelector(".categories");
  for (const c of answer.category.top.slice(0, 3)) {
    const row = document.createElement("div");
    row.className = "bar category";
    row.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span><span class="conf"></span>';
    row.querySelector(".label").textContent = c.label;
    row.querySelector(".fill").style.width = pct(c.confidence);
    row.querySelector(".conf").textContent = pct(c.confidence);
    row.setAttribute("aria-label", c.label + " " + pct(c.confidence));
    cats.appendChild(row);
  }
  node.querySelector(".view").textContent =
    "View: " + answer.view.label + " (" + pct(answer.view.confidence) + ")";
  const p = answer.colour.primary;
  node.querySelector(".primary").textContent =
    "Colour: " + p.name + " (" + p.family + ", " + pct(p.confidence) + ")";
  const list = node.querySelector(".swatches");
  for (const s of answer.colour.palette) {
    const li = document.createElement("li");
    li.className = "swatch";
    li.innerHTML = '<span class="chip"></span><span class="swatch-name"></span>';
    li.querySelector(".chip").style.background = s.hex;
    li.querySelector(".swatch-name").textContent = s.name + " " + s.hex + " " + pct(s.share);
    list.appendChild(li);
  }
  if (answer.heatmap) {
    const canvas = node.querySelector(".heat");
    drawHeat(canvas, answer.heatmap);
    canvas.hidden = !heatToggle.checked;
  }
  return node;
}

async function send(files) {
  if (!files.length) return;
  status.textContent = "Classifying " + files.length + " photo(s)...";
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  try {
    const resp = await fetch("/v1/classify?explain=true", { method: "POST", body: form });
    const body = await resp.json();
    const answers = body.results || [];
    if (!answers.length) {
      status.textContent = "Error: " + (body.error ? body.error.message : resp.statusText);
      return;
    }
    answers.forEach((a, i) => results.prepend(card(files[i], a)));
    status.textContent = body.error ? "Error: " + body.error.message
      : "Done: " + answers.length + " photo(s) in " + Math.round(body.timing_ms.total) + " ms.";
  } catch (e) {
    status.textContent = "Error: " + e;
  }
}

input.addEventListener("change", () => { send(Array.from(input.files)); input.value = ""; });
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  send(Array.from(e.dataTransfer.files).filter((f) => f.type.startsWith("image/")));
});
heatToggle.addEventListener("change", () => {
  for (const c of document.querySelectorAll(".heat")) c.hidden = !heatToggle.checked;
});
