/* The CheckMate task view: timeline, stage table, stored state, lock, registry, actions; refreshes while live. */
"use strict";
(() => {
  const { el, fmt, dur, json, showError, badge } = CM;
  const main = document.getElementById("checkmate");
  const body = document.getElementById("cm-body");
  const REFRESH_MS = 3000;
  const openDetails = new Set();
  let last = null;
  let timer = null;

  function card(title, rows) {
    const dl = el("dl");
    for (const [key, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      dl.append(el("dt", {}, key), el("dd", {}, value));
    }
    return el("section", { class: "cm-card" }, el("h3", {}, title), dl);
  }

  function timeline(data) {
    const bars = data.stages.flatMap((s) => s.timeline);
    if (!bars.length) return el("p", { class: "cm-muted" }, "No attempt has started yet.");
    const now = Date.parse(data.now);
    const start = Math.min(...bars.map((b) => Date.parse(b.start)));
    const end = Math.max(...bars.map((b) => (b.end ? Date.parse(b.end) : now)));
    const span = Math.max(end - start, 1);
    const box = el("div", { class: "cm-timeline", id: "cm-timeline" });
    for (const stage of data.stages) {
      const track = el("div", { class: "cm-tl-track" });
      for (const b of stage.timeline) {
        const from = Date.parse(b.start), to = b.end ? Date.parse(b.end) : now;
        const label = b.airflow_try ? `try ${b.airflow_try}` : `attempt ${b.attempt}`;
        const title = `${stage.name} attempt ${b.attempt}${b.airflow_try ? ` (Airflow try ${b.airflow_try})` : ""}: ` +
          `${b.outcome}\n${fmt(b.start)} → ${b.end ? fmt(b.end) : "now"}${b.end_known ? "" : b.end ? " (end unknown: interrupted)" : ""}\n${b.message}`;
        track.append(el("div", {
          class: "cm-bar", title,
          dataset: { outcome: b.outcome, stage: stage.name, attempt: b.attempt, airflowTry: b.airflow_try || "", start: b.start, end: b.end || "" },
          style: { left: `${((from - start) / span) * 100}%`, width: `${Math.max(((to - from) / span) * 100, 0.5)}%` },
        }, label));
      }
      box.append(el("div", { class: "cm-tl-row" }, el("span", { class: "cm-tl-name", title: stage.name }, stage.name), track));
    }
    box.append(el("div", { class: "cm-tl-axis" }, el("span", {}, fmt(new Date(start).toISOString())), el("span", {}, fmt(new Date(end).toISOString()))));
    return box;
  }

  function table(data) {
    const head = el("tr", {}, ["#", "Stage", "Status", "Attempts", "Start", "End", "Duration", "Last message"].map((h) => el("th", {}, h)));
    const rows = data.stages.map((s) => el("tr", { dataset: { stage: s.name } },
      el("td", {}, s.index), el("td", {}, s.name), el("td", {}, badge(s.status)), el("td", {}, s.attempts),
      el("td", { class: "cm-start" }, fmt(s.start)), el("td", { class: "cm-end" }, fmt(s.end)),
      el("td", {}, dur(s.duration_s)), el("td", {}, s.last_message)));
    return el("table", { class: "cm-table", id: "cm-stages" }, el("thead", {}, head), el("tbody", {}, rows));
  }

  function jsonBlock(key, title, value) {
    const summary = `${title}${value.truncated ? ` (first ${value.json.length} of ${value.size} characters)` : ""}`;
    const details = el("details", { class: "cm-json", dataset: { key } }, el("summary", {}, summary), el("pre", {}, value.json));
    details.open = openDetails.has(key);
    details.addEventListener("toggle", () => (details.open ? openDetails.add(key) : openDetails.delete(key)));
    return details;
  }

  function historyBlock(stage) {
    const key = `${stage.name}:history`;
    const head = el("tr", {}, ["Status", "Attempt", "Began", "Ended", "Message"].map((h) => el("th", {}, h)));
    const rows = stage.history.map((h) => el("tr", {}, el("td", {}, badge(h.status)), el("td", {}, h.attempt),
      el("td", {}, fmt(h.begin)), el("td", {}, fmt(h.end)), el("td", {}, h.message)));
    const details = el("details", { class: "cm-json", dataset: { key } },
      el("summary", {}, `${stage.name} — history (${stage.history.length})`),
      el("table", { class: "cm-table" }, el("thead", {}, head), el("tbody", {}, rows)));
    details.open = openDetails.has(key);
    details.addEventListener("toggle", () => (details.open ? openDetails.add(key) : openDetails.delete(key)));
    return details;
  }

  function confirmThen(text, run) {
    const result = el("p", { class: "cm-result" });
    const dialog = el("dialog", { class: "cm-dialog", id: "cm-confirm" },
      el("p", {}, text),
      el("div", { class: "cm-actions" },
        el("button", { class: "cm-button", type: "button", onclick: () => { dialog.close(); dialog.remove(); } }, "Cancel"),
        el("button", { class: "cm-button cm-primary", type: "button", id: "cm-confirm-yes",
          onclick: async () => { dialog.close(); dialog.remove(); await run(); } }, "Confirm")));
    document.body.append(dialog);
    dialog.showModal();
    return result;
  }

  function actions(data) {
    if (!main.dataset.actions) return null;
    const result = el("p", { class: "cm-result", id: "cm-action-result", role: "status" });
    const run = (action, stage) => async () => {
      result.textContent = `${action}…`;
      try {
        const out = await json(`${main.dataset.actions}/${encodeURIComponent(data.task_id)}/actions`, {
          method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ action, stage, dag_id: data.dag_id, conn_id: data.conn_id }),
        });
        result.textContent = out.message;
        result.className = out.failed ? "cm-result cm-alert" : "cm-result cm-note";
      } catch (e) {
        result.textContent = e.message;
        result.className = "cm-result cm-alert";
      }
      refresh(true);
    };
    const stageSelect = el("select", { id: "cm-reset-stage", "aria-label": "stage to reset from" },
      el("option", { value: "" }, "the stopped stage"), data.stages.map((s) => el("option", { value: s.name }, `from ${s.name}`)));
    const name = data.task_id;
    return el("section", {},
      el("h2", { class: "cm-section" }, "Actions"),
      data.can_edit ? null : el("p", { class: "cm-note", id: "cm-read-only" },
        `Airflow does not allow you to edit the task instances of DAG ${data.dag_id}: actions will be refused.`),
      el("div", { class: "cm-actions" },
        el("button", { class: "cm-button cm-danger", type: "button", id: "cm-cancel",
          onclick: () => confirmThen(`Cancel CheckMate task ${name}? A running holder stops at its next stage boundary.`, run("cancel")) }, "Cancel task"),
        stageSelect,
        el("button", { class: "cm-button", type: "button", id: "cm-reset",
          onclick: () => confirmThen(`Reset ${name} ${stageSelect.value ? `from stage ${stageSelect.value}` : "at the stopped stage"}? Stages from there on run again.`, run("reset", stageSelect.value || null)) }, "Reset"),
        el("button", { class: "cm-button", type: "button", id: "cm-unlock",
          onclick: () => confirmThen(`Break the lock of ${name}? A live holder's next write will be refused.`, run("unlock")) }, "Unlock")),
      result);
  }

  function airflowCard(af) {
    if (!af || !af.operator) return null;
    return card("Airflow", [["Operator", af.operator], ["State", af.state], ["Try", af.try_number || ""],
      ["Next try due", af.next_try_at ? fmt(af.next_try_at) : ""]]);
  }

  function render(data) {
    const status = document.getElementById("cm-status");
    const live = document.getElementById("cm-live");
    if (data.kind === "not_checkmate") {
      body.replaceChildren(el("p", { class: "cm-note", id: "cm-not-checkmate" },
        `This task (${data.airflow.operator}) is not a CheckMate task: the CheckMate tab shows CheckMateOperator and CheckMateSensor tasks.`));
      return;
    }
    if (data.kind === "not_started") {
      status.replaceChildren(badge("CREATED"));
      body.replaceChildren(el("p", { class: "cm-note", id: "cm-not-started" },
        "The CheckMate task has not started yet: its view appears when Airflow runs the first try."), airflowCard(data.airflow));
      return;
    }
    status.replaceChildren(badge(data.status));
    live.textContent = data.live ? `live · refreshes every ${REFRESH_MS / 1000} s` : "final state";
    const lock = data.lock;
    const reg = data.registry;
    const cards = el("div", { class: "cm-cards" },
      card("Progress", [["Stages", `${data.progress.done}/${data.progress.total} complete`], ["Current", data.current_stage || "—"], ["Task id", data.task_id]]),
      airflowCard(data.airflow),
      card("Lock", lock ? [["Host", lock.host], ["PID", lock.pid], ["Airflow try", lock.airflow_try || ""], ["Owner", lock.owner],
        ["Heartbeat", `${lock.heartbeat_age_s} s ago (${lock.state})`], ["Lease", `${lock.lease_s} s`]] : [["Holder", "not locked"]]),
      reg ? card("Registry", [["Description", reg.description], ["Queue", reg.queue], ["Tags", reg.tags.join(", ")],
        ["Created", fmt(reg.created)], ["Updated", fmt(reg.updated)]]) : card("Registry", [["Row", "not registered (managed=False)"]]));
    cards.id = "cm-cards";
    const state = el("section", { id: "cm-state" }, el("h2", { class: "cm-section" }, "Stored state, results and history"),
      data.stages.flatMap((s) => [jsonBlock(`${s.name}:state`, `${s.name} — state`, s.state),
        jsonBlock(`${s.name}:result`, `${s.name} — result`, s.result), historyBlock(s)]));
    const keepResult = document.getElementById("cm-action-result");
    const acts = actions(data);
    if (acts && keepResult && keepResult.textContent) acts.querySelector("#cm-action-result").replaceWith(keepResult);
    body.replaceChildren(cards, el("h2", { class: "cm-section" }, "Timeline"), timeline(data),
      el("h2", { class: "cm-section" }, "Stages"), table(data), state, acts);
  }

  async function refresh(once) {
    clearTimeout(timer);
    try {
      last = await json(main.dataset.api);
      showError("");
      body.classList.remove("cm-loading");
      render(last);
      main.dataset.live = String(!!last.live);
      main.dataset.loaded = String(Date.now());
    } catch (e) {
      showError(e.status === 401 ? "Your Airflow login expired: reload the page to log in again." : e.message);
      if (e.status === 401 || e.status === 403 || e.status === 404) return;
    }
    if (!last || last.live) timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
})();
