// The schedule and the loss-versus-t curve as SVG: plain lines on the page's colours (style.css),
// no chart library. The numbers come from the module (Ddpm.schedule, Ddpm.loss_curve); this
// file only maps them to the plot's box.
const NS = 'http://www.w3.org/2000/svg';
const BOX = { left: 34, right: 286, top: 12, bottom: 168 }; // the plot area in the 320 × 200 viewBox

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// x of step t (0..T−1) and y of a value in [lo, hi] (hi at the top).
const xOf = (t, T) => BOX.left + ((BOX.right - BOX.left) * t) / Math.max(1, T - 1);
const yOf = (v, lo, hi) => BOX.bottom - ((BOX.bottom - BOX.top) * (v - lo)) / (hi - lo || 1);

function line(points, color, label) {
  return el('polyline', { points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' '), fill: 'none', stroke: color, 'stroke-width': 1.5, 'data-curve': label });
}

// The axes, ticks and the t labels under them (our t; the paper's is t + 1).
function frame(svg, T, leftTicks, rightTicks) {
  svg.replaceChildren();
  svg.append(el('rect', { x: BOX.left, y: BOX.top, width: BOX.right - BOX.left, height: BOX.bottom - BOX.top, class: 'axis' }));
  for (const t of [0, Math.round((T - 1) / 2), T - 1]) {
    svg.append(el('text', { x: xOf(t, T), y: BOX.bottom + 11, 'text-anchor': 'middle' }, String(t)));
  }
  svg.append(el('text', { x: (BOX.left + BOX.right) / 2, y: BOX.bottom + 24, 'text-anchor': 'middle' }, 't (ours; the paper\'s is t + 1)'));
  for (const [y, label] of leftTicks) svg.append(el('text', { x: BOX.left - 3, y: y + 3, 'text-anchor': 'end' }, label));
  for (const [y, label] of rightTicks) svg.append(el('text', { x: BOX.right + 3, y: y + 3 }, label));
}

// Vertical lines at each panel's t: `markers` is [{t, label, forward}], null t skipped.
function markers(svg, T, list) {
  for (const m of list) {
    if (m.t === null || m.t === undefined || !(m.t >= 0 && m.t < T)) continue;
    const x = xOf(m.t, T);
    svg.append(el('line', { x1: x, x2: x, y1: BOX.top, y2: BOX.bottom, class: `marker${m.forward ? ' marker-forward' : ''}`, 'data-marker': m.label, 'data-t': m.t }));
    svg.append(el('text', { x: x + 2, y: BOX.top + 9 + 9 * list.indexOf(m) }, m.label));
  }
}

// β_t (×50, so its 0.02 reaches the top), √ᾱ_t and √(1 − ᾱ_t) on [0, 1], and log₁₀ of the
// signal-to-noise ratio ᾱ_t/(1 − ᾱ_t) on the right axis.
export function drawSchedule(svg, curves, marks) {
  const T = curves.beta.length;
  const every = Math.max(1, Math.floor(T / 250)); // about 250 points a line
  const ts = [];
  for (let t = 0; t < T; t += every) ts.push(t);
  if (ts[ts.length - 1] !== T - 1) ts.push(T - 1);
  const logSnr = curves.snr.map(Math.log10);
  const [lo, hi] = [Math.floor(Math.min(...logSnr)), Math.ceil(Math.max(...logSnr))];
  const rightTicks = [];
  for (let e = lo; e <= hi; e += Math.max(1, Math.round((hi - lo) / 4))) rightTicks.push([yOf(e, lo, hi), `1e${e}`]);
  frame(svg, T, [[yOf(0, 0, 1), '0'], [yOf(0.5, 0, 1), '0.5'], [yOf(1, 0, 1), '1']], rightTicks);
  const series = [
    ['β×50', 'var(--beta)', (t) => yOf(Math.min(1, curves.beta[t] * 50), 0, 1)],
    ['√ᾱ', 'var(--signal)', (t) => yOf(curves.sqrt_alpha_bar[t], 0, 1)],
    ['√(1−ᾱ)', 'var(--noise)', (t) => yOf(curves.sqrt_one_minus_alpha_bar[t], 0, 1)],
    ['SNR', 'var(--snr)', (t) => yOf(logSnr[t], lo, hi)],
  ];
  series.forEach(([label, color, y], i) => {
    svg.append(line(ts.map((t) => [xOf(t, T), y(t)]), color, label));
    svg.append(el('text', { x: BOX.left + 4 + 62 * i, y: BOX.bottom - 4, style: `fill: ${color}` }, label));
  });
  markers(svg, T, marks);
}

// The loss at each t of the curve (points joined), on [0, the largest × 1.1].
export function drawLossCurve(svg, T, curve, marks) {
  const hi = Math.max(...curve.loss) * 1.1 || 1;
  frame(svg, T, [[yOf(0, 0, hi), '0'], [yOf(hi / 2, 0, hi), (hi / 2).toPrecision(2)], [yOf(hi, 0, hi), hi.toPrecision(2)]], []);
  const points = curve.t.map((t, i) => [xOf(t, T), yOf(curve.loss[i], 0, hi)]);
  svg.append(line(points, 'var(--accent)', 'loss'));
  for (const [x, y] of points) svg.append(el('circle', { cx: x, cy: y, r: 2, fill: 'var(--accent)' }));
  markers(svg, T, marks);
}
