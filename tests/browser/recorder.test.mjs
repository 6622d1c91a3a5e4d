// The page's recording of a run (www/recorder.js), without a browser: every step while the
// budget allows, beyond it an even subset and always the latest, never over the budget.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Recorder } from '../../www/recorder.js';

const step = (index, total, bytes = 100) => ({ index, total, t: total - index, x_t: new Uint8ClampedArray(bytes / 2), x0: new Uint8ClampedArray(bytes / 2) });

test('a run that fits is kept whole', () => {
  const r = new Recorder(10_000);
  for (let i = 1; i <= 50; i++) r.add(step(i, 50));
  assert.deepEqual(r.frames.map((f) => f.index), Array.from({ length: 50 }, (_, i) => i + 1));
  assert.equal(r.describe(), '50 of 50 steps kept');
});

test('a longer run keeps an even subset and the latest, within the budget at every step', () => {
  const r = new Recorder(1_000); // ten steps' pixels
  for (let i = 1; i <= 1000; i++) {
    r.add(step(i, 1000));
    assert.ok(r.bytes <= 1_000, `${r.bytes} bytes after step ${i}`);
    assert.equal(r.frames[r.frames.length - 1].index, i, 'the latest step is always kept');
  }
  const kept = r.frames.map((f) => f.index);
  assert.equal(r.stride, 128);
  assert.deepEqual(kept, [128, 256, 384, 512, 640, 768, 896, 1000]);
  assert.match(r.describe(), /^8 of 1000 steps kept \(one every 128 and the last/);
  // The animation's steps map to the first kept step at or after each.
  assert.deepEqual(r.pick([1, 100, 129, 1000]).map((f) => f.index), [128, 256, 1000]);
});

test('a new run starts a new recording', () => {
  const r = new Recorder(1_000);
  for (let i = 1; i <= 30; i++) r.add(step(i, 30));
  r.add(step(1, 5));
  assert.deepEqual(r.frames.map((f) => f.index), [1]);
  assert.equal(r.stride, 1);
});
