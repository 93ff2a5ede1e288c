/* CheckMate view helpers: the Airflow UI's theme and timezone, DOM built from text nodes only, JSON fetches. */
"use strict";
const CM = (() => {
  function parentDoc() {
    try { return window.parent !== window ? window.parent.document : null; } catch (e) { return null; }
  }
  function themeNow() {
    const doc = parentDoc();
    if (doc && doc.documentElement) {
      const cls = doc.documentElement.classList;
      if (cls.contains("dark")) return "dark";
      if (cls.contains("light")) return "light";
    }
    let stored = null;
    try { stored = localStorage.getItem("theme"); } catch (e) { /* storage blocked */ }
    if (stored === "dark" || stored === "light") return stored;
    return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  function applyTheme() { document.documentElement.dataset.theme = themeNow(); }
  applyTheme();
  window.addEventListener("storage", applyTheme);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
  const doc = parentDoc();
  if (doc && doc.documentElement) {
    new MutationObserver(applyTheme).observe(doc.documentElement, { attributes: true, attributeFilter: ["class", "style"] });
  }

  function timezone() {
    let tz = null;
    try {
      const raw = localStorage.getItem("timezone");
      if (raw) { try { tz = JSON.parse(raw); } catch (e) { tz = raw; } }
    } catch (e) { /* storage blocked */ }
    if (typeof tz !== "string" || !tz) tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    try { new Intl.DateTimeFormat("en-US", { timeZone: tz }); } catch (e) { tz = "UTC"; }
    return tz;
  }
  function fmt(iso) {
    if (!iso) return "";
    const parts = {};
    new Intl.DateTimeFormat("en-GB", {
      timeZone: timezone(), year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short",
    }).formatToParts(new Date(iso)).forEach((p) => { parts[p.type] = p.value; });
    return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${parts.timeZoneName}`;
  }
  function dur(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return `${m} min ${s} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  /* el("td", {class: "x", dataset: {status: "RUNNING"}}, "text", child): text is always text, never markup. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style") Object.assign(node.style, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  async function json(url, options) {
    const response = await fetch(url, Object.assign({ credentials: "same-origin", headers: { Accept: "application/json" } }, options || {}));
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : response.statusText;
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return body;
  }
  function showError(message) {
    const box = document.getElementById("cm-error");
    if (!box) return;
    box.hidden = !message;
    box.textContent = message || "";
  }
  function badge(status) { return el("span", { class: "cm-badge", dataset: { status } }, status); }
  return { el, fmt, dur, json, showError, badge, timezone, themeNow };
})();
