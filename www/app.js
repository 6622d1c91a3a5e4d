// The page: fetches the weights, hands them to the model's worker (model-client.js), asks it for
// one denoising step at a time and draws it. All maths is in Rust (src/web.rs), run in the
// worker; this thread only wires controls to it and draws.
import { DrawPad } from './draw-pad.js';
import { ModelClient } from './model-client.js';
import { cachedWeights, fetchWeights } from './weights-cache.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// State the tests read (tests/browser/); nothing here is needed by the page itself.
const state = window.ddpmState = {
  ready: false, backend: null, error: null, stepsDrawn: 0, lastStep: null, running: false,
  interpolationReady: false, msPerStep: [], firstStepAt: null, loaded: {}, notices: [],
  runIndices: [], // the step indices drawn by the latest run, in order
};

let model = null; // what the worker reported of the loaded model
// `?backend=cpu` skips WebGPU; `?threads=N` sets the CPU's threads (1: the one-thread module).
const wantGpu = params.get('backend') !== 'cpu' && 'gpu' in navigator;
const client = new ModelClient({ onNotice: (text) => showNotice(text), wantGpu, threads: params.get('threads') });
// The memory the page holds, for the tests' leak checks: the worker's wasm linear memory and,
// where the browser reports it, this thread's JS heap.
window.ddpmMemory = async () => ({ wasm: await client.memory(), heap: performance.memory?.usedJSHeapSize ?? 0 });
// Test hooks: a request as the page would send it, answered with the module's error or
// 'accepted' (cancelled at its first step); and a lost GPU device.
window.ddpmTry = (kind, args) => new Promise((resolve) => {
  client.run(kind, args, () => { client.cancel(); resolve('accepted'); }).then(() => resolve('accepted'), (e) => resolve(e.message));
});
window.ddpmLoseDevice = () => client.destroyDevice();
let runId = 0; // a run stops drawing as soon as a newer run (or stop) bumps this

function showError(message) {
  state.error = message;
  $('error').textContent = message;
  $('error').hidden = false;
  $('status').textContent = 'Something went wrong (see above).';
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

// Runs a request in the worker to the end, drawing each step; resolves to the last step or null
// if the run was replaced or stopped. A run restarted after a lost GPU starts its steps again.
async function drive(id, kind, args, onStep) {
  let last = null;
  state.runIndices = [];
  const finished = await client.run(kind, args, (step, ms) => {
    if (id !== runId) return;
    if (step.index === 1) state.runIndices = [];
    state.msPerStep.push(ms);
    onStep(step, ms);
    state.runIndices.push(step.index);
    state.stepsDrawn += 1;
    state.firstStepAt ??= performance.now();
    last = step;
  });
  return finished && id === runId ? last : null;
}

function sampleSteps() {
  return $('sampler').value === 'ddpm' ? model.diffusionSteps : Number($('ddim-steps').value);
}

function setRunning(running) {
  state.running = running;
  $('start').disabled = false;
  $('interp').disabled = running;
  $('edit').disabled = running;
  $('stop').disabled = !running;
}

async function startSampling() {
  const id = ++runId;
  const seed = Number($('seed').value) >>> 0;
  const count = Number($('count').value);
  $('error').hidden = true;
  setRunning(true);
  $('download').disabled = true;
  const recent = []; // the last steps' times, for the time left
  // DDIM's η: 0 is deterministic, 1 draws fresh noise every step as the paper's sampler does (more
  // confidently classified digits, a higher MNIST-FD: docs/mnist-model.md); full DDPM ignores it.
  // A conditional model draws the chosen class with classifier-free guidance ("any": each image
  // the class its seed is dealt, guided the same way).
  const cls = model.numClasses ? Number($('class').value) : -1;
  const args = [seed, count, sampleSteps(), Number($('eta').value), cls, Number($('guidance').value)];
  const last = await drive(id, 'sample', args, (step, ms) => {
    draw($('xt'), step.width, step.height, step.x_t);
    draw($('x0'), step.width, step.height, step.x0);
    state.lastStep = { index: step.index, total: step.total, t: step.t };
    recent.push(ms);
    if (recent.length > 10) recent.shift();
    const perStep = recent.reduce((a, b) => a + b, 0) / recent.length;
    const left = (step.total - step.index) * perStep / 1000;
    $('progress-text').textContent = `step ${step.index} / ${step.total} (t = ${step.t}) · ${ms.toFixed(0)} ms per step` +
      (step.index < step.total ? ` · about ${left < 10 ? left.toFixed(1) : Math.round(left)} s left` : '');
  }).catch((e) => { if (id === runId) showError(e.message ?? String(e)); return null; });
  if (id !== runId) return;
  setRunning(false);
  $('download').disabled = !last;
  $('status').textContent = last ? `Done: ${count} image(s) from seed ${seed}.` : 'Stopped.';
}

// SDEdit on the pad's drawing, drawn in the sampling panels like a run of one image.
let pad = null;
async function editDrawing() {
  const id = ++runId;
  const pixels = pad.pixels();
  state.lastDrawing = Array.from(pixels); // for the browser test's `ddpm edit` on the same pixels
  const cls = model.numClasses ? Number($('class').value) : -1;
  const args = [pixels, Number($('seed').value) >>> 0, Number($('edit-t').value), sampleSteps(), Number($('eta').value),
    cls, Number($('guidance').value)];
  $('error').hidden = true;
  setRunning(true);
  const last = await drive(id, 'edit', args, (step, ms) => {
    draw($('xt'), step.width, step.height, step.x_t);
    draw($('x0'), step.width, step.height, step.x0);
    state.lastStep = { index: step.index, total: step.total, t: step.t };
    $('progress-text').textContent = `editing: step ${step.index} / ${step.total} (t = ${step.t}) · ${ms.toFixed(0)} ms per step`;
  }).catch((e) => { if (id === runId) showError(e.message ?? String(e)); return null; });
  if (id !== runId) return;
  setRunning(false);
  $('download').disabled = !last;
  $('status').textContent = last ? 'Done: your drawing, denoised.' : 'Stopped.';
}

function stop() {
  runId += 1;
  client.cancel();
  setRunning(false);
  $('status').textContent = 'Stopped.';
  $('progress-text').textContent += ' · stopped';
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
  const last = morph.count - 1;
  draw($('morph'), morph.size, morph.size, tile(morph.frames, i, morph.size));
  $('lambda-text').textContent = `λ = ${(i / last).toFixed(3)}`;
}

async function interpolate() {
  const id = ++runId;
  const seedA = Number($('seed-a').value) >>> 0;
  const seedB = Number($('seed-b').value) >>> 0;
  const mode = $('mode').value;
  const frames = Number($('frames').value);
  const t = Number($('t').value);
  const steps = Number($('ddim-steps').value);
  state.interpolationReady = false;
  $('lambda').disabled = true;
  setRunning(true);
  try {
    // 1. The two samples, with the same deterministic DDIM sampler the frames use (the request is
    // checked before A and B are drawn).
    // A conditional model morphs from class A to class B, guided as the samples above are.
    const [classA, classB] = model.numClasses ? [Number($('class-a').value), Number($('class-b').value)] : [-1, -1];
    const request = [mode, seedA, seedB, t, frames, steps, 0, classA, classB, Number($('guidance').value)];
    const ends = await drive(id, 'ends', request, (s) => {
      draw($('morph'), s.width, s.height, s.x0);
      $('interp-text').textContent = `sampling A and B: step ${s.index} / ${s.total}`;
    });
    if (!ends) return;
    // labml's frames at λ = 0 and 1 are A and B noised to t and denoised again, near A and B
    // but not equal to them: A and B themselves stay in view beside the slider.
    const size = model.imageSize;
    draw($('morph-a'), size, size, tile(ends, 0, size));
    draw($('morph-b'), size, size, tile(ends, 1, size));
    // 2. Every frame at once, as one batch through the reverse process.
    const last = await drive(id, 'frames', request, (s) => {
      draw($('morph'), s.width, s.height, s.x0);
      $('interp-text').textContent = `denoising ${frames} frames together: step ${s.index} / ${s.total}`;
    });
    if (!last) return;
    Object.assign(morph, { frames: last, size, count: frames });
    $('lambda').max = String(frames - 1);
    $('lambda').disabled = false;
    $('interp-text').textContent = 'Drag the slider to morph A into B.';
    state.interpolationReady = true;
    showFrame();
  } catch (e) {
    if (id === runId) showError(e.message ?? String(e));
  } finally {
    if (id === runId) setRunning(false);
  }
}

// The inputs' bounds come from the module (the page's) and the model (its T), not from numbers
// in the HTML.
function applyLimits(limits) {
  const T = model.diffusionSteps;
  $('ddim-steps').max = String(T);
  $('t').max = String(T - 1);
  $('frames').max = String(limits.max_frames);
  $('guidance').max = String(limits.max_guidance);
  $('sampler').querySelector('option[value="ddpm"]').textContent = `DDPM, all ${T} steps (the paper)`;
  for (const option of [...$('count').options]) {
    if (Number(option.value) > limits.max_images) option.remove();
  }
  Object.assign(state, { limits: { ...limits, diffusion_steps: T } });
}

// The model to load: `?weights=URL` (any file), else `?model=ID` from the manifest, else its
// first model. The picker lists the manifest's models; choosing one loads the page with it (a
// fresh worker; the weights come from the browser's cache after the first time).
function chooseModel(models) {
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
// not specialised on the batch size (measured: after one batch-1 evaluation the first step at
// batch 4 or 16 is as fast as the second; docs/speed.md), so the cheapest evaluation compiles
// what every run uses.
function warmBatches() {
  return [1];
}

// Which backend runs the model, and why when it is the CPU.
function showBackend(info) {
  state.backend = info.backend;
  state.kernels = info.kernels;
  state.threads = info.threads;
  state.imageSize = info.imageSize;
  $('backend').textContent = `Running on: ${info.backend}` + (notice ? ` — ${notice}` : '');
  $('backend').hidden = false;
  $('backend').classList.toggle('warn', !info.onGpu || notice !== '');
  if (!info.onGpu) {
    $('backend').classList.add('warn');
    if (!('gpu' in navigator)) $('backend').textContent += ' (this browser has no WebGPU)';
  }
}

async function main() {
  let limits;
  try {
    // The module (in the worker) and the weights download side by side; each phase's end is kept
    // for the benchmark.
    const module = client.hello.then((hello) => { state.loaded.wasm = performance.now(); return hello; });
    // The manifest names each model's title, size and SHA-256: a file it lists is kept across
    // visits, and the picker offers its models.
    const manifest = await fetch('weights/index.json', { cache: 'no-cache' })
      .then((r) => (r.ok ? r.json() : null)).catch(() => null);
    const { weightsUrl, entry } = chooseModel(manifest?.models ?? []);
    const download = () => fetchWeights(weightsUrl, module.then((hello) => hello.maxWeightsBytes), (p) => { $('progress').value = p; });
    const [hello, weights] = await Promise.all([
      module,
      cachedWeights(weightsUrl, entry, download, params.get('store'))
        .then((w) => { state.loaded.weights = performance.now(); return w; }),
    ]);
    state.weightsSource = weights.source;
    $('loading').hidden = true;
    $('status').textContent = wantGpu ? 'Starting WebGPU…' : 'Starting the CPU backend…';
    model = await client.load(weights.bytes);
    state.loaded.model = performance.now();
    limits = hello.limits;
  } catch (e) {
    showError(`Could not load the model: ${e.message ?? e}`);
    return;
  }
  showBackend(model);
  client.onRecovered = (info) => { model = info; showBackend(info); };
  applyLimits(limits);
  if (model.numClasses) {
    // The names the file carries (an image folder's subfolders, the emoji's categories), else 0..n-1.
    const names = JSON.parse(JSON.parse(model.describe).info.class_names ?? '[]');
    for (const picker of ['class', 'class-a', 'class-b']) {
      for (let k = 0; k < model.numClasses; k++) $(picker).add(new Option(names[k] ?? String(k), String(k)));
    }
    for (const label of ['class-label', 'guidance-label', 'class-a-label', 'class-b-label']) $(label).hidden = false;
    $('guidance').value = String(limits.default_guidance);
    const syncGuidance = () => { $('guidance-text').textContent = `w = ${Number($('guidance').value)}`; };
    $('guidance').addEventListener('input', syncGuidance);
    syncGuidance();
  }
  if (!model.onGpu) {
    // A step's time grows with the batch on the CPU: one image with the default sampler is done
    // in seconds there, four take four times as long (docs/speed.md); the menu still
    // offers 4 and 16.
    $('count').value = '1';
  }
  const info = JSON.parse(model.describe);
  const steps = (list) => list.split(',').map((s) => Number(s).toLocaleString()).join(', ');
  $('model-info').textContent = `Model: ${info.params.toLocaleString()} parameters, ` +
    `${info.unet.image_size}×${info.unet.image_size}, T = ${info.schedule.steps}` +
    (info.info.train_steps ? `, trained ${steps(info.info.train_steps)} steps` : '') +
    (info.info.averaged_train_steps ? ` (the mean of its weights at steps ${steps(info.info.averaged_train_steps)})` : '') + '.';
  if (model.onGpu) {
    // WebGPU compiles each kernel the first time it runs: compile them now, with progress,
    // rather than in the visitor's first step.
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
  $('status').textContent = 'Ready.';
  state.ready = true;
  $('start').disabled = false;
  $('interp').disabled = false;
  $('edit').disabled = false;
  pad = new DrawPad($('pad'), { size: model.imageSize, gray: JSON.parse(model.describe).unet.image_channels === 1 });
  $('edit-t').max = String(model.diffusionSteps - 1);
  const syncT = () => { $('edit-t-text').textContent = `t = ${$('edit-t').value}`; };
  $('edit-t').addEventListener('input', syncT);
  syncT();
  $('draw-form').addEventListener('submit', (e) => { e.preventDefault(); editDrawing(); });
  $('clear').addEventListener('click', () => pad.clear());

  $('sample-form').addEventListener('submit', (e) => { e.preventDefault(); startSampling(); });
  $('interp-form').addEventListener('submit', (e) => { e.preventDefault(); interpolate(); });
  $('stop').addEventListener('click', stop);
  $('download').addEventListener('click', download);
  $('lambda').addEventListener('input', showFrame);
  const syncSampler = () => {
    const ddpm = $('sampler').value === 'ddpm';
    $('ddim-steps-label').hidden = ddpm;
    $('eta-label').hidden = ddpm;
  };
  $('sampler').addEventListener('change', syncSampler);
  $('mode').addEventListener('change', () => { $('t-label').hidden = $('mode').value === 'slerp'; });
  syncSampler();
  if (params.get('autostart') !== '0') startSampling();
}

window.addEventListener('error', (e) => showError(e.message));
window.addEventListener('unhandledrejection', (e) => showError(String(e.reason?.message ?? e.reason)));
main();
