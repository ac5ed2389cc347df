// The console: sign-in, navigation (#/overview, #/plans, #/keys, #/usage)
// and the messages shared by every page.
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { call, describe, session } from "./api.js";
import { h } from "./dom.js";
import { onRender, showError, signOut, takeSignInError } from "./ui.js";
import { overview } from "./overview.js";
import { plans } from "./plans.js";
import { keys } from "./keys.js";
import { usage } from "./usage.js";

const PAGES = [
  ["overview", "Overview", overview],
  ["plans", "Plans", plans],
  ["keys", "Keys", keys],
  ["usage", "Usage", usage],
];

const app = document.getElementById("app");
let leave = null;
let renders = 0;

// Content-Security-Policy violations are kept in a data attribute: the
// browser tests assert there are none.
const violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  violations.push(`${e.violatedDirective} ${e.blockedURI}`);
  document.body.dataset.cspViolations = violations.join("\n");
});

function route() {
  const [path, qs] = location.hash.replace(/^#\/?/, "").split("?");
  return { page: path || "overview", params: new URLSearchParams(qs || "") };
}

async function render() {
  if (leave) leave();
  leave = null;
  app.replaceChildren();
  const { page, params } = route();
  if (!session.token() || page === "signin") {
    renders++;
    if (session.token()) session.signOut();
    app.dataset.state = "signin";
    app.append(signInForm());
    return;
  }
  const current = PAGES.find(([id]) => id === page) || PAGES[0];
  const nav = h(
    "nav",
    {},
    h("span", { class: "brand" }, "tollgate"),
    PAGES.map(([id, label]) =>
      h("a", { href: `#/${id}`, class: id === current[0] ? "current" : "", "aria-current": id === current[0] ? "page" : null }, label),
    ),
    h("button", { type: "button", id: "signout", class: "link", onclick: () => signOut() }, "Sign out"),
  );
  const main = h("main", { id: "page", dataset: { page: current[0] } });
  app.append(h("header", {}, nav), h("div", { id: "message", class: "message", role: "status", "aria-live": "polite" }), main);
  app.dataset.state = "ready";
  const mine = ++renders;
  try {
    const cleanup = (await current[2](main, params)) || null;
    // Left while it loaded: stop it now (its timers, its chart).
    if (mine === renders) leave = cleanup;
    else if (cleanup) cleanup();
  } catch (e) {
    if (mine === renders) showError(e);
  }
}

function signInForm() {
  const input = h("input", {
    id: "token",
    type: "password",
    name: "token",
    autocomplete: "current-password",
    required: true,
    placeholder: "TOLLGATE_ADMIN_TOKEN",
  });
  const error = h("p", { id: "signin-error", class: "error", role: "alert" }, takeSignInError());
  const button = h("button", { type: "submit", id: "signin-button" }, "Sign in");
  const form = h(
    "form",
    {
      id: "signin",
      class: "signin",
      onsubmit: async (e) => {
        e.preventDefault();
        const token = input.value.trim();
        if (!token) {
          error.textContent = "Enter the admin token.";
          return;
        }
        button.disabled = true;
        error.textContent = "";
        try {
          // Any Admin call checks the token; /v1/stats is the cheapest.
          await call("GET", "/v1/stats", { token });
          session.signIn(token);
          if (location.hash === "#/overview") render();
          else location.hash = "#/overview";
        } catch (err) {
          error.textContent = describe(err);
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", {}, "tollgate console"),
    h("label", { for: "token" }, "Admin token"),
    input,
    button,
    error,
    h(
      "p",
      { class: "hint" },
      "The server's admin token (TOLLGATE_ADMIN_TOKEN or --admin-token-file). It is kept in this tab only (sessionStorage) and sent as Authorization: Bearer.",
    ),
  );
  queueMicrotask(() => input.focus());
  return form;
}

onRender(render);
window.addEventListener("hashchange", render);
render();
