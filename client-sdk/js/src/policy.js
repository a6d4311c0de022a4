// @ts-check
/**
 * The connection's pure decisions, kept apart so they can be read and tested alone:
 * what a close code means, how long to wait before a reconnect, what a `send` id is.
 * They mirror the Rust SDK's `close_action` and `backoff_delay`.
 */

/** Normal close. */
export const NORMAL = 1000;
/** Server shutting down or draining; a `resume` frame may have come first. */
export const GOING_AWAY = 1001;
/** No close code in the close frame (RFC 6455 §7.1.5). */
export const NO_STATUS = 1005;
/** The socket ended without a close frame: the network, or a refused upgrade. */
export const ABNORMAL = 1006;
/** Session expired: renew the access token, then reconnect. */
export const EXPIRED = 4004;
/** Kicked, logged out, blocked or revoked. */
export const KICKED = 4503;
/** Replaced by a newer login of the same user and client type. */
export const REPLACED = 4509;

/**
 * What to do after a socket closed with `code`:
 * - 4000-4499 (expired, flood, slow consumer, ...): reconnect (PROTOCOL §4);
 * - 4500-4999 (kicked, replaced, ...): stop, only the user can act (log in again);
 * - 1001 (draining), 1005, 1006 (the network), 1011-1014 (server error, restart,
 *   try again later, bad gateway): reconnect;
 * - 1000, 1002, 1003, 1007, 1008, 1009 (this client sent something wrong) and any
 *   other code: stop.
 * @param {number} code
 * @returns {"reconnect"|"stop"}
 */
export function closeAction(code) {
  if (code >= 4000 && code <= 4499) return "reconnect";
  if (code === GOING_AWAY || code === NO_STATUS || code === ABNORMAL) return "reconnect";
  if (code >= 1011 && code <= 1014) return "reconnect";
  return "stop";
}

/**
 * "Full jitter" backoff: uniform in [0, min(capMs, baseMs * 2^(attempt-1))]. The jitter
 * spreads a crowd of clients that lost their sockets at once (a deploy, a network blip)
 * over the whole interval instead of sending them back together. Attempt 0 counts as 1.
 * @param {number} attempt 1 for the first reconnect after a success
 * @param {{baseMs?: number, capMs?: number, random?: () => number}} [options]
 * @returns {number} milliseconds, an integer
 */
export function backoffDelay(attempt, options = {}) {
  const baseMs = options.baseMs ?? 500;
  const capMs = options.capMs ?? 30000;
  const random = options.random ?? Math.random;
  const doublings = Math.min(Math.max(attempt, 1) - 1, 31);
  const ceiling = Math.min(capMs, baseMs * 2 ** doublings);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * ceiling);
}

/**
 * True when `id` is a well-formed `send` id: 1-64 characters of `[A-Za-z0-9_-]`.
 * @param {string} id
 * @returns {boolean}
 */
export function isSendId(id) {
  return typeof id === "string" && /^[A-Za-z0-9_-]{1,64}$/.test(id);
}
