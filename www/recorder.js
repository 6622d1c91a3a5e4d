// The steps of the latest run, kept to be looked at again (the scrubber) and written as an
// animation, within a memory budget whatever the run: every step while they fit, beyond that an
// even subset (every `stride`-th step, the stride doubling as needed) and always the latest.
// Nothing is recomputed: a step's pixels are the arrays the worker sent.
export class Recorder {
  constructor(budget) {
    this.budget = budget; // bytes of pixels at most
    this.reset();
  }

  reset() {
    this.frames = []; // {index, total, t, update, width, height, x_t, x0}, by index
    this.bytes = 0;
    this.stride = 1;
    this.total = 0;
  }

  static size(frame) {
    return frame.x_t.byteLength + frame.x0.byteLength;
  }

  // Keeps `step` (and drops the previous latest if it is off the stride).
  add(step) {
    if (step.index === 1) this.reset();
    this.total = step.total;
    const last = this.frames[this.frames.length - 1];
    if (last && last.index % this.stride !== 0) this.drop(this.frames.length - 1);
    this.frames.push(step);
    this.bytes += Recorder.size(step);
    while (this.bytes > this.budget && this.frames.length > 1) {
      this.stride *= 2;
      const keep = this.frames.filter((f, i) => f.index % this.stride === 0 || i === this.frames.length - 1);
      this.frames = keep;
      this.bytes = keep.reduce((sum, f) => sum + Recorder.size(f), 0);
    }
  }

  drop(i) {
    this.bytes -= Recorder.size(this.frames[i]);
    this.frames.splice(i, 1);
  }

  // The recorded frame for each step in `indices` (the first kept at or after it), each once.
  pick(indices) {
    const out = [];
    for (const index of indices) {
      const frame = this.frames.find((f) => f.index >= index);
      if (frame && out[out.length - 1] !== frame) out.push(frame);
    }
    return out;
  }

  // What the scrubber says of the recording.
  describe() {
    const n = this.frames.length;
    if (this.stride === 1) return `${n} of ${this.total} steps kept`;
    return `${n} of ${this.total} steps kept (one every ${this.stride} and the last: ` +
      `${(this.budget / 2 ** 20).toFixed(0)} MB at most)`;
  }
}
