// The page: fetches the weights, hands them to the model's worker (model-client.js), sends it one
// typed request per run (src/request.rs) and draws each step. All maths, every default and every
// bound is the library's (src/web.rs hands them over); this thread builds requests from the
// controls and draws.
import { DrawPad } from './draw-pad.js';
import { ModelClient } from './model-client.js';
import { applyLink, followControls, SHA_CHARS } from './link.js';
import { latency, liveControl, liveEntry } from './live.js';
import { drawLossCurve, drawSchedule } from './plots.js';
import { Recorder } from './recorder.js';
import { cachedWeights, fetchWeights, keepLocal, localWeights, sha256 } from './weights-cache.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// State the tests read (tests/browser/); nothing here is needed by the page itself.
const state = window.ddpmState = {
  ready: false, backend: null, error: null, stepsDrawn: 0, lastStep: null, running: false,
  interpolationReady: false, msPerStep: [], firstStepAt: null, loaded: {}, notices: [],
  runIndices: [], // the step indices drawn by the latest run's last phase, in order
};

let model = null; // Ddpm.describe() of the loaded model (src/web.rs)
let limits = null; // page_limits(): the module's bounds and defaults
// The live model answering the live controls (live.js): {name: 'main' | 'live', model: its
// describe(), title}, or null (none: the controls draw when their buttons are pressed).
let live = null;
let catalogue = { models: [], entry: null }; // weights/index.json's models, and the loaded one's entry
// `?backend=cpu` skips WebGPU; `?threads=N` sets the CPU's threads (1: the one-thread module).
const wantGpu = params.get('backend') !== 'cpu' && 'gpu' in navigator;
const client = new ModelClient({ onNotice: (text) => showNotice(text), wantGpu, threads: params.get('threads') });
// The memory the page holds, for the tests' leak checks: the worker's wasm linear memory and,
// where the browser reports it, this thread's JS heap.
window.ddpmMemory = async () => ({ wasm: await client.memory(), heap: performance.memory?.usedJSHeapSize ?? 0 });
// Test hooks: a request as the page would send it, answered with the module's error or
// 'accepted' (cancelled at its first step); and a lost GPU device.
window.ddpmTry = (request) => new Promise((resolve) => {
  client.run(request, () => { client.cancel(); resolve('accepted'); })
    .then(() => resolve('accepted'), (e) => resolve(e.field ? `${e.field}: ${e.message}` : e.message));
});
window.ddpmLoseDevice = () => client.destroyDevice();
// Test hook: runs `requests` at once, each beside the others, and resolves to each one's last
// x_t (as numbers) and when it finished.
window.ddpmRunTogether = (requests) => Promise.all(requests.map((request) => {
  let last = null;
  return client.run(request, (step) => { last = step; }, { beside: true })
    .then(() => ({ x_t: Array.from(last.x_t), at: performance.now() }));
}));

// A request's field → the control that sets it (the control is marked when the module refuses it).
const FIELD_CONTROLS = { count: 'count', steps: 'steps', eta: 'eta', guidance: 'guidance', class: 'class', solver: 'sampler', frames: 'frames' };

function showError(message, field = null, section = 'sample') {
  state.error = message;
  $('error').textContent = message;
  $('error').hidden = false;
  $('status').textContent = 'Something went wrong (see above).';
  const control = field === 't' ? (section === 'edit' ? 'edit-t' : 't') : FIELD_CONTROLS[field];
  if (control) $(control).setAttribute('aria-invalid', 'true');
}

function clearError() {
  $('error').hidden = true;
  for (const el of document.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

// A notice from the model's worker (a lost GPU and what happens next), shown with the backend.
let notice = '';
function showNotice(text) {
  state.notices.push(text);
  notice = text;
  if (model) showBackend(model);
}

function draw(canvas, width, height, rgba) {
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  canvas.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
}

// Runs a request in the worker to the end, drawing each step; resolves to the last step, or to
// undefined if a newer run or stop replaced it (which then own the controls; the client drops
// a replaced run's steps). A run restarted after a lost GPU starts its steps again.
async function drive(request, onStep) {
  let last = null;
  state.runIndices = [];
  state.lastPhase = null;
  const finished = await client.run(request, (step, ms) => {
    if (step.index === 1) state.runIndices = [];
    state.lastPhase = step.phase;
    state.msPerStep.push(ms);
    onStep(step, ms);
    state.runIndices.push(step.index);
    state.stepsDrawn += 1;
    state.firstStepAt ??= performance.now();
    last = step;
  });
  return finished ? last : undefined;
}

// What the sampler controls ask; the module fills the rest from the model's default.
function samplerChoice() {
  const solver = $('sampler').value;
  return {
    solver,
    ...(solver !== 'ddpm' && { steps: Number($('steps').value) }),
    ...(solver === 'ddim' && { eta: Number($('eta').value) }),
  };
}

// A conditional model's class (−1 in the picker: any) and guidance; nothing for others.
function guidance(picker = 'class') {
  if (!model.num_classes) return {};
  const cls = Number($(picker).value);
  return { class: cls >= 0 ? cls : null, guidance: Number($('guidance').value) };
}

function setRunning(running) {
  state.running = running;
  $('start').disabled = false;
  $('interp').disabled = running;
  $('edit').disabled = running;
  $('stop').disabled = !running;
  // The recorded run (a stopped one too) can be downloaded when nothing runs.
  $('download-gif').disabled = running || !recorder?.frames.length;
}

// A step of a sample or edit run: kept by the recorder, drawn unless the visitor is looking at
// an earlier one with the scrubber.
let recorder = null;
let shown = null; // the recorded step in view
function showStep(step, ms, what) {
  const following = Number($('scrub').value) === recorder.frames.length - 1 || recorder.frames.length === 0 || step.index === 1;
  recorder.add(step);
  $('scrub').max = String(recorder.frames.length - 1);
  $('scrub').disabled = false;
  if (following) {
    $('scrub').value = $('scrub').max;
    showRecorded();
  } else {
    // The step in view may have moved (the recording thinned): find it, or the next kept.
    const at = recorder.frames.findIndex((f) => f.index >= shown.index);
    $('scrub').value = String(at < 0 ? recorder.frames.length - 1 : at);
    $('scrub-text').textContent = `Step ${shown.index} of ${step.total} in view (${recorder.describe()}): drag to the end to follow the run.`;
  }
  state.lastStep = { index: step.index, total: step.total, t: step.t, update: step.update };
  const u = step.update;
  $('progress-text').textContent = `${what}step ${step.index} / ${step.total} (t = ${step.t}` +
    `${u.t_prev === null ? ' → x₀' : ` → ${u.t_prev}`}, order ${u.order}) · ${ms.toFixed(0)} ms per step`;
}

// The recorded step under the scrubber: its pictures and its update written out (t, σ_t, the
// rule and this step's coefficients), without recomputing anything.
function showRecorded() {
  const f = recorder.frames[Number($('scrub').value)];
  if (!f) return;
  shown = f;
  draw($('xt'), f.width, f.height, f.x_t);
  draw($('x0'), f.width, f.height, f.x0);
  const u = f.update;
  const n = (x) => (Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(4) : x.toExponential(3));
  const coefficients = u.coefficients.map(([name, value]) => `${name} = ${n(value)}`).join(', ');
  $('scrub-text').textContent = `Step ${f.index} of ${f.total}: t = ${u.t} → ${u.t_prev === null ? 'x₀' : u.t_prev}` +
    ` (the paper's t = ${u.t + 1}), σ_t = ${n(u.sigma)}, order ${u.order}. Update: ${u.rule}; ${coefficients}. ` +
    `${recorder.describe()}.`;
  state.shownT = u.t;
  state.scrubbed = { index: f.index, t: u.t, sigma: u.sigma, kept: recorder.frames.length, stride: recorder.stride };
  redrawPlots();
}

// Ends a run: the buttons, the download and the status line.
function finish(last, done) {
  setRunning(false);
  $('download').disabled = !last;
  $('status').textContent = last ? done : 'Stopped.';
}

async function startSampling() {
  const seed = Number($('seed').value) >>> 0;
  const count = Number($('count').value);
  clearError();
  setRunning(true);
  $('download').disabled = true;
  const recent = []; // the last steps' times, for the time left
  const request = { kind: 'sample', seed, count, ...guidance(), sampler: samplerChoice() };
  const last = await drive(request, (step, ms) => {
    showStep(step, ms, '');
    recent.push(ms);
    if (recent.length > 10) recent.shift();
    const left = (step.total - step.index) * recent.reduce((a, b) => a + b, 0) / recent.length / 1000;
    if (step.index < step.total) $('progress-text').textContent += ` · about ${left < 10 ? left.toFixed(1) : Math.round(left)} s left`;
  }).catch((e) => { showError(e.message ?? String(e), e.field); return null; });
  if (last !== undefined) finish(last, `Done: ${count} image(s) from seed ${seed}.`);
}

// SDEdit on the pad's drawing, drawn in the sampling panels like a run of one image.
let pad = null;
async function editDrawing() {
  const rgba = pad.pixels();
  state.lastDrawing = rgba; // for the browser test's `ddpm edit` on the same pixels
  const request = { kind: 'edit', rgba, seed: Number($('seed').value) >>> 0, t: Number($('edit-t').value), ...guidance(), sampler: samplerChoice() };
  clearError();
  setRunning(true);
  const last = await drive(request, (step, ms) => showStep(step, ms, 'editing: '))
    .catch((e) => { showError(e.message ?? String(e), e.field, 'edit'); return null; });
  if (last !== undefined) finish(last, 'Done: your drawing, denoised.');
}

function stop() {
  client.cancel();
  setRunning(false);
  $('status').textContent = 'Stopped.';
  $('progress-text').textContent += ' · stopped';
}

// The run as `ddpm animate` draws it (x_t beside x̂₀ at the steps the library picks, the last
// held), from the recorded steps: the module encodes the GIF in the worker.
async function downloadGif() {
  const steps = await client.animationSteps(recorder.total);
  const frames = recorder.pick(steps);
  const { width, height } = frames[0];
  const join = (key) => {
    const out = new Uint8Array(frames.length * width * height * 4);
    frames.forEach((f, i) => out.set(f[key], i * width * height * 4));
    return out;
  };
  let bytes;
  try {
    bytes = await client.gif(width, height, join('x_t'), join('x0'));
  } catch (e) {
    showError(`Could not make the animation: ${e.message ?? e}`);
    return;
  }
  const a = document.createElement('a');
  a.download = `ddpm-${state.model ?? 'model'}-seed${$('seed').value}.gif`;
  a.href = URL.createObjectURL(new Blob([bytes], { type: 'image/gif' }));
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}

function download() {
  const src = $('xt');
  const scale = 4;
  const big = document.createElement('canvas');
  big.width = src.width * scale;
  big.height = src.height * scale;
  const ctx = big.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(src, 0, 0, big.width, big.height);
  const a = document.createElement('a');
  a.download = `ddpm-${state.model ?? 'model'}-seed${$('seed').value}.png`;
  a.href = big.toDataURL('image/png');
  a.click();
}

// Interpolation frames: a grid of `frames` images with a 1-pixel border, one per λ, exactly as
// `ddpm interpolate` computes them; the samples A and B are drawn beside the slider's ends.
const morph = { frames: null, size: 0, count: 0 };

// The pixels of image `index` of a one-row grid.
function tile(grid, index, size) {
  const stride = grid.width;
  const out = new Uint8ClampedArray(size * size * 4);
  const x0 = 1 + index * (size + 1);
  for (let y = 0; y < size; y++) {
    const from = ((1 + y) * stride + x0) * 4;
    out.set(grid.x_t.subarray(from, from + size * 4), y * size * 4);
  }
  return out;
}

function showFrame() {
  if (!morph.frames) return;
  const i = Number($('lambda').value);
  draw($('morph'), morph.size, morph.size, tile(morph.frames, i, morph.size));
  $('lambda-text').textContent = `λ = ${(i / (morph.count - 1)).toFixed(3)}`;
}

// The interpolation the panel's controls ask for.
function interpolationRequest() {
  const [a, b] = model.num_classes ? [guidance('class-a'), guidance('class-b')] : [{}, {}];
  return {
    kind: 'interpolate', mode: $('mode').value, seeds: [Number($('seed-a').value) >>> 0, Number($('seed-b').value) >>> 0],
    ...(model.num_classes && { classes: [a.class, b.class], guidance: a.guidance }),
    t: Number($('t').value), frames: Number($('frames').value), sampler: samplerChoice(),
  };
}

// One request: in noise mode the module samples A and B, then denoises every frame from them as
// one batch (labml's frames at λ = 0 and 1 are A and B noised to t and denoised again, near but
// not equal to them: A and B stay in view beside the slider); in slerp mode the frames alone.
async function interpolate() {
  const request = interpolationRequest();
  const frames = request.frames;
  state.interpolationReady = false;
  $('lambda').disabled = true;
  clearError();
  setRunning(true);
  const size = model.image_size;
  const last = await drive(request, (s) => {
    draw($('morph'), s.width, s.height, s.x0);
    if (s.phase === 'ends') {
      $('interp-text').textContent = `sampling A and B: step ${s.index} / ${s.total}`;
      if (s.phase_done) {
        draw($('morph-a'), size, size, tile(s, 0, size));
        draw($('morph-b'), size, size, tile(s, 1, size));
      }
    } else {
      $('interp-text').textContent = `denoising ${frames} frames together: step ${s.index} / ${s.total}`;
    }
  }).catch((e) => { showError(e.message ?? String(e), e.field, 'interpolate'); return null; });
  if (last === undefined) return;
  setRunning(false);
  if (!last) return;
  Object.assign(morph, { frames: last, size, count: frames });
  $('lambda').max = String(frames - 1);
  $('lambda').disabled = false;
  $('interp-text').textContent = 'Drag the slider to morph A into B.';
  state.interpolationReady = true;
  showFrame();
}

// A slider's bound from the model, and its starting value from the HTML again: a range input
// parses its value under the default max of 100, which clamped it before the bound was known.
function setMax(id, max) {
  const slider = $(id);
  slider.max = String(max);
  slider.value = slider.getAttribute('value');
}

const SAMPLER_NAMES = { ddpm: (T) => `DDPM, all ${T} steps (the paper)`, ddim: () => 'DDIM', 'dpm++2m': () => 'DPM-Solver++(2M)' };

// The controls' bounds and starting values come from the module (the page's bounds and the
// model's default sampler) and the model (its T), not from numbers in the HTML.
function applyLimits() {
  const T = model.diffusion_steps;
  for (const solver of limits.samplers) $('sampler').add(new Option(SAMPLER_NAMES[solver](T), solver));
  const d = model.default_sampler;
  $('sampler').value = d.solver;
  $('steps').value = String(d.steps);
  $('eta').value = String(d.eta);
  $('steps').max = String(T);
  $('t').max = String(T - 1);
  setMax('edit-t', T - 1);
  $('frames').max = String(limits.max_frames);
  [$('guidance').min, $('guidance').max] = model.guidance_range.map(String);
  for (const option of [...$('count').options]) {
    if (Number(option.value) > limits.max_images) option.remove();
  }
  state.limits = { ...limits, diffusion_steps: T };
  const syncSampler = () => {
    $('steps-label').hidden = $('sampler').value === 'ddpm';
    $('eta-label').hidden = $('sampler').value !== 'ddim';
  };
  // Another sampler starts at its own step count (the library's), as `ddpm --sampler` does.
  $('sampler').addEventListener('change', () => {
    $('steps').value = String(limits.default_steps[$('sampler').value] ?? T);
    syncSampler();
  });
  $('sampler').addEventListener('sync', syncSampler); // set by a link, with its own steps
  syncSampler();
  // A student that knows only its grid draws with its own sampler alone (the library refuses others).
  if (model.start_t.length) for (const id of ['sampler', 'steps', 'eta']) $(id).disabled = true;
}

// A partial run's t (echoed for a slider) and, where a grid-only student snaps it, where it
// starts: the interpolation's on the live model when it is live, the drawing's on the model in
// the page and on the live one.
function showStartT(input, text, echo) {
  const t = Number($(input).value);
  const from = (live && input === 't' ? live.model : model).start_t[t] ?? t;
  const liveFrom = live && input === 'edit-t' && live.name !== 'main' ? live.model.start_t[t] ?? t : t;
  $(text).textContent = (echo ? `t = ${t}` : '') + (from === t ? '' : ` → ${from} (the student's grid)`) +
    (liveFrom === t ? '' : ` (live: → ${liveFrom}, the student's grid)`);
}

// The model to load: `?weights=URL` (any file), else `?model=ID` from the manifest, else its
// first model. The picker lists the manifest's models; choosing one loads the page with it (a
// fresh worker; the weights come from the browser's cache after the first time).
function chooseModel(models) {
  const local = localWeights(params.get('weights'));
  if (local) {
    state.model = null;
    return { weightsUrl: local.url, entry: local.entry };
  }
  const url = params.get('weights');
  const entry = url
    ? models.find((m) => `weights/${m.file}` === url) ?? null
    : models.find((m) => m.id === params.get('model')) ?? models[0] ?? null;
  const weightsUrl = url ?? (entry ? `weights/${entry.file}` : 'weights/mnist.safetensors');
  state.model = entry?.id ?? null;
  if (models.length > 1) {
    const picker = $('model');
    for (const m of models) picker.add(new Option(m.title, m.id, false, m === entry));
    picker.addEventListener('change', () => {
      const next = new URLSearchParams(location.search);
      next.delete('weights');
      next.set('model', picker.value);
      location.search = next.toString();
    });
    $('model-label').hidden = false;
  }
  return { weightsUrl, entry };
}

// The batch sizes whose kernels are compiled before the first step. burn-wgpu's kernels are
// not specialised on the batch size (after one batch-1 evaluation the first step at batch 4 or
// 16 is as fast as the second: docs/speed.md), so the cheapest evaluation compiles what every
// run uses.
function warmBatches() {
  return [1];
}

// Which backend runs the model, and why when it is the CPU.
function showBackend(info) {
  state.backend = info.backend;
  $('backend').textContent = `Running on: ${info.backend}` + (notice ? ` — ${notice}` : '');
  $('backend').hidden = false;
  $('backend').classList.toggle('warn', !info.on_gpu || notice !== '');
  if (!info.on_gpu && !('gpu' in navigator)) $('backend').textContent += ' (this browser has no WebGPU)';
}

// The module (in the worker) and the weights download side by side; each phase's end is kept
// for the benchmark. Resolves to the worker's 'loaded' reply.
async function load() {
  const module = client.hello.then((hello) => { state.loaded.wasm = performance.now(); return hello; });
  // The manifest names each model's title, size and SHA-256: a file it lists is kept across
  // visits, and the picker offers its models.
  const manifest = await fetch('weights/index.json', { cache: 'no-cache' })
    .then((r) => (r.ok ? r.json() : null)).catch(() => null);
  const { weightsUrl, entry } = chooseModel(manifest?.models ?? []);
  catalogue = { models: manifest?.models ?? [], entry };
  const download = () => (weightsUrl.startsWith('local/')
    ? Promise.reject(new Error('this browser no longer holds the file opened from disk: open it again'))
    : fetchWeights(weightsUrl, module.then((hello) => hello.limits.max_weights_bytes), (p) => { $('progress').value = p; },
      (prefix) => client.checkWeightsHeader(prefix)));
  const [hello, weights] = await Promise.all([
    module,
    cachedWeights(weightsUrl, entry, download, params.get('store'))
      .then((w) => { state.loaded.weights = performance.now(); return w; }),
  ]);
  state.weightsSource = weights.source;
  // The file's SHA-256, which a link keeps: the manifest's (checked on load), else computed.
  state.weightsSha = entry?.sha256 ?? (await sha256(weights.bytes));
  limits = hello.limits;
  $('loading').hidden = true;
  $('status').textContent = wantGpu ? 'Starting WebGPU…' : 'Starting the CPU backend…';
  const loaded = await client.load(weights.bytes);
  state.loaded.model = performance.now();
  return loaded;
}

// A conditional model's class pickers (the names the file carries, else 0..n−1) and guidance.
function showClasses() {
  for (const picker of ['class', 'class-a', 'class-b']) {
    for (let k = 0; k < model.num_classes; k++) $(picker).add(new Option(model.class_names[k] ?? String(k), String(k)));
  }
  for (const label of ['class-label', 'guidance-label', 'class-a-label', 'class-b-label', 'guidance-section']) $(label).hidden = false;
  $('guidance').value = String(model.default_guidance);
  const syncGuidance = () => { $('guidance-text').textContent = `w = ${Number($('guidance').value)}`; };
  $('guidance').addEventListener('input', syncGuidance);
  syncGuidance();
}

function showModelInfo() {
  const info = model.info;
  const steps = (list) => list.split(',').map((s) => Number(s).toLocaleString()).join(', ');
  $('model-info').textContent = `Model: ${model.params.toLocaleString()} parameters, ` +
    `${model.image_size}×${model.image_size}, T = ${model.diffusion_steps}` +
    (info.train_steps ? `, trained ${steps(info.train_steps)} steps` : '') +
    (info.averaged_train_steps ? ` (the mean of its weights at steps ${steps(info.averaged_train_steps)})` : '') + '.';
}

// WebGPU compiles each kernel the first time it runs: compile them now, with progress, rather
// than in the visitor's first step.
async function warmGpu() {
  client.onWarming = (done, total) => {
    $('status').textContent = `Preparing GPU kernels (${done}/${total})…`;
    $('progress').value = done / total;
  };
  $('status').textContent = 'Preparing GPU kernels…';
  $('loading').querySelector('label').textContent = 'Preparing GPU kernels';
  $('progress').value = 0;
  $('loading').hidden = false;
  await client.warm(warmBatches());
  $('loading').hidden = true;
  state.loaded.warm = performance.now();
}

// The forward process panel (src/forward.rs through the worker): the example, ε's seed and t
// go in; x₀, ε, x_t, ε̂, x̂₀ and the loss come back, one network evaluation a position, the
// latest position winning. Our t is the paper's t − 1.
// What www/examples/emoji.png shows, left to right (one emoji of each Unicode category).
const EMOJI_NAMES = ['a sick face', 'a health worker', 'a skin-tone swatch', 'a panda', 'a hot dog', 'a bank',
  'a flying disc', 'a desktop computer', 'a dash (symbols)', 'the flag of Norway'].map((name) => `Noto emoji: ${name}`);

// Held-out real examples (www/examples/README.md): a strip of `size`-pixel images, used by the
// models of that shape; `classes` is each one's label for a class-conditional model.
const EXAMPLES = [
  { url: 'examples/mnist-digits.png', size: 28, channels: 1, names: Array.from({ length: 10 }, (_, k) => `MNIST digit ${k}`), classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] },
  { url: 'examples/emoji.png', size: 32, channels: 3, names: EMOJI_NAMES, classes: null },
];
let examples = null; // the entry of EXAMPLES the model takes, if any
let exampleStrip = null;

function forwardExamples() {
  examples = EXAMPLES.find((e) => e.size === model.image_size && e.channels === model.image_channels) ?? null;
  for (const [k, name] of (examples?.names ?? []).entries()) $('forward-example').add(new Option(name, String(k)));
  $('forward-example').add(new Option('your drawing (below)', 'drawing'));
  setMax('forward-t', model.diffusion_steps - 1);
  $('forward-section').hidden = false;
  $('schedule-section').hidden = false;
  state.scheduleCurves = model.schedule_curves;
}

async function exampleRgba() {
  const choice = $('forward-example').value;
  const n = model.image_size;
  if (choice === 'drawing') return pad.pixels();
  exampleStrip ??= await createImageBitmap(await (await fetch(examples.url)).blob());
  const canvas = new OffscreenCanvas(n, n);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(exampleStrip, Number(choice) * n, 0, n, n, 0, 0, n, n);
  return new Uint8Array(ctx.getImageData(0, 0, n, n).data.buffer);
}

// The forward request of the panel's example and ε at step t: a conditional model's ε̂ takes the
// example's own label (a drawing has none: ∅).
async function forwardRequest(t) {
  const choice = $('forward-example').value;
  const label = choice === 'drawing' ? null : examples.classes?.[Number(choice)] ?? null;
  return { rgba: await exampleRgba(), t, seed: Number($('forward-seed').value), class: model.num_classes ? label : null };
}

async function showForward() {
  const t = Number($('forward-t').value);
  $('forward-t-text').textContent = `t = ${t} (the paper's t = ${t + 1})`;
  const choice = $('forward-example').value;
  let view;
  try {
    view = await client.forward(forwardRequest(t));
  } catch (e) {
    showError(e.message ?? String(e));
    return;
  }
  if (!view) return; // a newer position replaced it
  for (const [id, key] of [['fw-x0', 'x0'], ['fw-eps', 'eps'], ['fw-xt', 'x_t'], ['fw-eps-hat', 'eps_hat'], ['fw-x0-hat', 'x0_hat']]) {
    draw($(id), view.width, view.height, view[key]);
  }
  const f = (x) => x.toPrecision(4);
  $('forward-text').textContent = `ᾱ_t = ${f(view.alpha_bar)}: x_t keeps √ᾱ_t = ${f(Math.sqrt(view.alpha_bar))} of the ` +
    `image and √(1 − ᾱ_t) = ${f(Math.sqrt(1 - view.alpha_bar))} of the noise; the loss ‖ε − ε̂‖² (per pixel) = ${f(view.loss)}`;
  state.forward = { t: view.t, alpha_bar: view.alpha_bar, loss: view.loss, example: choice };
  redrawPlots();
}

// The loss of the example at 20 t (one batch in the worker), again when the example or ε's seed
// changes; the latest request wins.
async function showLossCurve() {
  const choice = $('forward-example').value;
  const seed = Number($('forward-seed').value);
  let curve;
  try {
    curve = await client.lossCurve(forwardRequest(0));
  } catch (e) {
    showError(e.message ?? String(e));
    return;
  }
  if (!curve) return;
  state.lossCurve = { ...curve, example: choice, seed };
  redrawPlots();
}

// Each panel's t on the plots: the forward slider's, the step in view, the interpolation's
// (noise mode) and the drawing's. Redrawn at most once a frame.
let plotsPending = false;
function redrawPlots() {
  if (plotsPending || !model) return;
  plotsPending = true;
  requestAnimationFrame(() => {
    plotsPending = false;
    const marks = [
      { t: Number($('forward-t').value), label: 'forward', forward: true },
      { t: state.shownT ?? null, label: 'reverse' },
      { t: $('mode').value === 'noise' ? Number($('t').value) : null, label: 'interpolation' },
      { t: Number($('edit-t').value), label: 'drawing' },
    ];
    const T = model.diffusion_steps;
    drawSchedule($('schedule-plot'), model.schedule_curves, marks);
    if (state.lossCurve) drawLossCurve($('loss-plot'), T, state.lossCurve, marks.slice(0, 1));
    const c = model.schedule_curves;
    const t = Number($('forward-t').value);
    $('schedule-text').textContent = `At the forward panel's t = ${t}: β_t = ${c.beta[t].toPrecision(4)}, ` +
      `√ᾱ_t = ${c.sqrt_alpha_bar[t].toPrecision(4)}, √(1 − ᾱ_t) = ${c.sqrt_one_minus_alpha_bar[t].toPrecision(4)}, ` +
      `SNR = ${c.snr[t].toPrecision(4)}.`;
  });
}

function wireForward() {
  forwardExamples();
  for (const id of ['forward-t', 'forward-example', 'forward-seed']) $(id).addEventListener('input', showForward);
  for (const id of ['forward-example', 'forward-seed']) $(id).addEventListener('input', showLossCurve);
  for (const id of ['t', 'edit-t', 'mode']) $(id).addEventListener('input', redrawPlots);
}

function wireControls() {
  pad = new DrawPad($('pad'), { size: model.image_size, gray: model.image_channels === 1 });
  for (const [input, text, echo] of [['edit-t', 'edit-t-text', true], ['t', 't-text', false]]) {
    $(input).addEventListener('input', () => showStartT(input, text, echo));
    showStartT(input, text, echo);
  }
  $('draw-form').addEventListener('submit', (e) => { e.preventDefault(); editDrawing(); });
  $('clear').addEventListener('click', () => pad.clear());
  $('sample-form').addEventListener('submit', (e) => { e.preventDefault(); startSampling(); });
  $('interp-form').addEventListener('submit', (e) => { e.preventDefault(); interpolate(); });
  $('stop').addEventListener('click', stop);
  $('download').addEventListener('click', download);
  $('download-gif').addEventListener('click', downloadGif);
  $('scrub').addEventListener('input', showRecorded);
  $('lambda').addEventListener('input', showFrame);
  $('mode').addEventListener('change', () => { $('t-label').hidden = $('mode').value === 'slerp'; });
}

// A weights file from disk (the picker or a drop on the page): refused above the page's bound
// before it is read, else kept in the browser's weights store and opened by loading the page with
// it, checked by the same loader as a download (a lying file gets the loader's message).
async function openLocal(file) {
  if (!file) return;
  clearError();
  const max = (await client.hello).limits.max_weights_bytes;
  if (file.size > max) {
    showError(`${file.name} is ${file.size.toLocaleString('en-US')} bytes, above the largest model this page loads ` +
      `(${max.toLocaleString('en-US')} bytes)`);
    return;
  }
  try {
    const value = await keepLocal(new Uint8Array(await file.arrayBuffer()), params.get('store'));
    const next = new URLSearchParams(location.search);
    next.delete('model');
    next.set('weights', value);
    location.search = next.toString();
  } catch (e) {
    showError(`Could not open ${file.name}: ${e.message ?? e}`);
  }
}

function wireLocalFiles() {
  $('weights-file').addEventListener('change', (e) => openLocal(e.target.files[0]));
  document.addEventListener('dragover', (e) => { if (e.dataTransfer?.types.includes('Files')) e.preventDefault(); });
  document.addEventListener('drop', (e) => {
    if (!e.dataTransfer?.files.length) return;
    e.preventDefault();
    openLocal(e.dataTransfer.files[0]);
  });
}

async function main() {
  wireLocalFiles();
  try {
    model = (await load()).model;
  } catch (e) {
    showError(`Could not load the model: ${e.message ?? e}`);
    return;
  }
  state.kernels = client.info.kernels;
  state.threads = client.info.threads;
  state.imageSize = model.image_size;
  showBackend(model);
  client.onRecovered = (info) => { model = info.model; showBackend(model); };
  applyLimits();
  if (model.num_classes) showClasses();
  // A step's time grows with the batch on the CPU: one image is done in a moment there, four
  // take four times as long (docs/speed.md); the menu still offers 4 and 16.
  if (!model.on_gpu) $('count').value = '1';
  showModelInfo();
  if (model.on_gpu) await warmGpu();
  recorder = new Recorder(limits.max_recorded_bytes);
  $('status').textContent = 'Ready.';
  for (const button of ['start', 'interp', 'edit']) $(button).disabled = false;
  wireControls();
  wireForward();
  const drawLink = wireLink();
  state.ready = true;
  // The forward panel's passes (its view and the 20-t loss curve, a batch of 20) and the live
  // model wait for the page's first picture: in the one worker they would run between its steps.
  if (drawLink && params.get('autostart') !== '0') await startSampling();
  showForward();
  showLossCurve();
  await loadLive();
}

// The live model, after the page's first picture: the manifest entry's `live` (fetched and kept
// like any weights), or the model in the page when it is itself a student; `?live=0` turns the
// live controls off (the page as it is without a student).
async function loadLive() {
  if (params.get('live') === '0') return;
  if (model.student) {
    live = { name: 'main', model, title: state.model ?? 'this model' };
  } else {
    const entry = liveEntry(catalogue.entry, catalogue.models);
    if (!entry) return;
    const url = `weights/${entry.file}`;
    try {
      const download = () => fetchWeights(url, Promise.resolve(limits.max_weights_bytes), () => {},
        (prefix) => client.checkWeightsHeader(prefix));
      const weights = await cachedWeights(url, entry, download, params.get('store'));
      const loaded = (await client.loadLive(weights.bytes)).model;
      const same = ['image_size', 'image_channels', 'num_classes', 'diffusion_steps'].every((k) => loaded[k] === model[k]);
      if (!same) throw new Error(`${entry.file} draws other images than ${catalogue.entry.file}`);
      live = { name: 'live', model: loaded, title: entry.id };
    } catch (e) {
      showNotice(`the live model could not be loaded (${e.message ?? e}): the controls draw when their buttons are pressed`);
      return;
    }
  }
  wireLive();
}

// Positions of the interpolation slider in live mode: λ in steps of 1/LAMBDA_STEPS.
const LAMBDA_STEPS = 100;

// The three live controls: the interpolation slider (the frame at the λ under the pointer), the
// guidance slider (the current seeds again) and the drawing pad (when a stroke ends).
function wireLive() {
  const { name, model: student } = live;
  const d = student.default_sampler;
  const sampler = `${SAMPLER_NAMES[d.solver](student.diffusion_steps)}, ${d.steps} step${d.steps === 1 ? '' : 's'}`;
  $('live-text').textContent = `Live: the interpolation slider, the guidance slider and the drawing pad answer as ` +
    `they move, drawn by the distilled student ${live.title} (${sampler}); Start and “Denoise my drawing” run ` +
    `${name === 'main' ? 'it' : 'the teacher'} step by step.`;
  $('live-text').hidden = false;
  const drawn = { interpolate: 0, guidance: 0, draw: 0 };
  state.live = { name, latency, drawn, about: { params: student.params, steps: d.steps } };
  const fail = (section) => (e) => showError(e.message ?? String(e), e.field, section);
  const size = model.image_size;

  // The guidance slider keeps to what the student learnt, and starts at the student's own
  // default (its file's: where it meets the teacher's class fidelity) unless a link set it.
  if (model.num_classes) {
    const [lo, hi] = student.guidance_range;
    $('guidance').min = String(Math.max(Number($('guidance').min), lo));
    $('guidance').max = String(Math.min(Number($('guidance').max), hi));
    if (!params.has('guidance')) $('guidance').value = String(student.default_guidance);
    $('guidance').dispatchEvent(new Event('input')); // the value, clamped by the slider, shown
  }
  const withoutSampler = ({ sampler: _, ...request }) => request; // the student's own

  // Interpolation: no batch to compute first; every position is its own frame.
  for (const id of ['interp', 'frames-label']) $(id).hidden = true;
  $('lambda').max = String(LAMBDA_STEPS);
  $('lambda').disabled = false;
  $('interp-text').textContent = `Drag the slider: each position is denoised by ${live.title} as you move.`;
  const frame = liveControl(client, name, 'interpolate', {
    build: () => ({ ...withoutSampler(interpolationRequest()), frames: 1, lambda: Number($('lambda').value) / LAMBDA_STEPS }),
    onStep: (s) => {
      if (s.phase === 'ends' && s.phase_done) {
        draw($('morph-a'), size, size, tile(s, 0, size));
        draw($('morph-b'), size, size, tile(s, 1, size));
      }
    },
    show: (s) => {
      draw($('morph'), size, size, tile(s, 0, size));
      $('lambda-text').textContent = `λ = ${(Number($('lambda').value) / LAMBDA_STEPS).toFixed(2)} (live)`;
      drawn.interpolate += 1;
      state.interpolationReady = true;
    },
    fail: fail('interpolate'),
  });
  $('lambda').addEventListener('input', frame);
  for (const id of ['seed-a', 'seed-b', 'class-a', 'class-b', 'mode', 't']) $(id).addEventListener('input', frame);
  showStartT('t', 't-text', false);
  showStartT('edit-t', 'edit-t-text', true);
  frame();

  // Guidance: the seeds in the sample panel drawn again at the new w (a teacher run in progress
  // stops: its guidance is no longer the slider's).
  if (model.num_classes) {
    const redraw = liveControl(client, name, 'guidance', {
      build: () => ({ kind: 'sample', seed: Number($('seed').value) >>> 0, count: Number($('count').value), ...guidance() }),
      show: (s) => {
        draw($('xt'), s.width, s.height, s.x_t);
        draw($('x0'), s.width, s.height, s.x0);
        $('progress-text').textContent = `Live: ${live.title} at w = ${Number($('guidance').value)} (${s.total} steps).`;
        drawn.guidance += 1;
      },
      fail: fail('sample'),
    });
    $('guidance').addEventListener('input', (e) => {
      if (state.running) stop();
      redraw(e);
    });
  }

  // The drawing pad: denoised again when each stroke ends, beside the pad.
  pad.onStrokeEnd = liveControl(client, name, 'draw', {
    build: () => {
      const rgba = pad.pixels();
      state.live.lastDrawing = rgba; // for the browser test's `ddpm edit` on the same pixels
      return { kind: 'edit', rgba, seed: Number($('seed').value) >>> 0, t: Number($('edit-t').value), ...guidance() };
    },
    show: (s) => {
      draw($('pad-out'), s.width, s.height, s.x_t);
      drawn.draw += 1;
    },
    fail: fail('edit'),
  });
  $('pad-live').hidden = false;
}

// A link's controls, then the address kept up to date. A link made with other weights than
// the page now loads (its SHA-256 prefix differs) says so and draws nothing: the same controls
// would draw another picture. Returns whether the page may draw.
function wireLink() {
  const conditional = model.num_classes > 0;
  const link = applyLink(params, conditional);
  const sha = state.weightsSha;
  const stale = link.sha !== null && !sha.startsWith(link.sha.toLowerCase());
  if (stale) {
    $('link-text').textContent = `This link was made with other weights (SHA-256 ${link.sha}…); this model's file ` +
      `is now ${sha.slice(0, SHA_CHARS)}…, so its controls would draw another picture. Start draws it with these weights.`;
    $('link-text').hidden = false;
    state.staleLink = true;
  }
  followControls(conditional, sha, state.model);
  $('copy-link').disabled = false;
  $('copy-link').addEventListener('click', copyLink);
  return !stale;
}

async function copyLink() {
  const url = location.href;
  state.copiedLink = url;
  try {
    await navigator.clipboard.writeText(url);
    $('link-text').textContent = 'Link copied: it draws this picture again, with these weights.';
  } catch {
    $('link-text').textContent = `Copy this link: ${url}`; // no clipboard permission
  }
  $('link-text').hidden = false;
}

window.addEventListener('error', (e) => showError(e.message));
window.addEventListener('unhandledrejection', (e) => showError(String(e.reason?.message ?? e.reason)));
main();
