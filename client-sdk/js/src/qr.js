// @ts-check
/**
 * QR-code login, both directions (PROTOCOL §5 and §8 "QR, login_other").
 *
 * ```text
 * login_this   this device (no session) shows a QR     a logged-in phone: scan, confirm
 *              loginThis() ─ polls every 2 s ─► done: this device's new session
 * login_other  this device (logged in) shows a QR      a new phone: loginWith(qrId)
 *              showLoginOther() ─ polls ─► onScanned ─► confirm(qrId) ─► done
 * ```
 *
 * Polling honours the server's pace: at least the poll interval between polls, longer
 * when a `slow_down` answer's `Retry-After` asks for it, and a rotated QR (410 with
 * `next_qr_id`) is followed to its new id, which is shown again through `onCode`.
 */
import { TicketgateError } from "./errors.js";

/** The text inside a ticketgate QR code: this prefix, then the `qr_id`. */
export const QR_PAYLOAD_PREFIX = "ticketgate://qr/";

/** Consecutive failed polls (network, 5xx) after which a QR flow gives up. */
const MAX_POLL_FAILURES = 5;

/**
 * The QR code's text for a `qr_id`.
 * @param {string} qrId
 * @returns {string}
 */
export function qrPayload(qrId) {
  return QR_PAYLOAD_PREFIX + qrId;
}

/**
 * The `qr_id` of a scanned QR code's text, or null when it is not a ticketgate QR.
 * @param {string} text
 * @returns {string|null}
 */
export function qrIdOfPayload(text) {
  if (typeof text !== "string" || !text.startsWith(QR_PAYLOAD_PREFIX)) return null;
  const id = text.slice(QR_PAYLOAD_PREFIX.length);
  return id ? id : null;
}

/**
 * @typedef {object} QrContext what the QR flows need from their Client
 * @property {string} baseUrl
 * @property {"web"|"mobile"} clientType
 * @property {number} intervalMs
 * @property {(path: string, body: unknown) => Promise<any>} post unauthenticated POST
 * @property {(path: string, body: unknown) => Promise<any>} bearer Bearer + signed POST
 * @property {() => Promise<string>} deviceId
 * @property {() => {deviceId: string, clientType: "web"|"mobile"}|null} session
 * @property {(answer: any, deviceId: string) => Promise<any>} adoptLogin
 * @property {(fn: () => void, ms: number) => unknown} setTimeout
 * @property {(handle: unknown) => void} clearTimeout
 */

/**
 * The `qr` API of a Client.
 * @param {QrContext} ctx
 */
export function createQrApi(ctx) {
  /** Ids this client confirmed: the creator's watch ends when such a QR is redeemed. */
  const confirmed = new Set();

  /**
   * @param {string} qrId
   * @param {number} expiresIn
   * @param {number} rotateIn
   */
  const code = (qrId, expiresIn, rotateIn) => ({
    qrId,
    svgUrl: `${ctx.baseUrl}/v1/qr/${encodeURIComponent(qrId)}/qr.svg`,
    payload: qrPayload(qrId),
    expiresIn,
    rotateIn,
  });

  const cancelledError = () => new TicketgateError("cancelled", "the QR login was cancelled");

  /**
   * Runs a poll loop as a cancellable flow.
   * @param {string} firstId
   * @param {(flow: Flow) => Promise<any>} run
   */
  function start(firstId, run) {
    const flow = new Flow(firstId, ctx);
    const done = run(flow);
    // A flow that is cancelled and never awaited must not report an unhandled rejection.
    done.catch(() => {});
    return {
      get qrId() {
        return flow.qrId;
      },
      done,
      cancel() {
        flow.cancel();
      },
    };
  }

  /**
   * Polls until `onAnswer` returns `{value}`.
   * @param {Flow} flow
   * @param {() => object} pollBody
   * @param {(answer: any) => Promise<{value: any}|null>|{value: any}|null} onAnswer
   * @param {{onRotate?: (body: any) => void, onExpired?: () => {value: any}|null}} [hooks]
   */
  async function pollUntil(flow, pollBody, onAnswer, hooks = {}) {
    let wait = ctx.intervalMs;
    let failures = 0;
    for (;;) {
      await flow.sleep(wait);
      if (flow.cancelled) throw cancelledError();
      wait = ctx.intervalMs;
      /** @type {any} */
      let answer;
      try {
        answer = await ctx.post(`/v1/qr/${encodeURIComponent(flow.qrId)}/poll`, pollBody());
        failures = 0;
      } catch (err) {
        if (flow.cancelled) throw cancelledError();
        const e = /** @type {TicketgateError} */ (err);
        if (e.code === "slow_down") {
          wait = Math.max(ctx.intervalMs, (e.retryAfter ?? 1) * 1000);
          continue;
        }
        const body = /** @type {any} */ (e).body;
        if (e.code === "qr_expired" && body && typeof body.next_qr_id === "string") {
          flow.qrId = body.next_qr_id;
          hooks.onRotate?.(body);
          continue;
        }
        if (e.code === "qr_expired" && hooks.onExpired) {
          const end = hooks.onExpired();
          if (end) return end.value;
        }
        if ((e.code === "network" || e.status >= 500) && ++failures < MAX_POLL_FAILURES) continue;
        throw e;
      }
      if (flow.cancelled) throw cancelledError();
      const end = await onAnswer(answer);
      if (end) return end.value;
    }
  }

  return {
    /**
     * login_this: this device, without a session, shows a QR; a logged-in phone
     * approves it; `done` resolves with this client's new session.
     * @param {{onCode?: (code: any) => void, onState?: (state: {state: string}) => void}} [options]
     */
    async loginThis(options = {}) {
      const deviceId = await ctx.deviceId();
      const created = await ctx.post("/v1/qr", {
        mode: "login_this",
        device_id: deviceId,
        client_type: ctx.clientType,
      });
      requireCreated(created);
      options.onCode?.(code(created.qr_id, created.expires_in, created.rotate_in));
      return start(created.qr_id, (flow) =>
        pollUntil(
          flow,
          () => ({
            poll_secret: created.poll_secret,
            device_id: deviceId,
            client_type: ctx.clientType,
            // Asks the server to put a web session's refresh token in the cookie; a
            // server that ignores it answers with the token in the body, and the
            // client moves it into the cookie with one refresh (see Client).
            ...(ctx.clientType === "web" ? { refresh_in_cookie: true } : {}),
          }),
          async (answer) => {
            if (answer && answer.state === "confirmed") {
              if (typeof answer.access_token !== "string") {
                throw new TicketgateError("bad_answer", "the QR was confirmed but the answer holds no session");
              }
              return { value: await ctx.adoptLogin(answer, deviceId) };
            }
            options.onState?.({ state: answer?.state });
            return null;
          },
          { onRotate: (body) => options.onCode?.(code(body.next_qr_id, body.expires_in ?? 0, body.rotate_in ?? 0)) },
        ),
      );
    },

    /**
     * A logged-in phone scans a login_this QR (Bearer + signed): where the login goes.
     * @param {string} qrIdOrPayload a qr_id, or the QR code's text
     */
    async scan(qrIdOrPayload) {
      const qrId = qrIdOfPayload(qrIdOrPayload) ?? qrIdOrPayload;
      const info = await ctx.bearer(`/v1/qr/${encodeURIComponent(qrId)}/scan`, {});
      return withoutSecret(info);
    },

    /**
     * Approves a scanned QR (Bearer + signed).
     * @param {string} qrIdOrPayload
     */
    async confirm(qrIdOrPayload) {
      const qrId = qrIdOfPayload(qrIdOrPayload) ?? qrIdOrPayload;
      await ctx.bearer(`/v1/qr/${encodeURIComponent(qrId)}/confirm`, {});
      confirmed.add(qrId);
    },

    /**
     * login_other: this logged-in device shows a QR for a new phone. `onScanned` says
     * who scanned (show it, then `confirm`); `done` resolves once confirmed.
     * @param {{onCode?: (code: any) => void, onScanned?: (info: {ip: string|null, scannedAt: number|null}) => void}} [options]
     */
    async showLoginOther(options = {}) {
      const session = ctx.session();
      if (!session) throw new TicketgateError("not_logged_in", "log in before showing a login_other QR");
      const created = await ctx.bearer("/v1/qr", { mode: "login_other" });
      requireCreated(created);
      options.onCode?.(code(created.qr_id, created.expires_in, created.rotate_in));
      let scannedShown = false;
      return start(created.qr_id, (flow) =>
        pollUntil(
          flow,
          () => ({ poll_secret: created.poll_secret, device_id: session.deviceId, client_type: session.clientType }),
          (answer) => {
            if (answer && answer.state === "confirmed") return { value: undefined };
            if (answer && answer.state === "scanned" && !scannedShown) {
              scannedShown = true;
              options.onScanned?.({ ip: answer.scanner?.ip ?? null, scannedAt: answer.scanner?.scanned_at ?? null });
            }
            return null;
          },
          {
            onRotate: (body) => options.onCode?.(code(body.next_qr_id, body.expires_in ?? 0, body.rotate_in ?? 0)),
            // Confirmed here and already redeemed by the phone: the QR is gone, done.
            onExpired: () => (confirmed.has(created.qr_id) ? { value: undefined } : null),
          },
        ),
      );
    },

    /**
     * login_other, the new phone: scans without a session (the answer carries this
     * phone's poll secret), then polls until the showing device confirms.
     * @param {string} qrIdOrPayload
     * @param {{onScan?: (info: any) => void}} [options]
     */
    async loginWith(qrIdOrPayload, options = {}) {
      const qrId = qrIdOfPayload(qrIdOrPayload) ?? qrIdOrPayload;
      const deviceId = await ctx.deviceId();
      const scan = await ctx.post(`/v1/qr/${encodeURIComponent(qrId)}/scan`, {});
      if (!scan || typeof scan.poll_secret !== "string") {
        throw new TicketgateError("bad_answer", "this QR is not a login_other code (the scan gave no poll secret)");
      }
      options.onScan?.(withoutSecret(scan));
      const flow = start(qrId, (f) =>
        pollUntil(
          f,
          () => ({
            poll_secret: scan.poll_secret,
            device_id: deviceId,
            client_type: ctx.clientType,
            ...(ctx.clientType === "web" ? { refresh_in_cookie: true } : {}),
          }),
          async (answer) => {
            if (answer && answer.state === "confirmed" && typeof answer.access_token === "string") {
              return { value: await ctx.adoptLogin(answer, deviceId) };
            }
            return null;
          },
        ),
      );
      return flow.done;
    },
  };
}

/** A poll loop's state: the current id and a cancellable sleep. */
class Flow {
  /**
   * @param {string} qrId
   * @param {QrContext} ctx
   */
  constructor(qrId, ctx) {
    this.qrId = qrId;
    this.ctx = ctx;
    this.cancelled = false;
    /** @type {(() => void)|null} */
    this.wake = null;
  }

  /** @param {number} ms */
  sleep(ms) {
    return new Promise((resolve) => {
      const handle = this.ctx.setTimeout(() => {
        this.wake = null;
        resolve(undefined);
      }, ms);
      this.wake = () => {
        this.ctx.clearTimeout(handle);
        this.wake = null;
        resolve(undefined);
      };
    });
  }

  cancel() {
    this.cancelled = true;
    this.wake?.();
  }
}

/** @param {any} created */
function requireCreated(created) {
  if (!created || typeof created.qr_id !== "string" || typeof created.poll_secret !== "string") {
    throw new TicketgateError("bad_answer", "the QR answer lacks qr_id or poll_secret");
  }
}

/**
 * A scan answer without its poll secret (listeners only need where the login goes).
 * @param {any} info
 */
function withoutSecret(info) {
  if (!info || typeof info !== "object") return info;
  const { poll_secret: _secret, ...rest } = info;
  return rest;
}
