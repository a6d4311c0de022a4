// @ts-check
/** A minimal typed event emitter (browsers have EventTarget, but payload-first listeners read better). */
export class Emitter {
  constructor() {
    /** @type {Map<string, Set<(payload: any) => void>>} */
    this.listeners = new Map();
  }

  /**
   * Subscribes; returns a function that unsubscribes.
   * @param {string} event
   * @param {(payload: any) => void} listener
   * @returns {() => void}
   */
  on(event, listener) {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /**
   * @param {string} event
   * @param {(payload: any) => void} listener
   */
  off(event, listener) {
    this.listeners.get(event)?.delete(listener);
  }

  /**
   * Calls every listener of `event`. A listener that throws does not stop the others
   * or the client: its error is rethrown on its own (it shows in the console).
   * @param {string} event
   * @param {unknown} payload
   */
  emit(event, payload) {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        listener(payload);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
