// The page as the paper's companion, checked against the paper's formulas computed here from
// β alone (not by the library): the forward-process panel's ᾱ_t, its x_t (eq. 4) from the x₀ and
// ε it draws, its loss ‖ε − ε̂‖² from the ε and ε̂ it draws, and the schedule it plots; the
// recorded steps and their animation against `ddpm animate`; a link that draws its picture
// again; the layout on a phone, by keyboard and in both colour schemes. Run by `cargo xtask test`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launch } from './harness.mjs';
import { BIN, WEIGHTS, backends, canvasPixels, compare, gifFrames, openPage, ready, same, sample, samplerFlags, setSlider, waitDone } from './page-kit.mjs';

const browsers = [];
after(async () => { for (const b of browsers) await b.close(); });

// The linear schedule of the paper (§4): β_t from 1e-4 to 0.02 over T = 1000 steps; our t = 0 is
// the paper's t = 1, so ᾱ at our t is the product over our steps 0..t.
function alphaBar(t) {
  let a = 1;
  for (let s = 0; s <= t; s++) a *= 1 - (1e-4 + ((0.02 - 1e-4) * s) / 999);
  return a;
}

test('the schedule computed here is the paper\'s (ᾱ at our t = 499 and 999)', () => {
  assert.ok(Math.abs(alphaBar(499) - 0.078587) < 5e-7, String(alphaBar(499)));
  assert.ok(Math.abs(alphaBar(999) / 4.0358e-5 - 1) < 1e-4, String(alphaBar(999)));
});

for (const gpu of [true, false].filter((g) => backends.includes(g ? 'webgpu' : 'cpu'))) {
  const label = gpu ? 'WebGPU' : 'CPU fallback';
  test(`${label}: the forward process panel draws eq. 4's x_t and the loss at the slider's t`, { timeout: 900_000 }, async () => {
    const browser = await launch({ webgpu: gpu });
    browsers.push(browser);
    const page = await browser.page();
    await ready(page, gpu ? '' : '&backend=cpu');
    await page.selectOption('#forward-example', '3');
    for (const t of [0, 499, 999]) {
      await setSlider(page, 'forward-t', t);
      await page.waitForFunction((t) => window.ddpmState.forward?.t === t && window.ddpmState.forward.example === '3', t, { timeout: 300_000 });
      const view = await page.evaluate(() => window.ddpmState.forward);
      const ab = alphaBar(t);
      assert.ok(Math.abs(view.alpha_bar / ab - 1) < 1e-9, `ᾱ at t = ${t}: ${view.alpha_bar} against ${ab}`);
      assert.match(await page.textContent('#forward-t-text'), new RegExp(`t = ${t} \\(the paper's t = ${t + 1}\\)`));
      // The drawn images, red channel: x₀ and x_t in [−1, 1] over 0..255, ε and ε̂ in [−3, 3].
      const [x0, eps, xt, epsHat] = await Promise.all(['fw-x0', 'fw-eps', 'fw-xt', 'fw-eps-hat'].map((id) => canvasPixels(page, id)));
      const level = (p) => p / 127.5 - 1;
      const noise = (p) => (p / 255) * 6 - 3;
      let worst = 0, checked = 0, loss = 0;
      for (let i = 0; i < x0.length; i += 4) {
        loss += (noise(eps[i]) - noise(epsHat[i])) ** 2;
        if (eps[i] === 0 || eps[i] === 255) continue; // ε beyond ±3: drawn clipped
        const want = Math.sqrt(ab) * level(x0[i]) + Math.sqrt(1 - ab) * noise(eps[i]);
        if (Math.abs(want) > 0.99) continue; // x_t drawn clipped to the data range
        worst = Math.max(worst, Math.abs(level(xt[i]) - want));
        checked++;
      }
      loss /= x0.length / 4;
      // ε is drawn to 6/255 (its rounding: ±0.012, times √(1 − ᾱ)), x_t to 1/127.5.
      assert.ok(checked > 150, `${checked} pixels unclipped`);
      assert.ok(worst < 2.5 / 127.5, `x_t at t = ${t} is off eq. 4 by ${worst}`);
      assert.ok(Math.abs(loss - view.loss) < 0.05 * view.loss + 0.003, `loss at t = ${t}: ${view.loss}, from the drawn ε and ε̂ ${loss}`);
    }
    assert.deepEqual(browser.errors, []);
  });
}

// The order in which a 1-step run, asked for while the forward panel computes a new loss curve,
// and that curve finish: ['run', 'curve'] when the run overtakes it.
function runDuringCurve(page) {
  return page.evaluate(async () => {
    const events = [];
    const until = (f) => new Promise((resolve) => { const check = () => (f() ? resolve() : setTimeout(check, 5)); check(); });
    const example = document.getElementById('forward-example');
    example.value = '5';
    example.dispatchEvent(new Event('input'));
    // The panel's view is answered before its curve is begun (both asked at once, in order).
    await until(() => window.ddpmState.forward?.example === '5');
    const run = window.ddpmRunTogether([{ kind: 'sample', seed: 1, count: 1, sampler: { solver: 'ddim', steps: 1 } }])
      .then(() => events.push('run'));
    await until(() => window.ddpmState.lossCurve?.example === '5');
    events.push('curve');
    await run;
    return events;
  });
}

// The schedule drawn and the loss-versus-t curve: the page's curves against the paper's formulas,
// the forward panel's t marked on the plot, the curve's batches against the panel's single
// evaluation at the same t, and a run that overtakes the curve.
for (const gpu of [true, false].filter((g) => backends.includes(g ? 'webgpu' : 'cpu'))) {
  const label = gpu ? 'WebGPU' : 'CPU fallback';
  test(`${label}: the schedule and the loss-versus-t curve`, { timeout: 900_000 }, async () => {
    const { browser, page } = await openPage(browsers, gpu);
    await ready(page, gpu ? '' : '&backend=cpu');
    const curves = await page.evaluate(() => window.ddpmState.scheduleCurves);
    for (const t of [0, 499, 999]) {
      const ab = alphaBar(t);
      assert.ok(Math.abs(curves.sqrt_alpha_bar[t] ** 2 / ab - 1) < 1e-9, `ᾱ at ${t}`);
      assert.ok(Math.abs(curves.sqrt_one_minus_alpha_bar[t] ** 2 - (1 - ab)) < 1e-9, `1 − ᾱ at ${t}`);
      assert.ok(Math.abs(curves.snr[t] / (ab / (1 - ab)) - 1) < 1e-9, `SNR at ${t}`);
      assert.ok(Math.abs(curves.beta[t] - (1e-4 + ((0.02 - 1e-4) * t) / 999)) < 1e-12, `β at ${t}`);
    }
    await page.selectOption('#forward-example', '3');
    await page.waitForFunction(() => window.ddpmState.lossCurve?.example === '3', null, { timeout: 600_000 });
    const curve = await page.evaluate(() => window.ddpmState.lossCurve);
    assert.equal(curve.t.length, 20);
    assert.deepEqual([curve.t[0], curve.t[19]], [0, 999]);
    for (const i of [0, 19]) {
      await setSlider(page, 'forward-t', curve.t[i]);
      await page.waitForFunction((t) => window.ddpmState.forward?.t === t && window.ddpmState.forward.example === '3', curve.t[i], { timeout: 300_000 });
      const loss = await page.evaluate(() => window.ddpmState.forward.loss);
      assert.ok(Math.abs(curve.loss[i] - loss) <= (gpu ? 0.02 : 1e-4) * loss + 1e-5, `t = ${curve.t[i]}: the curve's ${curve.loss[i]}, the panel's ${loss}`);
      await page.waitForFunction((t) => document.querySelector('#schedule-plot line[data-marker=forward]')?.dataset.t === String(t), curve.t[i]);
    }
    // Every curve is drawn, and the loss curve has its 20 points.
    assert.equal(await page.locator('#schedule-plot polyline').count(), 4);
    assert.equal(await page.locator('#loss-plot circle').count(), 20);
    // On the CPU the worker computes the curve a few points a pass: a run asked for while it does
    // so finishes first, where one pass over the whole curve would hold the worker until it ends.
    // (On WebGPU the curve is one pass on the device, and the worker answers meanwhile.)
    if (!gpu) assert.deepEqual(await runDuringCurve(page), ['run', 'curve']);
    assert.deepEqual(browser.errors, []);
  });

  // Every step of a run kept and scrubbable, and the run as the GIF `ddpm animate` writes.
  test(`${label}: the recorded steps, and the animation equals \`ddpm animate\``, { timeout: 900_000 }, async () => {
    const { browser, page } = await openPage(browsers, gpu);
    await ready(page, gpu ? '' : '&backend=cpu');
    const steps = 8;
    await sample(page, 21, 1, steps, 0);
    await waitDone(page);
    assert.deepEqual(await page.evaluate(() => window.ddpmState.scrubbed), { index: steps, t: (await page.evaluate(() => window.ddpmState.lastStep.t)), sigma: 0, kept: steps, stride: 1 });
    const last = await canvasPixels(page, 'xt');
    await page.focus('#scrub');
    await page.keyboard.press('Home');
    await page.keyboard.press('ArrowRight');
    await page.waitForFunction(() => window.ddpmState.scrubbed.index === 2);
    assert.match(await page.textContent('#scrub-text'), /^Step 2 of 8: t = \d+ → \d+ \(the paper's t = \d+\), σ_t = 0\.0000, order 1\. Update: x_prev = /);
    assert.notDeepEqual(await canvasPixels(page, 'xt'), last, 'step 2 is drawn again, not the last');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-gif')]);
    const ours = readFileSync(await download.path());
    const dir = mkdtempSync(join(tmpdir(), 'ddpm-gif-'));
    const theirs = join(dir, 'native.gif');
    execFileSync(BIN, ['animate', '--weights', WEIGHTS, '--seed', '21', ...samplerFlags(steps, 0), '--out', theirs], { stdio: 'pipe' });
    const native = readFileSync(theirs);
    rmSync(dir, { recursive: true, force: true });
    const [a, b] = [await gifFrames(page, ours), await gifFrames(page, native)];
    assert.equal(a.length, steps);
    assert.equal(b.length, steps);
    for (let i = 0; i < steps; i++) {
      assert.deepEqual([a[i].width, a[i].height, a[i].duration], [b[i].width, b[i].height, b[i].duration]);
      assert.ok(same(compare(a[i].pixels, b[i].pixels)), `frame ${i}: ${JSON.stringify(compare(a[i].pixels, b[i].pixels))}`);
    }
    assert.deepEqual(browser.errors, []);
  });

  // A link holds every control and the weights' SHA-256 prefix: opened again it draws the same
  // pixels; opened with other weights' prefix it says so and draws nothing.
  test(`${label}: a copied link draws the same picture again`, { timeout: 900_000 }, async () => {
    const { browser, page } = await openPage(browsers, gpu);
    await ready(page, gpu ? '' : '&backend=cpu');
    await page.selectOption('#class', '3');
    await setSlider(page, 'guidance', 2);
    await setSlider(page, 'forward-t', 123);
    await sample(page, 5, 1, 4, 0.5);
    await waitDone(page);
    const pixels = await canvasPixels(page, 'xt');
    await page.click('#copy-link');
    const link = new URL(await page.evaluate(() => window.ddpmState.copiedLink));
    const sha = createHash('sha256').update(readFileSync(WEIGHTS)).digest('hex');
    const want = { model: 'mnist', sha: sha.slice(0, 16), seed: '5', count: '1', class: '3', guidance: '2', sampler: 'ddim', steps: '4', eta: '0.5', forward_t: '123' };
    for (const [k, v] of Object.entries(want)) assert.equal(link.searchParams.get(k), v, k);
    link.searchParams.delete('autostart');
    const again = await browser.page();
    await again.goto(link.href);
    await again.waitForFunction(() => ((s) => s?.lastStep && s.lastStep.index === s.lastStep.total && !s.running)(window.ddpmState),
      null, { timeout: 600_000, polling: 100 });
    const redrawn = await canvasPixels(again, 'xt');
    if (gpu) assert.ok(same(compare(pixels, redrawn)), JSON.stringify(compare(pixels, redrawn)));
    else assert.deepEqual(redrawn, pixels);
    assert.equal(await again.inputValue('#forward-t'), '123');
    link.searchParams.set('sha', '0123456789abcdef');
    const stale = await browser.page();
    await stale.goto(link.href);
    await stale.waitForFunction(() => window.ddpmState?.ready);
    assert.match(await stale.textContent('#link-text'), /made with other weights \(SHA-256 0123456789abcdef…\)/);
    assert.equal(await stale.evaluate(() => window.ddpmState.stepsDrawn), 0);
    assert.deepEqual(browser.errors, []);
  });
}

// The page on a phone and for keyboard and screen-reader users, in both colour schemes.
test('layout: 390 px wide without horizontal scrolling, every control named, sliders by keyboard, dark and light', { timeout: 600_000 }, async () => {
  const { browser, page } = await openPage(browsers, false);
  await page.setViewportSize({ width: 390, height: 844 });
  await ready(page, '&backend=cpu');
  await sample(page, 1, 1, 2, 0);
  await waitDone(page);
  const overflow = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: document.documentElement.clientWidth }));
  assert.ok(overflow.scroll <= overflow.width, `the page is ${overflow.scroll} px wide in a ${overflow.width}-px window`);
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('input, select, button, canvas, svg')].filter((e) => {
    if (e.closest('[hidden]')) return false;
    const named = e.labels?.length || e.getAttribute('aria-label') || e.getAttribute('aria-labelledby');
    return !(named || (e.tagName === 'BUTTON' && e.textContent.trim()));
  }).map((e) => e.id || e.outerHTML.slice(0, 60)));
  assert.deepEqual(unnamed, []);
  const t = Number(await page.inputValue('#forward-t'));
  await page.focus('#forward-t');
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction((t) => window.ddpmState.forward?.t === t, t + 1);
  const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.emulateMedia({ colorScheme: 'dark' });
  assert.equal(await background(), 'rgb(18, 20, 23)');
  await page.emulateMedia({ colorScheme: 'light' });
  assert.equal(await background(), 'rgb(255, 255, 255)');
  assert.deepEqual(browser.errors, []);
});
