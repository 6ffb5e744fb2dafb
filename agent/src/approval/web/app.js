// The approvals page: polls the agent's loopback API, renders with DOM
// calls only (never innerHTML: commands and reasons are data, not markup).
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

async function call(method, path, body) {
  const init = { method, headers: { "x-loopgate-request": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const json = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(json.error || response.statusText), { status: response.status });
  return json;
}

function showError(e) {
  $("error").hidden = !e;
  $("error").textContent = e ? e.message : "";
}

function left(ms) {
  const s = Math.max(0, Math.round((ms - Date.now()) / 1000));
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function process(p) {
  const parts = [p.comm, p.pid && `pid ${p.pid}`, p.user || (p.uid !== null && `uid ${p.uid}`), p.unit, p.exe];
  return parts.filter(Boolean).join(" · ");
}

function request(a) {
  const reason = el("input", { type: "text", placeholder: "reason (recorded with your decision)", "aria-label": "reason" });
  const decide = (action) => async () => {
    try {
      await call("POST", `/api/approvals/${encodeURIComponent(a.id)}/${action}`, { reason: reason.value });
      showError(null);
      refresh();
    } catch (e) {
      showError(e);
    }
  };
  const approve = el("button", { class: "approve", "data-id": a.id }, "Approve");
  approve.addEventListener("click", decide("approve"));
  const deny = el("button", { class: "deny", "data-id": a.id }, "Deny");
  deny.addEventListener("click", decide("deny"));
  const needs = a.min_approvals > 1 ? ` (${a.approvals.length} of ${a.min_approvals} approvals)` : "";
  return el(
    "div",
    { class: "request", id: `request-${a.id}` },
    el("pre", {}, a.command + (a.parameters.length ? `\nparameters: ${a.parameters.join(", ")}` : "")),
    el(
      "dl",
      {},
      el("dt", {}, "Request"), el("dd", {}, a.id + needs),
      el("dt", {}, "Requester"), el("dd", {}, a.requester),
      el("dt", {}, "Process"), el("dd", {}, process(a.process)),
      el("dt", {}, "Target"), el("dd", {}, a.target),
      el("dt", {}, "Rule"), el("dd", {}, `${a.rule_id}: ${a.reason}`),
      el("dt", {}, "Approvers"), el("dd", {}, a.approver_group),
      el("dt", {}, "Time left"), el("dd", { class: "timer", "data-expires": a.expires_unix_ms }, left(a.expires_unix_ms)),
    ),
    el("div", { class: "actions" }, reason, approve, deny),
  );
}

function ended(e) {
  return el(
    "tr",
    { id: `ended-${e.approval.id}` },
    el("td", {}, e.approval.id),
    el("td", { class: `outcome-${e.outcome}` }, e.outcome.replace("_", " ")),
    el("td", {}, e.by.join(", ")),
    el("td", {}, e.reason || ""),
    el("td", {}, el("code", {}, e.approval.command)),
    el("td", {}, e.approval.requester),
    el("td", {}, e.approval.rule_id),
  );
}

async function refresh() {
  try {
    const me = await call("GET", "/api/me");
    $("who").textContent = `${me.name} (${me.groups.join(", ")})`;
    $("logout").hidden = false;
    $("signin").hidden = true;
    const [{ approvals }, { ended: history }] = await Promise.all([call("GET", "/api/pending"), call("GET", "/api/history")]);
    // Keep what the approver is typing: only rebuild what changed.
    const pending = $("pending");
    const ids = new Set(approvals.map((a) => `request-${a.id}`));
    for (const node of [...pending.children]) if (!ids.has(node.id)) node.remove();
    for (const a of approvals) if (!$(`request-${a.id}`)) pending.append(request(a));
    $("none").hidden = approvals.length > 0;
    $("history").tBodies[0].replaceChildren(...history.map(ended));
    showError(null);
  } catch (e) {
    if (e.status === 401) {
      $("signin").hidden = false;
      $("logout").hidden = true;
    } else {
      showError(e);
    }
  }
}

function tick() {
  for (const t of document.querySelectorAll(".timer")) t.textContent = left(Number(t.dataset.expires));
}

document.addEventListener("DOMContentLoaded", () => {
  $("logout").addEventListener("click", async () => {
    await call("POST", "/api/logout").catch(() => {});
    location.reload();
  });
  refresh();
  setInterval(refresh, 2000);
  setInterval(tick, 1000);
});
