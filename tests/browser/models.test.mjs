// Models beyond the shipped one and lost devices: an RGB model picked from the manifest, drawn
// channel by channel as `ddpm sample` draws it; the shipped emoji model likewise; a lost GPU
// device, recovered. Run by `cargo xtask test`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { pngPixels, rgbPng } from './harness.mjs';
import {
  BIN, ETA, DPM, WEIGHTS, openPage, setSampler, samplerFlags, nativeSamples, nativeInterpolation, canvasTiles, canvasPixels, compare, same, ready, sample,
  waitDone, backends, rgbModel, setSlider, tinyStudent,
} from './page-kit.mjs';

const browsers = [];
after(async () => { for (const b of browsers) await b.close(); });

for (const gpu of [true, false].filter((g) => backends.includes(g ? 'webgpu' : 'cpu'))) {
  const label = gpu ? 'WebGPU' : 'CPU fallback';
  test(`${label}: an RGB model picked from the manifest draws every channel as \`ddpm sample\` does`, { timeout: 900_000 }, async () => {
    const rgb = rgbModel();
    const { browser, page } = await openPage(browsers, gpu);
    await page.route('**/weights/index.json', (route) => route.fulfill({ json: rgb.manifest }));
    await page.route('**/weights/rgb.safetensors', (route) => route.fulfill({ body: rgb.bytes }));
    await ready(page, `&model=rgb${gpu ? '' : '&backend=cpu'}`);
    const picker = await page.evaluate(() => ({ hidden: document.getElementById('model-label').hidden,
      options: [...document.getElementById('model').options].map((o) => [o.value, o.selected]), model: window.ddpmState.model }));
    // Every shipped model in the manifest's order, then the test's own, which the URL selected.
    const options = rgb.manifest.models.map((m) => [m.id, m.id === 'rgb']);
    assert.deepEqual(options.slice(0, 2), [['mnist', false], ['emoji', false]]);
    assert.deepEqual(picker, { hidden: false, options, model: 'rgb' });
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

// The shipped colour model, as a visitor reaches it (`?model=emoji` from the real manifest): on
// the CPU fallback (the RGB test above covers WebGPU), every channel as `ddpm sample` draws it.
if (backends.includes('cpu')) {
  test('CPU fallback: the shipped emoji model draws every channel as `ddpm sample` does', { timeout: 900_000 }, async () => {
    const { browser, page } = await openPage(browsers, false);
    await ready(page, '&model=emoji&backend=cpu');
    assert.equal(await page.evaluate(() => window.ddpmState.imageSize), 32);
    const [seed, count, steps] = [3, 1, 4];
    await sample(page, seed, count, steps, ETA);
    await waitDone(page);
    for (const channel of [0, 1, 2]) {
      const [drawn] = await canvasTiles(page, 'xt', count, 32, channel);
      const [native] = nativeSamples(seed, count, steps, ETA, 'weights/emoji.safetensors', channel);
      const c = compare(drawn, native);
      assert.ok(same(c), `channel ${channel}: mean ${c.mean.toFixed(3)}, max ${c.max}`);
    }
    // The forward panel offers the ten held-out emoji (www/examples/emoji.png) and draws the
    // chosen one as x₀, every channel.
    const names = await page.evaluate(() => [...document.getElementById('forward-example').options].map((o) => o.value));
    assert.deepEqual(names, ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'drawing']);
    await page.selectOption('#forward-example', '3');
    await page.waitForFunction(() => window.ddpmState.forward?.example === '3');
    const strip = PNG.sync.read(readFileSync('www/examples/emoji.png'));
    const x0 = await canvasPixels(page, 'fw-x0');
    let worst = 0;
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(x0[(y * 32 + x) * 4 + c] - strip.data[(y * 320 + 96 + x) * 4 + c]));
      }
    }
    assert.ok(worst <= 1, `x₀ is off the fourth emoji by ${worst} levels`);
    assert.deepEqual(browser.errors, []);
  });
}

// A class-conditional model (two training steps on MNIST's labelled digits, built by the CLI):
// the page offers its classes and a guidance slider, and a guided run equals `ddpm sample --class
// --guidance` for the same seeds; the class changes the image, and "any" draws each seed's own class; the
// interpolation morphs class 3 into class 8 as `ddpm interpolate --class 3 --to-class 8` does.
test('CPU fallback: a conditional model draws the chosen class with guidance as `ddpm sample` does', { skip: !backends.includes('cpu'), timeout: 900_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ddpm-cond-'));
  execFileSync(BIN, ['train', '--data', 'mnist', '--conditional', '--base-channels', '8', '--channel-mults', '1,2',
    '--attn', '0,1', '--groups', '4', '--dropout', '0', '--steps', '3', '--batch-size', '8', '--lr', '0.05', '--warmup', '1',
    '--sample-every', '0', '--out', join(dir, 'run')], { stdio: 'pipe' });
  const file = join(dir, 'cond.safetensors');
  execFileSync(BIN, ['export', '--run', join(dir, 'run'), '--out', file], { stdio: 'pipe' });
  const { browser, page } = await openPage(browsers, false);
  await page.route('**/weights/cond.safetensors', (route) => route.fulfill({ body: readFileSync(file) }));
  await ready(page, '&backend=cpu&weights=weights/cond.safetensors');
  const ui = await page.evaluate(() => ({ cls: !document.getElementById('class-label').hidden,
    guidance: !document.getElementById('guidance-label').hidden,
    options: [...document.getElementById('class').options].map((o) => o.value) }));
  assert.deepEqual(ui, { cls: true, guidance: true, options: ['-1', ...Array.from({ length: 10 }, (_, k) => String(k))] });
  const [seed, count, steps] = [5, 4, 4];
  const drawn = async (cls, w) => {
    await page.selectOption('#class', String(cls));
    await page.evaluate((w) => { document.getElementById('guidance').value = String(w); }, w);
    await sample(page, seed, count, steps, ETA);
    await waitDone(page);
    return canvasTiles(page, 'xt', count, 28);
  };
  const guided = await drawn(3, 8);
  const native = nativeSamples(seed, count, steps, ETA, file, 0, ['--class', '3', '--guidance', '8']);
  for (let i = 0; i < count; i++) assert.ok(same(compare(guided[i], native[i])), `guided image ${i}`);
  const any = await drawn(-1, 8);
  // "any": each image its seed's class, guided as the slider says, as `ddpm sample` without --class.
  const anyNative = nativeSamples(seed, count, steps, ETA, file, 0, ['--guidance', '8']);
  for (let i = 0; i < count; i++) assert.ok(same(compare(any[i], anyNative[i])), `"any" image ${i}`);
  assert.ok(compare(guided[0], any[0]).mean > 0.5, 'the class changes the image (seed 5 is dealt a 2)');
  // The default guidance comes from the library (`ddpm sample`'s default).
  await ready(page, '&backend=cpu&weights=weights/cond.safetensors');
  const { w, morphPickers } = await page.evaluate(() => ({ w: document.getElementById('guidance').value,
    morphPickers: ['class-a-label', 'class-b-label'].every((id) => !document.getElementById(id).hidden) }));
  assert.deepEqual({ w, morphPickers }, { w: '1.15', morphPickers: true });
  const [seedA, seedB, tMix, frames] = [2, 6, 300, 3];
  await page.fill('#seed-a', String(seedA));
  await page.fill('#seed-b', String(seedB));
  await page.selectOption('#class-a', '3');
  await page.selectOption('#class-b', '8');
  await page.selectOption('#mode', 'noise');
  await page.fill('#t', String(tMix));
  await page.fill('#frames', String(frames));
  await setSampler(page, steps, DPM);
  await page.evaluate(() => { document.getElementById('guidance').value = '8'; });
  await page.click('#interp');
  await page.waitForFunction(() => window.ddpmState.interpolationReady, null, { timeout: 600_000, polling: 100 });
  const extra = ['--class', '3', '--to-class', '8', '--guidance', '8'];
  const nativeMorph = nativeInterpolation('noise', seedA, seedB, tMix, frames, steps, 28, file, extra);
  for (let i = 0; i < frames; i++) {
    await page.fill('#lambda', String(i));
    await page.dispatchEvent('#lambda', 'input');
    const drawnFrame = (await canvasPixels(page, 'morph')).filter((_, k) => k % 4 === 0);
    assert.ok(same(compare(drawnFrame, nativeMorph[i])), `morph frame ${i}`);
  }
  // A and B beside the slider are the guided samples of their classes.
  const thumb = async (id) => (await canvasPixels(page, id)).filter((_, k) => k % 4 === 0);
  const classSample = (seed, cls) => nativeSamples(seed, 1, steps, DPM, file, 0, ['--class', cls, '--guidance', '8'])[0];
  assert.ok(same(compare(await thumb('morph-a'), classSample(seedA, '3'))), 'A is a guided 3');
  assert.ok(same(compare(await thumb('morph-b'), classSample(seedB, '8'))), 'B is a guided 8');
  const plainMorph = nativeInterpolation('noise', seedA, seedB, tMix, frames, steps, 28, file);
  assert.ok(compare(nativeMorph[1], plainMorph[1]).mean > 0.5, 'the morph is guided');
  rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(browser.errors, []);
});

// Draw your own (SDEdit): strokes drawn with the mouse on the pad, scaled to 28×28, noised to
// t and denoised: the page's image equals `ddpm edit` on the same 28×28 pixels saved as a PNG.
// A distilled student (a tiny conditional model put through both stages by the CLI, one step
// each, w learnt over 0.5..3): the guidance slider keeps to its range, the sampler controls to its
// own 4-step grid, and a partial run's t shows where it snaps.
test('CPU fallback: a distilled student bounds the guidance, keeps its sampler and snaps t to its grid', { skip: !backends.includes('cpu'), timeout: 900_000 }, async () => {
  const { dir, run, distil } = tinyStudent();
  // A round may not teach guidance its teacher never learnt.
  assert.throws(() => run('distil', '--teacher', 's8.safetensors', '--teacher-steps', '8', ...distil, '--out', 'wide'),
    /reach beyond the range the teacher s8.safetensors learnt, 0.5..3/);
  // The CLI says where a t snaps, and refuses a sampler the student was not taught.
  writeFileSync(join(dir, 'drawing.png'), PNG.sync.write(Object.assign(new PNG({ width: 8, height: 8 }), { data: Buffer.alloc(256, 255) })));
  const edit = spawnSync(BIN, ['edit', '--weights', 's4.safetensors', '--input', 'drawing.png', '--t', '300', '--out', 'e.png'], { cwd: dir });
  assert.equal(edit.status, 0, String(edit.stderr));
  assert.match(String(edit.stderr), /--t 300 starts at 249, the nearest step of this distilled model's grid/);
  assert.throws(() => run('sample', '--weights', 's4.safetensors', '--steps', '8', '--out', 'x'), /its own grid: DDIM, 4 steps/);
  const { browser, page } = await openPage(browsers, false);
  await page.route('**/weights/s4.safetensors', (route) => route.fulfill({ body: readFileSync(join(dir, 's4.safetensors')) }));
  await ready(page, '&backend=cpu&weights=weights/s4.safetensors');
  const ui = await page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    return { w: [$('guidance').min, $('guidance').max, $('guidance').value], sampler: [$('sampler').value, $('steps').value],
      locked: ['sampler', 'steps', 'eta'].map((id) => $(id).disabled) };
  });
  assert.deepEqual(ui, { w: ['0.5', '3', '1.15'], sampler: ['ddim', '4'], locked: [true, true, true] });
  // T = 1000: the 4-step grid is 249, 499, 749, 999.
  await setSlider(page, 'edit-t', 300);
  assert.equal(await page.textContent('#edit-t-text'), "t = 300 → 249 (the student's grid)");
  await page.fill('#t', '700');
  assert.equal(await page.textContent('#t-text'), " → 749 (the student's grid)");
  await setSlider(page, 'edit-t', 499);
  assert.equal(await page.textContent('#edit-t-text'), 't = 499');
  assert.deepEqual(browser.errors, []);
  rmSync(dir, { recursive: true, force: true });
});

test('CPU fallback: a drawing denoised in the page equals `ddpm edit` on the same pixels', { skip: !backends.includes('cpu'), timeout: 900_000 }, async () => {
  const { browser, page } = await openPage(browsers, false);
  await ready(page, '&backend=cpu');
  await page.locator('#pad').scrollIntoViewIfNeeded();
  const box = await page.locator('#pad').boundingBox();
  const stroke = async (points) => {
    await page.mouse.move(box.x + points[0][0] * box.width, box.y + points[0][1] * box.height);
    await page.mouse.down();
    for (const [x, y] of points.slice(1)) await page.mouse.move(box.x + x * box.width, box.y + y * box.height, { steps: 8 });
    await page.mouse.up();
  };
  await stroke([[0.3, 0.25], [0.65, 0.25], [0.45, 0.8]]); // a 7
  const [seed, t, steps] = [9, 400, 6];
  await page.fill('#seed', String(seed));
  await setSampler(page, steps, ETA);
  await page.evaluate((t) => { const e = document.getElementById('edit-t'); e.value = String(t); e.dispatchEvent(new Event('input')); }, t);
  await page.click('#edit');
  await waitDone(page);
  const drawing = await page.evaluate(() => Array.from(window.ddpmState.lastDrawing));
  assert.equal(drawing.length, 28 * 28 * 4);
  const ink = drawing.filter((v, i) => i % 4 === 0 && v > 128).length;
  assert.ok(ink > 20 && ink < 400, `${ink} inked pixels of 784`);
  const dir = mkdtempSync(join(tmpdir(), 'ddpm-edit-'));
  writeFileSync(join(dir, 'drawing.png'), rgbPng(28, (x, y) => drawing.slice((y * 28 + x) * 4, (y * 28 + x) * 4 + 3)));
  execFileSync(BIN, ['edit', '--weights', WEIGHTS, '--input', join(dir, 'drawing.png'), '--t', String(t), '--seed', String(seed),
    ...samplerFlags(steps, ETA), '--out', join(dir, 'edited.png')], { stdio: 'pipe' });
  const native = pngPixels(readFileSync(join(dir, 'edited.png')));
  const [drawn] = await canvasTiles(page, 'xt', 1, 28);
  assert.ok(same(compare(drawn, native)), `mean ${compare(drawn, native).mean.toFixed(3)}`);
  const gray = drawing.filter((_, i) => i % 4 === 0);
  assert.ok(compare(drawn, gray).mean > 2, 'the model changed the drawing');
  rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(browser.errors, []);
});

// A lost GPU device (a driver reset; here GPUDevice.destroy() from the test hook, which takes
// the same path): the page says so, starts a fresh worker with a fresh device and runs the
// interrupted request again, equal to `ddpm sample`; after the third loss it goes on on the CPU.
test('WebGPU: a lost device gets a fresh worker, then the CPU, and the run still finishes', { skip: !backends.includes('webgpu'), timeout: 1_800_000 }, async () => {
  const { browser, page } = await openPage(browsers, true);
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
  // A loss while a noise-mode interpolation denoises its frames. Its frames once came from the
  // worker's last batch, which a fresh worker lacks ("sample A and B first"); the request is now
  // a value the client sends again whole: A and B, then the frames, equal to `ddpm interpolate`.
  const loseMidInterpolation = async () => {
    const [seedA, seedB, tMix, frames, evaluations] = [3, 4, 500, 3, 8];
    await page.fill('#seed-a', String(seedA));
    await page.fill('#seed-b', String(seedB));
    await page.selectOption('#mode', 'noise');
    await page.fill('#t', String(tMix));
    await page.fill('#frames', String(frames));
    await setSampler(page, evaluations, DPM);
    const notices = await page.evaluate(() => window.ddpmState.notices.length);
    await page.click('#interp');
    await page.waitForFunction(() => window.ddpmState.lastPhase === 'frames', null, { timeout: 300_000, polling: 10 });
    await page.evaluate(() => window.ddpmLoseDevice());
    await page.waitForFunction((n) => window.ddpmState.notices.length > n, notices, { timeout: 60_000, polling: 10 });
    await page.waitForFunction(() => window.ddpmState.interpolationReady || window.ddpmState.error, null, { timeout: 600_000, polling: 100 });
    const s = await page.evaluate(() => ({ backend: window.ddpmState.backend, notice: window.ddpmState.notices.at(-1), error: window.ddpmState.error }));
    assert.equal(s.error, null);
    const size = await page.evaluate(() => window.ddpmState.imageSize);
    const native = nativeInterpolation('noise', seedA, seedB, tMix, frames, evaluations, size);
    for (let i = 0; i < frames; i++) {
      await page.fill('#lambda', String(i));
      await page.dispatchEvent('#lambda', 'input');
      const drawnFrame = (await canvasPixels(page, 'morph')).filter((_, k) => k % 4 === 0);
      assert.ok(same(compare(drawnFrame, native[i])), `frame ${i} after the loss equals \`ddpm interpolate\``);
    }
    return s;
  };
  for (const s of [await loseMidRun(21), await loseMidInterpolation()]) {
    assert.match(s.notice, /GPU device was lost .*fresh device/);
    assert.equal(s.backend, 'WebGPU');
  }
  const s = await loseMidRun(23);
  assert.match(s.notice, /lost 3 times .*continuing on the CPU/);
  assert.match(s.backend, /CPU/);
  assert.match(await page.textContent('#backend'), /continuing on the CPU/);
  assert.deepEqual(browser.errors.filter((e) => !/lost|destroyed|Device/i.test(e)), []);
});

