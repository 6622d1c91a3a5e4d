// The live controls (issue 49): a teacher whose manifest entry names its distilled student as
// `live` gets the student loaded beside it; the interpolation slider, the guidance slider and
// the drawing pad then each draw the student's picture as `ddpm` draws it with the student's
// file, without a button, and a burst of moves draws only the last. Run by `cargo xtask test`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pngPixels, pngTiles, rgbPng } from './harness.mjs';
import {
  BIN, openPage, canvasTiles, canvasPixels, compare, same, ready, backends, setSlider, tinyStudent, manifestEntry,
} from './page-kit.mjs';

const browsers = [];
after(async () => { for (const b of browsers) await b.close(); });

// The tiny teacher and its student in a manifest (the teacher names the student `live`), routed
// into a fresh page on `gpu` or the CPU; resolves once the page is ready.
async function livePage(gpu) {
  const student = tinyStudent();
  // The student names its own guidance, which the page's slider then starts at.
  student.run('export', '--weights', 's4.safetensors', '--out', 'live.safetensors', '--default-guidance', '1.6');
  const [teacher, s4] = [join(student.dir, 'teacher.safetensors'), join(student.dir, 'live.safetensors')];
  const manifest = JSON.parse(readFileSync('weights/index.json', 'utf8'));
  manifest.models.push(manifestEntry('tiny', teacher, { live: 'tiny-fast' }), manifestEntry('tiny-fast', s4));
  const { browser, page } = await openPage(browsers, gpu);
  await page.route('**/weights/index.json', (route) => route.fulfill({ json: manifest }));
  for (const file of [teacher, s4]) {
    await page.route(`**/weights/${file.split('/').pop()}`, (route) => route.fulfill({ body: readFileSync(file) }));
  }
  await ready(page, `&model=tiny${gpu ? '' : '&backend=cpu'}`);
  const drawn = (control) => page.evaluate((c) => window.ddpmState.live?.drawn[c] ?? 0, control);
  const waitDrawn = (control, n) => page.waitForFunction(([c, n]) => (window.ddpmState.live?.drawn[c] ?? 0) >= n,
    [control, n], { timeout: 600_000, polling: 50 });
  // The PNG `ddpm` writes with the student's file (`sample` writes a folder of them).
  const native = (args) => {
    const out = mkdtempSync(join(tmpdir(), 'ddpm-live-'));
    const path = args[0] === 'sample' ? out : join(out, 'x.png');
    execFileSync(BIN, [...args, '--weights', s4, '--out', path], { stdio: 'pipe' });
    const bytes = readFileSync(args[0] === 'sample' ? join(out, '000000.png') : path);
    rmSync(out, { recursive: true, force: true });
    return bytes;
  };
  // Without --guidance: at the file's own, as the page's slider starts.
  const frame = (lambda) => pngTiles(native(['interpolate', '--seed-a', '0', '--seed-b', '1', '--t', '500', '--lambda',
    String(lambda), '--scale', '1']), 1, 28, 2)[0];
  const morph = async () => (await canvasPixels(page, 'morph')).filter((_, k) => k % 4 === 0);
  return { dir: student.dir, browser, page, drawn, waitDrawn, native, frame, morph };
}

test('CPU fallback: the live controls draw the student\'s pictures as the CLI does, the latest move winning', { skip: !backends.includes('cpu'), timeout: 900_000 }, async () => {
  const { dir, browser, page, drawn, waitDrawn, native, frame, morph } = await livePage(false);
  // The page's first frame (λ = 0) comes by itself; the page says what draws it.
  await waitDrawn('interpolate', 1);
  const ui = await page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    return { text: $('live-text').textContent, w: [$('guidance').min, $('guidance').max, $('guidance').value], compute: $('interp').hidden,
      pad: $('pad-live').hidden, t: $('t-text').textContent };
  });
  assert.match(ui.text, /the distilled student tiny-fast \(DDIM, 4 steps\); Start and “Denoise my drawing” run the teacher/);
  assert.deepEqual(ui.w, ['0.5', '3', '1.6'], 'the guidance slider keeps to the range the student learnt, at its own default');
  assert.deepEqual([ui.compute, ui.pad], [true, false]);
  assert.equal(ui.t, ' → 499 (the student\'s grid)', 'the interpolation\'s t = 500 snaps on the live model\'s grid');


  // The slider: the frame at the λ under it.
  await setSlider(page, 'lambda', 30);
  await waitDrawn('interpolate', 2);
  assert.ok(same(compare(await morph(), frame(0.3))), 'the frame at λ = 0.3');
  // A burst of moves in one task: only the last position is drawn, and it is the frame there.
  const before = await drawn('interpolate');
  await page.evaluate(() => {
    const slider = document.getElementById('lambda');
    for (let v = 10; v <= 90; v += 10) {
      slider.value = String(v);
      slider.dispatchEvent(new Event('input'));
    }
  });
  await waitDrawn('interpolate', before + 1);
  await page.waitForTimeout(1500); // a stale run that was drawn would show by now
  assert.equal(await drawn('interpolate'), before + 1, 'the eight stale positions were dropped');
  assert.ok(same(compare(await morph(), frame(0.9))), 'the frame at λ = 0.9');
  assert.ok(compare(frame(0.3), frame(0.9)).mean > 1, 'the two frames differ');

  // The guidance slider: the seed in the sample panel drawn again at the new w. (A student
  // distilled for one step has barely learnt what w does: the seed is what tells pictures apart.)
  await page.fill('#seed', '5');
  await setSlider(page, 'guidance', 2.5);
  await waitDrawn('guidance', 1);
  const [sampled] = await canvasTiles(page, 'xt', 1, 28);
  const want = pngPixels(native(['sample', '--seed', '5', '--count', '1', '--guidance', '2.5']));
  assert.ok(same(compare(sampled, want)), `mean ${compare(sampled, want).mean.toFixed(3)}`);
  const otherSeed = pngPixels(native(['sample', '--seed', '0', '--count', '1', '--guidance', '2.5']));
  assert.ok(compare(want, otherSeed).mean > 2, 'the seed in the panel, not another');

  // The drawing pad: denoised again when a stroke ends, beside it.
  await page.locator('#pad').scrollIntoViewIfNeeded();
  const box = await page.locator('#pad').boundingBox();
  await page.mouse.move(box.x + 0.3 * box.width, box.y + 0.25 * box.height);
  await page.mouse.down();
  await page.mouse.move(box.x + 0.6 * box.width, box.y + 0.8 * box.height, { steps: 8 });
  await page.mouse.up();
  await waitDrawn('draw', 1);
  const drawing = await page.evaluate(() => Array.from(window.ddpmState.live.lastDrawing));
  writeFileSync(join(dir, 'drawing.png'), rgbPng(28, (x, y) => drawing.slice((y * 28 + x) * 4, (y * 28 + x) * 4 + 3)));
  const edited = pngPixels(native(['edit', '--input', join(dir, 'drawing.png'), '--t', '500', '--seed', '5']));
  const [padOut] = await canvasTiles(page, 'pad-out', 1, 28);
  assert.ok(same(compare(padOut, edited)), `mean ${compare(padOut, edited).mean.toFixed(3)}`);
  assert.ok(compare(padOut, drawing.filter((_, i) => i % 4 === 0)).mean > 2, 'the student changed the drawing');

  rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(browser.errors, []);
});

// A lost GPU with a live model: the fresh worker builds both models again, and the slider's
// next frame is the student's, as the CLI draws it.
test('WebGPU: after a lost device the live model is built again and the slider still draws its frame', { skip: !backends.includes('webgpu'), timeout: 1_800_000 }, async () => {
  const { dir, browser, page, waitDrawn, frame, morph } = await livePage(true);
  await waitDrawn('interpolate', 1);
  assert.match(await page.textContent('#backend'), /Running on: WebGPU/);
  await page.evaluate(() => window.ddpmLoseDevice());
  await page.waitForFunction(() => window.ddpmState.notices.length > 0, null, { timeout: 120_000, polling: 50 });
  await setSlider(page, 'lambda', 60);
  await waitDrawn('interpolate', 2);
  assert.ok(same(compare(await morph(), frame(0.6))), 'the frame at λ = 0.6 after the loss');
  rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(browser.errors, []);
});
