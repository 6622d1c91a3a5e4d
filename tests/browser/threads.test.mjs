// The CPU fallback on the visitor's cores: on a cross-origin isolated page (the dev server sends
// COOP/COEP) without WebGPU the worker runs the threaded module (flex on a pool of web workers),
// and its pixels equal the one-thread module's and `ddpm sample`'s. The one-thread module on a
// page that is not isolated is dist.test.mjs's case.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch } from './harness.mjs';
import { ETA, SEED, canvasTiles, compare, same, nativeSamples, ready, sample, waitDone, backends } from './page-kit.mjs';

const browsers = [];
after(async () => { for (const b of browsers) await b.close(); });

const [COUNT, STEPS] = [4, 6];

test('CPU fallback: the threaded module runs on the visitor\'s cores and draws what one thread and `ddpm sample` draw', { skip: !backends.includes('cpu'), timeout: 900_000 }, async () => {
  const browser = await launch({ webgpu: false });
  browsers.push(browser);
  const page = await browser.page();
  const runs = {};
  // No query: the browser's WebGPU has no adapter here; `threads=1`: the one-thread module.
  for (const query of ['', '&threads=1']) {
    await ready(page, query);
    const { isolated, cores, threads, backend } = await page.evaluate(() => ({
      isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency,
      threads: window.ddpmState.threads, backend: document.getElementById('backend').textContent,
    }));
    assert.ok(isolated, 'the dev server isolates the page (COOP/COEP)');
    const want = query ? 1 : Math.min(cores, 16);
    assert.equal(threads, want, `${query || 'default'}: ${backend}`);
    // The worker's search for an adapter is the only one: either module says why in its words.
    const cpu = want > 1 ? `CPU \\(flex, wasm, ${want} threads\\)` : 'CPU \\(flex, wasm\\)';
    assert.match(backend, new RegExp(`${cpu} — WebGPU unavailable: no adapter`));
    await sample(page, SEED, COUNT, STEPS, ETA);
    await waitDone(page);
    runs[query] = await canvasTiles(page, 'xt', COUNT, await page.evaluate(() => window.ddpmState.imageSize));
  }
  const native = nativeSamples(SEED, COUNT, STEPS, ETA);
  for (let i = 0; i < COUNT; i++) {
    // The shards of a batch are the same images as one pass (sums split over threads may
    // round differently in the last bit, as natively: tests/model.rs).
    const one = compare(runs[''][i], runs['&threads=1'][i]);
    assert.ok(same(one), `image ${i}, threaded vs one thread: mean |diff| ${one.mean.toFixed(3)}/255, max ${one.max}/255`);
    const { mean, max } = compare(runs[''][i], native[i]);
    assert.ok(same({ mean, max }), `image ${i} vs ddpm sample: mean |diff| ${mean.toFixed(3)}/255, max ${max}/255`);
  }
  assert.deepEqual(browser.errors, [], 'no page errors or console errors');
});
