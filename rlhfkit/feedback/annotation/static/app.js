// rlhfkit labelling page. Plain JS, no build step, no network beyond this server.
// Model text is only ever inserted with textContent: a response that contains <script>
// shows as characters.
"use strict";

(() => {
  const SLOTS = "ABCDEFGH";
  const STRENGTH_LABELS = { 1: "negligibly", 2: "slightly", 3: "better", 4: "much better" };
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    config: null,
    item: null, // GET /api/next body
    rows: [], // [{kind: "criterion"|"overall"|"ranking", name}]
    current: 0,
    verdicts: {}, // criterion name -> slot | "tie" | "both_bad"
    overall: null,
    strength: null,
    ranking: [],
    key: null, // idempotency key of the label being written for this item
    undoStack: [], // label ids submitted in this tab, newest last
    busy: false,
  };

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // works outside secure contexts too, unlike randomUUID
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setStatus(text, kind = "") {
    const status = $("status");
    status.textContent = text;
    status.className = "status " + kind;
  }

  async function api(method, path, body, { retries = 0 } = {}) {
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await fetch(path, {
          method,
          headers: {
            Authorization: "Bearer " + state.token,
            ...(body !== undefined ? { "Content-Type": "application/json" } : {}),
          },
          body: body !== undefined ? JSON.stringify(body) : undefined,
        });
      } catch (err) {
        // Network failure: the server may or may not have stored it. A retry with the same
        // idempotency key is safe.
        if (attempt < retries) {
          await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
          continue;
        }
        throw new Error("cannot reach the server");
      }
      if ((response.status === 429 || response.status >= 500) && attempt < retries) {
        const wait = Number(response.headers.get("Retry-After") || 1) * 1000;
        await new Promise((r) => setTimeout(r, wait));
        continue;
      }
      if (response.status === 401) {
        signOut("Your token was not accepted.");
        throw new Error("not signed in");
      }
      const data = response.status === 204 ? null : await response.json().catch(() => null);
      if (!response.ok) {
        const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
        throw new Error(detail);
      }
      return { status: response.status, data };
    }
  }

  // ------------------------------------------------------------------ sign in

  function readToken() {
    const hash = new URLSearchParams(location.hash.slice(1));
    if (hash.get("token")) {
      localStorage.setItem("rlhfkit-token", hash.get("token"));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return localStorage.getItem("rlhfkit-token");
  }

  function signOut(message) {
    localStorage.removeItem("rlhfkit-token");
    state.token = null;
    show("login");
    $("btn-logout").hidden = true;
    $("user-name").textContent = "";
    $("progress").hidden = true;
    $("login-error").textContent = message || "";
  }

  async function start(token) {
    state.token = token;
    try {
      const { data } = await api("GET", "/api/config");
      state.config = data;
      localStorage.setItem("rlhfkit-token", token);
    } catch (err) {
      if (state.token) signOut(err.message);
      return;
    }
    $("user-name").textContent = state.config.user.name + " · " + state.config.user.role;
    $("btn-logout").hidden = false;
    renderGuidelines();
    await loadNext();
  }

  function show(section) {
    for (const id of ["login", "done", "task"]) $(id).hidden = id !== section;
  }

  // ------------------------------------------------------------------ guidelines

  function renderGuidelines() {
    const box = $("guidelines-criteria");
    box.replaceChildren();
    const list = el("dl");
    for (const c of state.config.criteria) {
      list.append(el("dt", { text: c.name }), el("dd", { text: c.description || "" }));
    }
    box.append(list);
    $("guidelines-text").textContent = state.config.guidelines || "";
  }

  function toggleGuidelines() {
    $("guidelines").hidden = !$("guidelines").hidden;
  }

  // ------------------------------------------------------------------ item

  function renderProgress(progress) {
    if (!progress) return;
    const total = progress.labelled + progress.remaining;
    const fraction = total ? progress.labelled / total : 1;
    $("progress").hidden = false;
    $("progress-fill").style.width = Math.round(fraction * 100) + "%";
    $("progress-text").textContent = progress.labelled + " labelled · " + progress.remaining + " to go";
  }

  async function loadNext() {
    let result;
    try {
      result = await api("GET", "/api/next", undefined, { retries: 2 });
    } catch (err) {
      setStatus(err.message, "error");
      return;
    }
    if (result.status === 204) {
      state.item = null;
      show("done");
      try {
        const me = await api("GET", "/api/me");
        renderProgress(me.data.progress);
      } catch (_) { /* progress is optional */ }
      return;
    }
    state.item = result.data;
    resetJudgement();
    renderItem();
    renderProgress(state.item.progress);
    show("task");
  }

  function resetJudgement() {
    const k = state.item.k;
    state.verdicts = {};
    state.overall = null;
    state.strength = null;
    state.ranking = [];
    state.key = newKey();
    state.rows = [];
    if (k > 2) state.rows.push({ kind: "ranking", name: "ranking" });
    for (const c of state.item.criteria) state.rows.push({ kind: "criterion", name: c.name, description: c.description });
    if (k === 2) state.rows.push({ kind: "overall", name: "overall" });
    state.current = 0;
    $("rationale").value = "";
  }

  function renderPrompt(prompt) {
    const box = $("prompt");
    box.replaceChildren();
    if (typeof prompt === "string") {
      box.textContent = prompt;
      return;
    }
    for (const message of prompt) {
      box.append(el("div", { class: "message" }, el("span", { class: "role", text: message.role + ":" }), message.content));
    }
  }

  function renderItem() {
    const item = state.item;
    renderPrompt(item.prompt);
    $("item-meta").textContent = "item " + item.item_id + (item.k > 2 ? " · rank all " + item.k + " responses" : "");
    const grid = $("responses");
    grid.replaceChildren();
    grid.classList.toggle("many", item.k > 2);
    for (const response of item.responses) {
      const badge = el("span", { class: "rank-badge", "data-rank-for": response.slot });
      const card = el(
        "article",
        { class: "card response" + (item.k > 2 ? " rankable" : ""), "data-slot": response.slot },
        el("div", { class: "label-row" }, el("span", { class: "slot", text: response.slot }), badge),
        el("div", { class: "text", text: response.text }),
      );
      if (item.k > 2) card.addEventListener("click", () => rankAppend(response.slot));
      grid.append(card);
    }
    renderRows();
    setStatus("");
  }

  function choiceButton(label, value, pressed, onClick, { key, disabled } = {}) {
    return el(
      "button",
      { type: "button", class: "choice", "aria-pressed": pressed ? "true" : "false", "data-value": value, disabled: !!disabled, onclick: onClick },
      label,
      key ? " " : null,
      key ? el("kbd", { text: key }) : null,
    );
  }

  function verdictButtons(row, selected, onPick) {
    const k = state.item.k;
    const box = el("div", { class: "choices" });
    for (const slot of SLOTS.slice(0, k)) {
      box.append(choiceButton(slot, slot, selected === slot, () => onPick(slot), { key: slot.toLowerCase() }));
    }
    box.append(el("span", { class: "sep" }));
    box.append(choiceButton("Tie", "tie", selected === "tie", () => onPick("tie"), { key: "t" }));
    box.append(choiceButton(k > 2 ? "All bad" : "Both bad", "both_bad", selected === "both_bad", () => onPick("both_bad"), { key: "x" }));
    return box;
  }

  function renderRows() {
    const body = $("rows-body");
    body.replaceChildren();
    state.rows.forEach((row, index) => {
      const tr = el("tr", { "data-row": row.name, class: index === state.current ? "current" : "" });
      tr.addEventListener("click", () => { state.current = index; markCurrent(); });
      if (row.kind === "criterion") {
        tr.append(
          el("td", {}, el("div", { class: "criterion-name", text: row.name }), el("div", { class: "criterion-desc", text: row.description || "" })),
          el("td", {}, verdictButtons(row, state.verdicts[row.name], (v) => setVerdict(index, v))),
        );
      } else if (row.kind === "overall") {
        const choices = verdictButtons(row, state.overall, (v) => setVerdict(index, v));
        const strengths = el("div", { class: "choices" });
        const noStrength = state.overall === "tie" || state.overall === "both_bad" || state.overall === null;
        for (const value of [1, 2, 3, 4]) {
          strengths.append(choiceButton(STRENGTH_LABELS[value], "s" + value, state.strength === value, () => setStrength(value), { key: String(value), disabled: noStrength }));
        }
        tr.append(
          el("td", {}, el("div", { class: "criterion-name", text: "Overall" }), el("div", { class: "criterion-desc", text: "Which is better overall, and by how much?" })),
          el("td", {}, choices, el("div", { class: "choices strength-row" }, el("span", { class: "muted small", text: "chosen one is" }), strengths)),
        );
      } else {
        const order = state.ranking.length ? state.ranking.join(" > ") : "click the responses (or press their letters) from best to worst";
        tr.append(
          el("td", {}, el("div", { class: "criterion-name", text: "Ranking" }), el("div", { class: "criterion-desc", text: "Best first." })),
          el("td", {}, el("div", { class: "choices" }, el("span", { class: state.ranking.length ? "" : "muted", text: order }), el("button", { type: "button", onclick: () => { state.ranking = []; renderRows(); } }, "Clear ", el("kbd", { text: "⌫" })))),
        );
      }
      body.append(tr);
    });
    for (const badge of document.querySelectorAll("[data-rank-for]")) {
      const position = state.ranking.indexOf(badge.getAttribute("data-rank-for"));
      badge.textContent = position >= 0 ? "#" + (position + 1) : "";
    }
  }

  function markCurrent() {
    document.querySelectorAll("#rows-body tr").forEach((tr, i) => tr.classList.toggle("current", i === state.current));
  }

  function setVerdict(index, value) {
    const row = state.rows[index];
    state.current = index;
    if (row.kind === "criterion") {
      state.verdicts[row.name] = value;
      if (index < state.rows.length - 1) state.current = index + 1;
    } else if (row.kind === "overall") {
      state.overall = value;
      if (value === "tie" || value === "both_bad") state.strength = null;
    } else if (row.kind === "ranking") {
      if (SLOTS.includes(value)) return rankAppend(value);
    }
    renderRows();
  }

  function setStrength(value) {
    if (state.item.k !== 2 || state.overall === null || state.overall === "tie" || state.overall === "both_bad") {
      setStatus("choose A or B overall first, then the strength", "error");
      return;
    }
    state.strength = value;
    renderRows();
  }

  function rankAppend(slot) {
    if (state.ranking.includes(slot)) return;
    state.ranking.push(slot);
    const remaining = SLOTS.slice(0, state.item.k).split("").filter((s) => !state.ranking.includes(s));
    if (remaining.length === 1) state.ranking.push(remaining[0]); // the last place is implied
    if (state.ranking.length === state.item.k && state.rows[state.current].kind === "ranking") state.current += 1;
    renderRows();
  }

  function clearCurrentRow() {
    const row = state.rows[state.current];
    if (row.kind === "criterion") delete state.verdicts[row.name];
    else if (row.kind === "overall") { state.overall = null; state.strength = null; }
    else state.ranking.pop();
    renderRows();
  }

  // ------------------------------------------------------------------ actions

  function missingRow() {
    return state.rows.findIndex((row) => {
      if (row.kind === "criterion") return !state.verdicts[row.name];
      if (row.kind === "overall") return !state.overall || ((state.overall === "A" || state.overall === "B") && !state.strength);
      return state.ranking.length !== state.item.k;
    });
  }

  async function submit() {
    if (!state.item || state.busy) return;
    const missing = missingRow();
    if (missing >= 0) {
      state.current = missing;
      renderRows();
      document.querySelectorAll("#rows-body tr")[missing].classList.add("missing");
      setStatus("Please answer: " + state.rows[missing].name, "error");
      return;
    }
    const body = {
      item_id: state.item.item_id,
      idempotency_key: state.key,
      criteria: { ...state.verdicts },
      rationale: $("rationale").value.trim(),
    };
    if (state.item.k === 2) {
      body.overall = { choice: state.overall };
      if (state.strength) body.overall.strength = state.strength;
    } else {
      body.ranking = [...state.ranking];
    }
    state.busy = true;
    setStatus("saving…");
    try {
      const { data } = await api("POST", "/api/labels", body, { retries: 3 });
      state.undoStack.push(data.label_id);
      await loadNext();
      setStatus("Saved label " + data.label_id + ".", "ok");
    } catch (err) {
      setStatus("Not saved: " + err.message, "error");
    } finally {
      state.busy = false;
    }
  }

  async function undo() {
    if (state.busy) return;
    const labelId = state.undoStack.pop();
    if (labelId === undefined) {
      setStatus("Nothing to undo in this tab.", "error");
      return;
    }
    state.busy = true;
    try {
      await api("POST", "/api/labels/" + labelId + "/undo", undefined, { retries: 2 });
      await loadNext();
      setStatus("Label " + labelId + " undone: label this item again.", "ok");
    } catch (err) {
      state.undoStack.push(labelId);
      setStatus("Undo failed: " + err.message, "error");
    } finally {
      state.busy = false;
    }
  }

  function askReason(title, help) {
    return new Promise((resolve) => {
      const dialog = $("reason-dialog");
      $("reason-title").textContent = title;
      $("reason-help").textContent = help;
      $("reason-input").value = "";
      dialog.returnValue = "";
      const done = (value) => {
        dialog.removeEventListener("close", onClose);
        resolve(value);
      };
      const onClose = () => done(dialog.returnValue === "ok" ? $("reason-input").value.trim() : null);
      dialog.addEventListener("close", onClose);
      dialog.showModal();
      $("reason-input").focus();
    });
  }

  async function skipOrFlag(kind) {
    if (!state.item || state.busy) return;
    const reason = kind === "flag"
      ? await askReason("Flag this item", "What is wrong with it? (broken, unreadable, should not be labelled…)")
      : await askReason("Skip this item", "Why? (optional) It goes to someone else.");
    if (reason === null) return;
    if (kind === "flag" && !reason) {
      setStatus("A flag needs a reason.", "error");
      return;
    }
    state.busy = true;
    try {
      await api("POST", "/api/items/" + state.item.item_id + "/" + kind, { reason }, { retries: 2 });
      await loadNext();
      setStatus(kind === "flag" ? "Flagged." : "Skipped.", "ok");
    } catch (err) {
      setStatus(err.message, "error");
    } finally {
      state.busy = false;
    }
  }

  // ------------------------------------------------------------------ keyboard

  function onKey(event) {
    if ($("reason-dialog").open) return;
    const target = event.target;
    const typing = target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT");
    if (typing) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.id === "rationale") {
        event.preventDefault();
        submit();
      } else if (event.key === "Escape") {
        target.blur();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "?") { toggleGuidelines(); event.preventDefault(); return; }
    if (!state.token) return;
    if (key === "u") { event.preventDefault(); undo(); return; }
    if (!state.item || $("task").hidden) return;
    const lower = key.length === 1 ? key.toLowerCase() : key;
    const slots = SLOTS.slice(0, state.item.k).toLowerCase();
    const row = state.rows[state.current];
    let handled = true;
    if (lower.length === 1 && slots.includes(lower)) setVerdict(state.current, lower.toUpperCase());
    else if (lower === "t" && row.kind !== "ranking") setVerdict(state.current, "tie");
    else if (lower === "x" && row.kind !== "ranking") setVerdict(state.current, "both_bad");
    else if (["1", "2", "3", "4"].includes(key) && state.item.k === 2) setStrength(Number(key));
    else if (key === "ArrowDown" || lower === "j") { state.current = Math.min(state.rows.length - 1, state.current + 1); markCurrent(); }
    else if (key === "ArrowUp" || lower === "k") { state.current = Math.max(0, state.current - 1); markCurrent(); }
    else if (key === "Backspace") clearCurrentRow();
    else if (key === "Enter") submit(); // even with a button focused: Space presses buttons
    else if (lower === "s") skipOrFlag("skip");
    else if (lower === "r") skipOrFlag("flag");
    else handled = false;
    if (handled) event.preventDefault();
  }

  // ------------------------------------------------------------------ wiring

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (token) start(token);
    });
    $("btn-submit").addEventListener("click", submit);
    $("btn-skip").addEventListener("click", () => skipOrFlag("skip"));
    $("btn-flag").addEventListener("click", () => skipOrFlag("flag"));
    $("btn-undo").addEventListener("click", undo);
    $("btn-undo-done").addEventListener("click", undo);
    $("btn-refresh").addEventListener("click", loadNext);
    $("btn-guidelines").addEventListener("click", toggleGuidelines);
    $("btn-close-guidelines").addEventListener("click", toggleGuidelines);
    $("btn-logout").addEventListener("click", () => signOut(""));
    $("reason-cancel").addEventListener("click", () => $("reason-dialog").close("cancel"));
    document.addEventListener("keydown", onKey);
    const token = readToken();
    if (token) start(token);
    else show("login");
  });
})();
