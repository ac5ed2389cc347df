// Usage: requests per day of a plan (all its keys, or one) over the last 7,
// 30 or 90 days, as a chart and a table, with CSV export. The days are the
// plan's: local dates of its quota's time zone when it has one (the server
// counts such a plan's usage per local date), else UTC dates.
import { all, call, seg } from "./api.js";
import { lineChart } from "./chart.js";
import { fmt, h } from "./dom.js";
import { clearMessage, showError } from "./ui.js";

const RANGES = [7, 30, 90];
const MAX_KEY_SERIES = 8; // more keys: the plan's total and the 8 busiest

const DAY = 86400;
const iso = (secs) => new Date(secs * 1000).toISOString().slice(0, 10);

/** Today's date, YYYY-MM-DD, in the IANA time zone `zone`. */
function todayIn(zone) {
  // (en-CA writes dates as YYYY-MM-DD)
  return new Intl.DateTimeFormat("en-CA", { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
}

/**
 * The last `n` dates in `zone`, oldest first, as [seconds at 00:00 UTC of
 * each date] (the chart draws in UTC, so each point is labelled with its
 * date).
 */
function lastDays(n, zone) {
  const today = Date.parse(`${todayIn(zone)}T00:00:00Z`) / 1000;
  return Array.from({ length: n }, (_, i) => today - (n - 1 - i) * DAY);
}

export async function usage(main, params) {
  const plans = await all("/v1/plans", "plans");
  main.append(h("h1", {}, "Usage"));
  if (!plans.length) {
    main.append(h("p", { class: "empty" }, "No usage plans yet."));
    return;
  }
  const planId = plans.some((p) => p.id === params.get("plan")) ? params.get("plan") : plans[0].id;
  const keyId = params.get("key") || "";
  const days = RANGES.includes(Number(params.get("days"))) ? Number(params.get("days")) : 7;
  const go = (changes) => {
    const q = new URLSearchParams({ plan: planId, key: keyId, days: String(days), ...changes });
    if (!q.get("key")) q.delete("key");
    location.hash = `#/usage?${q}`;
  };

  const keys = await all(`/v1/plans/${seg(planId)}/keys`, "keys", {}, 500).catch((e) => (showError(e), []));
  const names = new Map(keys.map((k) => [k.id, k.name]));
  const planSel = h(
    "select",
    { id: "usage-plan", onchange: (e) => go({ plan: e.target.value, key: "" }) },
    plans.map((p) => h("option", { value: p.id, selected: p.id === planId }, `${p.name || p.id} (${p.id})`)),
  );
  const keySel = h(
    "select",
    { id: "usage-key", onchange: (e) => go({ key: e.target.value }) },
    h("option", { value: "" }, "all keys"),
    keys.map((k) => h("option", { value: k.id, selected: k.id === keyId }, `${k.name} (${k.id})`)),
    keyId && !names.has(keyId) ? h("option", { value: keyId, selected: true }, keyId) : null,
  );
  const rangeButtons = RANGES.map((n) =>
    h("button", { type: "button", class: n === days ? "range current" : "range", "aria-pressed": String(n === days), dataset: { days: n }, onclick: () => go({ days: String(n) }) }, `${n} days`),
  );
  const refresh = h("button", { type: "button", id: "usage-refresh" }, "Refresh");
  const csv = h("button", { type: "button", id: "usage-csv", disabled: true }, "Export CSV");
  const total = h("p", { id: "usage-total", class: "total" });
  const chartEl = h("div", { id: "usage-chart", class: "chart" });
  const tableEl = h("div", { id: "usage-table" });
  main.append(
    h("section", { class: "card controls" }, h("label", {}, "plan ", planSel), h("label", {}, "key ", keySel), h("span", { class: "ranges" }, rangeButtons), refresh, csv),
    h("section", { class: "card" }, total, chartEl, tableEl),
  );

  const plan = plans.find((p) => p.id === planId);
  const zone = (plan && plan.quota && plan.quota.time_zone) || "UTC";
  const xs = lastDays(days, zone);
  const start_date = iso(xs[0]);
  const end_date = iso(xs[xs.length - 1]);
  let chart = null;
  let rows = [];

  async function load() {
    refresh.disabled = true;
    try {
      const items = {};
      let position = "";
      do {
        const u = await call("GET", `/v1/plans/${seg(planId)}/usage`, { query: { start_date, end_date, key_id: keyId || undefined, limit: 500, position } });
        Object.assign(items, u.items);
        position = u.position;
      } while (position);
      clearMessage();
      draw(items);
    } catch (e) {
      showError(e);
    } finally {
      refresh.disabled = false;
    }
  }

  function draw(items) {
    const perKey = Object.entries(items).map(([id, ku]) => {
      const used = xs.map((_, i) => (ku.days[i] ? ku.days[i].used : 0));
      const remaining = xs.map((_, i) => (ku.days[i] && ku.days[i].remaining != null ? ku.days[i].remaining : null));
      return { id, used, remaining, total: used.reduce((a, b) => a + b, 0) };
    });
    perKey.sort((a, b) => b.total - a.total || a.id.localeCompare(b.id));
    const sum = perKey.reduce((a, k) => a + k.total, 0);
    const who = keyId ? `key ${keyId}` : `${perKey.length} key${perKey.length === 1 ? "" : "s"}`;
    total.replaceChildren(h("strong", {}, fmt(sum)), ` requests in the last ${days} days (${start_date} to ${end_date}, ${zone}), ${who} of plan ${planId}`);
    total.dataset.zone = zone;
    total.dataset.end = end_date;
    total.dataset.total = String(sum);
    total.dataset.keys = String(perKey.length);

    const series = [];
    const data = [xs];
    if (!keyId) {
      series.push({ label: "all keys", color: "#111827" });
      data.push(xs.map((_, i) => perKey.reduce((a, k) => a + k.used[i], 0)));
    }
    for (const k of perKey.slice(0, keyId ? 1 : MAX_KEY_SERIES)) {
      series.push({ label: names.get(k.id) ? `${names.get(k.id)} (${k.id})` : k.id });
      data.push(k.used);
    }
    if (chart) chart.destroy();
    chartEl.dataset.points = String(xs.length);
    chartEl.dataset.series = String(series.length);
    chart = series.length ? lineChart(chartEl, { series, data, xLabel: zone === "UTC" ? "UTC" : `date (${zone})`, yLabel: "requests/day", bars: days <= 30 && series.length === 1 }) : null;
    if (!series.length) chartEl.replaceChildren(h("p", { class: "empty" }, "No keys in this plan."));

    rows = perKey.flatMap((k) => xs.map((x, i) => [iso(x), k.id, names.get(k.id) || "", k.used[i], k.remaining[i] ?? ""]));
    csv.disabled = rows.length === 0;
    tableEl.replaceChildren(
      h(
        "table",
        { class: "usage" },
        h("thead", {}, h("tr", {}, h("th", {}, "key"), h("th", {}, "name"), h("th", { class: "num" }, `used (${days} days)`), h("th", { class: "num" }, "today"), h("th", { class: "num" }, "quota left today"))),
        h(
          "tbody",
          {},
          perKey.map((k) =>
            h(
              "tr",
              { dataset: { keyId: k.id, total: k.total } },
              h("td", {}, h("a", { href: `#/usage?plan=${seg(planId)}&key=${seg(k.id)}&days=${days}` }, h("code", {}, k.id))),
              h("td", {}, names.get(k.id) || ""),
              h("td", { class: "num" }, fmt(k.total)),
              h("td", { class: "num" }, fmt(k.used[k.used.length - 1])),
              h("td", { class: "num" }, k.remaining[k.remaining.length - 1] == null ? "–" : fmt(k.remaining[k.remaining.length - 1])),
            ),
          ),
        ),
      ),
    );
  }

  csv.addEventListener("click", () => {
    const quote = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
    const text = [["date", "key_id", "key_name", "used", "remaining"], ...rows].map((r) => r.map(quote).join(",")).join("\n") + "\n";
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    const a = h("a", { href: url, download: `usage-${planId}${keyId ? "-" + keyId : ""}-${start_date}-${end_date}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
  refresh.addEventListener("click", load);
  await load();
  return () => chart && chart.destroy();
}
