// The page as the paper's companion, checked against the paper's formulas computed here from
// β alone (not by the library): the forward-process panel's ᾱ_t, its x_t (eq. 4) from the x₀ and
// ε it draws, and its loss ‖ε − ε̂‖² from the ε and ε̂ it draws. Run by `cargo xtask test`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch } from './harness.mjs';
import { canvasPixels, ready, backends } from './page-kit.mjs';

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
      await page.evaluate((t) => {
        const slider = document.getElementById('forward-t');
        slider.value = String(t);
        slider.dispatchEvent(new Event('input'));
      }, t);
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
