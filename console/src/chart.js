// Line charts with uPlot (https://github.com/leeoniya/uPlot), drawn in UTC.
import uPlot from "uplot";

/** Colours of the series, in order; decision reasons have their own. */
export const COLORS = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#4b5563", "#65a30d", "#92400e"];

/**
 * A chart in `el`: `data` is uPlot's columns ([xs, ys1, ys2, ...], x in
 * seconds since the epoch), `series` one {label, color} per ys; `xLabel`
 * names the x axis in the legend (its dates are drawn in UTC). Answers
 * {update(data), destroy()}.
 */
export function lineChart(el, { series, data, height = 260, xLabel = "UTC", yLabel = "", bars = false }) {
  const width = () => Math.max(320, Math.floor(el.clientWidth || 800));
  const opts = {
    width: width(),
    height,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    legend: { live: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    axes: [{}, { label: yLabel, size: 60 }],
    series: [
      { label: xLabel },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || COLORS[i % COLORS.length],
        fill: bars ? (s.color || COLORS[i % COLORS.length]) + "33" : undefined,
        width: 2,
        points: { show: data[0].length <= 31 },
        paths: bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined,
      })),
    ],
  };
  const plot = new uPlot(opts, data, el);
  const onResize = () => plot.setSize({ width: width(), height });
  window.addEventListener("resize", onResize);
  return {
    update: (d) => plot.setData(d),
    destroy: () => {
      window.removeEventListener("resize", onResize);
      plot.destroy();
    },
  };
}
