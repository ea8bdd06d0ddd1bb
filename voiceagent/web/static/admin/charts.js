// The three charts, drawn with the vendored Chart.js (/static/vendor/chart.umd.min.js, put there by
// tests/services/vendor-js.sh). Without it the page still shows the same numbers as tables.

import { h, label, replace, table, row, count } from "./dom.js";

const CHART_SRC = "/static/vendor/chart.umd.min.js";
export const STAGES = ["endpointing", "asr", "retrieval", "llm_first_token", "tts_first_audio", "voice_to_voice"];
const FUNNEL_PATH = new Set(["decided", "published", "routed", "pending", "spoken", "heard", "acked"]);
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#e15759", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"];

let loading = null;

/** window.Chart, loading the vendored file once; null when it is not there. */
export function loadChartJs() {
  if (window.Chart) return Promise.resolve(window.Chart);
  if (!loading) {
    loading = new Promise((resolve) => {
      const script = document.createElement("script");
      script.src = CHART_SRC;
      script.async = true;
      script.addEventListener("load", () => resolve(window.Chart || null));
      script.addEventListener("error", () => {
        script.remove();
        resolve(null);
      });
      document.head.appendChild(script);
    });
  }
  return loading;
}

// Marks a canvas once Chart.js has drawn data from the API on it (a hook for the browser tests).
const renderedMark = {
  id: "renderedMark",
  afterRender(chart) {
    if (chart.canvas && chart.$fromApi) chart.canvas.dataset.rendered = "true";
  },
};

function histogramLabels(edges) {
  return edges.map((lo, i) => {
    const hi = edges[i + 1];
    const fmt = (s) => (s < 1 ? `${Math.round(s * 1000)} ms` : `${+s.toFixed(2)} s`);
    return hi === undefined ? `≥ ${fmt(lo)}` : `${fmt(lo)}–${fmt(hi)}`;
  });
}

function bucketLabels(buckets) {
  const hourly = buckets.length < 2 || new Date(buckets[1]) - new Date(buckets[0]) < 86_400_000;
  let day = "";
  return buckets.map((b) => {
    const d = new Date(b);
    const date = d.toLocaleDateString("en", { month: "short", day: "numeric" });
    if (!hourly) return date;
    const clock = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
    const label = date === day ? clock : `${date} ${clock}`; // the date where a day begins
    day = date;
    return label;
  });
}

/** What each chart shows, from a Charts response: labels and datasets, the same for canvas and table. */
function shapes(data) {
  const latency = data.latency || { edges_s: [], stages: {} };
  const stageNames = [...STAGES.filter((s) => s in latency.stages), ...Object.keys(latency.stages).filter((s) => !STAGES.includes(s))];
  const intents = data.intents || { buckets: [], series: {} };
  const funnel = data.funnel || [];
  return {
    latency: {
      labels: histogramLabels(latency.edges_s || []),
      datasets: stageNames.map((stage, i) => ({
        label: label(stage),
        data: latency.stages[stage] || [],
        backgroundColor: PALETTE[i % PALETTE.length],
      })),
    },
    intents: {
      labels: bucketLabels(intents.buckets || []),
      datasets: Object.entries(intents.series || {}).map(([name, values], i) => ({
        label: name,
        data: values,
        backgroundColor: PALETTE[i % PALETTE.length],
        stack: "intents",
      })),
    },
    funnel: {
      labels: funnel.map((s) => label(s.stage)),
      datasets: [{
        label: "Events",
        data: funnel.map((s) => s.events),
        backgroundColor: funnel.map((s) => (FUNNEL_PATH.has(s.stage) ? "#4e79a7" : "#e15759")),
      }],
    },
  };
}

const hasData = (shape) => shape.datasets.some((d) => d.data.some((v) => v > 0));

function dataTable(shape, caption, firstColumn) {
  const columns = [{ title: firstColumn }, ...shape.datasets.map((d) => ({ title: d.label, class: "num" }))];
  const rows = shape.labels.map((lab, i) =>
    row([lab, ...shape.datasets.map((d) => ({ content: count(d.data[i] ?? 0), class: "num" }))]));
  return table({ columns, rows, caption, empty: "No data in this window." }).wrap;
}

const CHARTS = [
  { key: "latency", testid: "chart-latency", title: "Turn latency distribution", first: "Bucket",
    describe: "Bar histogram: turns per latency bucket, one series per pipeline stage." },
  { key: "intents", testid: "chart-intents", title: "Intents detected over time", first: "Time",
    describe: "Stacked bars: intents first detected in each time bucket, one series per intent." },
  { key: "funnel", testid: "chart-funnel", title: "Outreach funnel", first: "Stage",
    describe: "Bars: outreach events of the window that reached each stage." },
];

function options(key) {
  const common = {
    responsive: true,
    maintainAspectRatio: false,
    animation: false, // live refreshes redraw at once: no motion, and data-rendered is exact
    plugins: { legend: { display: key !== "funnel", position: "bottom", labels: { boxWidth: 12 } } },
    scales: {
      x: { ticks: { maxRotation: 60, autoSkip: true }, grid: { display: false } },
      y: { beginAtZero: true, ticks: { precision: 0 } },
    },
  };
  if (key === "intents") {
    common.scales.x.stacked = true;
    common.scales.y.stacked = true;
  }
  if (key === "funnel") {
    common.indexAxis = "y";
    common.scales = {
      x: { beginAtZero: true, ticks: { precision: 0 } },
      y: { grid: { display: false } },
    };
  }
  return common;
}

/**
 * The charts section: build once with mount(container), then update(chartsResponse) as often as
 * needed; destroy() when the page goes away.
 */
export class ChartsPanel {
  constructor() {
    this.charts = {};
    this.slots = {};
    this.Chart = undefined;
    this.status = h("p.muted.chart-status", { role: "status", testid: "charts-status" });
  }

  mount(container) {
    const cards = CHARTS.map((c) => {
      const canvas = h("canvas", { testid: c.testid, role: "img", "aria-label": `${c.title}. ${c.describe}` });
      const box = h("div.chart-box", null, canvas);
      const tableSlot = h("div");
      const details = h("details.chart-table", null, h("summary", null, "Show as table"), tableSlot);
      const empty = h("p.muted.chart-empty", { hidden: true }, "No data in this window.");
      this.slots[c.key] = { canvas, box, tableSlot, details, empty, title: c.title };
      return h("section.card.chart-card", { "aria-label": c.title }, h("h3", null, c.title), box, empty, details);
    });
    container.appendChild(this.status);
    container.appendChild(h("div.chart-grid", null, cards));
  }

  async update(data) {
    if (this.Chart === undefined) this.Chart = await loadChartJs();
    const Chart = this.Chart;
    const all = shapes(data);
    this.status.textContent = Chart ? "" : "charts unavailable: Chart.js is not installed (make install vendors it), so the numbers are shown as tables.";
    for (const c of CHARTS) {
      const slot = this.slots[c.key];
      const shape = all[c.key];
      replace(slot.tableSlot, dataTable(shape, c.title, c.first));
      slot.empty.hidden = hasData(shape);
      if (!Chart) {
        slot.box.hidden = true;
        slot.details.open = true;
        continue;
      }
      let chart = this.charts[c.key];
      if (chart) {
        // Keep legend choices: a series hidden by a click stays hidden after a refresh.
        const hidden = new Set(chart.data.datasets.filter((_, i) => !chart.isDatasetVisible(i)).map((d) => d.label));
        chart.data.labels = shape.labels;
        chart.data.datasets = shape.datasets.map((d) => ({ ...d, hidden: hidden.has(d.label) }));
        chart.$fromApi = true;
        chart.update();
      } else {
        chart = new Chart(slot.canvas, {
          type: "bar",
          data: { labels: shape.labels, datasets: shape.datasets },
          options: options(c.key),
          plugins: [renderedMark],
        });
        chart.$fromApi = true;
        chart.update("none");
        this.charts[c.key] = chart;
      }
    }
  }

  unavailable(message) {
    this.status.textContent = message;
  }

  destroy() {
    for (const chart of Object.values(this.charts)) chart.destroy();
    this.charts = {};
  }
}
