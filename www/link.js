// A link that draws the same picture again: the page's address holds the model, the first
// characters of its weights' SHA-256 and every control that changes the picture, written out
// even where they equal today's defaults (a later change of default must not change an old
// link's picture) and kept up to date as they change (history.replaceState: no reload).

// The controls a link holds: URL key → element id. The class and guidance only for a
// class-conditional model.
const CONTROLS = {
  seed: 'seed', count: 'count', class: 'class', guidance: 'guidance',
  sampler: 'sampler', steps: 'steps', eta: 'eta', forward_t: 'forward-t',
};
const CONDITIONAL = ['class', 'guidance'];
// Hex characters of the SHA-256 a link keeps: 64 bits, enough to tell two files apart.
export const SHA_CHARS = 16;

const $ = (id) => document.getElementById(id);

function keys(conditional) {
  return Object.keys(CONTROLS).filter((k) => conditional || !CONDITIONAL.includes(k));
}

// The link's values for the controls, before anything is drawn; returns the SHA prefix it names
// (null: none).
export function applyLink(params, conditional) {
  for (const key of keys(conditional)) {
    const value = params.get(key);
    if (value === null) continue;
    const control = $(CONTROLS[key]);
    if (control.tagName === 'SELECT' && ![...control.options].some((o) => o.value === value)) {
      control.add(new Option(value, value)); // refused by the module with its message, not dropped
    }
    control.value = value;
    control.dispatchEvent(new Event(key === 'sampler' ? 'sync' : 'input'));
  }
  return { sha: params.get('sha') };
}

// Writes the model (its manifest id; a `weights=` address stays as it is), the weights' SHA
// prefix and the controls' values into the address.
function writeLink(conditional, sha, model) {
  const next = new URLSearchParams(location.search);
  if (model && !next.has('weights')) next.set('model', model);
  if (sha) next.set('sha', sha.slice(0, SHA_CHARS));
  for (const key of keys(conditional)) next.set(key, $(CONTROLS[key]).value);
  history.replaceState(history.state, '', `${location.pathname}?${next}${location.hash}`);
}

// Keeps the address up to date as any of the link's controls changes.
export function followControls(conditional, sha, model) {
  const update = () => writeLink(conditional, sha, model);
  for (const key of keys(conditional)) {
    $(CONTROLS[key]).addEventListener('input', update);
    $(CONTROLS[key]).addEventListener('change', update);
  }
  update();
}
