// Launches Debian's Chromium (never a downloaded browser) headless through playwright-core,
// with or without WebGPU, and records every page error and console error.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export async function launch({ webgpu }) {
  const args = [
    '--headless=new', '--no-sandbox', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-quic',
    // window.gc(), so that the memory checks measure what is still reachable.
    '--js-flags=--expose-gc',
  ];
  // Without this flag headless Chromium offers no WebGPU adapter: the CPU-fallback case.
  if (webgpu) args.push('--enable-unsafe-webgpu');
  // A fresh profile every launch (playwright passes it as --user-data-dir).
  const profile = mkdtempSync(join(tmpdir(), 'ddpm-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, args, ignoreDefaultArgs: ['--headless'],
  });
  const errors = [];
  return {
    errors,
    async page() {
      const page = await browser.newPage();
      // SwiftShader's WebGPU generates and compiles every kernel during the first step, keeping
      // the page busy for tens of seconds on a loaded 2-core machine: actions wait that long.
      page.setDefaultTimeout(180_000);
      page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
      page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
      return page;
    },
    // The profile goes with the browser: each launch writes tens of MB.
    async close() {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// One channel of a PNG (0: red or gray, 1: green, 2: blue), 0..255 per pixel.
export function pngPixels(bytes, channel = 0) {
  const png = PNG.sync.read(bytes);
  return Array.from({ length: png.width * png.height }, (_, i) => png.data[i * 4 + channel]);
}

// An RGB PNG of `size`×`size` from a pixel function (x, y) → [r, g, b].
export function rgbPng(size, pixel) {
  const png = new PNG({ width: size, height: size });
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const [r, g, b] = pixel(x, y);
      png.data.set([r, g, b, 255], (y * size + x) * 4);
    }
  }
  return PNG.sync.write(png);
}

// Image `i` of a one-row PNG strip as written by `ddpm interpolate` (`pad`-pixel borders), as
// gray values (the R channel), one array per image.
export function pngTiles(bytes, count, size, pad, scale = 1) {
  const png = PNG.sync.read(bytes);
  return Array.from({ length: count }, (_, i) => {
    const out = [];
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const px = (pad + i * (size + pad) + x) * scale, py = (pad + y) * scale;
        out.push(png.data[(py * png.width + px) * 4]);
      }
    }
    return out;
  });
}
