// The main thread's handle on the model worker (model-worker.js): loads the weights into it,
// runs requests step by step (a new run replaces the old at once unless it runs `beside` them;
// stop cancels within one step), and recovers from a lost GPU: a fresh worker with a fresh
// device, at most `GPU_RETRIES` times, then the CPU, and the interrupted requests run again
// there from their start (a request is a value, src/request.rs: an interpolation draws its ends
// again too). Run ids live here alone: a step of a replaced run never reaches its caller.
// Beside the main model it may hold a 'live' one (a distilled student) for the live controls,
// whose runs (`live`) replace only the previous one of the same control.
const GPU_RETRIES = 2;

export class ModelClient {
  // `wantGpu`: try WebGPU; `threads`: the CPU's threads (null: the visitor's cores), 1 for the
  // one-thread module.
  constructor({ onNotice, wantGpu, threads = null }) {
    this.onNotice = onNotice; // (text) => void: what the page should tell the visitor
    this.runId = 0;
    this.runs = new Map(); // id → {request, model, live, onStep, resolve, reject}: the runs in progress
    this.liveRuns = new Map(); // a live control → the id of its run in progress
    this.latest = new Map(); // 'forward' | 'loss-curve' → {id, request, resolve, reject}: the one asked for last
    this.calls = new Map(); // id → {resolve, reject}: one-off answers (the animation)
    this.losses = 0;
    this.wantGpu = wantGpu;
    this.threads = threads;
    this.spawn(wantGpu);
  }

  // A fresh worker, on WebGPU when `onGpu` and an adapter exists, else on the CPU (the worker
  // chooses its module from this); `hello` resolves to the module's bounds once it runs.
  spawn(onGpu) {
    const url = new URL('./model-worker.js', import.meta.url);
    if (!onGpu) url.searchParams.set('backend', 'cpu');
    if (this.threads !== null) url.searchParams.set('threads', String(this.threads));
    const worker = new Worker(url, { type: 'module' });
    this.worker = worker;
    this.pending = {}; // type → resolve, for the one-off replies
    this.hello = new Promise((resolve, reject) => { this.pending.hello = resolve; this.pending.fail = reject; });
    // A replaced worker's last messages (a second report of the same loss) are ignored.
    worker.onmessage = ({ data }) => { if (worker === this.worker) this.receive(data); };
    worker.onerror = (e) => { if (worker === this.worker) this.fail(new Error(`the model worker failed: ${e.message ?? e}`)); };
  }

  fail(error) {
    this.pending.fail?.(error);
    for (const loading of Object.values(this.pending.loaded ?? {})) loading.reject(error);
    for (const run of this.runs.values()) run.reject(error);
    this.runs.clear();
    for (const asked of [...this.latest.values(), ...this.calls.values()]) asked.reject(error);
    this.latest.clear();
    this.calls.clear();
  }

  receive(data) {
    const run = this.runs.get(data.id);
    switch (data.type) {
      case 'hello': this.pending.hello(data); break;
      case 'loaded': this.pending.loaded?.[data.name]?.resolve(data); break;
      case 'memory': this.pending.memory?.(data); break;
      case 'warming':
        this.onWarming?.(data.done, data.total);
        if (data.done === data.total) this.pending.warm?.();
        break;
      case 'step':
        run?.onStep(data.step, data.ms);
        break;
      case 'forward':
      case 'loss-curve': {
        const asked = this.latest.get(data.type);
        if (asked?.id === data.id) { asked.resolve(data.answer); this.latest.delete(data.type); }
        break;
      }
      case 'answer':
        this.calls.get(data.id)?.resolve(data.answer);
        this.calls.delete(data.id);
        break;
      case 'done':
        if (run) { this.runs.delete(data.id); run.resolve(true); }
        break;
      case 'error': {
        const error = Object.assign(new Error(data.message), { field: data.field });
        const asked = [...this.latest].find(([, a]) => a.id === data.id);
        if (data.load && data.load !== 'main') this.pending.loaded?.[data.load]?.reject(error);
        else if (data.id === null) this.fail(error);
        else if (asked) { asked[1].reject(error); this.latest.delete(asked[0]); }
        else if (this.calls.has(data.id)) { this.calls.get(data.id).reject(error); this.calls.delete(data.id); }
        else if (run) { this.runs.delete(data.id); run.reject(error); }
        break;
      }
      case 'lost': this.recover(data.reason); break;
    }
  }

  // Builds the main model in the worker from the weights (kept, to rebuild it after a lost GPU).
  load(bytes, onGpu = this.wantGpu) {
    this.bytes = { main: bytes };
    this.loading = this.loadNow('main', bytes, onGpu).then((info) => { this.info = info; return info; });
    return this.loading;
  }

  // Builds the live model beside it (kept too); resolves to the worker's 'loaded' reply, whose
  // `model` describes it; rejects with the loader's message without touching the main model.
  loadLive(bytes) {
    this.bytes.live = bytes;
    this.liveLoading = Promise.resolve(this.loading).then(() => this.loadNow('live', bytes, this.info.model.on_gpu));
    return this.liveLoading;
  }

  async loadNow(name, bytes, wantGpu) {
    await this.hello;
    this.pending.loaded ??= {};
    const loaded = new Promise((resolve, reject) => { this.pending.loaded[name] = { resolve, reject }; });
    // A copy goes to the worker, so the page keeps its own for a fresh worker.
    const copy = bytes.slice();
    this.worker.postMessage({ type: 'load', name, bytes: copy, wantGpu }, [copy.buffer]);
    try {
      return await loaded;
    } finally {
      delete this.pending.loaded[name];
    }
  }

  // On WebGPU: compiles the kernels of every batch size in `batches` (one network evaluation
  // each), calling onWarming(done, total) as it goes; resolves when all are compiled.
  warm(batches) {
    this.warmBatches = batches;
    if (!this.info?.model.on_gpu || batches.length === 0) return Promise.resolve();
    const done = new Promise((resolve) => { this.pending.warm = resolve; });
    this.worker.postMessage({ type: 'warm', batches });
    return done;
  }

  // Runs a request ({kind: 'sample' | 'interpolate' | 'edit', ...}: src/request.rs), calling
  // onStep(step, ms) for each step; resolves true when it finished, false when a newer run or
  // stop replaced it; rejects with the module's error (its `field` names the request's field).
  // A new run replaces those in progress (live ones excepted); with `beside` it runs alongside
  // them.
  run(request, onStep, { beside = false } = {}) {
    if (!beside) this.cancel();
    return this.start(request, onStep, 'main', false).done;
  }

  // A live control's run on the live model (`live`, or 'main' when the main model is itself the
  // student): it replaces that control's previous run at once, so the latest position wins and
  // a stale one is dropped. `onStep` sees each step; resolves to the last, or to null when the
  // run was replaced.
  live(control, request, model = 'live', onStep = () => {}) {
    const previous = this.liveRuns.get(control);
    if (previous !== undefined) this.stopRun(previous);
    let last = null;
    const { id, done } = this.start(request, (step) => { onStep(step); last = step; }, model, true);
    this.liveRuns.set(control, id);
    return done.then((finished) => {
      if (this.liveRuns.get(control) === id) this.liveRuns.delete(control);
      return finished ? last : null;
    });
  }

  start(request, onStep, model, live) {
    const id = ++this.runId;
    const done = new Promise((resolve, reject) => {
      this.runs.set(id, { request, model, live, onStep, resolve, reject });
      // After a lost GPU the fresh worker may still be building the models.
      Promise.all([this.loading, model === 'live' && this.liveLoading]).then(() => {
        if (this.runs.has(id)) this.worker.postMessage({ type: 'run', id, request, model, beside: true });
      }, () => {});
    });
    return { id, done };
  }

  // Stops run `id` (it resolves false).
  stopRun(id) {
    const run = this.runs.get(id);
    if (!run) return;
    this.runs.delete(id);
    run.resolve(false);
    this.worker.postMessage({ type: 'cancel', id });
  }

  // The forward process at one t (src/forward.rs): resolves to the worker's view, or to null
  // when a newer call replaced it before its answer came (the latest position wins).
  forward(request) {
    return this.ask('forward', request);
  }

  // The loss-versus-t curve of the forward panel's example: `{t, loss}`, or null when replaced.
  lossCurve(request) {
    return this.ask('loss-curve', request);
  }

  // A question of which only the latest matters (a slider's position): an unanswered earlier
  // one of the same kind resolves to null. `request` may be a promise: the question takes its
  // place when asked, so one whose request is still being built never overtakes a newer one.
  ask(type, request) {
    this.latest.get(type)?.resolve(null);
    const id = ++this.runId;
    return new Promise((resolve, reject) => {
      const asked = { id, request: null, resolve, reject };
      this.latest.set(type, asked);
      Promise.resolve(request).then((built) => {
        asked.request = built;
        Promise.resolve(this.loading).then(() => {
          if (this.latest.get(type) === asked) this.worker.postMessage({ type, id, request: built });
        }, () => {});
      }, (e) => {
        if (this.latest.get(type) === asked) this.latest.delete(type);
        reject(e);
      });
    });
  }

  // One answer from the module that needs no model (`call`: the worker's name for it), once
  // the module runs.
  call(call, args, transfer = []) {
    const id = ++this.runId;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.hello.then(() => this.worker.postMessage({ type: 'call', id, call, args }, transfer), () => {});
    });
  }

  // Whether a download's first bytes hold a whole header the page can load (false: not yet
  // whole); rejects with the reason the page cannot.
  checkWeightsHeader(prefix) {
    return this.call('check_weights_header', [prefix]);
  }

  // The steps of a `total`-step run that an animation shows (the library's choice).
  animationSteps(total) {
    return this.call('animation_steps', [total]);
  }

  // The animation of the chosen steps' grids (`x_t`, `x0`: the grids one after another) as GIF bytes.
  gif(width, height, x_t, x0) {
    return this.call('animation_gif', [width, height, x_t, x0], [x_t.buffer, x0.buffer]);
  }

  // Stops every run in progress but the live controls' (each resolves false).
  cancel() {
    for (const [id, run] of this.runs) if (!run.live) this.stopRun(id);
  }

  async memory() {
    const reply = new Promise((resolve) => { this.pending.memory = resolve; });
    this.worker.postMessage({ type: 'memory' });
    return (await reply).wasm;
  }

  // The test hook: destroys the worker's GPU device (what a driver reset does to it).
  destroyDevice() {
    this.worker.postMessage({ type: 'destroy-device' });
  }

  // The GPU device is gone: the worker's wasm instance may be wedged on it, so it is replaced
  // by a fresh one with a fresh device, or after GPU_RETRIES losses by one on the CPU; the runs
  // that were interrupted start again from their first step.
  async recover(message) {
    this.worker.terminate();
    const reason = String(message).split('\n')[0]; // the first line of burn's error chain
    this.losses += 1;
    const onGpu = this.losses <= GPU_RETRIES;
    this.onNotice(onGpu
      ? `The GPU device was lost (${reason}); starting again on a fresh device.`
      : `The GPU device was lost ${this.losses} times (${reason}); continuing on the CPU.`);
    const interrupted = new Map(this.runs);
    // A one-off answer the old worker owed never comes: say so rather than wait for ever.
    for (const c of this.calls.values()) c.reject(new Error(`the model worker was replaced after a lost GPU (${reason}): try again`));
    this.calls.clear();
    this.spawn(this.wantGpu && onGpu);
    const { main, live } = this.bytes;
    try {
      // Both asked at once, so that a live run asked meanwhile waits for the live model too.
      const loading = [this.load(main, this.wantGpu && onGpu), live && this.loadLive(live)];
      await Promise.all(loading);
    } catch (e) {
      this.fail(e);
      return;
    }
    this.onRecovered?.(this.info);
    if (this.warmBatches) await this.warm(this.warmBatches);
    // Those the visitor did not replace or stop meanwhile.
    for (const [id, run] of interrupted) {
      if (this.runs.get(id) === run) this.worker.postMessage({ type: 'run', id, request: run.request, model: run.model, beside: true });
    }
    for (const [type, asked] of this.latest) {
      if (asked.request) this.worker.postMessage({ type, id: asked.id, request: asked.request });
    }
  }
}
