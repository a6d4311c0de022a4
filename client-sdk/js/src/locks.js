// @ts-check
/**
 * Exclusive named locks: `navigator.locks` (Web Locks, shared by every tab of an origin)
 * or, where it is absent (Node), an in-process stand-in with the same `request` shape.
 */

/** @typedef {{request<T>(name: string, callback: (lock: unknown) => Promise<T>|T): Promise<T>}} LockManagerLike */

/**
 * An in-process exclusive lock manager: callbacks on one name run one at a time, in
 * the order they asked. Hand-written: it is a promise chain per name, a dozen lines.
 * @returns {LockManagerLike}
 */
export function memoryLocks() {
  /** @type {Map<string, Promise<void>>} */
  const tails = new Map();
  return {
    request(name, callback) {
      const previous = tails.get(name) ?? Promise.resolve();
      const run = previous.then(() => callback({ name, mode: "exclusive" }));
      // The next caller waits for this one to settle, whatever its outcome.
      const tail = run.then(
        () => undefined,
        () => undefined,
      );
      tails.set(name, tail);
      tail.then(() => {
        if (tails.get(name) === tail) tails.delete(name);
      });
      return run;
    },
  };
}

/** @type {LockManagerLike|null} */
let processLocks = null;

/**
 * The default lock manager: Web Locks when the runtime has them, else one in-process
 * manager shared by every client of this process.
 * @returns {LockManagerLike}
 */
export function defaultLocks() {
  const nav = /** @type {any} */ (globalThis).navigator;
  if (nav && nav.locks && typeof nav.locks.request === "function") return nav.locks;
  processLocks ??= memoryLocks();
  return processLocks;
}
