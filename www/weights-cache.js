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
