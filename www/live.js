// The live controls: a control whose every move is answered by the live model (a distilled
// student, issue 49) with a new picture, without a button. Each move sends one request; the
// model client drops the control's previous run at once (the latest position wins, a stale one
// is never drawn). Each picture's latency (from the input event to the frame that shows it) is
// kept for `cargo xtask bench-web`.

// The live model to load beside `entry` (the manifest entry of the model in the page): the
// entry its `live` names, or null. (A student opened by itself is its own live model.)
export function liveEntry(entry, models) {
  return entry?.live ? models.find((m) => m.id === entry.live) ?? null : null;
}

// What the page keeps for the benchmark: per control, the latency of each picture, in ms.
export const latency = { interpolate: [], guidance: [], draw: [] };

// A control driven by the live model `name`: `build()` makes its request (null: nothing to
// draw yet), `show(step)` draws the finished picture, `onStep(step)` sees every step (an
// interpolation's ends), `fail(error)` shows a refusal. Returns the handler of its input events.
export function liveControl(client, name, control, { build, show, onStep = () => {}, fail }) {
  return async (event) => {
    const asked = event?.timeStamp ?? performance.now();
    const request = build();
    if (!request) return;
    let last;
    try {
      last = await client.live(control, request, name, onStep);
    } catch (e) {
      fail(e);
      return;
    }
    if (!last) return; // replaced by a newer position
    show(last);
    // On the canvas: once the browser has painted the frame after it.
    requestAnimationFrame(() => setTimeout(() => latency[control].push(performance.now() - asked)));
  };
}
