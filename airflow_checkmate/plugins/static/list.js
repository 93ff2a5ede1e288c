/* The CheckMate task list: registry rows of DAGs the user may read, filtered by status, DAG, tag and queue. */
"use strict";
(() => {
  const { el, fmt, json, showError, badge } = CM;
  const main = document.getElementById("checkmate");
  const body = document.getElementById("cm-body");
  const form = document.getElementById("cm-filters");
  const REFRESH_MS = 5000;
  let timer = null;

  const params = new URLSearchParams(window.location.search);
  for (const name of ["status", "dag_id", "tag", "queue"]) if (params.get(name)) form.elements[name].value = params.get(name);

  function query() {
    const q = new URLSearchParams({ conn_id: main.dataset.connId });
    for (const name of ["status", "dag_id", "tag", "queue"]) {
      const value = form.elements[name].value.trim();
      if (value) q.set(name, value);
    }
    return q;
  }

  function progress(p) {
    const pct = p.total ? Math.round((p.done / p.total) * 100) : 0;
    return el("span", { class: "cm-nowrap", title: `${p.done}/${p.total} stages complete` },
      el("span", { class: "cm-progress" }, el("span", { style: { width: `${pct}%` } })), `${p.done}/${p.total}`);
  }

  function render(data) {
    document.getElementById("cm-count").textContent = `${data.tasks.length} task(s)`;
    if (!data.tasks.length) {
      body.replaceChildren(el("p", { class: "cm-note", id: "cm-empty" }, "No CheckMate task matches these filters."));
      return;
    }
    const head = el("tr", {}, ["Task", "DAG", "Status", "Progress", "Current stage", "Queue", "Tags", "Lock holder", "Updated"].map((h) => el("th", {}, h)));
    const rows = data.tasks.map((t) => {
      const href = t.dag_id
        ? `${main.dataset.root}/tasks/${encodeURIComponent(t.task_id)}?${new URLSearchParams({ dag_id: t.dag_id, conn_id: data.conn_id })}`
        : null;
      return el("tr", { dataset: { taskId: t.task_id, status: t.status } },
        el("td", {}, href ? el("a", { class: "cm-link", href }, t.task_id) : t.task_id),
        el("td", {}, t.dag_id || "—"), el("td", {}, badge(t.status)), el("td", {}, progress(t.progress)),
        el("td", {}, t.current_stage || "—"), el("td", {}, t.queue), el("td", {}, t.tags.join(", ")),
        el("td", {}, t.lock_holder || "—"), el("td", {}, fmt(t.updated)));
    });
    body.replaceChildren(el("table", { class: "cm-table", id: "cm-tasks" }, el("thead", {}, head), el("tbody", {}, rows)));
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const data = await json(`${main.dataset.api}?${query()}`);
      showError("");
      body.classList.remove("cm-loading");
      render(data);
      main.dataset.loaded = String(Date.now());
    } catch (e) {
      showError(e.status === 401 ? "Your Airflow login expired: reload the page to log in again." : e.message);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = query();
    q.delete("conn_id");
    history.replaceState(null, "", `?${q}`);
    refresh();
  });
  refresh();
})();
