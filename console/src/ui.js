// The message area every page shares, and signing out.
import { describe, session } from "./api.js";

let rerender = () => {};
let signInError = "";

/** Called by main.js: how to draw the page anew. */
export function onRender(f) {
  rerender = f;
}

/** The reason the sign-in form shows (and forgets it). */
export function takeSignInError() {
  const e = signInError;
  signInError = "";
  return e;
}

/** Shows an error (an ApiError or any); a refused token signs out. */
export function showError(err) {
  if (err && err.credentials) return signOut(describe(err));
  setMessage("error", describe(err));
}

/** Shows a success message. */
export function showNotice(text) {
  setMessage("notice", text);
}

/** Clears the message area. */
export function clearMessage() {
  setMessage("", "");
}

function setMessage(kind, text) {
  const el = document.getElementById("message");
  if (!el) return;
  el.className = kind ? `message ${kind}` : "message";
  el.dataset.kind = kind;
  el.textContent = text;
}

/** Forgets the token and shows the sign-in form, with `why` when given. */
export function signOut(why = "") {
  session.signOut();
  signInError = why;
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else rerender();
}
