// @ts-check
/**
 * Where a client keeps its device id and session: a small key/value store whose values
 * may be CryptoKeys. In a browser that is IndexedDB (a non-extractable CryptoKey survives
 * there by structured clone and still cannot be read out); elsewhere memory.
 *
 * Nothing here ever holds a refresh token of a `web` session: that lives only in the
 * HttpOnly cookie.
 */

/** @typedef {{get(key: string): Promise<unknown>, set(key: string, value: unknown): Promise<void>, delete(key: string): Promise<void>}} KeyValueStore */

/**
 * A KeyValueStore in memory. Values are shallow-copied on the way in and out, like a
 * structured clone, so a caller cannot change what is stored by mutating its object.
 * @returns {KeyValueStore}
 */
export function memoryStore() {
  /** @type {Map<string, unknown>} */
  const map = new Map();
  /** @param {unknown} v */
  const copy = (v) => (v && typeof v === "object" && !Array.isArray(v) ? { ...v } : v);
  return {
    async get(key) {
      return copy(map.get(key));
    },
    async set(key, value) {
      map.set(key, copy(value));
    },
    async delete(key) {
      map.delete(key);
    },
  };
}

/**
 * A KeyValueStore in IndexedDB: database `name` (default `ticketgate`), object store `kv`.
 * @param {string} [name]
 * @returns {KeyValueStore}
 */
export function indexedDbStore(name = "ticketgate") {
  /** @type {Promise<IDBDatabase>|null} */
  let opening = null;
  const db = () => {
    if (!opening) {
      opening = new Promise((resolve, reject) => {
        const request = indexedDB.open(name, 1);
        request.onupgradeneeded = () => {
          if (!request.result.objectStoreNames.contains("kv")) request.result.createObjectStore("kv");
        };
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
      opening.catch(() => {
        opening = null;
      });
    }
    return opening;
  };
  /**
   * @param {IDBTransactionMode} mode
   * @param {(store: IDBObjectStore) => IDBRequest} op
   * @returns {Promise<any>}
   */
  const run = async (mode, op) => {
    const database = await db();
    return new Promise((resolve, reject) => {
      const tx = database.transaction("kv", mode);
      const request = op(tx.objectStore("kv"));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  };
  return {
    get: (key) => run("readonly", (s) => s.get(key)),
    set: async (key, value) => {
      await run("readwrite", (s) => s.put(value, key));
    },
    delete: async (key) => {
      await run("readwrite", (s) => s.delete(key));
    },
  };
}

/**
 * The default store: IndexedDB where it exists, else one memory store per process (so
 * that clients of one Node process share a session, as tabs of one origin do).
 * @returns {KeyValueStore}
 */
export function defaultStore() {
  if (typeof indexedDB !== "undefined") return indexedDbStore();
  processStore ??= memoryStore();
  return processStore;
}

/** @type {KeyValueStore|null} */
let processStore = null;
