// The demo page in Debian's headless Chromium, on real WebGPU (SwiftShader) and on the CPU
// fallback: loading, step-by-step drawing, parity with `ddpm sample` and `ddpm interpolate`,
// stop, and a main thread that never blocks. Run by `cargo xtask test`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch } from './harness.mjs';
import {
  STEPS, ETA, DPM, SEED, COUNT, setSampler, weightsInfo, nativeSamples, nativeInterpolation, canvasTiles, canvasPixels, compare, same, ready, sample, waitDone, backends, watchMainThread, longTasksAfterLoad,
} from './page-kit.mjs';

const browsers = [];
after(async () => { for (const b of browsers) await b.close(); });

for (const gpu of [true, false].filter((g) => backends.includes(g ? 'webgpu' : 'cpu'))) {
  const label = gpu ? 'WebGPU' : 'CPU fallback';
  test(`${label}: loads, denoises step by step, matches native sampling, interpolates, stops`, { timeout: 1_800_000 }, async (t) => {
    const browser = await launch({ webgpu: gpu });
    browsers.push(browser);
    const page = await browser.page();
    await watchMainThread(page);
    await ready(page);
    const backend = await page.textContent('#backend');
    if (gpu) assert.match(backend, /Running on: WebGPU/);
    else assert.match(backend, /CPU/);
    // On WebGPU the kernels were compiled before the page said it was ready (on the CPU there
    // is nothing to compile).
    const loaded = await page.evaluate(() => window.ddpmState.loaded);
    if (gpu) assert.ok(loaded.warm > loaded.model, JSON.stringify(loaded));
    else assert.equal(loaded.warm, undefined);
    // The CPU fallback starts with one image, so that it is finished within seconds.
    assert.equal(await page.inputValue('#count'), gpu ? '16' : '1');
    // The controls start at the library's default sampler (docs/samplers.md), handed over by the module.
    const limits = await page.evaluate(() => window.ddpmState.limits);
    assert.deepEqual([await page.inputValue('#sampler'), await page.inputValue('#steps')],
      [limits.default_sampler.solver, String(limits.default_sampler.steps)]);
    // The model line names how the shipped file was trained, averaged snapshots included.
    const meta = weightsInfo();
    const steps = (list) => list.split(',').map((s) => Number(s).toLocaleString('en-US')).join(', ');
    const info = await page.textContent('#model-info');
    assert.ok(info.includes(`trained ${steps(meta.train_steps)} steps`), info);
    if (meta.averaged_train_steps) assert.ok(info.includes(`the mean of its weights at steps ${steps(meta.averaged_train_steps)}`), info);

    await t.test('canvas changes from step to step', async () => {
      const before = await sample(page, SEED, COUNT, STEPS, ETA);
      await page.waitForFunction((n) => window.ddpmState.stepsDrawn >= n + 1, before, { timeout: 120_000, polling: 10 });
      const first = await canvasPixels(page, 'x0');
      await page.waitForFunction((n) => window.ddpmState.stepsDrawn >= n + 3, before, { timeout: 120_000, polling: 10 });
      const later = await canvasPixels(page, 'x0');
      assert.notDeepEqual(first, later);
      // The progress line says how long the rest of the run will take.
      assert.match(await page.textContent('#progress-text'), /step \d+ \/ 10 .* ms per step( · about [\d.]+ s left)?$/);
      await waitDone(page);
    });

    await t.test('the final images equal `ddpm sample` for the same seeds and steps', async () => {
      const size = await page.evaluate(() => window.ddpmState.imageSize);
      const page_ = await canvasTiles(page, 'xt', COUNT, size);
      const native = nativeSamples(SEED, COUNT, STEPS, ETA);
      for (let i = 0; i < COUNT; i++) {
        const { mean, max } = compare(page_[i], native[i]);
        assert.ok(same({ mean, max }), `image ${i}: mean |diff| ${mean.toFixed(3)}/255, max ${max}/255`);
      }
    });

    for (const mode of ['noise', 'slerp']) {
      await t.test(`interpolation slider (${mode}): every frame equals \`ddpm interpolate\`, A and B beside it`, async () => {
        const [seedA, seedB, tMix, frames] = [3, 4, 300, 5];
        await page.fill('#seed-a', String(seedA));
        await page.fill('#seed-b', String(seedB));
        await page.selectOption('#mode', 'noise');
        await page.fill('#t', String(tMix)); // t only applies to (and is only shown for) the noise mode
        await page.selectOption('#mode', mode);
        await page.fill('#frames', String(frames));
        await setSampler(page, STEPS, DPM);
        await page.click('#interp');
        await page.waitForFunction(() => window.ddpmState.interpolationReady, null, { timeout: 600_000, polling: 100 });
        const size = await page.evaluate(() => window.ddpmState.imageSize);
        const at = async (v) => {
          await page.fill('#lambda', String(v));
          await page.dispatchEvent('#lambda', 'input');
          return (await canvasPixels(page, 'morph')).filter((_, i) => i % 4 === 0);
        };
        const native = nativeInterpolation(mode, seedA, seedB, tMix, frames, STEPS, size);
        for (let i = 0; i < frames; i++) {
          const { mean, max } = compare(await at(i), native[i]);
          assert.ok(same({ mean, max }), `${mode} frame ${i}: mean ${mean.toFixed(3)}, max ${max}`);
        }
        // A drag is drawn in the input event itself, well within one frame (16.7 ms at 60 Hz).
        const drag = await page.evaluate((frames) => {
          const l = document.getElementById('lambda');
          let worst = 0;
          for (let i = 0; i < 3 * frames; i++) {
            const t0 = performance.now();
            l.value = String(i % frames);
            l.dispatchEvent(new Event('input'));
            worst = Math.max(worst, performance.now() - t0);
          }
          return worst;
        }, frames);
        assert.ok(drag < 16.7, `a slider move took ${drag.toFixed(1)} ms to draw`);
        assert.ok(compare(native[2], native[0]).mean > 2 && compare(native[2], native[frames - 1]).mean > 2,
          'the middle frame differs from both ends');
        // A and B themselves, drawn beside the slider, are `ddpm sample`'s images for the seeds.
        const [na, nb] = [nativeSamples(seedA, 1, STEPS, DPM)[0], nativeSamples(seedB, 1, STEPS, DPM)[0]];
        const thumb = async (id) => (await canvasPixels(page, id)).filter((_, i) => i % 4 === 0);
        assert.ok(same(compare(await thumb('morph-a'), na)), 'sample A beside the slider');
        assert.ok(same(compare(await thumb('morph-b'), nb)), 'sample B beside the slider');
        if (mode === 'noise') {
          // This test can fail: labml's end frames are A and B re-noised to t and denoised, not A
          // and B, so the old page (which drew A and B at the slider's ends) fails the loop above.
          assert.ok(!same(compare(native[0], na)), 'frame 0 differs from A itself');
        }
      });
    }

    await t.test('stop cancels at once, and a new start works', async () => {
      await page.fill('#seed', '5');
      await page.selectOption('#count', '1');
      await page.selectOption('#sampler', 'ddpm');
      const before = await page.evaluate(() => window.ddpmState.stepsDrawn);
      await page.click('#start');
      await page.waitForFunction((n) => window.ddpmState.stepsDrawn >= n + 2, before, { timeout: 120_000, polling: 10 });
      await page.click('#stop');
      const stopped = await page.evaluate(() => window.ddpmState.stepsDrawn);
      await page.waitForTimeout(1500);
      assert.equal(await page.evaluate(() => window.ddpmState.stepsDrawn), stopped, 'no step is drawn after stop');
      assert.equal(await page.evaluate(() => window.ddpmState.running), false);
      await sample(page, 6, 1, 5, ETA);
      await waitDone(page);
      assert.equal(await page.evaluate(() => window.ddpmState.lastStep.total), 5);
    });

    await t.test('the model runs in the worker: the main thread instantiates no wasm', async () => {
      console.log(JSON.stringify({ what: 'main_thread_long_tasks', backend: label, tasks: await longTasksAfterLoad(page) }));
      assert.deepEqual(await page.evaluate(() => window.ddpmMainThreadWasm), [], 'every step ran in the worker');
    });

    assert.deepEqual(browser.errors, [], 'no page errors or console errors');
  });
}

