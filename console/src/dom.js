// Building the DOM without innerHTML: text from the API (names, descriptions,
// error messages) is always inserted as text, never parsed as markup, and no
// element carries an inline style (the server's CSP forbids them).

/**
 * Creates an element. `attrs`: `class`, `dataset` (an object), `on*`
 * listeners, properties such as `value`, `checked`, `disabled` (non-string
 * values), other attributes as strings. Children: nodes, strings, numbers,
 * arrays of them; null, undefined and false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

/** Appends children as `h` does. */
export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Formats a count with thousands separators. */
export function fmt(n) {
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: 2 });
}

/** A date and time (UTC) of milliseconds since the epoch; "" for 0. */
export function fmtTime(ms) {
  if (!ms) return "";
  return new Date(Number(ms)).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}
