// Keys: search by name (prefix) or customer id, create (the value shown
// once), enable or disable, rotate (the new value shown once).
import { all, call, seg } from "./api.js";
import { fmtTime, h } from "./dom.js";
import { clearMessage, showError, showNotice } from "./ui.js";

export async function keys(main, params) {
  const by = h(
    "select",
    { name: "by", id: "search-by" },
    h("option", { value: "name", selected: params.get("customer") === null }, "name starts with"),
    h("option", { value: "customer", selected: params.get("customer") !== null }, "customer id is"),
  );
  const text = h("input", { id: "search", name: "q", type: "search", value: params.get("customer") ?? params.get("name") ?? "", placeholder: "search" });
  const search = h(
    "form",
    {
      id: "key-search",
      class: "inline",
      onsubmit: (e) => {
        e.preventDefault();
        const q = text.value.trim();
        location.hash = q ? `#/keys?${by.value}=${encodeURIComponent(q)}` : "#/keys";
      },
    },
    h("label", {}, "Find keys whose ", by, " "),
    text,
    h("button", { type: "submit" }, "Search"),
  );

  const secret = h("div", { id: "secret", class: "secret", hidden: true });
  const tbody = h("tbody");
  const more = h("button", { type: "button", id: "more-keys", hidden: true }, "More keys");
  const table = h(
    "table",
    { id: "keys" },
    h(
      "thead",
      {},
      h("tr", {}, ["id", "name", "customer", "value starts", "plans", "created", "expires", "state", ""].map((t) => h("th", {}, t))),
    ),
    tbody,
  );

  const plans = await all("/v1/plans", "plans").catch((e) => {
    showError(e);
    return [];
  });
  main.append(h("h1", {}, "Keys"), createForm(plans, secret, () => reload()), secret, h("section", { class: "card" }, search, table, more));

  const query = { name_prefix: params.get("name") || "", customer_id: params.get("customer") || "" };
  let next = "";
  async function load(append) {
    const r = await call("GET", "/v1/keys", { query: { ...query, page_size: 100, page_token: append ? next : "" } });
    if (!append) tbody.replaceChildren();
    for (const k of r.keys) tbody.append(row(k, secret, () => reload()));
    if (!tbody.children.length) tbody.append(h("tr", {}, h("td", { colspan: "9", class: "empty" }, "No keys match.")));
    next = r.next_page_token;
    more.hidden = !next;
  }
  async function reload() {
    try {
      await load(false);
    } catch (e) {
      showError(e);
    }
  }
  more.addEventListener("click", () => load(true).catch(showError));
  await load(false);
}

/** Shows a key's value once, with a way to copy it. */
function showSecret(secret, title, created) {
  const value = h("code", { id: "secret-value" }, created.value);
  secret.replaceChildren(
    h("h2", {}, title),
    h("p", {}, "Copy the value now: it is shown only this once and cannot be read again."),
    h("p", { class: "value" }, value),
    h(
      "p",
      {},
      h(
        "button",
        {
          type: "button",
          onclick: async () => {
            try {
              await navigator.clipboard.writeText(created.value);
              showNotice("Copied.");
            } catch {
              getSelection().selectAllChildren(value);
              showNotice("Selected: copy it with Ctrl+C.");
            }
          },
        },
        "Copy",
      ),
      " ",
      h("button", { type: "button", id: "secret-done", onclick: () => (secret.hidden = true, secret.replaceChildren()) }, "Done"),
    ),
  );
  secret.dataset.keyId = created.key.id;
  secret.hidden = false;
}

function createForm(plans, secret, reload) {
  const name = h("input", { id: "new-name", name: "name", required: true, placeholder: "name" });
  const customer = h("input", { id: "new-customer", name: "customer_id", placeholder: "customer id (optional)" });
  const description = h("input", { id: "new-description", name: "description", placeholder: "description (optional)" });
  const plan = h(
    "select",
    { id: "new-plan", name: "plan" },
    h("option", { value: "" }, "no plan"),
    plans.map((p) => h("option", { value: p.id }, `${p.name || p.id} (${p.id})`)),
  );
  const button = h("button", { type: "submit", id: "create-key" }, "Create key");
  return h(
    "form",
    {
      id: "create",
      class: "card inline",
      onsubmit: async (e) => {
        e.preventDefault();
        button.disabled = true;
        clearMessage();
        try {
          const body = { name: name.value.trim(), customer_id: customer.value.trim(), description: description.value.trim() };
          const created = await call("POST", "/v1/keys", { body });
          showSecret(secret, `Key ${created.key.id} created`, created);
          if (plan.value) {
            try {
              await call("POST", `/v1/plans/${seg(plan.value)}/keys`, { body: { key_id: created.key.id } });
              showNotice(`Key ${created.key.id} created and subscribed to ${plan.value}.`);
            } catch (err) {
              showError(err);
            }
          } else showNotice(`Key ${created.key.id} created.`);
          name.value = customer.value = description.value = "";
          reload();
        } catch (err) {
          showError(err);
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h2", {}, "New key"),
    name,
    customer,
    description,
    h("label", {}, "plan ", plan),
    button,
  );
}

function row(k, secret, reload) {
  const toggle = h(
    "button",
    {
      type: "button",
      class: "toggle",
      onclick: async () => {
        try {
          const updated = await call("PATCH", `/v1/keys/${seg(k.id)}`, { body: { enabled: !k.enabled } });
          showNotice(`Key ${k.id} ${updated.enabled ? "enabled" : "disabled"}.`);
          reload();
        } catch (e) {
          showError(e);
        }
      },
    },
    k.enabled ? "Disable" : "Enable",
  );
  const grace = h("input", { type: "number", min: "0", value: "0", class: "grace", title: "seconds the old value keeps working", "aria-label": "grace seconds" });
  const rotate = h(
    "form",
    {
      class: "rotate",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const created = await call("POST", `/v1/keys/${seg(k.id)}/rotate`, { body: { grace_seconds: Number(grace.value || 0) } });
          showSecret(secret, `Key ${k.id} rotated`, created);
          showNotice(`Key ${k.id} has a new value; the old one works ${Number(grace.value || 0)} s more.`);
          reload();
        } catch (err) {
          showError(err);
        }
      },
    },
    h("button", { type: "submit" }, "Rotate"),
    " grace ",
    grace,
    " s",
  );
  return h(
    "tr",
    { dataset: { keyId: k.id, enabled: k.enabled } },
    h("td", {}, h("code", {}, k.id)),
    h("td", { class: "name" }, k.name, k.description ? h("div", { class: "hint" }, k.description) : null),
    h("td", {}, k.customer_id ? h("a", { href: `#/keys?customer=${encodeURIComponent(k.customer_id)}` }, k.customer_id) : ""),
    h("td", {}, h("code", {}, k.value_hint, "…")),
    h("td", {}, k.usage_plan_ids.map((p) => h("a", { class: "tag", href: `#/usage?plan=${seg(p)}&key=${seg(k.id)}` }, p))),
    h("td", {}, fmtTime(k.created_at_ms)),
    h("td", {}, k.expires_at_ms ? fmtTime(k.expires_at_ms) : "never"),
    h("td", { class: "state" }, h("span", { class: k.enabled ? "ok" : "bad" }, k.enabled ? "enabled" : "disabled")),
    h("td", { class: "actions" }, toggle, rotate),
  );
}
