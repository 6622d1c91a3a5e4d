// `cargo xtask bench-web`: the page's speed, as JSON lines (a benchmark, not a test):
// ms per sampling step on WebGPU and on the CPU fallback (threaded and one-thread) at batch 1, 4
// and 16, the time from navigation to the first drawn step and (CPU) to the first finished image,
// the default sampler's image and interpolation against the old default's, the live controls'
// latency (issue 49), and the gzipped size of what the page downloads.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { launch } from './harness.mjs';
import { manifestEntry } from './page-kit.mjs';

const URL_ = process.env.DDPM_URL;
const emit = (o) => console.log(JSON.stringify(o));

const files = ['www/pkg/ddpm_bg.wasm', 'www/pkg/ddpm.js', 'www/app.js', 'www/model-client.js', 'www/model-worker.js', 'www/draw-pad.js',
  'www/link.js', 'www/live.js', 'www/plots.js', 'www/recorder.js', 'www/weights-cache.js', 'www/index.html', 'www/style.css'];
const gz = files.reduce((n, f) => n + gzipSync(readFileSync(f), { level: 9 }).length, 0);
const raw = files.reduce((n, f) => n + readFileSync(f).length, 0);
emit({ what: 'bundle', files, bytes: raw, gzip_bytes: gz, gzip_mb: +(gz / 1e6).toFixed(3) });
// What a CPU visitor on an isolated page loads as well: the threaded module.
const threaded = ['www/pkg-threads/ddpm_bg.wasm', 'www/pkg-threads/ddpm.js'];
const tgz = threaded.reduce((n, f) => n + gzipSync(readFileSync(f), { level: 9 }).length, 0);
emit({ what: 'threaded_module', files: threaded, bytes: threaded.reduce((n, f) => n + readFileSync(f).length, 0), gzip_bytes: tgz });

const median = (v) => { const s = [...v].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

// DDPM_BROWSER_BACKENDS=cpu (or webgpu) times one backend only, as in the tests. The CPU runs
// twice: the threaded module (the dev server isolates the page) and the one-thread module.
const backends = (process.env.DDPM_BROWSER_BACKENDS ?? 'webgpu,cpu').split(',');
const configs = [
  { webgpu: true, backend: 'webgpu', query: '' },
  { webgpu: false, backend: 'cpu-wasm-threads', query: '' },
  { webgpu: false, backend: 'cpu-wasm', query: '?threads=1' },
].filter((c) => backends.includes(c.webgpu ? 'webgpu' : 'cpu'));
const liveModels = liveStudents();
for (const { webgpu, backend, query } of configs) {
  const browser = await launch({ webgpu });
  const page = await browser.page();
  // The longest main-thread task (over 50 ms: the browser's long-task threshold) of each page.
  await page.addInitScript(() => {
    window.longestTaskMs = 0;
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.longestTaskMs = Math.max(window.longestTaskMs, e.duration);
    }).observe({ type: 'longtask', buffered: true });
  });
  // Page load to first drawn step, on a first visit (empty profile: the weights come from the
  // network) and a return visit (the weights from the browser's cache): autostart runs the
  // default sampler (16 images on WebGPU, fewer on the CPU).
  // Without the live model (`live=0`), which would load beside these runs; its own part is last.
  for (const visit of ['first', 'return']) {
    await page.goto(`${URL_}${query}${query ? '&' : '?'}live=0`);
    await page.waitForFunction(() => window.ddpmState?.firstStepAt || window.ddpmState?.error, null, { timeout: 300_000 });
    const s = await page.evaluate(() => {
      const { firstStepAt, loaded, backend, error, msPerStep, kernels, weightsSource } = window.ddpmState;
      return { firstStepAt, loaded, backend, error, kernels, weightsSource, firstStepMs: msPerStep[0], count: document.getElementById('count').value };
    });
    if (s.error) throw new Error(s.error);
    // The phases, each from navigation start: wasm instantiated, weights ready (the two
    // overlap), model built on the backend, first step drawn.
    const phases = Object.fromEntries(Object.entries(s.loaded).map(([k, v]) => [`${k}_ms`, Math.round(v)]));
    emit({ backend, what: 'first_step_drawn', visit, ms: Math.round(s.firstStepAt), ...phases, step_ms: Math.round(s.firstStepMs),
      batch: Number(s.count), weights_from: s.weightsSource, detail: s.backend });
    if (!webgpu) {
      // On the CPU, the default run's first finished image, from navigation start.
      await page.waitForFunction(() => !window.ddpmState.running, null, { timeout: 600_000, polling: 20 });
      // With each of its steps' ms, to hold against a warm page's (`sample_step` below).
      const done = await page.evaluate(() => ({ now: performance.now(), steps: window.ddpmState.lastStep.total, ms: window.ddpmState.msPerStep }));
      emit({ backend, what: 'first_image_done', visit, ms: Math.round(done.now), batch: Number(s.count), steps: done.steps,
        step_ms: done.ms.map(Math.round), median_step_ms: Math.round(median(done.ms)) });
    } else {
      // SwiftShader would take minutes to finish the autostarted run: stop it.
      await page.click('#stop');
      await page.waitForFunction(() => !window.ddpmState.running, null, { timeout: 600_000 });
    }
  }
  if (!webgpu) {
    // The old default (DDIM, 150 steps, η = 1, before docs/samplers.md) against the new one, in
    // this run: a first image from a loaded page (add the return visit's load to compare with
    // first_image_done), and the interpolation panel's default request (noise mode, t = 500,
    // 9 frames; the old page ran its DDIM steps with η = 0).
    // The forward panel's passes start after the first picture (app.js, `main`); they would
    // run in the one worker between the timed image's steps.
    await page.waitForFunction(() => (window.ddpmState.forward && window.ddpmState.lossCurve) || window.ddpmState.error,
      null, { timeout: 600_000, polling: 20 });
    const defaults = await page.evaluate(() => window.ddpmState.limits.default_sampler);
    const samplers = [
      { name: 'default', solver: defaults.solver, steps: defaults.steps, eta: defaults.eta },
      { name: 'old_default', solver: 'ddim', steps: 150, eta: 1, interpolationEta: 0 },
    ];
    for (const s of samplers) {
      await page.selectOption('#count', '1');
      await page.selectOption('#sampler', s.solver);
      await page.fill('#steps', String(s.steps));
      if (s.solver === 'ddim') await page.fill('#eta', String(s.eta));
      let t0 = await page.evaluate(() => performance.now());
      await page.click('#start');
      await page.waitForFunction(() => !window.ddpmState.running, null, { timeout: 600_000, polling: 20 });
      const image = await page.evaluate((t0) => performance.now() - t0, t0);
      if (s.solver === 'ddim') await page.fill('#eta', String(s.interpolationEta ?? s.eta));
      t0 = await page.evaluate(() => performance.now());
      await page.click('#interp');
      await page.waitForFunction(() => window.ddpmState.interpolationReady, null, { timeout: 1_800_000, polling: 20 });
      const interpolation = await page.evaluate((t0) => performance.now() - t0, t0);
      emit({ backend, what: 'sampler_latency', sampler: s.name, solver: s.solver, steps: s.steps, eta: s.eta,
        image_ms: Math.round(image), interpolation_ms: Math.round(interpolation), frames: 9, t: 500 });
    }
  }
  const { kernels, threads } = await page.evaluate(() => window.ddpmState);
  // Every step's ms of one run.
  const steps = async (batch, n) => {
    await page.selectOption('#count', String(batch));
    await page.selectOption('#sampler', 'ddim');
    await page.fill('#steps', String(n));
    await page.fill('#eta', '1');
    const before = await page.evaluate(() => window.ddpmState.msPerStep.length);
    await page.click('#start');
    await page.waitForFunction((k) => window.ddpmState.msPerStep.length >= k && !window.ddpmState.running, before + n, { timeout: 1_800_000 });
    return page.evaluate((k) => window.ddpmState.msPerStep.slice(k), before);
  };
  const run = async (batch, n) => (await steps(batch, n)).slice(2);
  if (webgpu) {
    // Kernel compilation: the first step at a batch size the page has not run yet against the
    // second (the autostarted run compiled batch 16), and whether steps stay as fast later in a
    // run (an autotuner would make the first steps of every visit slow): steps 1-10 vs 50-60.
    for (const batch of [1, 4]) {
      const all = await steps(batch, 3);
      emit({ backend, what: 'first_steps_at_new_batch', batch, ms: all.map(Math.round) });
    }
    const all = await steps(1, 60);
    emit({ backend, what: 'steps_1_10_vs_50_60', batch: 1, ms_1_10: +median(all.slice(0, 10)).toFixed(1), ms_50_60: +median(all.slice(49, 60)).toFixed(1) });
  }
  // Untimed: V8 starts the wasm in its baseline compiler and optimises hot functions in the
  // background; time the steady state, as `ddpm bench` does after its warm-up.
  await run(1, 12);
  await page.evaluate(() => { window.longestTaskMs = 0; });
  for (const batch of [1, 4, 16]) {
    const ms = await run(batch, 12);
    // The CPU the browser ran on (this machine), and the kernels the page used.
    emit({ backend, what: 'sample_step', batch, ms: +median(ms).toFixed(2), n: ms.length, cpu: cpus()[0]?.model, kernels, threads });
  }
  emit({ backend, what: 'longest_main_thread_task', ms: Math.round(await page.evaluate(() => window.longestTaskMs)), while: 'sampling at batch 1, 4, 16' });
  for (const student of liveModels) await liveLatency(page, backend, query, student);
  await browser.close();
}
for (const { dir } of liveModels) if (dir) rmSync(dir, { recursive: true, force: true });

// The live models: the one the shipped digits' manifest entry names, else stand-ins made here
// from the shipped teacher by one update of each distillation stage (a student's latency
// depends on its architecture and its steps, not on how far it was trained), at K = 4 and 2.
function liveStudents() {
  const manifest = JSON.parse(readFileSync('weights/index.json', 'utf8'));
  const digits = manifest.models.find((m) => m.id === 'mnist');
  if (digits.live) return [{ manifest, dir: null, id: digits.live, standIn: false }];
  const dir = mkdtempSync(join(tmpdir(), 'ddpm-live-bench-'));
  const ddpm = (...args) => execFileSync(process.env.DDPM_BIN, args, { stdio: 'pipe', cwd: dir });
  const once = ['--steps', '1', '--batch-size', '2', '--sample-every', '0'];
  ddpm('distil', '--teacher', join(process.cwd(), 'weights/mnist.safetensors'), '--w-min', '0', '--w-max', '4', ...once, '--out', 's16');
  ddpm('export', '--run', 's16', '--out', 's16.safetensors');
  const made = [];
  for (const k of [8, 4, 2]) {
    ddpm('distil', '--teacher', `s${2 * k}.safetensors`, '--teacher-steps', String(2 * k), ...once, '--out', `s${k}`);
    ddpm('export', '--run', `s${k}`, '--out', `s${k}.safetensors`);
    if (k <= 4) {
      const id = `mnist-fast-stand-in-${k}`;
      const listed = structuredClone(manifest);
      listed.models.find((m) => m.id === 'mnist').live = id;
      listed.models.push(manifestEntry(id, join(dir, `s${k}.safetensors`)));
      made.push({ manifest: listed, dir, id, file: join(dir, `s${k}.safetensors`), standIn: true });
    }
  }
  return made;
}

// Each live control moved 20 times at one image, each move waited for: the time from its input
// event to its picture drawn (median and worst), and the longest main-thread task meanwhile.
async function liveLatency(page, backend, query, student) {
  await page.unrouteAll();
  if (student.standIn) {
    await page.route('**/weights/index.json', (route) => route.fulfill({ json: student.manifest }));
    const file = student.manifest.models.find((m) => m.id === student.id).file;
    await page.route(`**/weights/${file}`, (route) => route.fulfill({ body: readFileSync(student.file) }));
  }
  await page.goto(`${URL_}${query}${query ? '&' : '?'}autostart=0&model=mnist`);
  // Its first frame drawn, or the page's error, or its notice that the live model did not load.
  await page.waitForFunction(() => {
    const s = window.ddpmState;
    return s?.live?.drawn.interpolate >= 1 || s?.error || s?.notices.some((n) => n.includes('live model'));
  }, null, { timeout: 600_000 });
  const error = await page.evaluate(() => window.ddpmState.error ?? window.ddpmState.notices.find((n) => n.includes('live model')));
  if (error) throw new Error(error);
  await page.selectOption('#count', '1');
  const about = await page.evaluate(() => window.ddpmState.live.about);
  const moves = {
    interpolate: (i) => page.evaluate((v) => {
      const slider = document.getElementById('lambda');
      slider.value = String(v);
      slider.dispatchEvent(new Event('input'));
    }, (i * 37 + 11) % 100),
    guidance: (i) => page.evaluate((i) => {
      const slider = document.getElementById('guidance');
      const [lo, hi] = [Number(slider.min), Number(slider.max)];
      slider.value = String(lo + ((i % 10) + 1) * (hi - lo) / 11);
      slider.dispatchEvent(new Event('input'));
    }, i),
    draw: async (i) => {
      const box = await page.locator('#pad').boundingBox();
      const at = (x, y) => [box.x + x * box.width, box.y + y * box.height];
      await page.mouse.move(...at(0.2 + 0.03 * (i % 10), 0.2));
      await page.mouse.down();
      await page.mouse.move(...at(0.5, 0.5 + 0.02 * (i % 10)), { steps: 4 });
      await page.mouse.up();
    },
  };
  await page.locator('#pad').scrollIntoViewIfNeeded();
  for (const [control, move] of Object.entries(moves)) {
    await page.evaluate(() => { window.longestTaskMs = 0; });
    const ms = [];
    for (let i = 0; i < 20; i++) {
      const n = await page.evaluate((c) => window.ddpmState.live.latency[c].length, control);
      await move(i);
      await page.waitForFunction(([c, n]) => window.ddpmState.live.latency[c].length > n, [control, n], { timeout: 600_000, polling: 5 });
      ms.push(await page.evaluate((c) => window.ddpmState.live.latency[c].at(-1), control));
    }
    emit({ backend, what: 'live_latency', control, model: student.id, stand_in: student.standIn, ...about, images: 1,
      median_ms: Math.round(median(ms)), worst_ms: Math.round(Math.max(...ms)), moves: ms.length,
      longest_main_thread_task_ms: Math.round(await page.evaluate(() => window.longestTaskMs)) });
  }
}
