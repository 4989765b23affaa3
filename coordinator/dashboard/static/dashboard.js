// The dashboard reads /api/summary (built from the chain alone) and redraws every few seconds.
"use strict";

const REFRESH_MS = 4000;
const charts = {};

const short = (hex, n = 6) => (hex && hex.length > 2 * n + 2 ? `${hex.slice(0, n + 2)}…${hex.slice(-n)}` : hex || "");
const fmt = (x, digits = 2) => (x === null || x === undefined ? "—" : Number(x).toLocaleString(undefined, { maximumFractionDigits: digits }));
const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`);

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fillTable(id, rows, toCells) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    tr.append(...toCells(row));
    return tr;
  }));
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell("nothing yet", "muted");
    td.colSpan = document.querySelectorAll(`#${id} thead th`).length;
    tr.append(td);
    body.append(tr);
  }
}

// A node's peer id is what it claimed at registration; only a verified identity binding makes it its own.
function nodeCell(n) {
  const td = cell(n.peer_id ? short(n.peer_id, 6) : short(n.address, 4), "mono");
  td.title = `${n.address}${n.peer_id ? `\n${n.peer_id}` : ""}`;
  if (n.identity !== "verified") {
    const tag = document.createElement("span");
    tag.className = "tag warn identity";
    tag.textContent = n.identity === "unknown" ? "identity unknown" : "unverified";
    tag.title = n.identity_note || "no registration event was read for this node";
    td.append(" ", tag);
  }
  return td;
}

function drawChart(id, type, labels, datasets, yTitle) {
  if (charts[id]) {
    charts[id].data.labels = labels;
    charts[id].data.datasets = datasets;
    charts[id].update("none");
    return;
  }
  charts[id] = new Chart(document.getElementById(id), {
    type,
    data: { labels, datasets },
    options: {
      animation: false,
      responsive: true,
      plugins: { legend: { labels: { color: "#e6e8ee" } } },
      scales: {
        x: { ticks: { color: "#8a93a6" }, grid: { color: "#262b36" } },
        y: { ticks: { color: "#8a93a6" }, grid: { color: "#262b36" }, title: { display: true, text: yTitle, color: "#8a93a6" } },
      },
    },
  });
}

function render(s) {
  document.getElementById("chain").textContent =
    `chain ${s.chain.chain_id} · ledger ${short(s.chain.ledger, 4)} · block ${s.chain.block}`;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;

  const t = s.totals;
  const totals = [
    ["rounds settled", fmt(t.rounds_settled, 0)], ["nodes", fmt(t.nodes, 0)],
    ["verified samples", fmt(t.verified_samples, 0)], [`paid out (${s.token_symbol})`, fmt(t.earned)],
    [`claimed (${s.token_symbol})`, fmt(t.claimed)], [`slashed (${s.token_symbol})`, fmt(t.slashed)],
  ];
  document.getElementById("totals").replaceChildren(...totals.map(([label, value]) => {
    const div = document.createElement("div");
    div.className = "total";
    div.innerHTML = `<div class="value"></div><div class="label"></div>`;
    div.querySelector(".value").textContent = value;
    div.querySelector(".label").textContent = label;
    return div;
  }));

  fillTable("leaderboard", s.nodes, (n) => [
    nodeCell(n), cell(n.strategy),
    cell(fmt(n.verified_samples, 0), "num"), cell(fmt(n.earned), "num"), cell(fmt(n.claimed), "num"),
    cell(fmt(n.stake), "num"), cell(fmt(n.slashed), n.slashed > 0 ? "num bad" : "num"), cell(n.status),
  ]);

  fillTable("rounds", [...s.rounds].reverse(), (r) => [
    cell(r.round_id, "num"), cell(r.kind || "—", r.kind === "generation" ? "gen" : (r.kind ? "" : "muted")),
    versionCell(r.base_model_hash, r.model_hash), cell(r.status),
    cell(fmt(r.accepted, 0), "num good"), cell(fmt(r.rejected, 0), r.rejected ? "num bad" : "num"),
    cell(fmt(r.total_samples, 0), "num"), cell(payRate(r, s.token_symbol), "num"),
    cell(fmt(r.mean_reward, 3), "num"), cell(pct(r.held_out_accuracy), "num"),
    cell(fmt(r.total_payout), "num"), cell(fmt(r.settle_gas, 0), "num"), cell(short(r.traces_root, 4), "mono"),
  ]);

  fillTable("versions", s.versions, (v) => [
    versionCell(v.base_model_hash, v.model_hash),
    cell(v.first_round === v.last_round ? `r${v.first_round}` : `r${v.first_round}–r${v.last_round}`, "num"),
    cell(fmt(v.training_rounds, 0), "num"), cell(fmt(v.generation_rounds, 0), v.generation_rounds ? "num gen" : "num"),
    cell(fmt(v.accepted_traces, 0), "num"), serversCell(v, s.serving),
  ]);
  document.getElementById("serving-note").textContent = `Serving nodes: ${s.serving}.`;

  fillTable("slashes", s.slashes, (x) => {
    const evidence = document.createElement("td");
    const link = document.createElement("a");
    link.href = `evidence/${x.evidence_hash}`;
    link.textContent = short(x.evidence_hash, 6);
    link.className = "mono";
    evidence.append(link);
    return [cell(x.round_id, "num"), cell(short(x.node, 4), "mono"), cell(x.reason, "bad"), cell(fmt(x.amount), "num"), evidence];
  });

  const curve = s.rounds.filter((r) => r.held_out_accuracy !== null);
  drawChart("reward-chart", "line", curve.map((r) => `r${r.round_id}`), [{
    label: "held-out accuracy", data: curve.map((r) => r.held_out_accuracy), borderColor: "#6ea8fe",
    backgroundColor: "rgba(110,168,254,.2)", fill: true, tension: 0.25,
  }], "accuracy");
  document.getElementById("heldout-summary").textContent = heldOutSummary(curve);
  // Each strategy's contribution values pooled over every round on chain: the mean, and its 95%
  // interval as a floating bar (none for a single value).
  drawChart("strategy-chart", "bar", s.strategies.map((x) => x.strategy), [{
    type: "bar", label: "95% interval", data: s.strategies.map((x) => (x.ci_low === null ? null : [x.ci_low, x.ci_high])),
    backgroundColor: "rgba(95,211,141,.3)", borderColor: "#5fd38d", borderWidth: 1, barPercentage: 0.35,
  }, {
    type: "line", label: "mean value", data: s.strategies.map((x) => x.mean_value), showLine: false,
    pointRadius: 5, borderColor: "#6ea8fe", backgroundColor: "#6ea8fe",
  }], "Δ expected reward per contribution");
  document.getElementById("strategy-note").textContent = s.strategies.length
    ? `${s.strategies.map((x) => `${x.strategy}: ${x.contributions} values over ${x.rounds} rounds`).join(" · ")}. ` +
      "Value: the change in expected reward on the round's public validation batch from one contribution's " +
      "update alone. Overlapping intervals: the chain does not tell those strategies apart."
    : "No contribution values on chain yet: training rounds publish them per strategy when they settle.";
}

// The curve in words, from the chain's figures alone: first, best and last round.
function heldOutSummary(curve) {
  if (!curve.length) return "No held-out accuracy on chain yet: each settled training round publishes one.";
  const at = (r) => `${pct(r.held_out_accuracy)} (r${r.round_id})`;
  const best = curve.reduce((a, b) => (b.held_out_accuracy > a.held_out_accuracy ? b : a));
  return `Held-out accuracy: first ${at(curve[0])}, best ${at(best)}, last ${at(curve[curve.length - 1])}.`;
}

// A model version: its hash, or base + adapter in adapter rounds.
function versionCell(base, model) {
  const td = cell(base ? `${short(base, 4)} + ${short(model, 4)}` : short(model, 4), "mono");
  td.title = base ? `base ${base}\nadapter ${model}` : model;
  return td;
}

function payRate(r, symbol) {
  if (r.reward_rate === null || r.reward_rate === undefined) return "—";
  return `${fmt(r.reward_rate, 4)} ${symbol} / ${r.kind === "generation" ? "trace" : "prompt"}`;
}

// Serving nodes are not on chain: shown where a DHT lookup found signed records, else "unknown".
function serversCell(v, serving) {
  if (v.servers === null) {
    const td = cell("unknown", "muted");
    td.title = v.servers_note || serving;
    return td;
  }
  if (!v.servers.length) return cell("none found", "muted");
  const td = cell("", "servers");
  td.append(...v.servers.map((x, i) => {
    const span = document.createElement("span");
    span.className = "mono";
    span.textContent = `${i ? ", " : ""}${x.url}`;
    span.title = `server key ${x.server_key}\nrecord expires ${new Date(x.expires_ms).toLocaleString()}`;
    return span;
  }));
  return td;
}

async function refresh() {
  try {
    const response = await fetch("api/summary", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    render(await response.json());
  } catch (err) {
    document.getElementById("updated").textContent = `cannot reach the API: ${err.message}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
