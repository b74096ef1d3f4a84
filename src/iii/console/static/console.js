// iii console: the page. Plain JavaScript, no build step, no network requests but this console's
// own server. Every piece of data is a function call through the console's worker
// (POST /api/call); /api/live tells which topic changed (workers, functions, triggers, state,
// queues, connection) and the page on screen fetches it again. Pages whose numbers move without
// an event (counts, queue depths, logs) also poll while the tab is visible.
"use strict";
(() => {
  // ------------------------------------------------------------------ DOM helpers

  /** Make an element: h("td", {class: "num"}, "3"). Children are text, never HTML. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "style") el.style.cssText = value; // CSSOM: allowed by the page's CSP
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "checked" || name === "value" || name === "disabled" || name === "selected") el[name] = value;
      else el.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** Replace a container's content, keeping keyboard focus on the element with the same data-key. */
  function replace(container, ...children) {
    const focused = document.activeElement;
    const key = focused && container.contains(focused) ? focused.dataset.key : undefined;
    container.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
    if (key !== undefined) {
      const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
      if (again) again.focus();
    }
  }

  /** Render only when the data changed (polls must not disturb focus or open forms). */
  function changed(holder, data) {
    const signature = JSON.stringify(data);
    if (holder.signature === signature) return false;
    holder.signature = signature;
    return true;
  }

  const pretty = (value) => JSON.stringify(value, null, 2);
  const compact = (value) => JSON.stringify(value);
  const preview = (value, width = 80) => {
    const text = compact(value) ?? "null";
    return text.length > width ? text.slice(0, width) + "…" : text;
  };
  const nanosToMs = (value) => Number(value) / 1e6;
  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false }) + "." + String(Math.floor(ms % 1000)).padStart(3, "0");
  const formatMs = (ms) => (ms < 1 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : Math.round(ms)) + " ms";

  function since(ms) {
    if (!ms) return "";
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 60) return `${seconds}s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
    return `${Math.floor(seconds / 86400)}d ago`;
  }

  function table(columns, rows, rowAttrs) {
    return h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      h("tbody", {}, rows.map((row, index) => h("tr", rowAttrs ? rowAttrs(row, index) : {},
        columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(row))))))));
  }

  const notice = (text, error) => h("p", { class: error ? "notice error" : "notice", role: error ? "alert" : null }, text);

  /** An inline "Sure? Yes / No" in place of a button (keyboard friendly, no dialog). */
  function confirmButton(label, question, action, cls = "danger") {
    const wrap = h("span", { class: "confirm" });
    const ask = () => {
      const yes = h("button", { class: cls, onclick: async () => { yes.disabled = true; await action(); } }, "Yes");
      replace(wrap, h("span", {}, question), yes, h("button", { onclick: () => { replace(wrap, start()); } }, "No"));
      yes.focus();
    };
    const start = () => h("button", { class: cls, onclick: ask }, label);
    wrap.append(start());
    return wrap;
  }

  // ------------------------------------------------------------------ engine calls

  /** One call through the console's worker: {ok, result | error: {code, message}, latency_ms}. */
  async function call(functionId, payload, timeoutMs) {
    const body = { function_id: functionId, payload: payload === undefined ? {} : payload };
    if (timeoutMs) body.timeout_ms = timeoutMs;
    try {
      const response = await fetch("/api/call", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      });
      if (!response.ok) return { ok: false, error: { code: `http_${response.status}`, message: await response.text() } };
      return await response.json();
    } catch (err) {
      return { ok: false, error: { code: "console_unreachable", message: String(err) } };
    }
  }

  class CallError extends Error {
    constructor(error) { super(error.message); this.code = error.code; }
  }

  async function must(functionId, payload) {
    const answer = await call(functionId, payload);
    if (!answer.ok) throw new CallError(answer.error);
    return answer.result;
  }

  const NO_TELEMETRY = "No telemetry: this engine keeps no logs or traces (engine::logs::list / engine::traces::list are not there). " +
    "They come from the engine's telemetry module.";

  function telemetryNotice(err) {
    if (err.code === "function_not_found") return notice(NO_TELEMETRY);
    if (err.code === "memory_exporter_not_enabled") return notice(`No traces kept: ${err.message}`);
    return notice(`${err.code}: ${err.message}`, true);
  }

  // ------------------------------------------------------------------ shell

  let config = {};
  let current = null; // {refresh, topics, pollMs, dispose?}
  const main = document.getElementById("page");

  function setConnection(state) {
    const pill = document.getElementById("connection");
    const label = state === "connected" ? "engine connected" : state === "offline" ? "console offline" : `engine ${state}`;
    pill.textContent = label;
    pill.className = "pill " + (state === "connected" ? "connected" : "offline");
  }

  async function loadConfig() {
    try {
      config = await (await fetch("/api/config")).json();
      setConnection(config.connection);
      document.getElementById("footer").textContent =
        `iii console ${config.version} • worker socket ${config.engineUrl} • http :${config.enginePort} • streams :${config.wsPort}`;
    } catch (err) {
      setConnection("offline");
    }
  }

  function route() {
    const hash = location.hash.replace(/^#\/?/, "") || "workers";
    const [name, query] = hash.split("?");
    return { name: PAGES[name] ? name : "workers", params: new URLSearchParams(query || "") };
  }

  /** Remember a selection in the address (no navigation: the page stays as it is). */
  function remember(params) {
    const { name } = route();
    const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== ""));
    history.replaceState(null, "", `#/${name}${query.toString() ? "?" + query : ""}`);
  }

  let refreshing = false;
  let again = false;

  async function refresh() {
    if (!current) return;
    if (refreshing) { again = true; return; }
    refreshing = true;
    const page = current;
    try {
      await page.refresh();
      if (page.status) page.status.replaceChildren();
    } catch (err) {
      if (page.status && page === current) replace(page.status, page.onError ? page.onError(err) : notice(`${err.code || "error"}: ${err.message}`, true));
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  }

  let pollTimer = null;

  function mount() {
    if (current && current.dispose) current.dispose();
    clearInterval(pollTimer);
    const { name, params } = route();
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.page === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${PAGES[name].title} · iii console`;
    main.replaceChildren();
    const status = h("div", { class: "status" });
    current = PAGES[name].create(main, params);
    current.status = status;
    main.prepend(status);
    refresh();
    if (current.pollMs) pollTimer = setInterval(() => { if (!document.hidden) refresh(); }, current.pollMs);
  }

  function connectLive() {
    const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/live`);
    socket.onopen = () => { loadConfig(); refresh(); };
    socket.onmessage = (event) => {
      const notice = JSON.parse(event.data);
      if (notice.topic === "connection") setConnection(notice.detail.state);
      else if (current && current.topics.includes(notice.topic)) {
        if (current.onNotice) current.onNotice(notice);
        refresh();
      }
    };
    socket.onclose = () => { setConnection("offline"); setTimeout(connectLive, 2000); };
  }

  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName);
    if (event.key === "/" && !typing) {
      const search = main.querySelector("input[type=search]");
      if (search) { event.preventDefault(); search.focus(); }
    } else if (event.key === "Escape" && current && current.close) {
      current.close();
    }
  });

  // ------------------------------------------------------------------ Workers

  /** The gauges an SDK reports (telemetry), when the engine keeps them. */
  function workerGauges(metrics) {
    if (!metrics) return [];
    const mib = (bytes) => (typeof bytes === "number" ? `${(bytes / 1048576).toFixed(1)} MiB` : null);
    return [
      ["CPU", typeof metrics.cpu_percent === "number" ? `${metrics.cpu_percent.toFixed(1)} %` : null],
      ["Memory (RSS)", mib(metrics.memory_rss)],
      ["Heap used", mib(metrics.memory_heap_used)],
      ["Event loop lag", typeof metrics.event_loop_lag_ms === "number" ? formatMs(metrics.event_loop_lag_ms) : null],
      ["Uptime", typeof metrics.uptime_seconds === "number" ? `${Math.round(metrics.uptime_seconds)} s` : null],
    ];
  }

  function workersPage(root, params) {
    let selected = params.get("worker");
    let workers = [];
    const seen = new Set();
    let firstLoad = true;
    const filter = h("input", { type: "search", placeholder: "Filter by name, runtime, id", "aria-label": "Filter workers", oninput: render });
    const modules = h("input", { type: "checkbox", id: "show-modules", checked: true, onchange: render });
    const count = h("small");
    const list = h("div", { id: "workers-list" });
    const detail = h("section", { class: "card", id: "worker-detail", "aria-label": "Worker detail" });
    root.append(
      h("h1", {}, "Workers", count),
      h("div", { class: "toolbar" }, filter, h("label", {}, modules, " engine modules")),
      h("div", { class: "split wide-right" }, list, detail),
    );

    function visible() {
      const needle = filter.value.toLowerCase();
      return workers.filter((w) => (modules.checked || w.runtime !== "engine") &&
        (!needle || [w.name, w.runtime, w.id].some((v) => v && v.toLowerCase().includes(needle))));
    }

    function render() {
      const rows = visible();
      count.textContent = `${workers.filter((w) => w.runtime !== "engine").length} workers, ${workers.filter((w) => w.runtime === "engine").length} engine modules`;
      replace(list, rows.length ? table([
        { label: "Name", cell: (w) => h("span", { class: "nowrap" }, h("span", { class: `dot ${w.status}`, "aria-hidden": "true" }),
          h("button", { class: "rowlink", "data-key": w.id, onclick: () => select(w.name) }, w.name || w.id.slice(0, 8))) },
        { label: "Runtime", cell: (w) => h("span", { class: "nowrap" }, `${w.runtime || ""} ${w.version || ""}`) },
        { label: "PID", num: true, cell: (w) => w.pid ?? "" },
        { label: "Status", cell: (w) => w.status },
        { label: "Functions", num: true, cell: (w) => w.function_count },
        { label: "In flight", num: true, cell: (w) => w.metrics ? w.metrics.invocations_in_flight : w.active_invocations },
        { label: "Handled", num: true, cell: (w) => w.metrics ? w.metrics.invocations_handled : "" },
        { label: "Since", cell: (w) => h("span", { class: "nowrap", title: `connected ${new Date(w.connected_at_ms).toLocaleString()}` }, since(w.connected_at_ms)) },
      ], rows, (w) => ({
        class: [w.name === selected ? "selected" : "", !firstLoad && !seen.has(w.id) ? "fresh" : ""].join(" ").trim() || null,
        "data-worker": w.name, "data-runtime": w.runtime,
      })) : notice("No worker matches."));
      for (const w of workers) seen.add(w.id);
      firstLoad = false;
    }

    async function loadDetail() {
      const worker = workers.find((w) => w.name === selected);
      if (!worker) { replace(detail, selected ? notice(`${selected} is not connected.`) : null); return; }
      const info = await call("engine::workers::info", { name: worker.name, namespace: worker.namespace });
      const logs = await call("engine::logs::list", { limit: 300 });
      let output = { available: false };
      try { output = await (await fetch(`/api/worker-output?name=${encodeURIComponent(worker.name)}`)).json(); } catch (err) { /* shown as absent */ }
      const functions = info.ok ? info.result.functions : [];
      const content = [
        h("h2", {}, worker.name),
        worker.description ? h("p", { class: "muted" }, worker.description) : null,
        h("dl", { class: "kv" },
          [["Id", worker.id], ["Runtime", `${worker.runtime || ""} ${worker.version || ""}`], ["OS", worker.os], ["PID", worker.pid],
            ["Address", worker.ip_address], ["Namespace", worker.namespace], ["Status", worker.status],
            ["Connected", worker.connected_at_ms ? new Date(worker.connected_at_ms).toLocaleString() : null],
            ["Calls handled", worker.metrics && worker.metrics.invocations_handled],
            ["Calls failed", worker.metrics && worker.metrics.invocations_failed],
            ["Calls made", worker.metrics && worker.metrics.invocations_made],
            ...workerGauges(worker.latest_metrics)]
            .filter(([, v]) => v !== null && v !== undefined && v !== "")
            .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
        h("h2", {}, `Functions (${functions.length})`),
        functions.length ? h("ul", { class: "plain", id: "worker-functions" }, functions.map((f) =>
          h("li", {}, h("a", { href: `#/functions?fn=${encodeURIComponent(f.function_id)}` }, f.function_id),
            f.description ? h("span", { class: "muted" }, " — ", f.description) : null))) : h("p", { class: "muted" }, "None."),
        h("h2", {}, "Recent log lines"),
        logs.ok ? logLines(logs.result.logs.filter((l) => logSource(l) === worker.name || logWorkerId(l) === worker.id).slice(0, 20))
          : output.available ? null : telemetryNotice(new CallError(logs.error)),
        output.available ? [
          h("h3", { class: "muted" }, "Process output ", h("span", { class: "mono" }, output.directory)),
          ["stdout", "stderr"].map((stream) => output[stream].length
            ? h("pre", { class: `worker-${stream}`, "aria-label": stream }, output[stream].join("\n")) : null),
        ] : null,
      ];
      if (changed(detail, [worker, functions, logs, output])) replace(detail, content);
    }

    function logLines(lines) {
      if (!lines.length) return h("p", { class: "muted" }, "No log lines from this worker.");
      return h("ul", { class: "plain mono" }, lines.map((l) => h("li", {},
        clock(nanosToMs(l.timestamp_unix_nano)), " ", h("span", { class: `level-${(l.severity_text || "").toUpperCase()}` }, l.severity_text || ""),
        " ", logBody(l))));
    }

    function select(name) {
      selected = selected === name ? null : name;
      remember({ worker: selected });
      detail.signature = undefined;
      render();
      loadDetail();
    }

    return {
      topics: ["workers", "functions"],
      pollMs: 2000,
      async refresh() {
        const result = await must("engine::workers::list", {});
        workers = result.workers.slice().sort((a, b) => (a.runtime === "engine") - (b.runtime === "engine") || (a.name || "").localeCompare(b.name || ""));
        if (changed(list, [workers, Math.floor(Date.now() / 15000)])) render(); // "Since" ages too
        await loadDetail();
      },
      close() { if (selected) select(selected); },
    };
  }

  // ------------------------------------------------------------------ Functions

  /** The first non-null type of a JSON schema (msgspec writes optional fields as anyOf […, null]). */
  function schemaType(schema) {
    if (!schema || typeof schema !== "object") return null;
    if (schema.enum) return "enum";
    if (Array.isArray(schema.type)) return schema.type.find((t) => t !== "null") || null;
    if (schema.type) return schema.type;
    for (const option of schema.anyOf || schema.oneOf || []) {
      const t = schemaType(option);
      if (t && t !== "null") return t;
    }
    return null;
  }

  /** Form fields for an object schema's properties; returns {element, read()} or null. */
  function schemaForm(schema, onChange) {
    if (!schema || schemaType(schema) !== "object" || !schema.properties) return null;
    const required = new Set(schema.required || []);
    const fields = [];
    const element = h("fieldset", { class: "card", id: "invoke-form" }, h("legend", {}, "Input"));
    for (const [name, property] of Object.entries(schema.properties)) {
      const type = schemaType(property);
      const id = `arg-${name}`;
      let input;
      let read;
      if (type === "boolean") {
        input = h("input", { type: "checkbox", id, name, checked: property.default === true });
        read = () => input.checked;
      } else if (type === "enum") {
        input = h("select", { id, name }, h("option", { value: "" }, "—"), property.enum.map((v) => h("option", { value: compact(v) }, String(v))));
        read = () => (input.value === "" ? undefined : JSON.parse(input.value));
      } else if (type === "integer" || type === "number") {
        input = h("input", { type: "number", id, name, step: type === "integer" ? "1" : "any" });
        read = () => (input.value === "" ? undefined : Number(input.value));
      } else if (type === "string") {
        input = h("input", { type: "text", id, name });
        read = () => (input.value === "" && !required.has(name) ? undefined : input.value);
      } else {
        input = h("textarea", { id, name, rows: 2, placeholder: type === "array" ? "[]" : "JSON" });
        read = () => { const text = input.value.trim(); return text ? JSON.parse(text) : undefined; };
      }
      input.addEventListener("input", onChange);
      input.addEventListener("change", onChange);
      fields.push([name, read]);
      element.append(h("div", { class: "field" },
        h("label", { for: id }, name, required.has(name) ? " *" : "", type ? h("span", { class: "muted" }, ` (${type})`) : null,
          property.description ? h("span", { class: "muted" }, ` — ${property.description}`) : null),
        input));
    }
    return {
      element,
      read() {
        const value = {};
        for (const [name, read] of fields) {
          const v = read();
          if (v !== undefined) value[name] = v;
        }
        return value;
      },
    };
  }

  function functionsPage(root, params) {
    let selected = params.get("fn");
    let functions = [];
    const filter = h("input", { type: "search", placeholder: "Filter functions", "aria-label": "Filter functions", oninput: render, value: params.get("q") || "" });
    const internal = h("input", { type: "checkbox", id: "show-internal", onchange: () => refresh() });
    const count = h("small");
    const list = h("nav", { id: "functions-list", "aria-label": "Functions" });
    const detail = h("section", { class: "card", id: "function-detail", "aria-label": "Function detail" });
    root.append(
      h("h1", {}, "Functions", count),
      h("div", { class: "toolbar" }, filter, h("label", {}, internal, " internal (engine::*)")),
      h("div", { class: "split wide-left" }, h("div", { class: "card" }, list), detail),
    );

    function render() {
      const needle = filter.value.toLowerCase();
      const rows = functions.filter((f) => !needle || f.function_id.toLowerCase().includes(needle) || (f.description || "").toLowerCase().includes(needle));
      count.textContent = `${functions.length}`;
      const groups = new Map();
      for (const f of rows) {
        const group = f.function_id.includes("::") ? f.function_id.split("::")[0] : "(other)";
        if (!groups.has(group)) groups.set(group, []);
        groups.get(group).push(f);
      }
      replace(list, rows.length ? [...groups.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([group, items]) => [
        h("div", { class: "group-title" }, group),
        h("ul", { class: "plain" }, items.map((f) => h("li", { class: f.function_id === selected ? "selected" : null },
          h("button", { class: "rowlink", "data-key": f.function_id, "data-function": f.function_id, onclick: () => select(f.function_id) }, f.function_id),
          f.description ? h("div", { class: "muted" }, f.description) : null))),
      ]) : notice("No function matches."));
    }

    async function showDetail() {
      if (!selected) { replace(detail); return; }
      const answer = await call("engine::functions::info", { function_id: selected });
      if (!answer.ok) { replace(detail, h("h2", {}, selected), notice(`${answer.error.code}: ${answer.error.message}`, true)); return; }
      const fn = answer.result;
      const result = h("div", { class: "result", id: "invoke-result", role: "status", "aria-live": "polite" });
      const body = h("textarea", { id: "invoke-body", "aria-label": "Input (JSON)", spellcheck: "false" }, "{}");
      const form = schemaForm(fn.request_schema, () => {
        try { body.value = pretty(form.read()); } catch (err) { /* a JSON field is half typed */ }
      });
      if (form) body.value = pretty(form.read());
      const invoke = h("button", { class: "primary", id: "invoke", onclick: run }, "Invoke");
      body.addEventListener("keydown", (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) run(); });

      async function run() {
        let input;
        try { input = JSON.parse(body.value || "{}"); } catch (err) {
          replace(result, h("p", { class: "err" }, `Invalid JSON in the input: ${err.message}`));
          return;
        }
        invoke.disabled = true;
        replace(result, h("p", { class: "muted" }, "Calling…"));
        const outcome = await call(fn.function_id, input, 30000);
        invoke.disabled = false;
        replace(result, outcome.ok
          ? [h("p", { class: "ok" }, h("strong", {}, "Success"), ` · ${formatMs(outcome.latency_ms)}`), h("pre", { id: "invoke-output" }, pretty(outcome.result))]
          : [h("p", { class: "err" }, h("strong", {}, "Error"), ` · ${outcome.error.code} · ${formatMs(outcome.latency_ms)}`),
            h("pre", { id: "invoke-output" }, outcome.error.message)]);
      }

      replace(detail,
        h("h2", {}, fn.function_id),
        fn.description ? h("p", {}, fn.description) : null,
        h("dl", { class: "kv" }, h("dt", {}, "Worker"), h("dd", {}, fn.worker_name || ""), h("dt", {}, "Namespace"), h("dd", {}, fn.namespace || "default")),
        fn.registered_triggers && fn.registered_triggers.length
          ? [h("h2", {}, "Triggers"), h("ul", { class: "plain" }, fn.registered_triggers.map((t) => h("li", {}, h("span", { class: "badge" }, t.trigger_type), " ", h("code", {}, preview(t.config)))))]
          : null,
        h("h2", {}, "Invoke"),
        form ? form.element : null,
        h("label", { for: "invoke-body", class: "muted" }, "Input (JSON; Ctrl+Enter invokes)"), body,
        h("div", { class: "toolbar" }, invoke),
        result,
        h("details", {}, h("summary", {}, "Request schema"), h("pre", {}, fn.request_schema ? pretty(fn.request_schema) : "none")),
        h("details", {}, h("summary", {}, "Response schema"), h("pre", {}, fn.response_schema ? pretty(fn.response_schema) : "none")),
      );
    }

    function select(id) {
      selected = id;
      remember({ fn: id });
      render();
      showDetail();
    }

    showDetail();
    return {
      topics: ["functions"],
      async refresh() {
        const result = await must("engine::functions::list", { include_internal: internal.checked });
        functions = result.functions.slice().sort((a, b) => a.function_id.localeCompare(b.function_id));
        if (changed(list, functions)) render();
      },
      close() { selected = null; remember({}); render(); replace(detail); },
    };
  }

  // ------------------------------------------------------------------ Triggers

  function triggersPage(root) {
    const internal = h("input", { type: "checkbox", id: "show-internal", onchange: () => refresh() });
    const body = h("div", { id: "triggers" });
    root.append(h("h1", {}, "Triggers"), h("div", { class: "toolbar" }, h("label", {}, internal, " internal")), body);
    const holder = {};

    return {
      topics: ["triggers", "functions"],
      pollMs: 5000,
      async refresh() {
        const [bindings, types] = await Promise.all([
          must("engine::registered-triggers::list", { include_internal: internal.checked }),
          must("engine::trigger-types::list", { include_internal: internal.checked }),
        ]);
        const byType = new Map();
        for (const binding of bindings.registered_triggers) {
          if (!internal.checked && binding.worker_name === "iii-console") continue; // the console's own
          if (!byType.has(binding.trigger_type)) byType.set(binding.trigger_type, []);
          byType.get(binding.trigger_type).push(binding);
        }
        const crons = byType.get("cron") || [];
        let nextRuns = [];
        if (crons.length) {
          const response = await fetch("/api/cron", { method: "POST", headers: { "content-type": "application/json" },
            body: JSON.stringify({ expressions: crons.map((b) => String((b.config || {}).expression || "")) }) });
          nextRuns = response.ok ? (await response.json()).next : [];
        }
        if (!changed(holder, [bindings, types, nextRuns])) return;
        const base = `http://${config.engineHost === "0.0.0.0" ? "127.0.0.1" : config.engineHost}:${config.enginePort}`;
        const sections = [];
        const http = byType.get("http") || [];
        sections.push(h("section", { id: "http-routes" }, h("h2", {}, `HTTP routes (${http.length})`), http.length ? table([
          { label: "Method", cell: (b) => h("span", { class: "badge" }, ((b.config || {}).http_method || "GET").toUpperCase()) },
          { label: "Path", cell: (b) => h("code", {}, "/" + String((b.config || {}).api_path || "").replace(/^\//, "")) },
          { label: "URL", cell: (b) => h("code", { class: "muted" }, base + "/" + String((b.config || {}).api_path || "").replace(/^\//, "")) },
          { label: "Function", cell: (b) => h("a", { href: `#/functions?fn=${encodeURIComponent(b.function_id)}` }, b.function_id) },
        ], http.slice().sort((a, b) => String(a.config.api_path).localeCompare(String(b.config.api_path)))) : h("p", { class: "muted" }, "No routes.")));
        sections.push(h("section", { id: "cron-jobs" }, h("h2", {}, `Cron jobs (${crons.length})`), crons.length ? table([
          { label: "Expression", cell: (b) => h("code", {}, (b.config || {}).expression) },
          { label: "Next run", cell: (b) => { const next = nextRuns[crons.indexOf(b)]; return next ? h("span", { title: next }, new Date(next).toLocaleString()) : h("span", { class: "err" }, "invalid"); } },
          { label: "Function", cell: (b) => h("a", { href: `#/functions?fn=${encodeURIComponent(b.function_id)}` }, b.function_id) },
          { label: "Id", cell: (b) => h("code", { class: "muted" }, b.id) },
        ], crons) : h("p", { class: "muted" }, "No cron jobs.")));
        for (const [type, items] of [...byType.entries()].sort(([a], [b]) => a.localeCompare(b))) {
          if (type === "http" || type === "cron") continue;
          sections.push(h("section", { "data-type": type }, h("h2", {}, `${type} (${items.length})`), table([
            { label: "Function", cell: (b) => h("a", { href: `#/functions?fn=${encodeURIComponent(b.function_id)}` }, b.function_id) },
            { label: "Config", cell: (b) => h("code", {}, preview(b.config, 120)) },
            { label: "Worker", cell: (b) => b.worker_name || "" },
          ], items)));
        }
        sections.push(h("section", { id: "trigger-types" }, h("h2", {}, `Trigger types (${types.trigger_types.length})`), table([
          { label: "Type", cell: (t) => h("code", {}, t.id) },
          { label: "Provided by", cell: (t) => t.worker_name || "" },
          { label: "Bindings", num: true, cell: (t) => t.instance_count ?? "" },
          { label: "Description", cell: (t) => [t.description || "", t.configuration_schema ? h("details", {}, h("summary", {}, "config schema"), h("pre", {}, pretty(t.configuration_schema))) : null] },
        ], types.trigger_types)));
        replace(body, sections);
      },
    };
  }

  // ------------------------------------------------------------------ Queues

  /** A dead letter's failure time: ISO 8601 here, unix seconds in the original. */
  function failedAt(value) {
    const date = typeof value === "number" ? new Date(value * (value < 1e12 ? 1000 : 1)) : new Date(value);
    return isNaN(date) ? String(value) : `failed ${date.toLocaleString()}`;
  }

  const subscriberQueues = new Set();

  function queuesPage(root, params) {
    let selected = params.get("queue");
    const list = h("div", { id: "queues-list" });
    const detail = h("section", { class: "card", id: "dead-letters", "aria-label": "Dead letters" });
    const message = h("p", { role: "status", "aria-live": "polite", class: "muted", id: "queue-message" });
    root.append(h("h1", {}, "Queues"), h("div", { class: "stack" }, list, message, detail));
    let rows = [];

    async function act(functionId, payload, done) {
      const answer = await call(functionId, payload, 30000);
      message.textContent = answer.ok ? done(answer.result) : `${answer.error.code}: ${answer.error.message}`;
      message.className = answer.ok ? "ok" : "err";
      detail.signature = undefined;
      await refresh();
    }

    async function loadDeadLetters() {
      const queue = rows.find((r) => r.name === selected);
      if (!queue) { replace(detail, selected ? notice(`Queue ${selected} is gone.`) : h("p", { class: "muted" }, "Select a queue to browse its dead letters.")); return; }
      const answer = await call("engine::queue::dlq_messages", { topic: queue.name, offset: 0, limit: 50 });
      if (!changed(detail, answer)) return;
      if (!answer.ok) { replace(detail, notice(`${answer.error.code}: ${answer.error.message}`, true)); return; }
      const messages = answer.result;
      replace(detail,
        h("h2", {}, `Dead letters of ${queue.name} (${queue.stats ? queue.stats.dlq_depth : messages.length})`),
        messages.length ? h("div", { class: "toolbar" }, confirmButton(`Redrive all`, `Put every dead letter back in ${queue.name}?`,
          () => act("iii::queue::redrive", { queue: queue.name }, (r) => `Redrove ${r.redriven} messages to ${r.queue}.`), "primary")) : null,
        messages.length ? h("ul", { class: "plain", id: "dead-letter-list" }, messages.map((m) => h("li", { class: "card", "data-message": m.id },
          h("div", { class: "toolbar" },
            h("code", {}, m.id), h("span", { class: "badge" }, `${m.retries}×`),
            m.failed_at ? h("span", { class: "muted" }, failedAt(m.failed_at)) : null,
            h("button", { "data-key": `redrive-${m.id}`, onclick: () => act("iii::queue::redrive_message", { queue: queue.name, message_id: m.id }, () => `Redrove ${m.id} to ${queue.name}.`) }, "Redrive"),
            confirmButton("Discard", "Drop it for good?", () => act("iii::queue::discard_message", { queue: queue.name, message_id: m.id }, () => `Discarded ${m.id}.`))),
          m.error ? h("div", { class: "err" }, typeof m.error === "string" ? m.error : compact(m.error)) : null,
          h("details", {}, h("summary", {}, `payload (${m.size_bytes ?? "?"} bytes)`), h("pre", {}, pretty(m.payload)))))) : h("p", { class: "muted" }, "No dead letters: all clear."),
      );
    }

    function select(name) {
      selected = name;
      remember({ queue: name });
      detail.signature = list.signature = undefined;
      refresh();
    }

    return {
      topics: ["queues"],
      pollMs: 2000,
      async refresh() {
        const [topics, dead] = await Promise.all([must("engine::queue::list_topics", {}), call("engine::queue::dlq_topics", {})]);
        // A durable topic's subscribers each have a queue ("<topic>::<function>"); the engine
        // lists those only while they hold dead letters, so the page remembers the ones it saw.
        const listed = new Set(topics.map((t) => t.name));
        for (const d of dead.ok ? dead.result : []) if (!listed.has(d.topic)) subscriberQueues.add(d.topic);
        for (const name of subscriberQueues) {
          if (!listed.has(name)) topics.push({ name, broker_type: "subscriber", subscriber_count: "" });
        }
        rows = await Promise.all(topics.map(async (t) => {
          const stats = await call("engine::queue::topic_stats", { topic: t.name });
          return { ...t, stats: stats.ok ? stats.result : null };
        }));
        for (const r of rows) if (r.broker_type === "subscriber" && !r.stats) subscriberQueues.delete(r.name);
        rows = rows.filter((r) => r.broker_type !== "subscriber" || r.stats);
        rows.sort((a, b) => a.name.localeCompare(b.name));
        if (changed(list, [rows, selected])) {
          const stat = (r, key) => (r.stats && r.stats[key] !== undefined ? r.stats[key] : "—");
          replace(list, rows.length ? table([
            { label: "Queue", cell: (r) => h("button", { class: "rowlink", "data-key": r.name, onclick: () => select(r.name) }, r.name) },
            { label: "Kind", cell: (r) => (r.broker_type === "function_queue" ? "queue" : r.broker_type === "builtin" ? "topic" : r.broker_type === "subscriber" ? "topic subscriber" : r.broker_type) },
            { label: "Consumers", num: true, cell: (r) => (r.subscriber_count === "" ? stat(r, "consumer_count") : r.subscriber_count) },
            { label: "Depth", num: true, cell: (r) => stat(r, "depth") },
            { label: "In flight", num: true, cell: (r) => stat(r, "in_flight") },
            { label: "Dead letters", num: true, cell: (r) => { const n = stat(r, "dlq_depth"); return n > 0 ? h("strong", { class: "err" }, n) : n; } },
            { label: "Delivered", num: true, cell: (r) => stat(r, "delivered") },
            { label: "Failed", num: true, cell: (r) => stat(r, "failed") },
          ], rows, (r) => ({ class: r.name === selected ? "selected" : null, "data-queue": r.name })) : notice("No queues."));
        }
        await loadDeadLetters();
      },
      onError(err) { return err.code === "function_not_found" ? notice("This engine runs no queue module.") : notice(`${err.code}: ${err.message}`, true); },
      close() { select(null); },
    };
  }

  // ------------------------------------------------------------------ State

  /** A JSON editor for one value with Save / Delete; `save(value)` and `remove()` return call answers. */
  function valueEditor(title, value, save, remove) {
    const area = h("textarea", { id: "value-editor", "aria-label": `Value of ${title}`, spellcheck: "false", rows: 10 }, pretty(value));
    const outcome = h("p", { role: "status", "aria-live": "polite", id: "editor-result" });
    const editor = { dirty: false, element: null };
    area.addEventListener("input", () => { editor.dirty = true; });
    const report = (answer, text) => {
      outcome.textContent = answer.ok ? text : `${answer.error.code}: ${answer.error.message}`;
      outcome.className = answer.ok ? "ok" : "err";
    };
    editor.element = h("div", {},
      h("h2", {}, title), area,
      h("div", { class: "toolbar" },
        h("button", { class: "primary", id: "save-value", onclick: async () => {
          let parsed;
          try { parsed = JSON.parse(area.value); } catch (err) { report({ ok: false, error: { code: "invalid_json", message: err.message } }); return; }
          const answer = await save(parsed);
          if (answer.ok) { editor.dirty = false; editor.value = parsed; } // in step with the store again
          report(answer, "Saved.");
        } }, "Save"),
        confirmButton("Delete", "Delete this value?", async () => report(await remove(), "Deleted."))),
      outcome);
    return editor;
  }

  function statePage(root, params) {
    let scope = params.get("scope");
    let key = params.get("key");
    let editor = null;
    const scopes = h("ul", { class: "plain", id: "scopes" });
    const keys = h("div", { id: "keys" });
    const detail = h("section", { class: "card", id: "state-detail", "aria-label": "Value" });
    const newKey = h("input", { type: "text", id: "new-key", placeholder: "key", "aria-label": "New key" });
    const newValue = h("input", { type: "text", id: "new-value", placeholder: "JSON value", "aria-label": "New value (JSON)" });
    const addForm = h("form", { class: "toolbar", onsubmit: async (event) => {
      event.preventDefault();
      if (!scope || !newKey.value) return;
      let value;
      try { value = JSON.parse(newValue.value); } catch (err) { value = newValue.value; }
      const answer = await call("state::set", { scope, key: newKey.value, value });
      if (answer.ok) { key = newKey.value; newKey.value = newValue.value = ""; remember({ scope, key }); editor = null; refresh(); }
    } }, newKey, newValue, h("button", { type: "submit" }, "Add"));
    root.append(h("h1", {}, "State"), h("div", { class: "split wide-left" },
      h("div", { class: "card" }, h("h2", {}, "Scopes"), scopes),
      h("div", { class: "stack" }, h("div", { class: "card" }, h("h2", { id: "keys-title" }, "Keys"), keys, h("h2", {}, "New value"), addForm), detail)));
    let items = [];

    function showEditor() {
      const item = items.find((i) => i.key === key);
      if (!item) { editor = null; replace(detail, key ? notice(`${key} is not in ${scope}.`) : null); return; }
      if (editor && editor.dirty) return; // never overwrite what someone is typing
      if (editor && editor.key === key && compact(editor.value) === compact(item.value)) return;
      editor = valueEditor(`${scope} / ${key}`, item.value,
        (value) => call("state::set", { scope, key, value }),
        () => call("state::delete", { scope, key }));
      editor.key = key;
      editor.value = item.value;
      replace(detail, editor.element);
    }

    return {
      topics: ["state"],
      pollMs: 5000, // in case the state module's triggers are off
      async refresh() {
        const groups = (await must("state::list_groups", {})).groups;
        if (changed(scopes, [groups, scope])) {
          replace(scopes, groups.length ? groups.map((g) => h("li", { class: g === scope ? "selected" : null },
            h("button", { class: "rowlink", "data-key": g, onclick: () => { scope = g; key = null; editor = null; remember({ scope }); scopes.signature = keys.signature = undefined; refresh(); } }, g)))
            : h("li", { class: "muted" }, "No scope holds a value."));
        }
        if (!scope) { replace(keys, h("p", { class: "muted" }, "Select a scope.")); replace(detail); return; }
        const listed = await must("state::list", { scope, with_keys: true });
        items = listed.filter((i) => i && typeof i === "object" && "key" in i);
        if (changed(keys, [items, key])) {
          replace(keys, items.length ? table([
            { label: "Key", cell: (i) => h("button", { class: "rowlink", "data-key": i.key, onclick: () => { key = i.key; editor = null; remember({ scope, key }); keys.signature = undefined; refresh(); } }, i.key) },
            { label: "Value", cell: (i) => h("code", {}, preview(i.value)) },
          ], items, (i) => ({ class: i.key === key ? "selected" : null, "data-state-key": i.key })) : h("p", { class: "muted" }, "Empty."));
        }
        showEditor();
      },
      close() { key = null; editor = null; remember({ scope }); keys.signature = undefined; replace(detail); refresh(); },
    };
  }

  // ------------------------------------------------------------------ Streams

  function streamsPage(root, params) {
    let stream = params.get("stream");
    let group = params.get("group");
    let item = params.get("item");
    let editor = null;
    let items = [];
    let socket = null;
    let subscription = null;
    const tree = h("div", { id: "streams" });
    const itemsBox = h("div", { id: "stream-items" });
    const events = h("ul", { class: "plain mono", id: "stream-events", "aria-live": "off" });
    const detail = h("section", { class: "card", id: "stream-detail", "aria-label": "Item" });
    root.append(h("h1", {}, "Streams"), h("div", { class: "split wide-left" },
      h("div", { class: "card" }, tree),
      h("div", { class: "stack" }, h("div", { class: "card" }, h("h2", { id: "group-title" }, "Items"), itemsBox), detail,
        h("div", { class: "card" }, h("h2", {}, "Live events"), events))));

    // The page joins the open group through the console's pipe to the engine's stream socket.
    function join() {
      if (!stream || !group) return;
      if (!socket || socket.readyState > 1) {
        socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/streams`);
        socket.onmessage = (event) => {
          let message;
          try { message = JSON.parse(event.data); } catch (err) { return; }
          const kind = message.event ? message.event.type : message.type;
          events.prepend(h("li", {}, clock(Date.now()), " ", kind || "?", " ", message.id || "", " ", preview(message.event ? message.event.data : message, 60)));
          while (events.children.length > 30) events.lastChild.remove();
          if (kind !== "sync") refresh();
        };
        socket.onopen = () => send();
        socket.onclose = () => { if (current === page) setTimeout(join, 2000); };
      } else send();
    }

    function send() {
      if (subscription) socket.send(JSON.stringify({ type: "leave", data: subscription }));
      subscription = { streamName: stream, groupId: group, subscriptionId: `console-${Date.now()}` };
      socket.send(JSON.stringify({ type: "join", data: subscription }));
    }

    function showEditor() {
      const found = items.find((i) => i.id === item);
      if (!found) { editor = null; replace(detail, item ? notice(`${item} is not in ${group}.`) : null); return; }
      if (editor && (editor.dirty || (editor.id === item && compact(editor.value) === compact(found.data)))) return;
      editor = valueEditor(`${stream} / ${group} / ${item}`, found.data,
        (data) => call("stream::set", { stream_name: stream, group_id: group, item_id: item, data }),
        () => call("stream::delete", { stream_name: stream, group_id: group, item_id: item }));
      editor.id = item;
      editor.value = found.data;
      replace(detail, editor.element);
    }

    const page = {
      topics: [],
      pollMs: 3000,
      async refresh() {
        const all = await must("stream::list_all", {});
        const streams = all.stream || all.streams || [];
        if (changed(tree, [streams, stream, group])) {
          replace(tree, streams.length ? streams.map((s) => [h("div", { class: "group-title" }, s.id), h("ul", { class: "plain" },
            (s.groups || []).map((g) => h("li", { class: s.id === stream && g === group ? "selected" : null },
              h("button", { class: "rowlink", "data-key": `${s.id}/${g}`, onclick: () => {
                stream = s.id; group = g; item = null; editor = null; remember({ stream, group });
                tree.signature = itemsBox.signature = undefined; join(); refresh();
              } }, g))))]) : h("p", { class: "muted" }, "No stream holds items."));
        }
        if (!stream || !group) { replace(itemsBox, h("p", { class: "muted" }, "Select a group.")); return; }
        items = await must("stream::list", { stream_name: stream, group_id: group, with_ids: true });
        items = items.filter((i) => i && typeof i === "object" && "id" in i);
        if (changed(itemsBox, [items, item])) {
          document.getElementById("group-title").textContent = `Items of ${stream} / ${group}`;
          replace(itemsBox, items.length ? table([
            { label: "Id", cell: (i) => h("button", { class: "rowlink", "data-key": i.id, onclick: () => { item = i.id; editor = null; remember({ stream, group, item }); itemsBox.signature = undefined; refresh(); } }, i.id) },
            { label: "Data", cell: (i) => h("code", {}, preview(i.data)) },
          ], items, (i) => ({ class: i.id === item ? "selected" : null, "data-item": i.id })) : h("p", { class: "muted" }, "Empty."));
        }
        showEditor();
      },
      dispose() { if (socket) { socket.onclose = null; socket.close(); } },
      close() { item = null; editor = null; remember({ stream, group }); itemsBox.signature = undefined; replace(detail); refresh(); },
    };
    join();
    return page;
  }

  // ------------------------------------------------------------------ Logs

  const SEVERITY_MIN = { TRACE: 1, DEBUG: 5, INFO: 9, WARN: 13, ERROR: 17 };
  const attribute = (record, ...names) => {
    const attrs = record.attributes || {};
    if (Array.isArray(attrs)) { for (const [k, v] of attrs) if (names.includes(k)) return v; return undefined; }
    for (const name of names) if (attrs[name] !== undefined) return attrs[name];
    return undefined;
  };
  const logSource = (l) => attribute(l, "worker.name", "worker_name", "service.name") ||
    (l.service_name && l.service_name !== "unknown" ? l.service_name : (l.resource || {})["service.name"]) || "unknown";
  const logWorkerId = (l) => attribute(l, "worker.id", "worker_id");
  /** The span a log line was written in names its function ("execute <id>"); see logsPage. */
  const spanFunctions = new Map();
  const spanMisses = new Map();
  const logFunction = (l) => attribute(l, "function_id", "faas.invoked_name", "iii.function.id") || spanFunctions.get(l.span_id) || "";
  const spanFunction = (s) => attribute(s, "faas.invoked_name", "function_id", "iii.function.id") || (s.name.startsWith("execute ") ? s.name.slice(8) : "");
  const logBody = (l) => (typeof l.body === "string" ? l.body : compact(l.body));

  function logsPage(root, params) {
    let wantedWorker = "";
    const worker = h("select", { id: "log-worker", "aria-label": "Worker", onchange: () => { wantedWorker = worker.value; render(); } },
      h("option", { value: "" }, "all workers"));
    const level = h("select", { id: "log-level", "aria-label": "Lowest level", onchange: () => { list.signature = undefined; refresh(); } },
      h("option", { value: "" }, "all levels"), Object.keys(SEVERITY_MIN).map((l) => h("option", { value: l }, `${l} and above`)));
    const fn = h("input", { type: "search", id: "log-function", placeholder: "Function or text", "aria-label": "Function or text", oninput: render, value: params.get("q") || "" });
    const count = h("small");
    const list = h("div", { id: "logs" });
    root.append(h("h1", {}, "Logs", count), h("div", { class: "toolbar" }, worker, level, fn), list);
    let logs = [];

    function render() {
      const needle = fn.value.toLowerCase();
      const rows = logs.filter((l) => (!wantedWorker || logSource(l) === wantedWorker) &&
        (!needle || logFunction(l).toLowerCase().includes(needle) || logBody(l).toLowerCase().includes(needle)));
      count.textContent = `${rows.length} of ${logs.length}`;
      // The chosen worker stays a choice while a filter hides all its lines.
      const sources = [...new Set([...logs.map(logSource), wantedWorker].filter(Boolean))].sort();
      if (changed(worker, sources)) {
        replace(worker, h("option", { value: "" }, "all workers"), sources.map((s) => h("option", { value: s }, s)));
        worker.value = wantedWorker;
      }
      replace(list, rows.length ? table([
        { label: "Time", cell: (l) => h("span", { class: "mono" }, clock(nanosToMs(l.timestamp_unix_nano))) },
        { label: "Level", cell: (l) => h("span", { class: `level-${(l.severity_text || "").toUpperCase()}` }, l.severity_text || "") },
        { label: "Worker", cell: (l) => logSource(l) },
        { label: "Function", cell: (l) => logFunction(l) },
        { label: "Message", cell: (l) => logBody(l) },
        { label: "Trace", cell: (l) => (l.trace_id ? h("a", { href: `#/traces?trace=${l.trace_id}`, class: "mono" }, l.trace_id.slice(0, 8)) : "") },
      ], rows.slice(0, 500)) : notice(logs.length ? "No log line matches." : "No log lines yet."));
    }

    return {
      topics: [],
      pollMs: 2000,
      async refresh() {
        const payload = { limit: 500 };
        if (level.value) payload.severity_min = SEVERITY_MIN[level.value];
        const result = await must("engine::logs::list", payload);
        logs = result.logs || [];
        // A line can arrive before its span: ask again on later polls, a few times.
        const unknown = [...new Set(logs.filter((l) => l.span_id && !spanFunctions.has(l.span_id) && (spanMisses.get(l.span_id) || 0) < 5)
          .map((l) => l.trace_id))];
        if (unknown.length) {
          const spans = await call("engine::traces::list", { trace_ids: unknown.slice(0, 200), search_all_spans: true, include_internal: true, limit: 1000 });
          for (const span of spans.ok ? spans.result.spans : []) spanFunctions.set(span.span_id, spanFunction(span));
          for (const l of logs) if (l.span_id && !spanFunctions.has(l.span_id)) spanMisses.set(l.span_id, (spanMisses.get(l.span_id) || 0) + 1);
          if (spanFunctions.size + spanMisses.size > 20000) { spanFunctions.clear(); spanMisses.clear(); }
        }
        if (changed(list, [logs, spanFunctions.size])) render();
      },
      onError: telemetryNotice,
    };
  }

  // ------------------------------------------------------------------ Traces

  function tracesPage(root, params) {
    let selected = params.get("trace");
    const service = h("input", { type: "search", id: "trace-worker", placeholder: "Worker (service)", "aria-label": "Worker (service name)", onchange: () => refresh() });
    const fn = h("input", { type: "search", id: "trace-function", placeholder: "Function or span name", "aria-label": "Function or span name", oninput: render });
    const status = h("select", { id: "trace-status", "aria-label": "Status", onchange: () => refresh() },
      h("option", { value: "" }, "any status"), ["ok", "error", "unset"].map((s) => h("option", { value: s }, s)));
    const internal = h("input", { type: "checkbox", id: "trace-internal", onchange: () => refresh() });
    const list = h("div", { id: "traces" });
    const detail = h("section", { class: "card", id: "trace-detail", "aria-label": "Trace" });
    root.append(h("h1", {}, "Traces"), h("div", { class: "toolbar" }, service, fn, status, h("label", {}, internal, " internal")),
      h("div", { class: "split" }, list, detail));
    let spans = [];
    // The SDKs name a handler's span "execute <function id>" and may set no attribute for it.
    const functionOf = spanFunction;
    // A pending span (end 0) has lasted until now.
    const duration = (s) => ((Number(s.end_time_unix_nano) || Date.now() * 1e6) - Number(s.start_time_unix_nano)) / 1e6;
    const spanBox = h("div", { id: "span-detail", "aria-live": "polite" });

    function render() {
      const needle = fn.value.toLowerCase();
      const rows = spans.filter((s) => !needle || functionOf(s).toLowerCase().includes(needle) || s.name.toLowerCase().includes(needle));
      replace(list, rows.length ? table([
        { label: "Trace", cell: (s) => [h("button", { class: "rowlink", "data-key": s.trace_id, onclick: () => select(s.trace_id) }, s.name),
          functionOf(s) && !s.name.endsWith(functionOf(s)) ? h("div", { class: "muted" }, functionOf(s)) : null] },
        { label: "Worker", cell: (s) => h("span", { class: "nowrap" }, s.service_name || "") },
        { label: "Status", cell: (s) => h("span", { class: `status-${s.status}` }, s.status) },
        { label: "Start", cell: (s) => h("span", { class: "mono" }, clock(nanosToMs(s.start_time_unix_nano))) },
        { label: "Duration", num: true, cell: (s) => formatMs(duration(s)) },
      ], rows, (s) => ({ class: s.trace_id === selected ? "selected" : null })) : notice(spans.length ? "No trace matches." : "No traces yet."));
    }

    async function showTree() {
      if (!selected) { replace(detail); return; }
      let tree;
      try { tree = await must("engine::traces::tree", { trace_id: selected }); } catch (err) { replace(detail, telemetryNotice(err)); return; }
      const flat = [];
      const walk = (node, depth) => { flat.push([node, depth]); for (const child of node.children || []) walk(child, depth + 1); };
      for (const node of tree.roots || []) walk(node, 0);
      if (!flat.length) { replace(detail, notice(`Trace ${selected} holds no spans.`)); return; }
      const start = Math.min(...flat.map(([n]) => Number(n.start_time_unix_nano)));
      const end = Math.max(...flat.map(([n]) => Number(n.start_time_unix_nano) + duration(n) * 1e6));
      const total = Math.max(end - start, 1);
      replace(detail,
        h("h2", {}, `Trace ${selected.slice(0, 12)}…`, h("span", { class: "muted" }, ` ${flat.length} spans · ${formatMs(total / 1e6)}`)),
        h("div", { id: "trace-tree", role: "tree" }, flat.map(([node, depth]) => h("div", { class: "span-row", role: "treeitem", "aria-level": depth + 1 },
          h("span", { style: `padding-left:${depth * 14}px` },
            h("button", { class: "rowlink", "data-key": node.span_id, title: node.span_id, onclick: () => replace(spanBox, spanDetail(node)) }, node.name),
            node.service_name ? h("span", { class: "muted" }, ` · ${node.service_name}`) : null),
          h("span", { class: "bar-track", "aria-hidden": "true" }, h("span", {
            class: node.status === "error" ? "bar error" : "bar",
            style: `left:${((Number(node.start_time_unix_nano) - start) / total) * 100}%;width:${(duration(node) * 1e6 / total) * 100}%`,
          })),
          h("span", { class: "mono" }, formatMs(duration(node)))))),
        spanBox);
      replace(spanBox, spanDetail(flat[0][0]));
    }

    /** One span: status, attributes, and its events (the SDKs record a call's input and output). */
    function spanDetail(span) {
      const pairs = (attributes) => (Array.isArray(attributes) ? attributes : Object.entries(attributes || {}));
      const value = (key, text) => {
        if (key !== "iii.payload.json") return h("code", {}, String(text));
        try { return h("pre", {}, pretty(JSON.parse(text))); } catch (err) { return h("code", {}, String(text)); }
      };
      const kv = (attributes) => h("dl", { class: "kv" }, pairs(attributes).map(([k, v]) => [h("dt", {}, k), h("dd", {}, value(k, v))]));
      return [
        h("h3", {}, span.name),
        h("dl", { class: "kv" },
          h("dt", {}, "Span"), h("dd", { class: "mono" }, span.span_id),
          h("dt", {}, "Status"), h("dd", { class: `status-${span.status}` }, span.status, span.status_description ? `: ${span.status_description}` : ""),
          h("dt", {}, "Duration"), h("dd", {}, formatMs(duration(span)))),
        pairs(span.attributes).length ? [h("h3", { class: "muted" }, "Attributes"), kv(span.attributes)] : null,
        (span.events || []).map((event) => [h("h3", { class: "muted" }, event.name), kv(event.attributes)]),
      ];
    }

    function select(id) {
      selected = id;
      remember({ trace: id });
      render();
      showTree();
    }

    showTree();
    return {
      topics: [],
      pollMs: 2000,
      async refresh() {
        const payload = { limit: 100, sort_order: "desc", include_internal: internal.checked };
        if (service.value) payload.service_name = service.value;
        if (status.value) payload.status = status.value;
        const result = await must("engine::traces::list", payload);
        spans = result.spans || [];
        if (changed(list, [spans, selected])) render();
      },
      onError: telemetryNotice,
      close() { selected = null; remember({}); render(); replace(detail); },
    };
  }

  // ------------------------------------------------------------------ start

  const PAGES = {
    workers: { title: "Workers", create: workersPage },
    functions: { title: "Functions", create: functionsPage },
    triggers: { title: "Triggers", create: triggersPage },
    queues: { title: "Queues", create: queuesPage },
    state: { title: "State", create: statePage },
    streams: { title: "Streams", create: streamsPage },
    logs: { title: "Logs", create: logsPage },
    traces: { title: "Traces", create: tracesPage },
  };

  window.addEventListener("hashchange", mount);
  loadConfig().then(() => { mount(); connectLive(); });
})();
