// The weights across visits: downloaded once, kept in Cache Storage (IndexedDB where Cache
// Storage is missing or full), and checked against the SHA-256 of `weights/index.json` on every
// load, so a changed file is downloaded again and a damaged entry is dropped. Where neither store
// works (some private windows, pages not served from a secure origin) the network is used, silently.

const CACHE = 'ddpm-weights-v1';

export async function sha256(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

function cacheStorage() {
  if (!('caches' in globalThis)) return null;
  const open = () => caches.open(CACHE);
  return {
    name: 'cache',
    async get(url) {
      const hit = await (await open()).match(url);
      return hit ? new Uint8Array(await hit.arrayBuffer()) : null;
    },
    async put(url, bytes) {
      await (await open()).put(url, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } }));
    },
    async drop(url) { await (await open()).delete(url); },
  };
}

function indexedDb() {
  if (!('indexedDB' in globalThis)) return null;
  const db = () => new Promise((resolve, reject) => {
    const req = indexedDB.open('ddpm-weights', 1);
    req.onupgradeneeded = () => req.result.createObjectStore('files');
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const run = async (mode, op) => {
    const d = await db();
    return new Promise((resolve, reject) => {
      const t = d.transaction('files', mode);
      const req = op(t.objectStore('files'));
      t.oncomplete = () => { d.close(); resolve(req.result); };
      t.onerror = t.onabort = () => { d.close(); reject(t.error); };
    });
  };
  return {
    name: 'indexeddb',
    async get(url) { return (await run('readonly', (s) => s.get(url))) ?? null; },
    async put(url, bytes) { await run('readwrite', (s) => s.put(bytes, url)); },
    async drop(url) { await run('readwrite', (s) => s.delete(url)); },
  };
}

// The stores to try, in order; `prefer` ('cache', 'indexeddb' or 'none') narrows them for tests.
function stores(prefer) {
  const all = [cacheStorage(), indexedDb()].filter(Boolean);
  if (!globalThis.crypto?.subtle) return []; // no hash check, no cache
  return prefer ? all.filter((s) => s.name === prefer) : all;
}

// The bytes of `url`: from a store when it holds them with the manifest's hash, else from
// `download()` (checked against the hash too, then stored). `entry` is the manifest's
// `{ bytes, sha256 }` for the file, or null (a file the manifest does not list: network only).
// Resolves to `{ bytes, source }`, source being 'network', 'cache' or 'indexeddb'.
export async function cachedWeights(url, entry, download, prefer) {
  const tried = entry ? stores(prefer) : [];
  const key = new URL(url, location.href).href;
  for (const store of tried) {
    const hit = await store.get(key).catch(() => null);
    if (!hit) continue;
    if (hit.length === entry.bytes && (await sha256(hit)) === entry.sha256) return { bytes: hit, source: store.name };
    await store.drop(key).catch(() => {}); // changed on the server, or damaged: fetched again
  }
  const bytes = await download();
  if (entry) {
    const hash = await sha256(bytes);
    if (hash !== entry.sha256) {
      throw new Error(`the weights at ${url} do not match weights/index.json (SHA-256 ${hash}, listed ${entry.sha256})`);
    }
  }
  for (const store of tried) {
    try {
      await store.put(key, bytes);
      break;
    } catch {
      // Over quota or refused: the next store, else none.
    }
  }
  return { bytes, source: 'network' };
}

// Fetches the weights, reporting progress; any failure is turned into a sentence for the page. A file above
// the loader's bound (`limit`, a promise: the module may still be loading) is refused as soon as
// both are known, before it fills the tab's memory; so is a model the page cannot hold, as soon
// as its header has arrived (`checkHeader(prefix)`: the module's check of the first bytes,
// resolving false while the header is incomplete, rejecting with the reason).
export async function fetchWeights(url, limit, onProgress, checkHeader = null) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`could not fetch the weights at ${url}: ${e.message}`);
  }
  if (!response.ok) throw new Error(`could not fetch the weights at ${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get('Content-Length')) || 0;
  // The bound comes with the module; the download does not wait for it, and is checked (by the
  // announced length and by the bytes received) as soon as it is known, and at the end.
  let max = null;
  limit.then((m) => { max = m; }, () => {});
  const tooLarge = (bytes) => new Error(`the weights at ${url} are ${bytes.toLocaleString('en-US')} bytes or more, ` +
    `above the largest model this page loads (${max.toLocaleString('en-US')} bytes)`);
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  // The header check runs beside the download: asked with every byte received so far, again
  // at once if more came meanwhile, else when twice as many have come; a refusal cancels the
  // download (and so ends a read that waits for bytes a server holds back).
  let refused = null;
  let askAt = checkHeader ? 8 : Infinity;
  const ask = () => {
    askAt = Infinity;
    const asked = received;
    checkHeader(concat(chunks, received)).then((complete) => {
      if (complete) return;
      askAt = asked * 2;
      if (received > asked) ask();
    }, (e) => { refused = e; reader.cancel().catch(() => {}); });
  };
  for (;;) {
    if (max !== null && Math.max(total, received) > max) {
      reader.cancel();
      throw tooLarge(Math.max(total, received));
    }
    const { done, value } = await reader.read();
    if (refused) throw refused; // the loader's own message, as it would give for the whole file
    if (done) break;
    chunks.push(value);
    received += value.length;
    if (total) onProgress(received / total);
    if (received >= askAt) ask();
  }
  max = await limit;
  if (Math.max(total, received) > max) throw tooLarge(Math.max(total, received));
  return concat(chunks, received);
}

function concat(chunks, length) {
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const c of chunks) { bytes.set(c, offset); offset += c.length; }
  return bytes;
}

// A weights file from the visitor's disk, kept in the first store that takes it under a key made
// of its SHA-256 (`local/SHA`), so that the page can open it as it opens a download: the
// manifest-like entry `{ bytes, sha256 }` comes back in the URL (`?weights=local:SHA:BYTES`).
// Rejects where no store works.
export async function keepLocal(bytes, prefer) {
  const tried = stores(prefer);
  if (tried.length === 0) throw new Error('this browser keeps no files for the page (a private window, or not a secure origin)');
  const hash = await sha256(bytes);
  const key = new URL(`local/${hash}`, location.href).href;
  for (const store of tried) {
    try {
      await store.put(key, bytes);
      return `local:${hash}:${bytes.length}`;
    } catch {
      // Over quota or refused: the next store.
    }
  }
  throw new Error('the browser refused to store the file (over its storage quota?)');
}

// `?weights=local:SHA:BYTES` as the URL and entry `cachedWeights` takes, or null for another value.
export function localWeights(param) {
  const m = /^local:([0-9a-f]{64}):([0-9]+)$/.exec(param ?? '');
  return m ? { url: `local/${m[1]}`, entry: { sha256: m[1], bytes: Number(m[2]) } } : null;
}
