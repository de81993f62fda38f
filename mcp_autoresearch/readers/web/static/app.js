// The dashboard page: fetches the session's summary, chart and table from the JSON API, then listens to the
// server-sent events and updates in place. Every text that comes from the session (descriptions, notes,
// logs, diffs) is set with textContent, never parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "autoresearch-token";
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);
  const state = { summary: null, runs: [], runsAt: 0, status: "", offset: 0, shown: null, ready: false, es: null };

  // The token: taken once from ?token=, kept for this tab only, and removed from the address bar and history.
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  let token = sessionStorage.getItem(TOKEN_KEY) || "";

  class Unauthorized extends Error {}

  async function api(path) {
    const response = await fetch(path, { headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized("unauthorized");
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (v !== 0 && (a >= 1e7 || a < 1e-4)) return v.toExponential(4);
    return String(+v.toPrecision(6));
  }

  function signed(v) {
    return v === null || v === undefined ? "" : (v > 0 ? "+" : "") + fmt(v);
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function setText(id, text, value) {
    const node = $(id);
    node.textContent = text;
    if (value !== undefined) node.dataset.value = value === null ? "" : String(value);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(r).padStart(2, "0");
  }

  // -- summary cards -------------------------------------------------------------------------------------
  function renderSummary(s) {
    state.summary = s;
    const lower = s.direction !== "higher_is_better";
    const direction = lower ? "lower is better" : "higher is better";
    $("session").textContent = !s.tag ? "no session yet" : s.metric ? `${s.tag} · ${s.metric} (${direction}) · ${s.target}` : s.tag;
    const notice = s.error || (s.tag ? "" : "No session in this project yet: start one from your agent (start_session).");
    $("notice").hidden = !notice;
    $("notice").textContent = notice;
    setText("total", String(s.total), s.total);
    $("counts").textContent = `keep ${s.counts.keep} · discard ${s.counts.discard} · crash ${s.counts.crash}`;
    setText("baseline", fmt(s.baseline), s.baseline);
    $("metric-desc").textContent = s.metric ? `${s.metric}, ${direction}` : "";
    renderProvenance(s.provenance);
    setText("best", s.best ? fmt(s.best.value) : "–", s.best ? s.best.value : null);
    $("best-sub").textContent = s.best
      ? `${s.best.run_id} · ${s.best.commit.slice(0, 7)}${s.best.spread !== null ? " · spread " + fmt(s.best.spread) : ""} · ${s.best.description}`
      : "";
    $("best-sub").title = s.best ? s.best.description : "";
    setText("improvement", s.improvement === null ? "–" : signed(s.improvement), s.improvement);
    $("improvement-pct").textContent = s.improvement_pct === null ? "" : `${signed(+s.improvement_pct.toFixed(2))}% vs baseline`;
    $("holdout").textContent = s.holdout || "";
    const rate = s.keep_rate === null ? "–" : (s.keep_rate * 100).toFixed(s.keep_rate < 0.1 ? 1 : 0) + "%";
    setText("keep-rate", rate, s.keep_rate);
    $("rate").textContent = s.per_hour === null ? "" : `${s.per_hour.toFixed(s.per_hour < 10 ? 1 : 0)} experiments / hour`;
    $("budget").textContent = budgetText(s.budget);
    $("budget").title = s.budget && s.budget.spent ? `budget spent: ${s.budget.spent}; no new run starts` : "";
    const mem = s.best && s.best.memory_gb !== null ? s.best.memory_gb : null;
    setText("memory", mem === null ? (s.memory_peak_gb === null ? "–" : fmt(s.memory_peak_gb) + " GB") : fmt(mem) + " GB");
    $("memory-sub").textContent = s.memory_peak_gb === null ? "not recorded" : (mem === null ? "peak" : `of the best · peak ${fmt(s.memory_peak_gb)} GB`);
    renderFilters(s);
  }

  // The session's budgets, used and left ("" without one).
  function budgetText(b) {
    if (!b) return "";
    const parts = [];
    if (b.max_experiments !== null) parts.push(`${b.experiments} of ${b.max_experiments} experiments`);
    if (b.max_hours !== null) parts.push(`${b.hours.toFixed(1)} of ${b.max_hours} h`);
    if (!parts.length) return "";
    return "budget: " + parts.join(" · ") + (b.spent ? " (spent)" : "");
  }

  // Where the values come from; a self-reported metric is marked, with the change that removes the doubt.
  function renderProvenance(p) {
    $("provenance").hidden = !p;
    if (!p) return;
    $("provenance").dataset.source = p.source;
    $("provenance-source").textContent = p.source;
    $("provenance-reason").textContent = p.reason + ".";
    $("provenance-fix").textContent = p.fix ? `Fix: ${p.fix}.` : "";
  }

  function renderFilters(s) {
    const options = [["", "all", s.total], ["keep", "keep", s.counts.keep], ["discard", "discard", s.counts.discard], ["crash", "crash", s.counts.crash]];
    for (const [name, count] of Object.entries(s.run_counts)) {
      if (!["keep", "discard", "crash"].includes(name)) options.push([name, name, count]);  // timeout, ...
    }
    const box = $("filters");
    box.replaceChildren();
    for (const [value, text, count] of options) {
      const button = el("button", "", `${text} ${count}`);
      button.type = "button";
      button.dataset.status = value;
      button.setAttribute("aria-pressed", String(value === state.status));
      button.onclick = () => { state.status = value; state.offset = 0; renderFilters(state.summary); loadTable(); };
      box.appendChild(button);
    }
  }

  // -- current runs ----------------------------------------------------------------------------------------
  function renderRuns(runs) {
    state.runs = runs;
    state.runsAt = performance.now();
    const box = $("runs");
    $("runs-count").textContent = runs.length ? `${runs.length} in flight or awaiting a decision` : "";
    if (!runs.length) {
      box.replaceChildren(el("p", "empty", "No run in flight."));
      return;
    }
    const list = el("div", "runs-list");
    for (const run of runs) {
      const card = el("div", "run");
      card.dataset.runId = run.run_id;
      const head = el("div", "run-head");
      head.append(el("span", "run-id", run.run_id), el("span", "phase", run.phase), el("span", "", run.description));
      if (run.slot !== null && run.slot !== undefined) head.append(el("span", "note slot", run.slot === "all" ? "all slots" : `slot ${run.slot}`));
      if (run.result_status) head.append(el("span", "note", `result: ${run.result_status} ${run.value === null ? "" : fmt(run.value)}`));
      const clock = el("div", "note elapsed");
      const bar = el("div", "bar");
      bar.appendChild(el("div"));
      const log = el("pre", "log", run.log_tail || "(no output yet)");
      card.append(head, clock, bar, el("div", "note", run.log_name ? `tail of ${run.log_name}` : ""), log);
      list.appendChild(card);
    }
    box.replaceChildren(list);
    for (const pre of box.querySelectorAll("pre")) pre.scrollTop = pre.scrollHeight;
    tickRuns();
  }

  function tickRuns() {
    const since = (performance.now() - state.runsAt) / 1000;
    const cards = $("runs").querySelectorAll(".run");
    state.runs.forEach((run, i) => {
      const card = cards[i];
      if (!card) return;
      const running = run.phase === "running" || run.phase === "starting";
      const elapsed = running ? (run.elapsed_s === null ? null : run.elapsed_s + since) : (run.duration_s ?? run.elapsed_s);
      const limit = run.timeout_s;
      card.querySelector(".elapsed").textContent = `elapsed ${duration(elapsed)}` + (limit ? ` of ${duration(limit)} timeout` : "");
      const fill = limit && elapsed !== null ? Math.min(1, elapsed / limit) : 0;
      card.querySelector(".bar > div").style.width = (fill * 100).toFixed(1) + "%";
      card.querySelector(".bar").classList.toggle("late", fill > 0.9);
    });
  }

  // -- chart -------------------------------------------------------------------------------------------------
  async function loadChart() {
    const data = await api("api/points");
    state.points = data;
    drawChart();
  }

  function drawChart() {
    const data = state.points;
    if (!data) return;
    window.ARChart.draw($("chart"), data, { format: fmt, onPick: openExperiment });
    $("spread-key").hidden = !data.best.some((s) => s.lo !== undefined);
    $("chart-note").textContent = data.decimated
      ? `${data.total} experiments; ${data.x.length} points drawn (the extremes of each stretch are kept)`
      : "";
  }

  // -- research tree -----------------------------------------------------------------------------------------
  async function loadTree() {
    state.tree = await api("api/tree");
    drawTree();
  }

  function drawTree() {
    const data = state.tree;
    if (!data) return;
    window.ARTree.draw($("tree"), data, { format: fmt, onPick: openDiff });
    const listed = (part) => part.total ? ` (${part.runs.join(", ")}${part.total > part.runs.length ? ", …" : ""})` : "";
    const parts = [
      `${data.total} nodes, depth ${data.max_depth}`,
      `best lineage ${data.lineage_length} nodes`,
      `frontier ${data.frontier.total}${listed(data.frontier)}`,
      `near-misses ${data.near_misses.total}`,
      `dead ends ${data.dead_ends.total}${listed(data.dead_ends)}`,
    ];
    if (data.shown_from > 1) parts.push(`drawn: the newest ${data.nodes.length}`);
    $("tree-note").textContent = data.total ? parts.join(" · ") : "";
    $("tree").dataset.total = data.total;
  }

  // -- table -------------------------------------------------------------------------------------------------
  async function loadTable() {
    const query = new URLSearchParams({ offset: state.offset, limit: PAGE });
    if (state.status) query.set("status", state.status);
    const page = await api("api/experiments?" + query);
    renderTable(page);
  }

  function renderTable(page) {
    const lower = !state.summary || state.summary.direction !== "higher_is_better";
    const body = $("rows");
    const rows = [];
    for (const r of page.rows) {
      const tr = el("tr");
      tr.dataset.runId = r.run_id;
      tr.dataset.commit = r.commit;
      const status = r.run_status !== "ok" && r.run_status !== r.status ? `${r.status} (${r.run_status})` : r.status;
      const delta = el("td", "num", signed(r.delta));
      if (r.delta) delta.classList.add((r.delta < 0) === lower ? "better" : "worse");
      const value = el("td", "num", fmt(r.value));
      if (r.spread !== null) value.title = `spread ${fmt(r.spread)}` + (r.values ? ` over ${r.values.map(fmt).join(", ")}` : "");
      const desc = el("td", "desc", r.description);
      if (r.error) desc.title = r.error;
      tr.append(el("td", "num", r.n), el("td", "mono", r.run_id), el("td", "mono", r.short), el("td", "", ""), value, delta, desc, el("td", "notes", r.notes.join(" / ")));
      tr.children[3].appendChild(el("span", "st " + r.status, status));
      tr.onclick = () => openDiff(r);
      rows.push(tr);
    }
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "empty", "No experiments" + (state.status ? ` with status ${state.status}` : "") + " yet.");
      td.colSpan = 8;
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    body.dataset.total = page.total;
    const first = page.total ? page.offset + 1 : 0, last = Math.min(page.total, page.offset + PAGE);
    $("page-info").textContent = `${first}–${last} of ${page.total} (newest first)`;
    $("newer").disabled = page.offset === 0;
    $("older").disabled = last >= page.total;
  }

  $("newer").onclick = () => { state.offset = Math.max(0, state.offset - PAGE); loadTable(); };
  $("older").onclick = () => { state.offset += PAGE; loadTable(); };

  // -- diffs -------------------------------------------------------------------------------------------------
  async function openExperiment(n) {
    const total = state.summary ? state.summary.total : 0;
    if (!total || n < 1 || n > total) return;
    const page = await api(`api/experiments?offset=${total - n}&limit=1`);
    if (page.rows.length) openDiff(page.rows[0]);
  }

  async function openDiff(row) {
    for (const tr of document.querySelectorAll("#rows tr.selected, #tree .selected")) tr.classList.remove("selected");
    const tr = $("rows").querySelector(`tr[data-run-id="${CSS.escape(row.run_id)}"]`);
    if (tr) tr.classList.add("selected");
    const dot = $("tree").querySelector(`circle[data-run-id="${CSS.escape(row.run_id)}"]`);
    if (dot) dot.classList.add("selected");
    $("diff").hidden = false;
    $("diff-title").textContent = `${row.run_id} · ${row.short} · ${row.status} · ${row.description}`;
    const pre = $("diff-body");
    pre.textContent = "loading…";
    try {
      const diff = await api("api/diff/" + encodeURIComponent(row.commit));
      const frag = document.createDocumentFragment();
      for (const line of diff.text.split("\n")) {
        let cls = "";
        if (line.startsWith("diff --git")) cls = "l-file";
        else if (line.startsWith("@@")) cls = "l-hunk";
        else if (line.startsWith("+") && !line.startsWith("+++")) cls = "l-add";
        else if (line.startsWith("-") && !line.startsWith("---")) cls = "l-del";
        frag.appendChild(cls ? el("span", cls, line) : document.createTextNode(line));
        if (!cls) frag.appendChild(document.createTextNode("\n"));
      }
      if (diff.truncated) frag.appendChild(el("span", "l-hunk", "… (cut: the diff is larger than 512 KB)"));
      pre.replaceChildren(frag);
      pre.dataset.commit = diff.commit;
    } catch (err) {
      pre.textContent = err instanceof Unauthorized ? "unauthorized" : String(err.message || err);
    }
  }

  $("diff-close").onclick = () => { $("diff").hidden = true; };
  document.addEventListener("keydown", (evt) => { if (evt.key === "Escape") $("diff").hidden = true; });

  // -- live updates ------------------------------------------------------------------------------------------
  function connect() {
    const url = "api/events" + (token ? "?token=" + encodeURIComponent(token) : "");
    const es = new EventSource(url);
    state.es = es;
    const conn = $("conn");
    es.onopen = () => { conn.dataset.state = "live"; conn.textContent = "live"; };
    es.addEventListener("state", (evt) => {
      const live = JSON.parse(evt.data);
      const s = live.summary, shown = state.shown;
      renderSummary(s);
      renderRuns(live.runs);
      if (!shown || shown.total !== s.total || shown.notes !== s.notes || shown.tag !== s.tag) {
        state.shown = { total: s.total, notes: s.notes, tag: s.tag };
        Promise.all([loadChart(), loadTree(), loadTable()]).catch(failed);
      }
    });
    es.onerror = () => {
      conn.dataset.state = "down";
      conn.textContent = "reconnecting…";
      if (es.readyState === EventSource.CLOSED) {  // refused (not a dropped connection): find out why, retry
        setTimeout(() => api("api/summary").then(connect).catch(failed), 2000);
      }
    };
  }

  function failed(err) {
    if (err instanceof Unauthorized) {
      if (state.es) state.es.close();
      $("main").hidden = true;
      $("auth").hidden = false;
      $("auth-message").textContent = token
        ? "The token was refused (401). Enter the right one."
        : "This dashboard needs its token: open it as …/?token=<token>, or enter it here.";
      $("conn").dataset.state = "down";
      $("conn").textContent = "unauthorized";
      document.documentElement.dataset.auth = "refused";
      return;
    }
    const notice = $("notice");
    notice.hidden = false;
    notice.textContent = "Could not load: " + (err.message || err);
  }

  $("auth-form").onsubmit = (evt) => {
    evt.preventDefault();
    token = $("auth-token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    location.reload();
  };

  async function start() {
    try {
      const live = await api("api/summary");
      renderSummary(live.summary);
      renderRuns(live.runs);
      state.shown = { total: live.summary.total, notes: live.summary.notes, tag: live.summary.tag };
      await Promise.all([loadChart(), loadTree(), loadTable()]);
      document.documentElement.dataset.ready = "1";
      window.__renderMs = performance.now();
      connect();
    } catch (err) {
      failed(err);
    }
  }

  setInterval(tickRuns, 1000);
  let resize = 0;
  window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(() => { drawChart(); drawTree(); }, 150); });
  start();
})();
