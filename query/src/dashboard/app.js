// passpulse dashboard: reads /api/v1/insights/* with the filters in the page's URL and draws
// every card with plain DOM and SVG. Live figures and the activity feed refresh every 3 s, the
// other cards every 15 s; a refresh never overlaps the previous one.
"use strict";

const FILTERS = ["from", "to", "program", "source", "campaign", "location"];
const FAST_MS = 3000;
const SLOW_MS = 15000;
const DAY_MS = 86400000;
let token = sessionStorage.getItem("passpulse-token");

const fmtInt = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
const fmtMoney = new Intl.NumberFormat("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %");
const num = (v) => (v === null || v === undefined ? "–" : fmtInt.format(v));
/** The sum of column `key` over `rows` (missing values count 0). */
const total = (rows, key) => rows.reduce((a, r) => a + (r[key] || 0), 0);
const when = (v) => (v ? String(v).replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "–");

/** An element with attributes and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const ns = ["svg", "rect", "path", "text", "line", "g", "title", "circle"].includes(tag)
    ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/** The filters as the API takes them: `to` is the last day shown, so the API gets the next. */
function scope() {
  const page = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const k of FILTERS) {
    let v = (page.get(k) || "").trim();
    if (!v) continue;
    if (k === "to" && /^\d{4}-\d{2}-\d{2}$/.test(v)) {
      v = new Date(Date.parse(v + "T00:00:00Z") + DAY_MS).toISOString().slice(0, 10);
    }
    out.set(k, v);
  }
  return out;
}

function apiUrl(path, extra = {}, scoped = true) {
  const q = scoped ? scope() : new URLSearchParams();
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  const s = q.toString();
  return path + (s ? "?" + s : "");
}

/** The API's answer at `url` (with the token, if one was given); a refusal throws. */
async function fetchOk(url) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(url, { headers });
  if (r.status === 401) {
    document.getElementById("token").hidden = false;
    throw new Error("this server needs an access token");
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body.error || r.status + " " + r.statusText);
  }
  return r;
}

async function api(path, extra = {}, scoped = true) {
  return (await fetchOk(apiUrl(path, extra, scoped))).json();
}

/**
 * A download link that works with the access token too: a plain link cannot send the
 * Authorization header, so with a token the file is fetched with it and saved from a blob URL.
 */
async function download(ev) {
  if (!token) return; // the link itself downloads the file
  ev.preventDefault();
  const link = ev.currentTarget;
  const status = document.getElementById("status");
  try {
    const blob = await (await fetchOk(link.href)).blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: link.getAttribute("download") || "" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    status.textContent = "The download failed: " + e.message;
  }
}

function figures(id, items) {
  const dl = document.getElementById(id);
  dl.replaceChildren(...items.flatMap(([key, label, value]) => [
    el("dt", {}, label),
    el("dd", { "data-key": key }, value),
  ]));
}

function table(id, rows, columns, caption) {
  const box = document.getElementById(id);
  if (!rows.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No data for these filters."));
    return;
  }
  box.replaceChildren(el("div", { class: "scroll" }, el("table", {},
    caption ? el("caption", {}, caption) : null,
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c.label)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) =>
      el("td", { "data-key": c.key, class: c.num ? "num" : null }, (c.fmt || String)(r[c.key])))))),
  )));
}

/** A line chart: `xs` labels (days), `series` [{name, values, cls}]; `top` fixes the scale. */
function lineChart(id, xs, series, yFmt = num, top = null) {
  const box = document.getElementById(id);
  if (!xs.length || series.every((s) => s.values.every((v) => v === null))) {
    box.replaceChildren(el("p", { class: "empty" }, "No data for these filters."));
    return;
  }
  const W = 640, H = 220, L = 48, R = 8, T = 8, B = 28;
  const max = top || Math.max(1, ...series.flatMap((s) => s.values.filter((v) => v !== null)));
  const x = (i) => L + (xs.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (xs.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": series.map((s) => s.name).join(", ") + " over time" });
  for (const f of [0, 0.5, 1]) {
    svg.append(el("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: "grid" }),
      el("text", { x: L - 4, y: y(max * f) + 4, class: "axis", "text-anchor": "end" }, yFmt(max * f)));
  }
  const ticks = [...new Set([0, Math.floor((xs.length - 1) / 2), xs.length - 1])];
  for (const i of ticks) {
    const anchor = xs.length === 1 ? "middle" : i === 0 ? "start" : i === xs.length - 1 ? "end" : "middle";
    svg.append(el("text", { x: x(i), y: H - 8, class: "axis", "text-anchor": anchor }, xs[i]));
  }
  for (const s of series) {
    let d = "";
    s.values.forEach((v, i) => {
      if (v !== null) d += (d && s.values[i - 1] !== null ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1);
    });
    svg.append(el("path", { d, class: "line " + s.cls }, el("title", {}, s.name)));
    s.values.forEach((v, i) => {
      if (v !== null) {
        svg.append(el("circle", { cx: x(i), cy: y(v), r: 3.5, class: "dot " + s.cls, "data-value": v },
          el("title", {}, `${s.name}, ${xs[i]}: ${yFmt(v)}`)));
      }
    });
  }
  const legend = el("ul", { class: "legend" },
    series.map((s) => el("li", { class: s.cls }, s.name)));
  box.replaceChildren(svg, legend);
}

function heatmap(id, rows) {
  const box = document.getElementById(id);
  const days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const grid = new Map(rows.map((r) => [r.weekday * 24 + r.hour, r.scans]));
  const max = Math.max(1, ...grid.values());
  const C = 22, L = 36, T = 16;
  const svg = el("svg", { viewBox: `0 0 ${L + 24 * C} ${T + 7 * C}`, role: "img",
    "aria-label": "Scans per hour of the week; the darker, the busier" });
  for (let h = 0; h < 24; h += 3) {
    svg.append(el("text", { x: L + h * C + C / 2, y: 11, class: "axis", "text-anchor": "middle" }, h));
  }
  days.forEach((name, d) => {
    svg.append(el("text", { x: L - 4, y: T + d * C + C * 0.7, class: "axis", "text-anchor": "end" }, name));
    for (let h = 0; h < 24; h++) {
      const n = grid.get(d * 24 + h) || 0;
      svg.append(el("rect", { x: L + h * C, y: T + d * C, width: C - 2, height: C - 2, rx: 3,
        class: "cell", "fill-opacity": (0.08 + 0.92 * (n / max)).toFixed(3), "data-scans": n },
        el("title", {}, `${name} ${h}:00–${h + 1}:00 UTC: ${num(n)} scans`)));
    }
  });
  box.replaceChildren(svg);
}

const cards = {
  async live() {
    const s = await api("/api/v1/insights/live", {}, false);
    const all = (s.install_base && s.install_base.all) || {};
    figures("live-figures", [
      ["active_passes", "Passes installed now (all)", num(all.active_passes)],
      ["scans_today", "Scans today", num((s.today && s.today.scan) || 0)],
      ["distinct_passes", "Distinct passes seen (estimate)", num(s.distinct && s.distinct.all && s.distinct.all.passes)],
      ["events", "Events received", num(s.events)],
    ]);
  },
  async activity() {
    const rows = await api("/api/v1/insights/activity", { limit: 20 });
    table("activity-table", rows, [
      { key: "ts", label: "Time", fmt: when },
      { key: "type", label: "Event" },
      { key: "pass", label: "Pass", fmt: (v) => v || "–" },
      { key: "location", label: "Location", fmt: (v) => v || "–" },
      { key: "source", label: "Source", fmt: (v) => v || "–" },
    ]);
  },
  async funnel() {
    const rows = await api("/api/v1/insights/channel_funnel");
    const [clicked, issued, installed, scanned, redeemed] =
      ["clicked", "issued", "installed", "scanned", "redeemed"].map((k) => total(rows, k));
    const rate = (a, b) => (b > 0 ? a / b : null);
    figures("leads-figures", [
      ["clicked", "Leads (links clicked)", num(clicked)],
      ["issued", "Passes issued", num(issued) + " · " + pct(rate(issued, clicked))],
      ["installed", "Installed", num(installed) + " · " + pct(rate(installed, issued))],
      ["scanned", "First scan", num(scanned) + " · " + pct(rate(scanned, installed))],
      ["redeemed", "Redeemed", num(redeemed) + " · " + pct(rate(redeemed, scanned))],
    ]);
    table("sources-table", rows, [
      { key: "source", label: "Source", fmt: (v) => v || "(none)" },
      { key: "campaign", label: "Campaign", fmt: (v) => v || "(none)" },
      { key: "clicked", label: "Clicked", fmt: num, num: true },
      { key: "issued", label: "Issued", fmt: num, num: true },
      { key: "installed", label: "Installed", fmt: num, num: true },
      { key: "install_rate", label: "Install rate", fmt: pct, num: true },
      { key: "engagement_rate", label: "Offer engagement", fmt: pct, num: true },
      { key: "scanned", label: "Scanned", fmt: num, num: true },
      { key: "redeemed", label: "Redeemed", fmt: num, num: true },
    ]);
    fillList("sources", rows.map((r) => r.source));
    fillList("campaigns", rows.map((r) => r.campaign));
  },
  async installs() {
    const [days, base] = await Promise.all([
      api("/api/v1/insights/adoption_daily"),
      api("/api/v1/insights/estimated_active_base"),
    ]);
    lineChart("installs-chart", days.map((r) => String(r.day).slice(0, 10)), [
      { name: "Issued", values: days.map((r) => r.issued), cls: "s1" },
      { name: "Installed", values: days.map((r) => r.installs), cls: "s2" },
      { name: "Removed", values: days.map((r) => r.uninstalls), cls: "s3" },
    ]);
    figures("base-figures", [
      ["active", "Active install base", num(total(base, "active"))],
      ["estimated_active", "Estimated active (devices gone or silent left out)", num(total(base, "estimated_active"))],
    ]);
    fillList("programs", base.map((r) => r.program));
  },
  async usage() {
    const [days, heat, peaks] = await Promise.all([
      api("/api/v1/insights/usage_daily"),
      api("/api/v1/insights/scan_heatmap"),
      api("/api/v1/insights/location_peaks"),
    ]);
    lineChart("usage-chart", days.map((r) => String(r.day).slice(0, 10)), [
      { name: "Scans", values: days.map((r) => r.scans), cls: "s1" },
      { name: "Redemptions", values: days.map((r) => r.redemptions), cls: "s4" },
    ]);
    figures("usage-figures", [
      ["scans", "Scans", num(total(days, "scans"))],
      ["rejected", "Rejected at the scanner", num(total(days, "rejected"))],
      ["redemptions", "Redemptions", num(total(days, "redemptions"))],
    ]);
    heatmap("heatmap", heat);
    table("locations-table", peaks, [
      { key: "location", label: "Location" },
      { key: "peak_minute", label: "Peak minute", fmt: when },
      { key: "peak_minute_scans", label: "Scans in it", fmt: num, num: true },
      { key: "peak_hour", label: "Peak hour", fmt: when },
      { key: "peak_hour_scans", label: "Scans in it", fmt: num, num: true },
    ]);
    fillList("locations", peaks.map((r) => r.location));
  },
  async offers() {
    const rows = await api("/api/v1/insights/offers");
    const viewing = total(rows, "passes_viewing");
    const redeeming = total(rows, "viewers_redeeming");
    figures("redemption-figures", [
      ["redemption_rate", "Overall (viewers who redeemed ÷ passes viewing, per offer, summed)",
        pct(viewing > 0 ? redeeming / viewing : null)],
    ]);
    table("offers-table", rows, [
      { key: "offer", label: "Offer" },
      { key: "views", label: "Views", fmt: num, num: true },
      { key: "redemptions", label: "Redemptions", fmt: num, num: true },
      { key: "redemption_rate", label: "Rate", fmt: pct, num: true },
    ]);
  },
  async survival() {
    const rows = await api("/api/v1/insights/survival");
    const cohorts = [...new Set(rows.map((r) => String(r.cohort_week).slice(0, 10)))].sort().slice(-6);
    const checkpoints = [1, 7, 30, 90];
    const series = cohorts.map((c, i) => ({
      name: "Week of " + c,
      cls: "s" + ((i % 6) + 1),
      values: checkpoints.map((d) => {
        const rs = rows.filter((r) => String(r.cohort_week).slice(0, 10) === c && r.days === d);
        const n = total(rs, "passes");
        return n > 0 ? total(rs, "still_installed") / n : null;
      }),
    }));
    lineChart("survival-chart", checkpoints.map((d) => d + (d === 1 ? " day" : " days")), series, pct, 1);
  },
  async postal() {
    const [s] = await api("/api/v1/insights/postal_savings");
    figures("postal-figures", [
      ["letters_needed", "Customers who still need a letter", num(s && s.letters_needed)],
      ["letters_avoided", "Letters avoided (pass installed)", num(s && s.letters_avoided)],
      ["saving", "Saving", s ? fmtMoney.format(s.saving) : "–"],
    ]);
    const link = document.getElementById("postal-csv");
    link.href = apiUrl("/api/v1/insights/postal_list", { format: "csv" });
  },
};

function fillList(id, values) {
  const list = document.getElementById(id);
  const have = new Set([...list.options].map((o) => o.value));
  for (const v of values) {
    if (v && !have.has(v)) {
      have.add(v);
      list.append(el("option", { value: v }));
    }
  }
}

const FAST = ["live", "activity"];
const SLOW = Object.keys(cards).filter((k) => !FAST.includes(k));
const running = new Set();

async function refresh(names) {
  const status = document.getElementById("status");
  const errors = [];
  await Promise.all(names.filter((n) => !running.has(n)).map(async (n) => {
    running.add(n);
    try {
      await cards[n]();
    } catch (e) {
      errors.push(n + ": " + e.message);
    } finally {
      running.delete(n);
    }
  }));
  status.textContent = errors.length ? "Some cards could not load: " + errors.join("; ")
    : "Updated " + new Date().toLocaleTimeString();
  return errors.length === 0;
}

function readFiltersIntoForm() {
  const page = new URLSearchParams(location.search);
  const form = document.getElementById("filters");
  for (const k of FILTERS) form.elements[k].value = page.get(k) || "";
}

async function start() {
  readFiltersIntoForm();
  document.getElementById("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const q = new URLSearchParams();
    for (const k of FILTERS) if (form.elements[k].value.trim()) q.set(k, form.elements[k].value.trim());
    history.pushState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
    refresh([...FAST, ...SLOW]);
  });
  document.getElementById("clear").addEventListener("click", () => {
    history.pushState(null, "", location.pathname);
    readFiltersIntoForm();
    refresh([...FAST, ...SLOW]);
  });
  window.addEventListener("popstate", () => {
    readFiltersIntoForm();
    refresh([...FAST, ...SLOW]);
  });
  document.getElementById("postal-csv").addEventListener("click", download);
  document.getElementById("token").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = ev.target.elements.token.value;
    sessionStorage.setItem("passpulse-token", token);
    ev.target.hidden = true;
    refresh([...FAST, ...SLOW]);
  });
  const ok = await refresh([...FAST, ...SLOW]);
  document.body.dataset.ready = ok ? "true" : "error";
  setInterval(() => refresh(FAST), FAST_MS);
  setInterval(() => refresh(SLOW), SLOW_MS);
}

document.addEventListener("DOMContentLoaded", start);
