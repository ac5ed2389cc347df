// Overview: decisions per second by reason, live (GET /v1/stats every
// second, counters differenced), and the state of the store and catalog.
import { call } from "./api.js";
import { lineChart } from "./chart.js";
import { fmt, fmtTime, h } from "./dom.js";
import { clearMessage, showError } from "./ui.js";

/** The reasons of a decision and their colours. */
export const REASONS = [
  ["OK", "#059669"],
  ["THROTTLED", "#d97706"],
  ["QUOTA_EXCEEDED", "#dc2626"],
  ["INVALID_API_KEY", "#7c3aed"],
  ["NOT_SUBSCRIBED", "#92400e"],
  ["UNKNOWN_STAGE", "#4b5563"],
];
const POLL_MS = 1000;
const KEEP = 120; // samples on the chart: two minutes

export async function overview(main) {
  const chartEl = h("div", { id: "rate-chart", class: "chart" });
  const rows = new Map(
    REASONS.map(([r]) => [
      r,
      {
        total: h("td", { class: "num total" }, "–"),
        rate: h("td", { class: "num rate" }, "–"),
      },
    ]),
  );
  const table = h(
    "table",
    { id: "decisions" },
    h("thead", {}, h("tr", {}, h("th", {}, "reason"), h("th", { class: "num" }, "since start"), h("th", { class: "num" }, "per second"))),
    h(
      "tbody",
      {},
      REASONS.map(([r]) => h("tr", { dataset: { reason: r } }, h("td", {}, h("span", { class: `dot r-${r}` }), r), rows.get(r).total, rows.get(r).rate)),
    ),
  );
  const storeEl = h("dl", { id: "store-state", class: "facts" });
  const catalogEl = h("dl", { id: "catalog-state", class: "facts" });
  main.append(
    h("h1", {}, "Overview"),
    h("div", { class: "cols" }, h("section", { class: "card" }, h("h2", {}, "Store"), storeEl), h("section", { class: "card" }, h("h2", {}, "Catalog"), catalogEl)),
    h("section", { class: "card" }, h("h2", {}, "Decisions per second, by reason"), chartEl, table),
  );

  const xs = [];
  const ys = REASONS.map(() => []);
  let chart = null;
  let prev = null;
  let stopped = false;

  const facts = (el, pairs) =>
    el.replaceChildren(...pairs.flatMap(([k, v, id]) => [h("dt", {}, k), h("dd", { dataset: { fact: id } }, v)]));
  const yesNo = (b) => h("span", { class: b ? "ok" : "bad" }, b ? "yes" : "no");

  async function tick() {
    let s;
    try {
      s = await call("GET", "/v1/stats");
    } catch (e) {
      if (!stopped) showError(e);
      return;
    }
    if (stopped) return;
    clearMessage();
    const counts = s.decisions || {};
    main.dataset.decisions = Object.values(counts).reduce((a, b) => a + b, 0);
    for (const [r] of REASONS) rows.get(r).total.textContent = fmt(counts[r] || 0);
    if (prev) {
      const dt = (s.now_ms - prev.now_ms) / 1000;
      if (dt > 0) {
        xs.push(s.now_ms / 1000);
        REASONS.forEach(([r], i) => {
          const rate = Math.max(0, ((counts[r] || 0) - (prev.decisions[r] || 0)) / dt);
          ys[i].push(rate);
          rows.get(r).rate.textContent = fmt(rate);
        });
        if (xs.length > KEEP) {
          xs.shift();
          ys.forEach((y) => y.shift());
        }
        if (!chart) chart = lineChart(chartEl, { series: REASONS.map(([label, color]) => ({ label, color })), data: [xs, ...ys], yLabel: "decisions/s", height: 220 });
        else chart.update([xs, ...ys]);
      }
    }
    prev = s;
    const st = s.store;
    facts(storeEl, [
      ["kind", st.kind + (st.mode ? ` (${st.mode})` : ""), "kind"],
      ["ready", yesNo(st.ready), "store-ready"],
      ["replica ready to decide", yesNo(s.ready), "ready"],
      ["started", fmtTime(s.started_at_ms), "started"],
    ]);
    const c = s.catalog;
    facts(catalogEl, [
      ["loaded", yesNo(c.ready), "catalog-ready"],
      ["version", fmt(c.version), "version"],
      ["APIs", fmt(c.apis), "apis"],
      ["stages", fmt(c.stages), "stages"],
      ["usage plans", fmt(c.plans), "plans"],
      ["key values (current and rotated out)", fmt(c.key_values), "key-values"],
    ]);
  }

  await tick();
  const timer = setInterval(tick, POLL_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
    if (chart) chart.destroy();
  };
}
