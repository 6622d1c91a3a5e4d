// Models beyond the shipped one and lost devices: an RGB model picked from the manifest, drawn
// channel by channel as `ddpm sample` draws it; a lost GPU device, recovered. Run by `cargo xtask test`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { launch } from './harness.mjs';
import {
  ETA, nativeSamples, canvasTiles, compare, same, ready, sample, waitDone, backends, rgbModel,
} from './page-kit.mjs';

const browsers = [];
after(async () => { for (const b of browsers) await b.close(); });

for (const gpu of [true, false].filter((g) => backends.includes(g ? 'webgpu' : 'cpu'))) {
  const label = gpu ? 'WebGPU' : 'CPU fallback';
  test(`${label}: an RGB model picked from the manifest draws every channel as \`ddpm sample\` does`, { timeout: 900_000 }, async () => {
    const rgb = rgbModel();
    const browser = await launch({ webgpu: gpu });
    browsers.push(browser);
    const page = await browser.page();
    await page.route('**/weights/index.json', (route) => route.fulfill({ json: rgb.manifest }));
    await page.route('**/weights/rgb.safetensors', (route) => route.fulfill({ body: rgb.bytes }));
    await ready(page, `&model=rgb${gpu ? '' : '&backend=cpu'}`);
    const picker = await page.evaluate(() => ({ hidden: document.getElementById('model-label').hidden,
      options: [...document.getElementById('model').options].map((o) => [o.value, o.selected]), model: window.ddpmState.model }));
    assert.deepEqual(picker, { hidden: false, options: [['mnist', false], ['rgb', true]], model: 'rgb' });
    const [seed, count, steps] = [7, 4, 5];
    await sample(page, seed, count, steps, ETA);
    await waitDone(page);
    const size = await page.evaluate(() => window.ddpmState.imageSize);
    assert.equal(size, 16);
    for (const channel of [0, 1, 2]) {
      const drawn = await canvasTiles(page, 'xt', count, size, channel);
      const native = nativeSamples(seed, count, steps, ETA, rgb.file, channel);
      for (let i = 0; i < count; i++) {
        const c = compare(drawn[i], native[i]);
        assert.ok(same(c), `image ${i}, channel ${channel}: mean ${c.mean.toFixed(3)}, max ${c.max}`);
      }
    }
    // The three channels differ (a gray drawing of an RGB model would pass each test above only
    // if the model itself were gray).
    const [r, g] = [await canvasTiles(page, 'xt', count, size, 0), await canvasTiles(page, 'xt', count, size, 1)];
    assert.ok(compare(r[0], g[0]).mean > 5, 'red and green differ');
    // Choosing the other model loads the page with it.
    await Promise.all([page.waitForNavigation(), page.selectOption('#model', 'mnist')]);
    await page.waitForFunction(() => window.ddpmState?.ready && window.ddpmState.model === 'mnist', null, { timeout: 300_000 });
    assert.equal(new URL(page.url()).searchParams.get('model'), 'mnist');
    assert.equal(await page.evaluate(() => window.ddpmState.imageSize), 28);
    rmSync(rgb.dir, { recursive: true, force: true });
    assert.deepEqual(browser.errors, []);
  });
}

// A lost GPU device (a driver reset; here GPUDevice.destroy() from the test hook, which takes
// the same path): the page says so, starts a fresh worker with a fresh device and runs the
// interrupted request again, equal to `ddpm sample`; after the third loss it goes on on the CPU.
test('WebGPU: a lost device gets a fresh worker, then the CPU, and the run still finishes', { skip: !backends.includes('webgpu'), timeout: 1_800_000 }, async () => {
  const browser = await launch({ webgpu: true });
  browsers.push(browser);
  const page = await browser.page();
  await ready(page);
  assert.match(await page.textContent('#backend'), /Running on: WebGPU/);
  const steps = 4;
  const loseMidRun = async (seed) => {
    const before = await sample(page, seed, 1, steps, ETA);
    await page.waitForFunction((n) => window.ddpmState.stepsDrawn >= n + 1, before, { timeout: 300_000, polling: 10 });
    const notices = await page.evaluate(() => window.ddpmState.notices.length);
    await page.evaluate(() => window.ddpmLoseDevice());
    await page.waitForFunction((n) => window.ddpmState.notices.length > n, notices, { timeout: 60_000, polling: 10 });
    await waitDone(page);
    const s = await page.evaluate(() => ({ indices: window.ddpmState.runIndices, backend: window.ddpmState.backend,
      notice: window.ddpmState.notices.at(-1), error: window.ddpmState.error }));
    assert.equal(s.error, null);
    assert.deepEqual(s.indices, Array.from({ length: steps }, (_, i) => i + 1), 'the run started again and drew every step');
    const size = await page.evaluate(() => window.ddpmState.imageSize);
    const [drawn] = await canvasTiles(page, 'xt', 1, size);
    assert.ok(same(compare(drawn, nativeSamples(seed, 1, steps, ETA)[0])), 'the restarted run equals `ddpm sample`');
    return s;
  };
  for (const seed of [21, 22]) {
    const s = await loseMidRun(seed);
    assert.match(s.notice, /GPU device was lost .*fresh device/);
    assert.equal(s.backend, 'WebGPU');
  }
  const s = await loseMidRun(23);
  assert.match(s.notice, /lost 3 times .*continuing on the CPU/);
  assert.match(s.backend, /CPU/);
  assert.match(await page.textContent('#backend'), /continuing on the CPU/);
  assert.deepEqual(browser.errors.filter((e) => !/lost|destroyed|Device/i.test(e)), []);
});

