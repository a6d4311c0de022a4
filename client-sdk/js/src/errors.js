// @ts-check
/**
 * The one error type of ticketgate-client.
 *
 * `code` is the protocol's error code (PROTOCOL §3, §9) when the server sent one, or one
 * of this client's own: `timeout`, `disconnected`, `not_connected`, `not_logged_in`,
 * `session_ended`, `network`, `bad_answer`, `cancelled`.
 */
export class TicketgateError extends Error {
  /**
   * @param {string} code the protocol's (or this client's) error code
   * @param {string} message a sentence for people
   * @param {{status?: number, retryAfter?: number|null, cause?: unknown}} [options]
   */
  constructor(code, message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TicketgateError";
    /** @type {string} */
    this.code = code;
    /** @type {number} HTTP status, 0 when the error did not come from an HTTP answer */
    this.status = options.status ?? 0;
    /** @type {number|null} seconds from a Retry-After header */
    this.retryAfter = options.retryAfter ?? null;
  }
}

/**
 * Error codes after which a session is over: only a new login helps.
 * `bad_request` on refresh means the refresh cookie is missing (cleared or blocked).
 */
export const SESSION_ENDING_CODES = new Set([
  "refresh_reused",
  "refresh_limit",
  "token_revoked",
  "token_expired",
  "token_invalid",
  "session_ended",
]);

/**
 * Reads a fetch answer: the JSON body of a 2xx (null when empty), or a TicketgateError
 * built from the protocol's error body `{"error","message"}` and `Retry-After`.
 * @param {Response} response
 * @returns {Promise<any>}
 */
export async function readAnswer(response) {
  const text = await response.text().catch(() => "");
  /** @type {any} */
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      if (response.ok) {
        throw new TicketgateError("bad_answer", `the server's answer is not JSON (HTTP ${response.status})`, {
          status: response.status,
        });
      }
    }
  }
  if (response.ok) return json;
  const retryHeader = response.headers.get("Retry-After");
  const retryAfter = retryHeader !== null && /^\d+$/.test(retryHeader.trim()) ? Number(retryHeader.trim()) : null;
  const code = json && typeof json.error === "string" ? json.error : `http_${response.status}`;
  const message = json && typeof json.message === "string" ? json.message : `HTTP ${response.status}`;
  const err = new TicketgateError(code, message, { status: response.status, retryAfter });
  // Extra fields of an error body (e.g. `next_qr_id` of a rotated QR) stay readable.
  /** @type {any} */ (err).body = json;
  return Promise.reject(err);
}
