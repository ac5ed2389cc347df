// Plans: each usage plan's limits, stages (with per-method throttles) and
// subscribed keys; subscribe or unsubscribe a key.
import { all, call, seg } from "./api.js";
import { fmt, h } from "./dom.js";
import { showError, showNotice } from "./ui.js";

export const throttleText = (t) => (t ? `${fmt(t.rate_limit)}/s, bursts of ${fmt(t.burst_limit)}` : "none");
export const quotaText = (q) =>
  q
    ? `${fmt(q.limit)} requests a ${String(q.period).toLowerCase()}${q.anchor_day > 1 ? ` from day ${q.anchor_day}` : ""} (${q.time_zone || "UTC"})${q.offset ? `, ${fmt(q.offset)} fewer in the first period` : ""}`
    : "none";

export async function plans(main) {
  const list = h("div", { id: "plans" });
  main.append(h("h1", {}, "Plans"), list);
  const plans = await all("/v1/plans", "plans");
  if (!plans.length) list.append(h("p", { class: "empty" }, "No usage plans yet."));
  for (const p of plans) list.append(planCard(p));
}

function planCard(p) {
  const keysEl = h("div", { class: "plan-keys" }, h("p", { class: "empty" }, "Loading keys…"));
  const card = h(
    "section",
    { class: "card plan", dataset: { planId: p.id } },
    h("h2", {}, p.name || p.id, " ", h("code", {}, p.id)),
    p.description ? h("p", {}, p.description) : null,
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "throttle (per key)"),
      h("dd", { class: "throttle" }, throttleText(p.throttle)),
      h("dt", {}, "quota (per key)"),
      h("dd", { class: "quota" }, quotaText(p.quota)),
    ),
    h("h3", {}, "Stages"),
    p.api_stages.length
      ? h(
          "table",
          { class: "stages" },
          h("thead", {}, h("tr", {}, h("th", {}, "stage"), h("th", {}, "method throttles (per key)"))),
          h(
            "tbody",
            {},
            p.api_stages.map((s) => {
              const methods = Object.entries(s.throttle || {});
              return h(
                "tr",
                {},
                h("td", {}, h("code", {}, s.stage)),
                h("td", {}, methods.length ? h("ul", {}, methods.map(([m, t]) => h("li", {}, h("code", {}, m), ": ", throttleText(t)))) : "none"),
              );
            }),
          ),
        )
      : h("p", { class: "empty" }, "No stages: the plan admits nothing."),
    h("h3", {}, "Subscribed keys"),
    keysEl,
    h("p", {}, h("a", { href: `#/usage?plan=${seg(p.id)}` }, "Usage of this plan →")),
  );
  loadKeys(p, keysEl);
  return card;
}

async function loadKeys(p, el) {
  let keys;
  try {
    keys = await all(`/v1/plans/${seg(p.id)}/keys`, "keys", {}, 500);
  } catch (e) {
    el.replaceChildren(h("p", { class: "error" }, "The keys could not be read."));
    return showError(e);
  }
  const keyId = h("input", { name: "key_id", placeholder: "key id", required: true, size: 14 });
  const subscribe = h(
    "form",
    {
      class: "inline subscribe",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await call("POST", `/v1/plans/${seg(p.id)}/keys`, { body: { key_id: keyId.value.trim() } });
          showNotice(`Key ${keyId.value.trim()} subscribed to ${p.id}.`);
          loadKeys(p, el);
        } catch (err) {
          showError(err);
        }
      },
    },
    h("label", {}, "Subscribe a key: ", keyId),
    h("button", { type: "submit" }, "Subscribe"),
  );
  el.replaceChildren(
    keys.length
      ? h(
          "table",
          { class: "keys" },
          h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "name"), h("th", {}, "customer"), h("th", {}, "state"), h("th", {}))),
          h(
            "tbody",
            {},
            keys.map((k) =>
              h(
                "tr",
                { dataset: { keyId: k.id } },
                h("td", {}, h("code", {}, k.id)),
                h("td", {}, k.name),
                h("td", {}, k.customer_id),
                h("td", {}, h("span", { class: k.enabled ? "ok" : "bad" }, k.enabled ? "enabled" : "disabled")),
                h(
                  "td",
                  { class: "actions" },
                  h("a", { href: `#/usage?plan=${seg(p.id)}&key=${seg(k.id)}` }, "usage"),
                  h(
                    "button",
                    {
                      type: "button",
                      class: "link danger",
                      onclick: async () => {
                        try {
                          await call("DELETE", `/v1/plans/${seg(p.id)}/keys/${seg(k.id)}`);
                          showNotice(`Key ${k.id} unsubscribed from ${p.id}.`);
                          loadKeys(p, el);
                        } catch (err) {
                          showError(err);
                        }
                      },
                    },
                    "unsubscribe",
                  ),
                ),
              ),
            ),
          ),
        )
      : h("p", { class: "empty" }, "No keys."),
    subscribe,
  );
}
