// The page under stress and bad input: rapid events and bounded memory, weights kept across
// visits, bounds from the module, bad and lying weights files. Run by `cargo xtask test`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { launch } from './harness.mjs';
import {
  URL_, editedWeights, lyingWeights, ready, sample, waitDone,
} from './page-kit.mjs';

const browsers = [];
after(async () => { for (const b of browsers) await b.close(); });

// The CPU fallback (fast enough to run many times): rapid events never leave a stale loop
// touching a newer run, and memory stays flat over many runs.
test('CPU fallback: 50 rapid events, then runs that draw every step, in bounded memory', { timeout: 1_200_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  await ready(page, '&backend=cpu');
  await page.selectOption('#count', '1');
  await page.fill('#steps', '4');
  await page.fill('#frames', '3');
  let seed = 1;
  const rnd = (() => { let x = 12345; return () => { x = (x * 1103515245 + 12345) % 2147483648; return x / 2147483648; }; })();
  // Clicked through the DOM, as fast as a user could: a disabled button ignores the click.
  const click = (id) => page.evaluate((id) => document.getElementById(id).click(), id);
  for (let i = 0; i < 50; i++) {
    const r = rnd();
    if (r < 0.4) {
      await page.fill('#seed', String(seed++));
      await click('start');
    } else if (r < 0.6) {
      await click('stop');
    } else if (r < 0.8) {
      await click('interp');
    } else {
      await page.evaluate((v) => { const l = document.getElementById('lambda'); l.value = v; l.dispatchEvent(new Event('input')); }, String(i % 3));
    }
    await page.waitForTimeout(Math.floor(rnd() * 40));
  }
  // Runs started while the previous one is mid-step: each must draw its own steps 1..n, in order.
  const runs = async (n) => {
    for (let i = 0; i < n; i++) {
      await page.fill('#seed', String(100 + i));
      await page.fill('#steps', '100'); // long enough to be mid-run at the next click
      await click('start');
      await page.waitForFunction(() => window.ddpmState.runIndices.length >= 2, null, { timeout: 60_000, polling: 5 });
      await page.evaluate((seed) => {
        document.getElementById('seed').value = seed;
        document.getElementById('steps').value = '4';
        document.getElementById('start').click();
      }, String(200 + i));
      await waitDone(page);
      const drawn = await page.evaluate(() => window.ddpmState.runIndices);
      assert.deepEqual(drawn, [1, 2, 3, 4], `run ${i}: every step of the new run is drawn by it`);
    }
  };
  const memory = async () => page.evaluate(() => { window.gc(); return window.ddpmMemory(); });
  await runs(2);
  const early = await memory();
  await runs(18);
  const late = await memory();
  console.log(JSON.stringify({ what: 'page_memory', after_runs: [2, 20], wasm_bytes: [early.wasm, late.wasm], js_heap_bytes: [early.heap, late.heap] }));
  assert.ok(late.wasm <= early.wasm * 1.1, `wasm memory ${early.wasm} → ${late.wasm}`);
  assert.ok(late.heap <= early.heap * 1.1, `JS heap ${early.heap} → ${late.heap}`);
  assert.deepEqual(browser.errors, [], 'no page errors or console errors');
});

// Weights across visits (one browser profile, so the stores persist between loads): the second
// load makes no request for the weights and is ready sooner; a damaged entry is dropped and
// fetched again; IndexedDB serves where Cache Storage is not used; without a store, the network.
test('CPU fallback: the weights are kept across visits, checked against the manifest', { timeout: 600_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  let requests = 0;
  page.on('request', (r) => { if (r.url().endsWith('/weights/mnist.safetensors')) requests += 1; });
  const visit = async (query = '') => {
    requests = 0;
    await page.goto(`${URL_}?autostart=1${query}`);
    await page.waitForFunction(() => window.ddpmState?.firstStepAt || window.ddpmState?.error, null, { timeout: 120_000 });
    const s = await page.evaluate(() => ({ ...window.ddpmState.loaded, first: window.ddpmState.firstStepAt, source: window.ddpmState.weightsSource, error: window.ddpmState.error }));
    assert.equal(s.error, null);
    await page.click('#stop');
    return { ...s, requests };
  };
  const first = await visit();
  const second = await visit();
  console.log(JSON.stringify({ what: 'weights_cache', first_visit: { weights_ms: Math.round(first.weights), first_step_ms: Math.round(first.first) },
    return_visit: { weights_ms: Math.round(second.weights), first_step_ms: Math.round(second.first) } }));
  assert.deepEqual([first.source, first.requests], ['network', 1]);
  assert.deepEqual([second.source, second.requests], ['cache', 0], 'the return visit makes no request for the weights');
  assert.ok(second.weights < first.weights, `weights ready at ${second.weights} ms against ${first.weights} ms`);

  // A damaged cache entry is dropped and the file fetched again (and cached again).
  await page.evaluate(async () => {
    const cache = await caches.open('ddpm-weights-v1');
    const [key] = await cache.keys();
    await cache.put(key, new Response(new Uint8Array(1000)));
  });
  const repaired = await visit();
  assert.deepEqual([repaired.source, repaired.requests], ['network', 1], 'a damaged entry is fetched again');
  assert.equal((await visit()).source, 'cache');

  // IndexedDB, where Cache Storage is not used; and no store at all.
  assert.equal((await visit('&store=indexeddb')).source, 'network');
  const idb = await visit('&store=indexeddb');
  assert.deepEqual([idb.source, idb.requests], ['indexeddb', 0]);
  const none = await visit('&store=none');
  assert.deepEqual([none.source, none.requests], ['network', 1]);
  assert.deepEqual(browser.errors, [], 'no page errors or console errors');
});

test('the inputs take their bounds from the module and the model, not from the HTML', { timeout: 300_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  // The shipped tensors under a schedule of T = 200: the page must offer t < 200 and 200 steps.
  const short = lyingWeights('schedule', (c) => { c.steps = 200; });
  await page.route('**/weights/short.safetensors', (route) => route.fulfill({ body: short }));
  await ready(page, '&backend=cpu&weights=weights/short.safetensors');
  const bounds = await page.evaluate(() => ({
    t: document.getElementById('t').max,
    steps: document.getElementById('steps').max,
    frames: document.getElementById('frames').max,
    ddpm: document.querySelector('#sampler option[value="ddpm"]').textContent,
    counts: [...document.getElementById('count').options].map((o) => Number(o.value)),
    limits: window.ddpmState.limits,
  }));
  const { default_sampler: _, max_weights_bytes: __, default_steps: ___, ...limits } = bounds.limits;
  assert.deepEqual(limits, { max_images: 64, max_frames: 32, max_guidance: 20, default_guidance: 1.15, diffusion_steps: 200,
    samplers: ['ddpm', 'ddim', 'dpm++2m'], spacings: ['trailing', 'logsnr'], max_recorded_bytes: 64 * 2 ** 20 });
  assert.deepEqual([bounds.t, bounds.steps, bounds.frames], ['199', '200', '32']);
  assert.equal(bounds.ddpm, 'DDPM, all 200 steps (the paper)');
  assert.ok(bounds.counts.every((n) => n <= 64));
  // The module refuses what the bounds exclude, whatever the inputs say, naming the field.
  const refused = await page.evaluate(async () => [
    await window.ddpmTry({ kind: 'sample', seed: 0, count: 65 }),
    await window.ddpmTry({ kind: 'sample', seed: 0, count: 1, sampler: { solver: 'ddim', steps: 201 } }),
    await window.ddpmTry({ kind: 'interpolate', mode: 'noise', seeds: [0, 1], t: 200, frames: 9 }),
    await window.ddpmTry({ kind: 'interpolate', mode: 'noise', seeds: [0, 1], t: 100, frames: 33 }),
    await window.ddpmTry({ kind: 'sample', seed: 0, count: 1, sampler: { solver: 'dpm++2m', eta: 1 } }),
    await window.ddpmTry({ kind: 'sample', seed: 0, count: 1, colour: 'red' }),
    await window.ddpmTry({ kind: 'sample', seed: 0, count: 2, sampler: { steps: 10 } }),
  ]);
  assert.deepEqual(refused.slice(0, 5), ['count: number of images must be 1..=64, got 65', 'steps: sampling steps must be in 1..=200, got 201',
    't: t must be below T = 200, got 200', 'frames: frames must be 2..=32, got 33',
    'eta: DPM-Solver++(2M) is deterministic and has no η; η is DDIM\'s']);
  assert.match(refused[5], /^request: not a request the page can make: .*unknown field `colour`/);
  assert.equal(refused[6], 'accepted');
  assert.deepEqual(browser.errors, []);
});

test('runs are values: a short request runs beside a long one, and each draws what it draws alone', { timeout: 300_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  await ready(page, '&backend=cpu');
  const long = { kind: 'sample', seed: 3, count: 2, sampler: { solver: 'ddim', steps: 12 } };
  const short = { kind: 'sample', seed: 5, count: 1, class: 4, sampler: { solver: 'ddim', steps: 2 } };
  const { alone, together } = await page.evaluate(async ([long, short]) => ({
    alone: [...await window.ddpmRunTogether([long]), ...await window.ddpmRunTogether([short])],
    together: await window.ddpmRunTogether([long, short]),
  }), [long, short]);
  assert.deepEqual(together[0].x_t, alone[0].x_t, 'the long run is not disturbed by the one beside it');
  assert.deepEqual(together[1].x_t, alone[1].x_t, 'the short run draws what it draws alone');
  assert.ok(together[1].at < together[0].at, 'the short run finished while the long one was still running');
  assert.deepEqual(browser.errors, []);
});

test('the sampler controls start at the default the module gives: the library\'s, or the weights file\'s own', { timeout: 300_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  await ready(page, '&backend=cpu');
  const controls = () => page.evaluate(() => ['sampler', 'steps', 'eta'].map((id) => document.getElementById(id).value)
    .concat(['steps-label', 'eta-label'].map((id) => !document.getElementById(id).hidden)));
  const library = await page.evaluate(() => window.ddpmState.limits.default_sampler);
  assert.deepEqual(await controls(), [library.solver, String(library.steps), String(library.eta), library.solver !== 'ddpm', library.solver === 'ddim']);
  // A file that names its own default (format version 2, as a distilled model will): DDIM, 7 steps, η = 0.5.
  const own = editedWeights((meta) => {
    meta.format_version = '2';
    meta.sampler = JSON.stringify({ solver: 'ddim', steps: 7, eta: 0.5, spacing: 'trailing' });
  });
  await page.route('**/weights/own.safetensors', (route) => route.fulfill({ body: own }));
  await ready(page, '&backend=cpu&weights=weights/own.safetensors');
  assert.deepEqual(await controls(), ['ddim', '7', '0.5', true, true]);
  // A version this build does not know is refused with a message that says so.
  const future = editedWeights((meta) => { meta.format_version = '7'; });
  await page.route('**/weights/future.safetensors', (route) => route.fulfill({ body: future }));
  await page.goto(`${URL_}?autostart=0&backend=cpu&weights=weights/future.safetensors`);
  await page.waitForFunction(() => window.ddpmState?.error, null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /weights format version 7 is not supported \(this build reads versions 1 to 6/);
  assert.deepEqual(browser.errors, []);
});

test('a bad weights URL and a corrupt file show the error on the page', { timeout: 300_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  await page.goto(`${URL_}?weights=weights/absent.safetensors`);
  await page.waitForFunction(() => window.ddpmState?.error, null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /could not fetch the weights at weights\/absent\.safetensors: HTTP 404/);
  assert.equal(await page.isVisible('#error'), true);

  await page.route('**/weights/corrupt.safetensors', (route) => route.fulfill({ body: Buffer.from('corrupt bytes'.repeat(50)) }));
  await page.goto(`${URL_}?weights=weights/corrupt.safetensors`);
  await page.waitForFunction(() => window.ddpmState?.error, null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /Could not load the model: not a safetensors file/);

  // A header that lies about the model (this aborted the wasm instance before the bounds).
  const lying = lyingWeights('unet', (c) => { c.blocks = 1_000_000_000; });
  await page.route('**/weights/lying.safetensors', (route) => route.fulfill({ body: lying }));
  await page.goto(`${URL_}?weights=weights/lying.safetensors`);
  await page.waitForFunction(() => window.ddpmState?.error, null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /Could not load the model: bad model config in the weights file: blocks 1000000000 is outside 1..=8/);

  // A file above the loader's bound is refused from its Content-Length, before its body is read.
  await page.route('**/weights/huge.safetensors', (route) => route.fulfill({
    headers: { 'content-length': String(2 ** 40) }, body: 'x',
  }));
  await page.goto(`${URL_}?weights=weights/huge.safetensors`);
  await page.waitForFunction(() => window.ddpmState?.error, null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /above the largest model this page loads/);
  // The 404 above is logged by Chromium itself; nothing else may be.
  assert.deepEqual(browser.errors.filter((e) => !/404/.test(e)), []);
});

// A model the page cannot hold (more than its 2²⁷ parameters: here the shipped digits' config at
// base width 256, 142 M) is refused from its header while the file is still arriving: the server
// sends the header and 1 MB of tensors, then holds the rest back; the page must say why and close
// the download, not wait for the remaining 16 MB.
test('a model the page cannot hold is refused from its header, before the rest of the file', { timeout: 300_000 }, async () => {
  const bytes = editedWeights((meta) => {
    const unet = JSON.parse(meta.unet);
    unet.base_channels = 256;
    meta.unet = JSON.stringify(unet);
  });
  const sent = 8 + Number(bytes.readBigUInt64LE(0)) + (1 << 20);
  let closed;
  const closedDownload = new Promise((resolve) => { closed = resolve; });
  const server = createServer((req, res) => {
    res.writeHead(200, {
      'content-length': String(bytes.length), 'access-control-allow-origin': '*', 'cross-origin-resource-policy': 'cross-origin',
    });
    res.write(bytes.subarray(0, sent));
    res.on('close', () => closed(res.writableFinished));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const browser = await launch({ webgpu: false });
    browsers.push(browser);
    const page = await browser.page();
    await page.goto(`${URL_}?backend=cpu&weights=http://127.0.0.1:${server.address().port}/big.safetensors`);
    await page.waitForFunction(() => window.ddpmState?.error, null, { timeout: 60_000 });
    assert.match(await page.textContent('#error'), /Could not load the model: the model has 14\d{7} parameters, above the largest this page holds/);
    assert.equal(await closedDownload, false, 'the download was closed before its end');
    assert.deepEqual(browser.errors, []);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

// A visitor's own file (issue: bring a model to the page): the picker opens a good file through
// the same loader as a download (the page then describes that file, not the shipped one), and a
// file dropped on the page that lies about its model is refused with the loader's message.
test('weights from disk: a picked file opens, a dropped lying file is refused by name', { timeout: 300_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  await ready(page, '&backend=cpu');
  const mine = editedWeights((meta) => { meta.train_steps = '4321'; });
  await page.setInputFiles('#weights-file', { name: 'mine.safetensors', mimeType: 'application/octet-stream', buffer: mine });
  await page.waitForURL(/weights=local%3A[0-9a-f]{64}%3A[0-9]+/, { timeout: 60_000 });
  await page.waitForFunction(() => window.ddpmState?.ready || window.ddpmState?.error, null, { timeout: 120_000 });
  assert.equal(await page.evaluate(() => window.ddpmState.error), null);
  assert.match(await page.textContent('#model-info'), /trained 4,321 steps/);

  const lying = lyingWeights('unet', (c) => { c.base_channels = 16; });
  await page.route('**/lying-for-drop', (route) => route.fulfill({ body: lying }));
  const before = page.url();
  await page.evaluate(async () => {
    const blob = await (await fetch('lying-for-drop')).blob();
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'lying.safetensors'));
    document.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  });
  await page.waitForURL((u) => u.href !== before, { timeout: 60_000 });
  await page.waitForFunction(() => window.ddpmState?.error, null, { timeout: 120_000 });
  assert.match(await page.textContent('#error'), /tensor `image_proj.weight` has shape/);
  assert.deepEqual(browser.errors, []);
});
