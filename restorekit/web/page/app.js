// restorekit serve: the page. Plain JS, no build step; every text from the server goes in with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, upload: null, job: null, timer: null, submitting: false, said: "", running: [],
                drawn: "", offScale: {} };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg || "";
  box.hidden = !msg;
}

// What a screen reader should hear as it happens (the #announce status region, read politely):
// the upload read, the job started, waiting, finished. Emptied first, so a line said again is read again.
let announceTimer = null;
function announce(msg) {
  const region = $("announce");
  clearTimeout(announceTimer);
  region.textContent = "";
  announceTimer = setTimeout(() => { region.textContent = msg; }, 60);
}

// Focus goes on with the work when the control that held it goes away (Restore disabled while a
// job runs, Cancel hidden when it ends): to Cancel, else Restore, else the results.
function moveFocus() {
  if (!$("cancel").hidden) $("cancel").focus();
  else if (!$("run").disabled) $("run").focus();
  else if (!$("results").hidden) $("results-h").focus();
}

// "a, b and c"
function list(names) {
  return names.length < 2 ? names.join("") : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

async function api(path, options = {}) {
  const resp = await fetch(path, options);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

// A pixel count as the server words it (restorekit.images): MP to one decimal, exact under 0.1 MP.
function pixels(n) { return n < 100000 ? `${n.toLocaleString("en-US")} px` : `${(n / 1e6).toFixed(1)} MP`; }

function mb(bytes) { return (bytes < 10e6 ? (bytes / 1e6).toFixed(2) : (bytes / 1e6).toFixed(0)) + " MB"; }

// ---------------------------------------------------------------- set-up

async function init() {
  try {
    state.info = await api("api/info");
  } catch (e) {
    showError("cannot reach the server: " + e.message);
    return;
  }
  const info = state.info;
  $("version").textContent = `v${info.version} · ${info.device}`;
  const lim = info.limits;
  $("limits").textContent = `up to ${lim.max_upload_mb} MB and ${pixels(lim.max_pixels)}; ` +
    "PNG, JPEG, WebP, BMP, TIFF or GIF. The image stays on this machine.";
  $("sample").hidden = !info.sample;
  const scale = $("scale");
  for (let k = 1; k <= lim.max_scale; k++) scale.append(el("option", { value: k, text: String(k), selected: k === 4 }));
  $("samples").max = lim.max_samples;
  const box = $("methods");
  for (const m of info.methods) {
    const id = "m-" + m.name;
    const why = m.available ? (m.notes.length ? id + "-notes" : null) : id + "-why";
    const input = el("input", { type: "checkbox", id, value: m.name, "data-method": m.name,
                                checked: m.available, disabled: !m.available, "aria-describedby": why });
    input.addEventListener("change", refresh);
    // A method that serves only some scales (a ×1 denoiser) says which, in its name.
    const only = m.scales ? el("span", { class: "scales", text: `(only ×${m.scales.join(", ×")}) ` }) : null;
    const label = el("label", { for: id }, input, document.createTextNode(" "), el("b", { text: m.name }),
                     document.createTextNode(m.stochastic ? " (stochastic) " : " "), only,
                     el("span", { class: "muted", text: m.summary }));
    const item = el("div", { class: "method" + (m.available ? "" : " off"), "data-method": m.name }, label);
    if (!m.available) {
      item.append(el("details", { class: "why muted" }, el("summary", { text: "cannot run here — why" }),
                     el("span", { class: "reason", id: why, text: m.reason })));
    } else if (m.notes.length) {
      item.append(el("div", { class: "why muted", id: why, text: m.notes.join(" · ") }));
    }
    box.append(item);
  }
  for (const p of info.broken_plugins || []) {  // installed, but its methods could not load
    box.append(el("div", { class: "method off" },
                  el("details", { class: "why muted" },
                     el("summary", { text: `plugin ${p.name} did not load — why` }),
                     el("span", { class: "reason", text: p.status }))));
  }
  if (!info.detector.available) {
    $("detector-note").textContent = `finding faces is not available here: ${info.detector.reason}`;
    for (const r of document.querySelectorAll("input[name=faces]")) if (r.value !== "aligned") r.disabled = true;
  }
  $("file").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    ev.target.value = "";  // choosing the same file again (after the server let it go) is a change too
    if (file) uploadFile(file);
  });
  $("sample").addEventListener("click", () => sendUpload("api/uploads/sample", { method: "POST" }));
  $("degrade").addEventListener("change", refresh);
  $("degradation").addEventListener("input", refresh);
  scale.addEventListener("change", refresh);
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files[0]) uploadFile(ev.dataTransfer.files[0]);
  });
  refresh();
}

function chosenMethods() {
  return [...document.querySelectorAll("#methods input[type=checkbox]:checked")].map((i) => i.value);
}

// A method that does not serve the chosen scale (a ×1 denoiser at ×4: the server would refuse the
// job) is unticked and disabled; at a scale it serves it is enabled again, ticked if it was.
function fitScale(k) {
  for (const m of state.info.methods) {
    if (!m.available) continue;
    const box = $("m-" + m.name);
    const fits = !m.scales || m.scales.includes(k);
    if (!fits && !box.disabled) {
      state.offScale[m.name] = box.checked;
      box.checked = false;
      box.disabled = true;
    } else if (fits && box.disabled) {
      box.disabled = false;
      box.checked = state.offScale[m.name] !== false;
      delete state.offScale[m.name];
    }
    box.closest(".method").classList.toggle("off", !fits);
  }
}

function refresh() {
  const k = Number($("scale").value);
  fitScale(k);
  const busy = (state.job && !state.job.finished) || state.submitting;
  const none = chosenMethods().length === 0;
  const degrade = $("degrade").checked;
  // At ×1 the default degradation (bicubic:1) leaves the image as it is: one must be named, as in compare.
  const needsSpec = degrade && k === 1 && !$("degradation").value.trim();
  $("run").disabled = !state.upload || none || busy || needsSpec;
  // Why Restore cannot be pressed, next to it (and its description), rather than a greyed button alone.
  const anyFits = [...document.querySelectorAll("#methods input[type=checkbox]")].some((b) => !b.disabled);
  $("run-why").textContent = busy ? "" : !state.upload ? "choose an image first"
    : none ? (anyFits ? "choose a method first" : `no method here runs at ×${k}: choose another scale`)
    : needsSpec ? "at ×1, name a degradation (e.g. noise:15): bicubic:1 would leave the image undamaged" : "";
  $("degradation").disabled = !degrade;
  $("degradation").placeholder = k === 1 ? "needed at ×1, e.g. noise:15" : `bicubic:${k}`;
  const stochastic = chosenMethods().some((n) => state.info.methods.find((m) => m.name === n).stochastic);
  $("seed").disabled = $("samples").disabled = !stochastic;
}

// ---------------------------------------------------------------- upload

function uploadFile(file) {
  const lim = state.info.limits;
  if (file.size > lim.max_upload_bytes) {  // the server refuses it too; saying so here saves sending it
    showError(`${file.name}: ${mb(file.size)} is over the upload limit of ${mb(lim.max_upload_bytes)} ` +
              "(restorekit serve --max-upload-mb raises it)");
    return;
  }
  sendUpload("api/uploads", { method: "POST", body: file,
    headers: { "X-Filename": encodeURIComponent(file.name), "Content-Type": file.type || "application/octet-stream" } });
}

async function sendUpload(path, options) {
  showError("");
  state.upload = null;
  $("upload").replaceChildren(el("span", { class: "muted", text: "reading…" }));
  announce("reading the image…");
  refresh();
  try {
    const up = await api(path, options);
    state.upload = up;
    $("upload").replaceChildren(
      el("div", { id: "upload-name", text: `${up.name}: ${up.width}×${up.height} px` }),
      ...(up.notes || []).map((note) => el("div", { class: "upload-note muted", text: `note: ${note}` })),
      el("img", { src: up.preview, alt: `preview of ${up.name}`, id: "upload-preview" }));
    announce([`${up.name}: ${up.width}×${up.height} px, ready`, ...(up.notes || [])].join("; "));
  } catch (e) {
    $("upload").replaceChildren();
    announce("");
    showError(e.message);  // said by the alert
  }
  refresh();
}

// ---------------------------------------------------------------- jobs

async function run() {
  if (state.submitting || $("run").disabled) return;
  const hadFocus = document.activeElement === $("run");
  showError("");
  const degradation = $("degradation").value.trim();
  const settings = {
    upload: state.upload.id, methods: chosenMethods(), scale: Number($("scale").value),
    faces: document.querySelector("input[name=faces]:checked").value, degrade: $("degrade").checked,
    degradation: $("degrade").checked && degradation ? degradation : null,
    seed: Number($("seed").value) || 0, samples: Math.max(1, Number($("samples").value) || 1),
  };
  state.submitting = true;  // a second Enter while the request is on its way sends no second job
  state.running = settings.methods;
  refresh();
  let job = null;
  try {
    job = await api("api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify(settings) });
  } catch (e) {
    showError(e.message);
  }
  state.submitting = false;
  if (job) {
    show(job);
    poll();
  } else {
    refresh();
  }
  if (hadFocus) moveFocus();
}

async function cancel() {
  if (!state.job) return;
  try { show(await api(`api/jobs/${state.job.id}/cancel`, { method: "POST" })); } catch (e) { showError(e.message); }
}

// A failed poll (the network, a restarting proxy) is retried, less often each time, and said on
// the page; a job the server no longer has (it restarted, or trimmed the job) ends the wait.
function poll(delay = 300, failures = 0) {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    try {
      const job = await api(`api/jobs/${state.job.id}`);
      if (failures) showError("");
      show(job);
      if (!job.finished) poll();
    } catch (e) {
      if (e.status === 404) {
        show({ ...state.job, finished: true, status: "failed", stage: "the server no longer has this job" });
        showError(`${e.message}: the server no longer has this job (it was restarted?); restore again`);
        return;
      }
      showError(`cannot reach the server (${e.message}); trying again…`);
      poll(Math.min(delay * 2, 5000), failures + 1);
    }
  }, delay);
}

function show(job) {
  const onCancel = document.activeElement === $("cancel");
  state.job = job;
  refresh();
  $("cancel").hidden = job.finished;
  $("progress").hidden = job.finished;
  $("results").setAttribute("aria-busy", String(!job.finished));
  let stage = job.stage;
  if (job.status === "queued") stage = job.position ? `waiting: ${job.position} job(s) ahead` : "waiting";
  if (job.step && job.step[1] > 1) stage += ` — step ${job.step[0]} of ${job.step[1]}`;
  $("stage").textContent = stage;
  const part = job.step && job.step[1] ? job.step[0] / job.step[1] : 0;
  $("bar").value = job.units ? Math.min(1, (job.units_done + part) / job.units) : 0;
  if (job.error) showError(job.error);
  renderResults(job);
  const said = `${job.id} ${job.status}`;
  if (said !== state.said) {
    state.said = said;
    announce(statusLine(job));
  }
  if (onCancel && job.finished) moveFocus();
}

// The line said when a job changes status (not at each step: a step count read aloud every 300 ms
// would drown everything else).
function statusLine(job) {
  const r = job.result || {};
  if (job.status === "queued") return job.position ? `waiting: ${job.position} job(s) ahead` : "waiting";
  if (job.status === "running") {
    return state.running.length ? `restoring with ${list(state.running)}…` : "restoring…";
  }
  if (job.status === "failed") return "restore failed: the error is shown above the results";
  const rows = r.methods || [];
  const ok = rows.filter((m) => m.status === "ok").map((m) => m.name);
  const other = rows.filter((m) => m.status !== "ok").map((m) => `${m.name} ${m.status}`);
  const what = [ok.length ? `${list(ok)} finished` : "", ...other].filter(Boolean).join(", ");
  const head = job.status === "cancelled" ? "restore cancelled" : "restore done";
  return what ? `${head}: ${what}; the results are below` : head;
}

// ---------------------------------------------------------------- results

// An image's text alternative: what it is, by which method and at which scale, and its size.
function altText(image, method, scale) {
  const size = `${image.width}×${image.height} px`;
  if (image.role === "output") {
    const sample = (/ sample \d+/.exec(image.label) || [""])[0];
    return `${method}${sample} output, restored ×${scale}: ${size}`;
  }
  if (image.role === "crop") return `${image.label} restored by ${method} at ×${scale}: ${size}`;
  return `${image.label.replace(/ \d+×\d+$/, "")}: ${size}`;  // the inputs and the faces found
}

function figure(image, method, scale) {
  const img = el("img", { src: image.url, alt: altText(image, method, scale), "data-role": image.role,
                          "data-method": method, "data-download": image.download });
  if (image.width < 128) img.classList.add("pixelated");
  const link = el("a", { href: image.url + "?download=1", download: image.download, class: "download",
                         text: "download", "aria-label": `download ${image.download}`,
                         "data-role": image.role, "data-method": method });
  return el("figure", {}, img, el("figcaption", {}, el("span", { text: image.label }), link));
}

function fmt(v) {
  if (typeof v === "string") return { Infinity: "∞", "-Infinity": "−∞" }[v] || v;  // results.json's encoding
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-2 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(a >= 10 ? 2 : 4);
}

// Drawn again only when the results change (not at each poll), and the link that had the focus keeps
// it: a keyboard or screen-reader user reading the results while a job runs is not thrown back.
function renderResults(job) {
  const r = job.result || {};
  $("results").hidden = !r.input;
  if (!r.input) return;
  const drawn = JSON.stringify([job.id, job.status, r]);
  if (drawn === state.drawn) return;
  state.drawn = drawn;
  const focused = $("results").contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
  const aboutOpen = !!document.querySelector("#table details[open]");
  $("status").textContent = `${job.status}${r.settings ? ` · ×${r.settings.scale}` : ""}`;
  $("notes").replaceChildren(...(r.notes || []).map((n) => el("li", { text: n })));
  const widest = Math.max(0, ...(r.methods || []).flatMap((m) => m.outputs.map((o) => o.width)),
                          ...(r.images || []).filter((i) => i.role === "hr").map((i) => i.width));
  document.documentElement.style.setProperty("--cell", Math.min(384, Math.max(192, widest || 256)) + "px");
  const scale = r.settings ? r.settings.scale : null;
  $("inputs").replaceChildren(...(r.images || []).map((i) => figure(i, "", scale)));
  renderTable(r);
  $("outputs").replaceChildren(...(r.methods || []).map((m) => methodBlock(m, scale)));
  const numbers = $("numbers");
  numbers.hidden = !r.numbers;
  if (r.numbers) { numbers.href = r.numbers.url + "?download=1"; numbers.setAttribute("download", r.numbers.download); }
  if (aboutOpen && $("table").querySelector("details")) $("table").querySelector("details").open = true;
  const links = [...$("results").querySelectorAll("a[href]")];
  const again = focused && links.find((a) => a.getAttribute("href") === focused);
  if (again) again.focus();
}

function methodBlock(m, scale) {
  const head = el("h3", {}, document.createTextNode(m.name + " "),
                  el("span", { class: m.status === "ok" ? "muted" : "failed",
                               text: m.status === "ok" ? `${m.ms} ms` + (m.samples > 1 ? ` for ${m.samples} samples` : "")
                                                       : m.status }));
  const block = el("div", { class: "method-result", "data-method": m.name, "data-status": m.status }, head);
  if (m.error) block.append(el("p", { class: "failed", text: m.error }));
  for (const n of m.notes || []) block.append(el("p", { class: "muted", text: n }));
  for (const f of m.faces || []) {  // --faces detect: why a face was left to the background
    if (f.action !== "restored") block.append(el("p", { class: "muted", text: `face ${f.index} skipped: ${f.reason}` }));
  }
  block.append(el("div", { class: "grid" }, ...m.outputs.map((o) => figure(o, m.name, scale))));
  if (m.crops && m.crops.length) {
    block.append(el("p", { class: "muted", text: "restored faces" }),
                 el("div", { class: "grid crops" }, ...m.crops.map((c) => figure(c, m.name, scale))));
  }
  return block;
}

const MS_COLUMN = "milliseconds per output (a stochastic method's samples share its time)";

function renderTable(r) {
  const metrics = (r.metrics || []).filter((m) => m.status === "ok");
  const skipped = (r.metrics || []).filter((m) => m.status !== "ok");
  const holder = $("table");
  holder.replaceChildren();
  const done = (r.methods || []).filter((m) => m.status === "ok");
  if (!metrics.length || !done.length) return;
  const best = r.best || {};
  // Which way is better is said in words too (the arrow is hidden from screen readers), and what each
  // column means is written under the table, not only in a tooltip.
  const head = el("tr", {}, el("th", { scope: "col", text: "method" }),
                  ...metrics.map((m) => el("th", { scope: "col", title: m.summary },
                    document.createTextNode(m.name + " "),
                    el("span", { "aria-hidden": "true", text: m.higher_is_better ? "↑" : "↓" }),
                    el("span", { class: "visually-hidden", text: m.higher_is_better ? "(higher is better)"
                                                                                      : "(lower is better)" }))),
                  el("th", { scope: "col", title: MS_COLUMN, text: "ms / output" }));
  const rows = done.map((m) => el("tr", { "data-method": m.name }, el("th", { scope: "row", text: m.name }),
    ...metrics.map((x) => {
      const st = (m.metrics || {})[x.name];
      let text = st ? fmt(st.mean) : "–";
      if (st && st.std !== null && st.std !== undefined) text += ` ± ${fmt(st.std)}`;
      const err = (m.metric_errors || {})[x.name];
      return el("td", { "data-metric": x.name, class: (best[x.name] || []).includes(m.name) ? "best" : null,
                        title: err || null, text });
    }),
    el("td", { "data-metric": "ms", class: (best.runtime || []).includes(m.name) ? "best" : null,
               text: String(m.ms_per_output) })));
  const caption = el("caption", { text: "Scores against the HR: ↑ higher is better, ↓ lower is better; " +
                                        "★ marks the best of each column" });
  const table = el("table", { id: "metrics" }, caption, el("thead", {}, head), el("tbody", {}, ...rows));
  const about = el("details", { class: "about-columns muted" }, el("summary", { text: "what the columns mean" }),
                   el("dl", {}, ...metrics.flatMap((m) => [el("dt", { text: m.name }), el("dd", { text: m.summary })]),
                      el("dt", { text: "ms / output" }), el("dd", { text: MS_COLUMN })));
  holder.append(table, about);
  for (const m of skipped) holder.append(el("p", { class: "muted", text: `${m.name} skipped: ${m.reason}` }));
}

document.addEventListener("DOMContentLoaded", init);
