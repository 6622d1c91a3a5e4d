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
// Messages in:  {type: 'load', bytes, wantGpu} | {type: 'warm', batches} | {type: 'run', id, kind, args}
//               | {type: 'cancel'}
//               | {type: 'memory'} | {type: 'destroy-device'} (a test hook: loses the GPU)
// Messages out: {type: 'hello', maxWeightsBytes, limits, kernels} | {type: 'loaded', ...}
//               | {type: 'warming', done, total}
//               | {type: 'step', id, step, ms} | {type: 'done', id} | {type: 'error', id, message}
//               | {type: 'lost', reason} | {type: 'memory', wasm}
let pkg = null; // the module's exports: Ddpm, Interpolation, kernel_path, …
let model = null;
let wasm = null;
let current = null; // the id of the run this worker is stepping; null: none
let lost = false;
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

// `sample`: [seed, count, steps, eta, class (-1: any), guidance]; `edit`: [RGBA pixels, seed, t,
// steps, eta, class, guidance]; `ends` and `frames`: the Interpolation's arguments (mode, seeds,
// t, frames, steps, eta, class A, class B, guidance).
function start(kind, args) {
  switch (kind) {
    case 'sample': {
      const [seed, count, steps, eta, cls = -1, w = 0] = args;
      return model.start(seed, count, steps, eta, cls, w);
    }
    case 'edit': {
      const [rgba, seed, t, steps, eta, cls = -1, w = 0] = args;
      return model.start_edit(rgba, seed, t, steps, eta, cls, w);
    }
    case 'ends':
    case 'frames': {
      const [mode, seedA, seedB, t, frames, steps, eta, classA = -1, classB = -1, w = 0] = args;
      const request = new pkg.Interpolation(mode, seedA, seedB, t, frames, steps, eta, classA, classB, w);
      try {
        return kind === 'ends' ? model.start_interpolation_ends(request) : model.start_interpolation(request);
      } finally {
        request.free();
      }
    }
    default: throw new Error(`unknown run kind ${kind}`);
  }
}

async function run(id, kind, args) {
  current = id;
  try {
    start(kind, args);
  } catch (e) {
    postMessage({ type: 'error', id, message: e.message ?? String(e) });
    return;
  }
  for (;;) {
    await yieldToMessages();
    if (current !== id || lost) return;
    const t0 = performance.now();
    let step;
    try {
      step = await model.step();
    } catch (e) {
      // On the GPU a failing step is a lost or poisoned device: the page starts a fresh worker.
      if (model.on_gpu) loseDevice(e.message ?? String(e));
      else postMessage({ type: 'error', id, message: e.message ?? String(e) });
      return;
    }
    if (current !== id) return;
    if (!step) { postMessage({ type: 'done', id }); return; }
    const ms = performance.now() - t0;
    postMessage({ type: 'step', id, step, ms }, [step.x_t.buffer, step.x0.buffer]);
    if (step.done) { current = null; postMessage({ type: 'done', id }); return; }
  }
}

// WebGPU compiles each kernel the first time it runs: one network evaluation at each batch size
// the page will run compiles them all before the visitor's first step, with progress.
async function warm(batches) {
  for (const [i, batch] of batches.entries()) {
    try {
      model.start(0, batch, 1, 0, -1, 0);
      await model.step();
    } catch (e) {
      if (model.on_gpu) loseDevice(e.message ?? String(e));
      return;
    }
    postMessage({ type: 'warming', done: i + 1, total: batches.length });
  }
}

onmessage = async ({ data }) => {
  switch (data.type) {
    case 'load':
      try {
        model = await pkg.Ddpm.create(data.bytes, data.wantGpu && !pkg.threaded);
        postMessage({
          type: 'loaded', backend: model.backend + pkg.why, onGpu: model.on_gpu, describe: model.describe(),
          diffusionSteps: model.diffusion_steps, imageSize: model.image_size, numClasses: model.num_classes,
          kernels: model.on_gpu ? 'webgpu' : pkg.kernel_path(), threads: model.on_gpu ? 0 : pkg.cpu_threads(),
        });
      } catch (e) {
        postMessage({ type: 'error', id: null, message: e.message ?? String(e) });
      }
      break;
    case 'warm':
      warm(data.batches);
      break;
    case 'run':
      run(data.id, data.kind, data.args);
      break;
    case 'cancel':
      current = null;
      model?.cancel();
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
  // What the main module would have said when the browser has WebGPU but no adapter for it.
  const why = threaded && query.get('backend') !== 'cpu' && self.navigator.gpu ? ' — WebGPU unavailable: no adapter' : '';
  pkg = { ...pkg, threaded, why };
}

startModule().then(() => {
  postMessage({ type: 'hello', maxWeightsBytes: pkg.max_weights_bytes(), limits: JSON.parse(pkg.page_limits()) });
}, (e) => postMessage({ type: 'error', id: null, message: `could not start the module: ${e.message ?? e}` }));
