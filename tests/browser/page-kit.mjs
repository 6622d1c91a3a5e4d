// What the browser tests share: the page's URL and the native binary (set by `cargo xtask test`),
// native reference images, canvas readers, lying and coloured weights files, and waits.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { launch, pngPixels, pngTiles, rgbPng } from './harness.mjs';

export const URL_ = process.env.DDPM_URL;
export const BIN = process.env.DDPM_BIN;
export const WEIGHTS = process.env.DDPM_WEIGHTS ?? 'weights/mnist.safetensors';
assert.ok(URL_ && BIN, 'run through `cargo xtask test` (needs DDPM_URL and DDPM_BIN)');

export const STEPS = 10; // network evaluations: SwiftShader runs WebGPU on the CPU, so keep runs short
export const ETA = 1; // stochastic DDIM: the fresh noise of every step must come from the same seeds as natively
// The sampler argument of the helpers below: a number is DDIM with that η; DPM is DPM-Solver++(2M).
export const DPM = 'dpm++2m';

// `ddpm`'s flags for `steps` evaluations of the sampler `eta` (DDIM's η, or DPM).
export function samplerFlags(steps, eta) {
  const sampler = eta === DPM ? ['--sampler', DPM] : ['--sampler', 'ddim', '--eta', String(eta)];
  return [...sampler, '--steps', String(steps)];
}

// Sets the page's sampler controls to `steps` evaluations of `eta` (DDIM's η, or DPM).
export async function setSampler(page, steps, eta) {
  await page.selectOption('#sampler', eta === DPM ? DPM : 'ddim');
  await page.fill('#steps', String(steps));
  if (eta !== DPM) await page.fill('#eta', String(eta));
}
export const SEED = 11;
export const COUNT = 4;

// The training metadata in the weights file's safetensors header, as the page reads it.
export function weightsInfo() {
  const bytes = readFileSync(WEIGHTS);
  const n = Number(bytes.readBigUInt64LE(0));
  return JSON.parse(bytes.subarray(8, 8 + n).toString()).__metadata__;
}

// Native images for the same seeds and steps, as values 0..255 of one channel (gray: 0), one
// array per image.
export function nativeSamples(seed, count, steps, eta, weights = WEIGHTS, channel = 0, extra = []) {
  const dir = mkdtempSync(join(tmpdir(), 'ddpm-native-'));
  execFileSync(BIN, ['sample', '--weights', weights, '--count', String(count), '--seed', String(seed),
    ...samplerFlags(steps, eta), '--out', dir, ...extra], { stdio: 'pipe' });
  const images = Array.from({ length: count }, (_, i) => pngPixels(readFileSync(join(dir, `${String(i).padStart(6, '0')}.png`)), channel));
  rmSync(dir, { recursive: true, force: true });
  return images;
}

// The frames of `ddpm interpolate` for the same seeds, t, frame count and sampler, gray 0..255.
export function nativeInterpolation(mode, seedA, seedB, t, frames, steps, size, weights = WEIGHTS, extra = [], eta = DPM) {
  const dir = mkdtempSync(join(tmpdir(), 'ddpm-native-'));
  const strip = join(dir, 'strip.png');
  execFileSync(BIN, ['interpolate', '--weights', weights, ...extra, '--mode', mode, '--seed-a', String(seedA), '--seed-b', String(seedB),
    '--t', String(t), '--frames', String(frames), ...samplerFlags(steps, eta), '--scale', '1', '--out', strip], { stdio: 'pipe' });
  const tiles = pngTiles(readFileSync(strip), frames, size, 2);
  rmSync(dir, { recursive: true, force: true });
  return tiles;
}

// The weights file with its header's metadata edited by `edit(metadata)`: the tensors stay.
export function editedWeights(edit) {
  const bytes = readFileSync(WEIGHTS);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString());
  edit(header.__metadata__);
  const text = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([len, text, bytes.subarray(8 + n)]);
}

// The weights file with its `unet` or `schedule` config edited: the tensors stay, the header lies.
export function lyingWeights(entry, edit) {
  return editedWeights((meta) => {
    const config = JSON.parse(meta[entry]);
    edit(config);
    meta[entry] = JSON.stringify(config);
  });
}

// Image `i` of a canvas grid (1-pixel borders, `cols` per row) as values of one channel (the R
// channel, which is the gray value of a gray model).
export async function canvasTiles(page, id, count, size, channel = 0) {
  return page.evaluate(({ id, count, size, channel }) => {
    const c = document.getElementById(id);
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const cols = Math.ceil(Math.sqrt(count));
    return Array.from({ length: count }, (_, i) => {
      const x0 = 1 + (i % cols) * (size + 1), y0 = 1 + Math.floor(i / cols) * (size + 1);
      const out = [];
      for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) out.push(data[((y0 + y) * c.width + x0 + x) * 4 + channel]);
      return out;
    });
  }, { id, count, size, channel });
}

export async function canvasPixels(page, id) {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
  }, id);
}

export function compare(a, b) {
  let sum = 0, max = 0;
  for (let i = 0; i < a.length; i++) { const d = Math.abs(a[i] - b[i]); sum += d; max = Math.max(max, d); }
  return { mean: sum / a.length, max };
}

// The same image, in 8-bit levels: the GPU sums in another order, and over 50 steps a few edge
// pixels drift (seen: max 9 at mean 0.18), while a wrong seed, schedule or layout moves the mean by tens.
export const same = ({ mean, max }) => mean <= 1 && max <= 16;

export async function ready(page, query = '') {
  await page.goto(`${URL_}?autostart=0${query}`);
  await page.waitForFunction(() => window.ddpmState?.ready || window.ddpmState?.error, null, { timeout: 120_000 });
  const error = await page.evaluate(() => window.ddpmState.error);
  assert.equal(error, null, `page error: ${error}`);
}

export async function sample(page, seed, count, steps, eta) {
  await page.fill('#seed', String(seed));
  await page.selectOption('#count', String(count));
  await setSampler(page, steps, eta);
  const before = await page.evaluate(() => window.ddpmState.stepsDrawn);
  await page.click('#start');
  return before;
}

// The waits are long because SwiftShader emulates WebGPU on the CPU: about 6 s per 4-image step
// of the shipped base-64 model, 4 minutes for the whole WebGPU test on an idle 2-core machine.
export const waitDone = (page, timeout = 600_000) => page.waitForFunction(
  () => !window.ddpmState.running && window.ddpmState.lastStep?.index === window.ddpmState.lastStep?.total,
  null, { timeout, polling: 100 });


// DDPM_BROWSER_BACKENDS=cpu (or webgpu) narrows a local run to one backend.
export const backends = (process.env.DDPM_BROWSER_BACKENDS ?? 'webgpu,cpu').split(',');

// The model runs in a worker. Two records from the first script on, in the page's main thread
// only (an init script does not run in workers): every WebAssembly module it instantiates, which
// must be none, since the wasm model runs in the worker; and its long tasks (PerformanceObserver
// 'longtask': > 50 ms), which are reported, not asserted: their length is a speed figure that
// rises with the machine's load, and `tests/browser/bench.mjs` measures it.
export async function watchMainThread(page) {
  await page.addInitScript(() => {
    window.ddpmLongTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.ddpmLongTasks.push({ start: Math.round(e.startTime), ms: Math.round(e.duration) });
    }).observe({ type: 'longtask', buffered: true });
    window.ddpmMainThreadWasm = [];
    for (const name of ['instantiate', 'instantiateStreaming']) {
      const original = WebAssembly[name];
      WebAssembly[name] = function (...args) {
        window.ddpmMainThreadWasm.push(name);
        return original.apply(this, args);
      };
    }
    // A proxy, so that `instanceof WebAssembly.Instance` still holds.
    WebAssembly.Instance = new Proxy(WebAssembly.Instance, {
      construct(target, args) {
        window.ddpmMainThreadWasm.push('Instance');
        return Reflect.construct(target, args);
      },
    });
  });
}

export const longTasksAfterLoad = (page) => page.evaluate(() => window.ddpmLongTasks.filter((t) => t.start > window.ddpmState.loaded.model));

// A small RGB model (trained two steps on coloured squares, so its pictures are its own), as a
// weights file and a manifest that lists it beside the shipped model.
export function rgbModel() {
  const dir = mkdtempSync(join(tmpdir(), 'ddpm-rgb-'));
  const images = join(dir, 'images');
  mkdirSync(images);
  for (let i = 0; i < 6; i++) {
    writeFileSync(join(images, `${i}.png`), rgbPng(16, (x, y) => [(x * 16 + i * 40) % 256, (y * 16) % 256, x < 8 === i % 2 === 0 ? 230 : 20]));
  }
  const run = join(dir, 'run');
  execFileSync(BIN, ['train', '--data', images, '--channels', '3', '--image-size', '16', '--base-channels', '16',
    '--channel-mults', '1,2', '--attn', '0,1', '--groups', '4', '--steps', '2', '--batch-size', '4', '--warmup', '1',
    '--sample-every', '0', '--out', run], { stdio: 'pipe' });
  const file = join(dir, 'rgb.safetensors');
  execFileSync(BIN, ['export', '--run', run, '--out', file], { stdio: 'pipe' });
  const bytes = readFileSync(file);
  const manifest = JSON.parse(readFileSync('weights/index.json', 'utf8'));
  manifest.models.push({ id: 'rgb', title: 'Colour test (16×16 RGB)', file: 'rgb.safetensors', bytes: bytes.length,
    sha256: createHash('sha256').update(bytes).digest('hex') });
  return { dir, file, bytes, manifest };
}

// A tiny class-conditional teacher (`teacher.safetensors`, two training steps) and its distilled
// student put through both stages by the CLI, one step each, w learnt over 0.5..3: stage 1's
// `s8.safetensors` and the 4-step grid's `s4.safetensors`, in `dir`; `run(...args)` runs ddpm there.
export function tinyStudent() {
  const dir = mkdtempSync(join(tmpdir(), 'ddpm-student-'));
  const run = (...args) => execFileSync(BIN, args, { stdio: 'pipe', cwd: dir });
  run('train', '--data', 'mnist', '--conditional', '--base-channels', '8', '--channel-mults', '1,2', '--attn', '0,1',
    '--groups', '4', '--dropout', '0', '--steps', '2', '--batch-size', '4', '--sample-every', '0', '--out', 'run');
  run('export', '--run', 'run', '--out', 'teacher.safetensors');
  const distil = ['--steps', '1', '--batch-size', '2', '--sample-every', '0'];
  run('distil', '--teacher', 'teacher.safetensors', '--w-min', '0.5', '--w-max', '3', ...distil, '--out', 's1');
  run('export', '--run', 's1', '--out', 's8.safetensors');
  run('distil', '--teacher', 's8.safetensors', '--teacher-steps', '8', '--w-min', '0.5', '--w-max', '3', ...distil, '--out', 's4');
  run('export', '--run', 's4', '--out', 's4.safetensors');
  return { dir, run, distil };
}

// A manifest entry for the file `path` (its size and SHA-256), with `extra` fields.
export function manifestEntry(id, path, extra = {}) {
  const bytes = readFileSync(path);
  const file = path.split('/').pop();
  return { id, title: id, file, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), ...extra };
}

// A browser (closed by the test file's `after`, which empties `browsers`) and a page in it.
export async function openPage(browsers, webgpu) {
  const browser = await launch({ webgpu });
  browsers.push(browser);
  return { browser, page: await browser.page() };
}

// Sets a range input as a drag would (its value, then an input event).
export async function setSlider(page, id, value) {
  await page.evaluate(({ id, value }) => {
    const slider = document.getElementById(id);
    slider.value = String(value);
    slider.dispatchEvent(new Event('input'));
  }, { id, value });
}

// A GIF's frames decoded by the browser (WebCodecs' ImageDecoder): size, duration in ms and the
// red channel of each.
export async function gifFrames(page, bytes) {
  return page.evaluate(async (b64) => {
    const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const decoder = new ImageDecoder({ data, type: 'image/gif' });
    await decoder.tracks.ready;
    await decoder.completed;
    const frames = [];
    for (let i = 0; i < decoder.tracks.selectedTrack.frameCount; i++) {
      const { image } = await decoder.decode({ frameIndex: i });
      const canvas = new OffscreenCanvas(image.displayWidth, image.displayHeight);
      canvas.getContext('2d').drawImage(image, 0, 0);
      const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      frames.push({ width: canvas.width, height: canvas.height, duration: image.duration / 1000, pixels: Array.from(rgba.filter((_, k) => k % 4 === 0)) });
      image.close();
    }
    return frames;
  }, Buffer.from(bytes).toString('base64'));
}
