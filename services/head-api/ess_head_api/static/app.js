// The ESS operators' dashboard: reads the head's /v1 API with the token given on the page and
// follows requests through their Server-Sent Events (GET /v1/requests/{id}/events). Plain
// JavaScript, no build step. Pages: #/requests, #/requests/{id}, #/edges, #/dead-letters.
"use strict";

const FINAL = new Set(["ready", "failed", "cancelled"]);
// Streams open at once on the requests page: the browser keeps at most six connections to
// the head, and the page's own reads need some.
const MAX_STREAMS = 3;
const LIST_EVERY_MS = 3000;
const EDGES_EVERY_MS = 2000;

const session = {
  token: sessionStorage.getItem("ess-token") || "",
  role: null,
};
let page = null; // the page shown: { stop() }

// --- talking to the head -----------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (session.token) h.Authorization = "Bearer " + session.token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(Object.assign({ Accept: "application/json" }, opts.headers || {}));
  const response = await fetch(path, opts);
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = text;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new HttpError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

// Follows one request's Server-Sent Events; calls onFrame(event, data) per frame. Returns when
// the stream ends (the request finished, or the server ended it: the caller reconnects).
async function follow(requestId, onFrame, signal) {
  const response = await fetch("/v1/requests/" + encodeURIComponent(requestId) + "/events", {
    headers: headers({ Accept: "text/event-stream" }),
    signal: signal,
  });
  if (!response.ok) throw new HttpError(response.status, response.statusText);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onFrame(event, JSON.parse(data.join("\n")));
    }
  }
}

// Keeps following a request until it is final or `signal` aborts.
async function keepFollowing(requestId, onFrame, signal) {
  let finished = false;
  const wrapped = (event, data) => {
    if (FINAL.has(event) || event === "gone") finished = true;
    onFrame(event, data);
  };
  while (!finished && !signal.aborted) {
    try {
      await follow(requestId, wrapped, signal);
    } catch (error) {
      if (signal.aborted) return;
      await sleep(2000);
    }
  }
}

// Calls `refresh` now and then every `everyMs` after each has finished, until stopped.
function poll(refresh, everyMs) {
  let timer = null;
  let stopped = false;
  async function loop() {
    await refresh();
    if (!stopped) timer = setTimeout(loop, everyMs);
  }
  loop();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- building the page ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function stateBadge(state) {
  return el("span", { class: "state " + state, "data-state": state }, state);
}

function progress(done, total, kind) {
  const share = total ? Math.min(1, done / total) : 0;
  return el(
    "div",
    { class: "progress" },
    el(
      "div",
      { class: "track" },
      el("div", { class: "fill " + (kind || ""), style: "width:" + (100 * share).toFixed(1) + "%" })
    ),
    el("span", { class: "label" }, done + "/" + total)
  );
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let value = n;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return (i ? value.toFixed(1) : String(value)) + " " + units[i];
}

function when(iso) {
  if (!iso) return "—";
  return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function age(seconds) {
  if (seconds < 120) return seconds.toFixed(1) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function notice(text, isError) {
  const box = document.getElementById("notice");
  if (!text) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.className = isError ? "error" : "";
  box.textContent = text;
}

function explain(error) {
  if (error instanceof HttpError && error.status === 401)
    return "The head asks for a token: give one above (" + error.message + ").";
  if (error instanceof HttpError && error.status === 403)
    return "This token's role may not see this page: " + error.message;
  return "The head did not answer: " + error.message;
}

function isAdmin() {
  return session.role === "admin";
}

// An operator's action: the button is disabled while it runs; the page is refreshed after.
function action(label, run, options) {
  const button = el("button", { class: (options && options.danger) ? "danger" : "", type: "button" }, label);
  button.addEventListener("click", async () => {
    if (options && options.confirm && !window.confirm(options.confirm)) return;
    button.disabled = true;
    try {
      await run();
      notice(label + ": done");
      if (page && page.refresh) await page.refresh();
    } catch (error) {
      notice(label + " refused: " + error.message, true);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// --- the requests ------------------------------------------------------------------------------

function filesCell(view) {
  const by = view.files_by_status || {};
  const split = by.split || 0;
  const failed = by.failed || 0;
  const onDemand = by.on_demand || 0;
  if (onDemand) return el("span", { class: "muted" }, onDemand + " files on demand");
  const kind = failed ? "bad" : split < view.files_total ? "partial" : "";
  return progress(split, view.files_total, kind);
}

function requestRow(view) {
  return el(
    "tr",
    { "data-request": view.id },
    el("td", { class: "mono" }, el("a", { href: "#/requests/" + view.id }, view.id.slice(0, 8))),
    el("td", {}, view.dataset),
    el("td", {}, stateBadge(view.status)),
    el("td", {}, filesCell(view)),
    el("td", { class: "num", "data-ranges": view.ranges }, view.ranges),
    el("td", {}, when(view.created_at)),
    el("td", {}, when(view.ready_at)),
    el("td", { class: "error-text" }, view.error || "")
  );
}

function requestsPage(root, query) {
  const stateFilter = query.get("state") || "";
  const streams = new Map(); // request id -> AbortController
  const rows = new Map();
  let stopped = false;
  const tbody = el("tbody");
  const live = el("span", { class: "live", hidden: true }, "live");
  const select = el(
    "select",
    {
      "aria-label": "state",
      onchange: (event) => {
        location.hash = "#/requests" + (event.target.value ? "?state=" + event.target.value : "");
      },
    },
    ["", "received", "assigned", "ready", "failed", "cancelled"].map((s) =>
      el("option", { value: s, selected: s === stateFilter }, s || "every state")
    )
  );
  root.append(
    el("div", { class: "bar-row" }, el("h1", {}, "Requests"), live, el("span", { class: "spacer" }), select),
    el(
      "table",
      { id: "requests" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ["request", "dataset", "state", "files split", "ranges", "received", "ready", "error"].map((h) =>
            el("th", { class: h === "ranges" ? "num" : "" }, h)
          )
        )
      ),
      tbody
    )
  );

  function show(view) {
    const row = requestRow(view);
    const old = rows.get(view.id);
    if (old) old.replaceWith(row);
    else tbody.append(row);
    rows.set(view.id, row);
  }

  function openStreams(views) {
    for (const view of views) {
      if (streams.size >= MAX_STREAMS) break;
      if (FINAL.has(view.status) || streams.has(view.id)) continue;
      const control = new AbortController();
      streams.set(view.id, control);
      keepFollowing(
        view.id,
        (event, data) => {
          if (event !== "gone" && (!stateFilter || data.status === stateFilter || rows.has(data.id))) show(data);
        },
        control.signal
      ).finally(() => streams.delete(view.id));
    }
    live.hidden = streams.size === 0;
  }

  async function refresh() {
    try {
      const path = "/v1/requests?limit=100" + (stateFilter ? "&state=" + stateFilter : "");
      const views = await api(path);
      if (stopped) return;
      notice(null);
      const seen = new Set();
      // Newest first, as the API lists them.
      tbody.replaceChildren();
      rows.clear();
      for (const view of views) {
        seen.add(view.id);
        show(view);
      }
      if (!views.length) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no request")));
      for (const [id, control] of streams) if (!seen.has(id)) control.abort();
      openStreams(views);
    } catch (error) {
      notice(explain(error), true);
    }
  }

  const polling = poll(refresh, LIST_EVERY_MS);
  return {
    refresh,
    stop() {
      stopped = true;
      polling.stop();
      for (const control of streams.values()) control.abort();
    },
  };
}

function requestPage(root, requestId) {
  const control = new AbortController();
  let refreshing = null;
  let stopped = false;
  const body = el("div");
  root.append(
    el("div", { class: "bar-row" }, el("h1", {}, "Request ", el("span", { class: "mono" }, requestId))),
    body
  );

  async function render() {
    const [view, history, ranges] = await Promise.all([
      api("/v1/requests/" + encodeURIComponent(requestId)),
      api("/v1/requests/" + encodeURIComponent(requestId) + "/events"),
      api("/v1/requests/" + encodeURIComponent(requestId) + "/ranges?limit=200"),
    ]);
    let deadLetters = [];
    if (isAdmin()) deadLetters = await api("/v1/dead-letters?request_id=" + encodeURIComponent(requestId));
    if (stopped) return;
    const buttons = el("div", { class: "actions" });
    if (isAdmin() && ["received", "assigned", "failed"].includes(view.status))
      buttons.append(
        action("Cancel", () => api("/v1/requests/" + requestId + "/cancel", { method: "POST" }), {
          danger: true,
          confirm: "Cancel request " + requestId + "?",
        })
      );
    if (isAdmin() && view.status === "failed")
      buttons.append(action("Retry", () => api("/v1/requests/" + requestId + "/retry", { method: "POST" })));
    const files = view.files || [];
    fill(
      body,
      el(
        "div",
        { class: "cards" },
        card("state", stateBadge(view.status)),
        card("dataset", view.dataset),
        card("idempotency key", view.idempotency_key),
        card("events per range", view.events_per_range),
        card("files split", filesCell(view)),
        card("ranges", el("span", { id: "ranges-count" }, view.ranges)),
        card("received", when(view.created_at)),
        card("ready", when(view.ready_at))
      ),
      view.error ? el("p", { class: "error-text" }, "Error: " + view.error) : null,
      buttons.childNodes.length ? el("h2", {}, "Actions") : null,
      buttons.childNodes.length ? buttons : null,
      el("h2", {}, "Files"),
      el(
        "table",
        { id: "files" },
        el("thead", {}, el("tr", {}, ["file", "state", "edge", "attempt", "events", "ranges", "error"].map((h) => el("th", {}, h)))),
        el(
          "tbody",
          {},
          files.map((f) =>
            el(
              "tr",
              {},
              el("td", {}, f.scope + ":" + f.lfn),
              el("td", {}, stateBadge(f.status)),
              el("td", {}, f.edge || "—"),
              el("td", { class: "num" }, f.attempt),
              el("td", { class: "num" }, f.n_events),
              el("td", { class: "num" }, f.ranges),
              el("td", { class: "error-text" }, f.error || "")
            )
          )
        )
      ),
      el("h2", {}, "History"),
      el(
        "table",
        { id: "history" },
        el("thead", {}, el("tr", {}, ["when", "what", "file", "edge", "attempt", "detail"].map((h) => el("th", {}, h)))),
        el(
          "tbody",
          {},
          history.map((e) =>
            el(
              "tr",
              {},
              el("td", {}, when(e.at)),
              el("td", {}, stateBadge(e.kind)),
              el("td", { class: "num" }, e.file_id === null ? "" : e.file_id),
              el("td", {}, e.edge || ""),
              el("td", { class: "num" }, e.attempt === null ? "" : e.attempt),
              el("td", {}, e.detail || "", e.trace_id ? el("div", { class: "muted mono" }, "trace " + e.trace_id) : null)
            )
          )
        )
      ),
      deadLetters.length ? el("h2", {}, "Dead letters") : null,
      deadLetters.length ? deadLetterTable(deadLetters) : null,
      el("h2", {}, "Ranges", ranges.next_after ? el("span", { class: "muted" }, " (the first 200)") : null),
      el(
        "table",
        { id: "ranges" },
        el("thead", {}, el("tr", {}, ["file", "events", "size", "adler32", "object key"].map((h) => el("th", {}, h)))),
        el(
          "tbody",
          {},
          ranges.ranges.map((r) =>
            el(
              "tr",
              {},
              el("td", { class: "num" }, r.file_id),
              el("td", { class: "num" }, r.first_event + "–" + r.last_event),
              el("td", { class: "num" }, bytes(r.size)),
              el("td", { class: "mono" }, r.adler32),
              el("td", { class: "mono" }, r.key)
            )
          )
        )
      )
    );
  }

  async function refresh() {
    // One render at a time; frames that come meanwhile ask for one more.
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        await render();
        notice(null);
      } catch (error) {
        notice(explain(error), true);
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  refresh().then(() => keepFollowing(requestId, () => refresh(), control.signal));
  return {
    refresh,
    stop() {
      stopped = true;
      control.abort();
    },
  };
}

// Replaces the children of `node`, leaving out the parts that are not there (null).
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
}

function card(key, value) {
  return el("div", { class: "card" }, el("div", { class: "k" }, key), el("div", { class: "v" }, value));
}

// --- the edges ---------------------------------------------------------------------------------

function edgesPage(root) {
  let stopped = false;
  const tbody = el("tbody");
  root.append(
    el("div", { class: "bar-row" }, el("h1", {}, "Edges")),
    el(
      "table",
      { id: "edges" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ["edge", "site", "state", "last heartbeat", "cache used / quota", "queued", "on-demand", "load", "version", ""].map(
            (h) => el("th", {}, h)
          )
        )
      ),
      tbody
    )
  );

  function row(edge) {
    const used = edge.used_bytes === null ? edge.quota_bytes - edge.free_bytes : edge.used_bytes;
    const share = edge.quota_bytes ? used / edge.quota_bytes : 0;
    const buttons = el("div", { class: "actions" });
    if (isAdmin()) {
      const name = encodeURIComponent(edge.name);
      if (edge.status === "alive" || edge.status === "lost")
        buttons.append(action("Drain", () => api("/v1/edges/" + name + "/drain", { method: "POST" })));
      if (edge.status === "draining" || edge.status === "disabled")
        buttons.append(action("Enable", () => api("/v1/edges/" + name + "/enable", { method: "POST" })));
      if (edge.status !== "disabled")
        buttons.append(
          action("Disable", () => api("/v1/edges/" + name + "/disable", { method: "POST" }), {
            danger: true,
            confirm: "Disable " + edge.name + "? Its unfinished files move to other edges now.",
          })
        );
    }
    const state = edge.status === "alive" && !edge.alive ? "silent" : edge.status;
    return el(
      "tr",
      { "data-edge": edge.name },
      el("td", {}, el("strong", {}, edge.name), edge.url ? el("div", { class: "muted mono" }, edge.url) : null),
      el("td", {}, edge.site, el("div", { class: "muted" }, edge.region)),
      el("td", {}, stateBadge(state)),
      el("td", { class: "num" }, age(edge.seconds_since_heartbeat)),
      el(
        "td",
        {},
        el(
          "div",
          { class: "progress" },
          el("div", { class: "track" }, el("div", { class: "fill " + (share > 0.95 ? "bad" : share > 0.8 ? "partial" : ""), style: "width:" + (100 * share).toFixed(1) + "%" })),
          el("span", { class: "label" }, bytes(used) + " / " + bytes(edge.quota_bytes))
        )
      ),
      el("td", { class: "num" }, edge.queued),
      el("td", { class: "num" }, edge.on_demand_slots === null ? "—" : edge.on_demand_busy + "/" + edge.on_demand_slots),
      el("td", { class: "num" }, edge.load.toFixed(2)),
      el("td", { class: "mono" }, edge.version),
      el("td", {}, buttons)
    );
  }

  async function refresh() {
    try {
      const edges = await api("/v1/edges");
      if (stopped) return;
      notice(null);
      tbody.replaceChildren(...edges.map(row));
      if (!edges.length) tbody.append(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "no edge has sent a heartbeat yet")));
    } catch (error) {
      notice(explain(error), true);
    }
  }

  const polling = poll(refresh, EDGES_EVERY_MS);
  return {
    refresh,
    stop() {
      stopped = true;
      polling.stop();
    },
  };
}

// --- the dead letters ----------------------------------------------------------------------------

function deadLetterTable(letters) {
  return el(
    "table",
    { id: "dead-letters" },
    el("thead", {}, el("tr", {}, ["#", "when", "queue", "routing key", "request", "reason"].map((h) => el("th", {}, h)))),
    el(
      "tbody",
      {},
      letters.map((d) =>
        el(
          "tr",
          {},
          el("td", { class: "num" }, d.id),
          el("td", {}, when(d.created_at)),
          el("td", { class: "mono" }, d.queue),
          el("td", { class: "mono" }, d.routing_key),
          el("td", { class: "mono" }, d.request_id ? el("a", { href: "#/requests/" + d.request_id }, d.request_id.slice(0, 8)) : "—"),
          el("td", {}, el("span", { class: "error-text" }, d.reason), el("details", {}, el("summary", {}, "message"), el("pre", { class: "mono" }, d.body)))
        )
      )
    )
  );
}

function deadLettersPage(root) {
  const body = el("div");
  root.append(el("div", { class: "bar-row" }, el("h1", {}, "Dead letters")), body);
  async function refresh() {
    try {
      const letters = await api("/v1/dead-letters?limit=200");
      notice(null);
      fill(body, letters.length ? deadLetterTable(letters) : el("p", { class: "muted" }, "No dead letter: every message was handled."));
    } catch (error) {
      notice(explain(error), true);
      fill(body, el("p", { class: "muted" }, "Dead letters are shown to the admin role."));
    }
  }
  refresh();
  return { refresh, stop() {} };
}

// --- routing -----------------------------------------------------------------------------------

async function whoami() {
  try {
    session.role = (await api("/v1/whoami")).role;
  } catch (error) {
    session.role = null;
  }
  document.getElementById("role").textContent = session.role ? "role: " + session.role : "no token";
}

function route() {
  if (page) page.stop();
  notice(null);
  const root = document.getElementById("page");
  root.replaceChildren();
  const hash = location.hash || "#/requests";
  const [path, search] = hash.slice(1).split("?");
  const query = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  const name = parts[0] || "requests";
  for (const link of document.querySelectorAll("nav a"))
    link.classList.toggle("current", link.dataset.page === name);
  if (name === "requests" && parts[1]) page = requestPage(root, decodeURIComponent(parts[1]));
  else if (name === "edges") page = edgesPage(root);
  else if (name === "dead-letters") page = deadLettersPage(root);
  else page = requestsPage(root, query);
}

document.getElementById("token").value = session.token;
document.getElementById("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  session.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("ess-token", session.token);
  await whoami();
  route();
});
window.addEventListener("hashchange", route);
whoami().then(route);
