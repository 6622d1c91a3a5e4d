// `cargo xtask dist DIR` works from a plain static file server (Python's http.server), at the
// site's root and under a sub-path, on the one-thread CPU module (that server does not isolate
// the page). Run by `cargo xtask test`, which writes the folder and sets DDPM_DIST.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { launch } from './harness.mjs';

const DIST = process.env.DDPM_DIST;
assert.ok(DIST, 'run through `cargo xtask test` (needs DDPM_DIST)');

const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

const cleanup = [];
after(async () => { for (const f of cleanup.reverse()) await f(); });

test('the static folder runs from python3 -m http.server at / and at /some/sub/path/', { timeout: 300_000 }, async () => {
  const site = mkdtempSync(join(tmpdir(), 'ddpm-site-'));
  cleanup.push(() => rmSync(site, { recursive: true, force: true }));
  cpSync(DIST, site, { recursive: true });
  cpSync(DIST, join(site, 'some/sub/path'), { recursive: true });
  const port = await freePort();
  const server = spawn('python3', ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', site], { stdio: 'ignore' });
  cleanup.push(() => server.kill());
  const browser = await launch({ webgpu: false });
  cleanup.push(() => browser.close());
  const page = await browser.page();
  for (const path of ['/', '/some/sub/path/']) {
    const url = `http://127.0.0.1:${port}${path}?autostart=0`;
    for (let i = 0; ; i++) { // the server takes a moment to start
      try { await page.goto(url); break; } catch (e) { if (i > 50) throw e; await page.waitForTimeout(100); }
    }
    await page.waitForFunction(() => window.ddpmState?.ready || window.ddpmState?.error, null, { timeout: 120_000 });
    assert.equal(await page.evaluate(() => window.ddpmState.error), null, `${path}: page error`);
    // A plain static server sends no COOP/COEP: no shared memory, so the one-thread module.
    assert.deepEqual(await page.evaluate(() => [crossOriginIsolated, window.ddpmState.threads]), [false, 1], path);
    await page.selectOption('#count', '1');
    await page.fill('#steps', '2');
    await page.click('#start');
    await page.waitForFunction(() => !window.ddpmState.running && window.ddpmState.lastStep?.index === 2, null, { timeout: 120_000 });
  }
  assert.deepEqual(browser.errors, [], 'no page errors or console errors');
});
