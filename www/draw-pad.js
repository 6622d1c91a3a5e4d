// The drawing pad of "Draw your own": pointer strokes (mouse, pen and touch) on a canvas, in the
// model's own look (light strokes on black for gray digits, dark on white for colour images),
// scaled down to the model's size for SDEdit with the browser's smoothing.
export class DrawPad {
  constructor(canvas, { size, gray }) {
    this.canvas = canvas;
    this.size = size;
    this.ink = gray ? '#fff' : '#000';
    this.paper = gray ? '#000' : '#fff';
    const ctx = canvas.getContext('2d');
    // About two and a half model pixels wide: MNIST's strokes are 2-3 pixels at 28×28.
    ctx.lineWidth = 2.5 * canvas.width / size;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    this.ctx = ctx;
    this.clear();
    let last = null;
    const at = (e) => {
      const r = canvas.getBoundingClientRect();
      return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
    };
    canvas.addEventListener('pointerdown', (e) => {
      canvas.setPointerCapture(e.pointerId);
      last = at(e);
      this.stroke(last, last);
    });
    canvas.addEventListener('pointermove', (e) => {
      if (!last) return;
      const next = at(e);
      this.stroke(last, next);
      last = next;
    });
    // A finished stroke is told to `onStrokeEnd(event)` (the live pad re-denoises then).
    this.onStrokeEnd = null;
    const end = (e) => {
      if (last) this.onStrokeEnd?.(e);
      last = null;
    };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);
  }

  stroke([x0, y0], [x1, y1]) {
    this.ctx.strokeStyle = this.ink;
    this.ctx.beginPath();
    this.ctx.moveTo(x0, y0);
    this.ctx.lineTo(x1, y1);
    this.ctx.stroke();
  }

  clear() {
    this.ctx.fillStyle = this.paper;
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  }

  // The drawing at the model's size, as RGBA bytes: a Uint8Array, which the module reads as one
  // block of bytes (a plain array would cost it a JavaScript value per byte).
  pixels() {
    const small = new OffscreenCanvas(this.size, this.size);
    const ctx = small.getContext('2d');
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(this.canvas, 0, 0, this.size, this.size);
    return new Uint8Array(ctx.getImageData(0, 0, this.size, this.size).data.buffer);
  }
}
