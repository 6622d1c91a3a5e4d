// The model's own thread: a module worker that instantiates the wasm, holds the model and runs
// the reverse process one step at a time, posting each step's pixels (transferred, not copied).
// The page's main thread only handles controls and draws, so a step never blocks the tab.
//
// Which module it runs is chosen once, at start, from its URL's query (set by model-client.js):
// `backend=cpu` (no WebGPU wanted), `threads=N` (the CPU's threads; 1: the one-thread module).
// With WebGPU it runs the main module (pkg/); on the CPU, when the page is cross-origin isolated
// (shared memory allowed) and more than one thread is asked for, the threaded module
// (pkg-threads/: flex on a pool of web workers), else the main module's one-thread fallback.
//
// It may hold several models by name: 'main' (the one the page draws step by step) and 'live'
// (a distilled student that answers the page's live controls), on one device.
//
// Messages in:  {type: 'load', name, bytes, wantGpu} | {type: 'warm', batches}
//               | {type: 'forward' | 'loss-curve', id, request} (the forward process at one t, or its
//                 loss at 20 t, a few at a time: src/forward.rs)
//               | {type: 'call', id, call, args} (animation_steps, animation_gif, check_weights_header:
//                 no model needed)
//               | {type: 'run', id, request, model, beside} (a request as src/request.rs types it,
//                 on the model of that name; it replaces the runs in progress unless `beside`,
//                 which runs it alongside them)
//               | {type: 'cancel', id} (that run; without an id, every run)
//               | {type: 'memory'} | {type: 'destroy-device'} (a test hook: loses the GPU)
// Messages out: {type: 'hello', limits} (the module's bounds and defaults, src/web.rs page_limits)
//               | {type: 'loaded', name, model, kernels, threads} (model: Ddpm.describe())
//               | {type: 'warming', done, total}
//               | {type: 'step', id, step, ms} | {type: 'done', id} | {type: 'error', id, message, field}
//                 (a failed 'load' names its model as `load`)
//               | {type: 'forward' | 'loss-curve', id, answer} | {type: 'answer', id, answer}
//               | {type: 'lost', reason} | {type: 'memory', wasm}
let pkg = null; // the module's exports: Ddpm, page_limits, kernel_path, …
const models = new Map(); // name → the module's Ddpm
let model = null; // the main model: the forward panel's and the warm-up's
let description = null; // model.describe()
let wasm = null;
const runs = new Map(); // id → the module's run (a PageRun) for each run in progress
let lost = false;
const CALLS = ['animation_steps', 'animation_gif', 'check_weights_header'];
const devices = [];

// burn-wgpu asks the adapter for its device; keeping a handle lets the page learn at once when
// the device is lost (a driver reset, a GPU process crash, or `destroy()` from the test hook),
// instead of waiting on a step that will never finish.
if (self.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    devices.push(device);
    device.lost.then((info) => loseDevice(info.message || info.reason || 'the GPU device was lost'));
    return device;
  };
}

// Tells the page once; the page replaces this worker.
function loseDevice(reason) {
  if (lost) return;
  lost = true;
  postMessage({ type: 'lost', reason });
}

// A macrotask boundary, so that a 'cancel' or a new 'run' posted during a step is seen before
// the next one (awaiting a promise alone would not let the message event in).
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => waiting.shift()?.();
const yieldToMessages = () => new Promise((resolve) => { waiting.push(resolve); channel.port2.postMessage(0); });

function errorMessage(id, e) {
  return { type: 'error', id, message: e.message ?? String(e), field: e.field ?? null };
}

// Stops run `id` (every run without an id): its PageRun is freed; a step already under way
// resolves into nothing.
function cancel(id = null) {
  for (const [key, handle] of runs) {
    if (id === null || key === id) { runs.delete(key); handle.free(); }
  }
}

async function run(id, request, name, beside) {
  if (!beside) cancel();
  const on = models.get(name);
  let handle;
  try {
    if (!on) throw new Error(`no model named ${name} is loaded`);
    handle = on.start(request);
  } catch (e) {
    postMessage(errorMessage(id, e));
    return;
  }
  runs.set(id, handle);
  for (;;) {
    await yieldToMessages();
    if (runs.get(id) !== handle || lost) return;
    const t0 = performance.now();
    let step;
    try {
      step = await on.step(handle);
    } catch (e) {
      // On the GPU a failing step is a lost or poisoned device: the page starts a fresh worker.
      if (on.on_gpu) loseDevice(e.message ?? String(e));
      else { cancel(id); postMessage(errorMessage(id, e)); }
      return;
    }
    if (runs.get(id) !== handle) return;
    if (step) postMessage({ type: 'step', id, step, ms: performance.now() - t0 }, [step.x_t.buffer, step.x0.buffer]);
    if (!step || step.done) { cancel(id); postMessage({ type: 'done', id }); return; }
  }
}

// WebGPU compiles each kernel the first time it runs: one network evaluation at each batch size
// the page will run compiles them all before the visitor's first step, with progress.
async function warm(batches) {
  for (const [i, batch] of batches.entries()) {
    try {
      // One DDIM step of `batch` images; a conditional model's w = 0 runs the batch once (∅).
      const guidance = description.num_classes ? { guidance: 0 } : {};
      const handle = model.start({ kind: 'sample', seed: 0, count: batch, ...guidance, sampler: { solver: 'ddim', steps: 1 } });
      await model.step(handle);
      handle.free();
    } catch (e) {
      if (model.on_gpu) loseDevice(e.message ?? String(e));
      return;
    }
    postMessage({ type: 'warming', done: i + 1, total: batches.length });
  }
}

// The forward panel's loss curve. On the CPU a pass is one call that holds this worker until it
// returns, so the curve is computed LOSS_CURVE_PART points a pass with the worker's messages let
// in between: a run asked for meanwhile starts at once instead of after the whole curve (a batch
// of 20 takes seconds), a newer curve replaces this one, and a page that is left stops within
// one part (a closing page's worker runs on until its current call returns: the whole curve's
// pass ran on beside the next page's first steps, docs/samplers.md). On WebGPU the worker only
// waits for the device, its messages coming in meanwhile, so the curve is one pass.
const LOSS_CURVE_PART = 4;
const WHOLE_CURVE = 2 ** 31; // more points than a curve has: all that are left, in one pass
let curveId = null;
async function lossCurve(id, request) {
  curveId = id;
  const t = [], loss = [];
  for (;;) {
    const part = await model.loss_curve(request, t.length, model.on_gpu ? WHOLE_CURVE : LOSS_CURVE_PART);
    t.push(...part.t);
    loss.push(...part.loss);
    if (t.length >= part.points) return { t, loss };
    await yieldToMessages();
    if (curveId !== id) return null;
  }
}

onmessage = async ({ data }) => {
  switch (data.type) {
    case 'load':
      try {
        const loaded = await pkg.Ddpm.create(data.bytes, data.wantGpu && pkg.adapter);
        models.set(data.name, loaded);
        const about = loaded.describe();
        about.backend += pkg.why;
        about.schedule_curves = loaded.schedule();
        if (data.name === 'main') [model, description] = [loaded, about];
        postMessage({
          type: 'loaded', name: data.name, model: about,
          kernels: loaded.on_gpu ? 'webgpu' : pkg.kernel_path(), threads: loaded.on_gpu ? 0 : pkg.cpu_threads(),
        });
      } catch (e) {
        postMessage({ ...errorMessage(null, e), load: data.name });
      }
      break;
    case 'warm':
      warm(data.batches);
      break;
    case 'run':
      run(data.id, data.request, data.model ?? 'main', data.beside === true);
      break;
    case 'forward':
    case 'loss-curve':
      try {
        const answer = data.type === 'forward' ? await model.forward(data.request) : await lossCurve(data.id, data.request);
        if (!answer) break; // a newer curve replaced it
        const images = data.type === 'forward' ? ['x0', 'eps', 'x_t', 'eps_hat', 'x0_hat'].map((k) => answer[k].buffer) : [];
        postMessage({ type: data.type, id: data.id, answer }, images);
      } catch (e) {
        if (model.on_gpu && !e.field) loseDevice(e.message ?? String(e));
        else postMessage(errorMessage(data.id, e));
      }
      break;
    case 'call':
      // The module's functions that need no model: the animation's steps and its GIF, a download's header.
      try {
        if (!CALLS.includes(data.call)) throw new Error(`no such call: ${data.call}`);
        const answer = pkg[data.call](...data.args);
        postMessage({ type: 'answer', id: data.id, answer }, answer.buffer ? [answer.buffer] : []);
      } catch (e) {
        postMessage(errorMessage(data.id, e));
      }
      break;
    case 'cancel':
      cancel(data.id ?? null);
      break;
    case 'memory':
      self.gc?.();
      postMessage({ type: 'memory', wasm: wasm.memory.buffer.byteLength });
      break;
    case 'destroy-device':
      for (const d of devices) d.destroy();
      break;
  }
};

// The threaded module when this worker will run on the CPU and may share memory, else the main.
async function startModule() {
  const query = new URL(self.location.href).searchParams;
  const threads = Number(query.get('threads') ?? navigator.hardwareConcurrency ?? 1);
  const adapter = query.get('backend') !== 'cpu' && self.navigator.gpu
    ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  const threaded = !adapter && threads > 1 && self.crossOriginIsolated === true;
  pkg = await import(threaded ? './pkg-threads/ddpm.js' : './pkg/ddpm.js');
  wasm = await pkg.default();
  if (threaded) await pkg.init_threads(threads);
  // Why the CPU, when the browser has WebGPU but no adapter for it: the same words from either
  // module, whose model is not sent to look for an adapter again (burn-wgpu's search would only
  // fail in longer words).
  const why = !adapter && query.get('backend') !== 'cpu' && self.navigator.gpu ? ' — WebGPU unavailable: no adapter' : '';
  pkg = { ...pkg, threaded, why, adapter: adapter !== null };
}

startModule().then(() => {
  postMessage({ type: 'hello', limits: pkg.page_limits() });
}, (e) => postMessage({ type: 'error', id: null, message: `could not start the module: ${e.message ?? e}` }));
