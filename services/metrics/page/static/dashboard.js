// The runs page: a table of runs (changed hyperparameters highlighted) and one chart per
// metric with the selected runs overlaid; live over Server-Sent Events, no reload.
"use strict";

const project = decodeURIComponent(location.pathname.split("/")[3]);
const base = `/v1/projects/${encodeURIComponent(project)}/runs`;
const token = readToken();
const state = {
  runs: new Map(),        // id -> run
  selected: new Set(),    // run ids shown on the charts
  series: new Map(),      // metric -> Map(run id -> [[step, value], ...])
  differing: new Set(),   // hyperparameters whose values differ between the selected runs
  charts: new Map(),      // metric -> echarts instance
  smoothing: 0,
};
window.dashboard = state; // for tests and curious users

function readToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("modelcloud-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("modelcloud-token");
}

async function api(path) {
  const answer = await fetch(base + path, { headers: { Authorization: `Bearer ${token}` } });
  if (!answer.ok) {
    const problem = await answer.json().catch(() => ({}));
    throw new Error(problem.detail || `HTTP ${answer.status}`);
  }
  return answer.json();
}

function say(text) {
  const message = document.getElementById("message");
  message.hidden = !text;
  message.textContent = text || "";
}

async function loadRuns() {
  const runs = await api("?limit=200");
  for (const run of runs) state.runs.set(run.id, run);
  if (state.selected.size === 0) {
    runs.slice(0, 10).forEach((run) => state.selected.add(run.id));
  }
  await loadComparison();
  for (const id of state.selected) await loadSeries(id);
  renderTable();
  renderCharts();
}

async function loadComparison() {
  const ids = [...state.selected];
  if (ids.length < 2) {
    state.differing = new Set();
    return;
  }
  const query = ids.map((id) => `run=${id}`).join("&");
  const comparison = await api(`/compare?${query}`);
  state.differing = new Set(comparison.differing);
}

async function loadSeries(id) {
  const run = state.runs.get(id);
  if (!run) return;
  for (const key of Object.keys(run.latest)) {
    const series = await api(`/${id}/metrics/${encodeURIComponent(key)}?max_points=5000`);
    if (!state.series.has(key)) state.series.set(key, new Map());
    state.series.get(key).set(id, series.steps.map((step, i) => [step, series.values[i]]));
  }
}

function renderTable() {
  const runs = [...state.runs.values()];
  const params = [...new Set(runs.flatMap((run) => Object.keys(run.params)))].sort();
  const metrics = [...state.series.keys()].sort();
  const head = document.querySelector("#runs thead");
  const body = document.querySelector("#runs tbody");
  head.replaceChildren(row("th", ["", "run", "user", "status", ...params, ...metrics]));
  body.replaceChildren(
    ...runs.map((run) => {
      const tr = row("td", [
        "",
        run.name,
        run.user,
        run.status,
        ...params.map((key) => (key in run.params ? String(run.params[key]) : "")),
        ...metrics.map((key) => (key in run.latest ? run.latest[key].toPrecision(4) : "")),
      ]);
      tr.dataset.run = run.id;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = state.selected.has(run.id);
      box.addEventListener("change", () => toggle(run.id, box.checked));
      tr.cells[0].append(box);
      tr.cells[3].className = `status-${run.status}`;
      params.forEach((key, i) => {
        if (state.selected.has(run.id) && state.differing.has(key)) {
          tr.cells[4 + i].classList.add("changed");
        }
      });
      return tr;
    }),
  );
}

function row(cell, values) {
  const tr = document.createElement("tr");
  for (const value of values) {
    const element = document.createElement(cell);
    element.textContent = value;
    tr.append(element);
  }
  return tr;
}

async function toggle(id, on) {
  if (on) state.selected.add(id);
  else state.selected.delete(id);
  await loadComparison();
  if (on) await loadSeries(id);
  renderTable();
  renderCharts();
}

function smooth(points) {
  const weight = state.smoothing;
  if (!weight) return points;
  let last = null;
  return points.map(([step, value]) => {
    last = last === null ? value : last * weight + value * (1 - weight);
    return [step, last];
  });
}

function renderCharts() {
  const section = document.getElementById("charts");
  for (const [key, byRun] of [...state.series.entries()].sort()) {
    let chart = state.charts.get(key);
    if (!chart) {
      const box = document.createElement("div");
      box.className = "chart";
      box.dataset.metric = key;
      section.append(box);
      chart = echarts.init(box);
      state.charts.set(key, chart);
    }
    const series = [...byRun.entries()]
      .filter(([id]) => state.selected.has(id))
      .map(([id, points]) => ({
        name: state.runs.get(id)?.name ?? id,
        type: "line",
        showSymbol: false,
        data: smooth(points),
      }));
    chart.setOption(
      {
        title: { text: key, left: "center", textStyle: { fontSize: 13 } },
        tooltip: { trigger: "axis" },
        legend: { bottom: 30, type: "scroll" },
        grid: { left: 55, right: 20, top: 40, bottom: 85 },
        xAxis: { type: "value", name: "step", minInterval: 1 },
        yAxis: { type: "value", scale: true },
        dataZoom: [{ type: "inside" }, { type: "slider", height: 16, bottom: 6 }],
        animation: false,
        series,
      },
      { replaceMerge: ["series"] },
    );
  }
}

let pending = null;
function later() {
  if (!pending) {
    pending = setTimeout(() => {
      pending = null;
      renderTable();
      renderCharts();
    }, 200);
  }
}

function apply(kind, data) {
  if (kind === "points") {
    for (const [key, step, value] of data.points) {
      if (!state.series.has(key)) state.series.set(key, new Map());
      const byRun = state.series.get(key);
      if (!byRun.has(data.run)) byRun.set(data.run, []);
      const points = byRun.get(data.run);
      if (!points.length || points[points.length - 1][0] < step) points.push([step, value]);
      const run = state.runs.get(data.run);
      if (run) run.latest[key] = value;
    }
    later();
  } else if (kind === "run") {
    const known = state.runs.has(data.id);
    state.runs.set(data.id, data);
    if (!known && state.selected.size < 10) state.selected.add(data.id);
    loadComparison().then(later);
  } else if (kind === "reload") {
    loadSeries(data.run).then(later);
  } else if (kind === "resync") {
    loadRuns();
  }
}

async function follow() {
  const badge = document.getElementById("live");
  for (;;) {
    try {
      const answer = await fetch(`${base}/live`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      badge.className = "live on";
      await loadRuns(); // what happened before the stream opened: nothing is missed
      say("");
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) apply(kind, JSON.parse(data));
        }
      }
    } catch (error) {
      say(`Live updates stopped (${error.message}); trying again.`);
    }
    badge.className = "live off";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

document.getElementById("project").textContent = project;
document.getElementById("smoothing").addEventListener("input", (event) => {
  state.smoothing = Number(event.target.value);
  document.getElementById("smoothing-value").textContent = event.target.value;
  renderCharts();
});
window.addEventListener("resize", () => state.charts.forEach((chart) => chart.resize()));

if (!token) {
  say("Open this page with #token=<your API token> at the end of its address.");
} else {
  follow().catch((error) => say(`Could not load the runs: ${error.message}`));
}
