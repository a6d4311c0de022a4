// @ts-check
/**
 * `Client`: one session per origin, shared by its tabs, and one managed socket.
 *
 * ```text
 * login ──► session in the store (IndexedDB): access token, non-extractable key, ids;
 *           the web refresh token only in the HttpOnly cookie
 * connect ──► mint (Bearer + signed) ──► WebSocket ["ticketgate.v1", "ticket.<t>"]
 *              ▲                                   │ welcome, push, reply, expiring, resume
 *              │ backoff + full jitter             ▼
 *              └── 1001 / 1006 / 4000-4499 ◄── close ──► 4500-4999: stop (kicked, replaced)
 *                  (the resume ticket if one came: no mint; `since` = last push id)
 * refresh ──► navigator.locks "ticketgate-refresh": re-read the store; another tab
 *             renewed already? adopt its token. Else POST /v1/token/refresh, store,
 *             announce on BroadcastChannel "ticketgate"; every tab sends `refresh` frames.
 * ```
 */
import { jwtClaims } from "./encoding.js";
import { Emitter } from "./emitter.js";
import { readAnswer, SESSION_ENDING_CODES, TicketgateError } from "./errors.js";
import { defaultLocks } from "./locks.js";
import { backoffDelay, closeAction, EXPIRED, isSendId, KICKED, REPLACED } from "./policy.js";
import { createQrApi } from "./qr.js";
import { importSigningKey, newNonce, sign } from "./signing.js";
import { defaultStore } from "./storage.js";

/** The Web Lock every tab of an origin takes around a refresh. */
export const REFRESH_LOCK = "ticketgate-refresh";
/** The BroadcastChannel on which tabs announce renewals, logins and logouts. */
export const CHANNEL_NAME = "ticketgate";
/** Store keys. */
const DEVICE_KEY = "device_id";
const SESSION_KEY = "session";
/** A socket that lived this long resets the backoff: its close is a new incident. */
const STABLE_MS = 30000;
/** A token this close to its expiry is renewed before a Bearer call. */
const EXPIRY_MARGIN_MS = 5000;
/** WebSocket.OPEN. */
const OPEN = 1;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * @typedef {object} Session what the client holds (the store holds the same, never a web refresh token)
 * @property {string} sessionId
 * @property {string} userId
 * @property {string} deviceId
 * @property {"web"|"mobile"} clientType
 * @property {string} accessToken
 * @property {number} accessExpiresAt ms since the epoch, on this machine's clock
 * @property {CryptoKey} key the signing key, non-extractable
 * @property {string|null} [refreshToken] mobile only
 */

export class Client {
  /** @param {import("../index.d.ts").ClientOptions} [options] */
  constructor(options = {}) {
    const g = /** @type {any} */ (globalThis);
    const base = options.baseUrl ?? g.location?.origin;
    if (typeof base !== "string" || !/^https?:\/\//.test(base)) {
      throw new TicketgateError("bad_request", "baseUrl is required (an http:// or https:// URL)");
    }
    /** @type {string} */
    this._base = base.replace(/\/+$/, "");
    /** @type {"web"|"mobile"} */
    this._clientType = options.clientType ?? "web";
    if (this._clientType !== "web" && this._clientType !== "mobile") {
      throw new TicketgateError("bad_request", 'clientType is "web" or "mobile"');
    }
    this._fetch = options.fetch ?? ((/** @type {any} */ input, /** @type {any} */ init) => g.fetch(input, init));
    this._WebSocket = options.WebSocket ?? g.WebSocket;
    this._store = options.storage ?? defaultStore();
    this._locks = options.locks ?? defaultLocks();
    this._random = options.random ?? Math.random;
    this._now = options.now ?? Date.now;
    this._setTimeout = options.setTimeout ?? ((/** @type {() => void} */ fn, /** @type {number} */ ms) => setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? ((/** @type {any} */ h) => clearTimeout(h));
    this._backoff = { baseMs: options.backoffBaseMs ?? 500, capMs: options.backoffCapMs ?? 30000 };
    this._sendTimeoutMs = options.sendTimeoutMs ?? 10000;
    this._events = new Emitter();

    /** @type {Session|null} */
    this._session = null;
    /** A web refresh token that came in a body (a QR login): memory only, until moved into the cookie. */
    this._memRefresh = /** @type {string|null} */ (null);
    this._deviceIdValue = /** @type {string|null} */ (null);

    // The socket.
    this._state = /** @type {import("../index.d.ts").ConnectionState} */ ("offline");
    /** @type {WebSocket|null} */
    this._ws = null;
    this._wsSession = /** @type {string|null} */ (null);
    this._welcomed = false;
    this._openedAt = 0;
    /** Unix seconds when the open socket closes with 4004 unless renewed. */
    this._socketExp = 0;
    this._tokenSentToSocket = /** @type {string|null} */ (null);
    this._wsUrl = /** @type {string|null} */ (null);
    this._resume = /** @type {{ticket: string, until: number}|null} */ (null);
    this._want = false;
    this._generation = 0;
    this._attempt = 0;
    this._timer = /** @type {unknown} */ (null);
    this._lastPushId = /** @type {string|null} */ (null);
    /** The `since` the open socket was asked with. */
    this._sinceSent = /** @type {string|null} */ (null);
    this._welcome = /** @type {any} */ (null);
    this._waiter = /** @type {{resolve: (w: any) => void, reject: (e: unknown) => void}|null} */ (null);
    /** @type {Map<string, {resolve: (v: unknown) => void, reject: (e: unknown) => void, timer: unknown}>} */
    this._pending = new Map();
    this._sendSeq = 0;

    // Tabs of one origin talk on a BroadcastChannel.
    const factory =
      options.channel === null
        ? null
        : (options.channel ??
          (typeof g.BroadcastChannel === "function" ? (/** @type {string} */ name) => new g.BroadcastChannel(name) : null));
    this._channel = factory ? factory(CHANNEL_NAME) : null;
    if (this._channel) {
      this._channel.onmessage = (/** @type {{data: unknown}} */ ev) => {
        this._onChannel(ev.data).catch((err) => this._events.emit("error", asError(err)));
      };
      // Node: a channel must not keep the process alive.
      /** @type {any} */ (this._channel).unref?.();
    }

    this.qr = createQrApi({
      baseUrl: this._base,
      clientType: this._clientType,
      intervalMs: options.qrPollIntervalMs ?? 2000,
      post: (path, body) => this._post(path, body, "none"),
      bearer: (path, body) => this._bearer(path, body),
      deviceId: () => this.deviceId(),
      session: () => this._session,
      adoptLogin: (answer, deviceId) => this._adoptLogin(answer, deviceId),
      setTimeout: this._setTimeout,
      clearTimeout: this._clearTimeout,
    });
  }

  // ---- public state -------------------------------------------------------------

  /** The current session (ids and expiry; never a token or key), or null. */
  get session() {
    const s = this._session;
    if (!s) return null;
    return {
      sessionId: s.sessionId,
      userId: s.userId,
      deviceId: s.deviceId,
      clientType: s.clientType,
      accessExpiresAt: s.accessExpiresAt,
    };
  }

  /** The connection state. */
  get state() {
    return this._state;
  }

  /** The id of the last push seen: `since` of every reconnect. */
  get lastPushId() {
    return this._lastPushId;
  }

  /**
   * Subscribes to an event; returns a function that unsubscribes.
   * @param {string} event
   * @param {(payload: any) => void} listener
   */
  on(event, listener) {
    return this._events.on(event, listener);
  }

  /**
   * @param {string} event
   * @param {(payload: any) => void} listener
   */
  off(event, listener) {
    this._events.off(event, listener);
  }

  /**
   * The device id: a UUID kept per origin (in the store), made once.
   * @returns {Promise<string>}
   */
  async deviceId() {
    if (this._deviceIdValue) return this._deviceIdValue;
    // Under a lock, so that two tabs opened together agree on one id.
    return this._locks.request("ticketgate-device", async () => {
      if (this._deviceIdValue) return this._deviceIdValue;
      /** @type {unknown} */
      let id;
      try {
        id = await this._store.get(DEVICE_KEY);
        if (typeof id !== "string" || !UUID.test(id)) {
          id = crypto.randomUUID();
          await this._store.set(DEVICE_KEY, id);
        }
      } catch (err) {
        // A store that refuses (a private window's IndexedDB): this page's id lasts as
        // long as the page.
        this._events.emit("error", new TicketgateError("storage", "the device id could not be stored", { cause: err }));
        if (typeof id !== "string" || !UUID.test(id)) id = crypto.randomUUID();
      }
      this._deviceIdValue = /** @type {string} */ (id);
      return this._deviceIdValue;
    });
  }

  // ---- session ------------------------------------------------------------------

  /**
   * Logs in with a password. A `web` client asks for the refresh token in the HttpOnly
   * cookie (`refresh_in_cookie`), so no script ever sees it.
   * @param {string} username
   * @param {string} password
   */
  async login(username, password) {
    const deviceId = await this.deviceId();
    /** @type {Record<string, unknown>} */
    const body = { username, password, device_id: deviceId, client_type: this._clientType };
    if (this._clientType === "web") body.refresh_in_cookie = true;
    const answer = await this._post("/v1/login", body, "none");
    return this._adoptLogin(answer, deviceId);
  }

  /**
   * Adopts the session in the store (this tab's from before a reload, or another
   * tab's). True when there is one.
   * @returns {Promise<boolean>}
   */
  async restore() {
    const stored = await this._loadStored();
    if (!stored) return false;
    this._session = stored;
    this._deviceIdValue = stored.deviceId;
    return true;
  }

  /**
   * Renews the access token. One refresh at a time across tabs: inside the lock the
   * store is read again, and when another tab renewed meanwhile its token is adopted
   * without a request (a refresh cookie presented twice would revoke the session).
   */
  async refresh() {
    const seen = this._session;
    if (!seen) throw new TicketgateError("not_logged_in", "no session to refresh: log in first");
    return this._locks.request(REFRESH_LOCK, () => this._refreshLocked(seen));
  }

  /**
   * Logs out (POST /v1/logout): the session ends on the server, in the store and in
   * every tab; the socket closes.
   */
  async logout() {
    const s = this._session;
    if (!s) return;
    try {
      await this._bearer("/v1/logout", {});
    } catch (err) {
      // A session that is over already is logged out.
      if (!SESSION_ENDING_CODES.has(/** @type {any} */ (err).code)) throw err;
    }
    this.disconnect();
    await this._endSession("logged out", s.sessionId);
  }

  /**
   * Mints a connection ticket (Bearer + signed).
   * @returns {Promise<{ticket: string, expiresIn: number, wsUrl: string}>}
   */
  async mintTicket() {
    const answer = await this._bearer("/v1/tickets", {});
    if (!answer || typeof answer.ticket !== "string") {
      throw new TicketgateError("bad_answer", "the mint answer holds no ticket");
    }
    const wsUrl = typeof answer.ws_url === "string" && answer.ws_url ? answer.ws_url : this._derivedWsUrl();
    this._wsUrl = wsUrl;
    return { ticket: answer.ticket, expiresIn: Number(answer.expires_in) || 0, wsUrl };
  }

  // ---- socket -------------------------------------------------------------------

  /**
   * Mints a ticket and opens the socket; resolves with the first welcome. Afterwards
   * the client renews and reconnects by itself until `disconnect`, `logout`, or a
   * close that forbids it (4500-4999).
   * @param {{since?: string|null}} [options] `since`: replay pushes after this id
   */
  connect(options = {}) {
    if (!this._session) return Promise.reject(new TicketgateError("not_logged_in", "log in before connecting"));
    if (options.since !== undefined) this._lastPushId = options.since;
    if (this._want) {
      if (this._welcomed && this._ws) return Promise.resolve(this._welcome);
      return new Promise((resolve, reject) => {
        const previous = this._waiter;
        this._waiter = {
          resolve: (w) => {
            previous?.resolve(w);
            resolve(w);
          },
          reject: (e) => {
            previous?.reject(e);
            reject(e);
          },
        };
      });
    }
    this._want = true;
    this._attempt = 0;
    const welcome = new Promise((resolve, reject) => {
      this._waiter = { resolve, reject };
    });
    this._setState("connecting");
    this._open();
    return welcome;
  }

  /** Closes the socket (1000) and stops reconnecting. */
  disconnect() {
    this._want = false;
    this._generation++;
    if (this._timer !== null) {
      this._clearTimeout(this._timer);
      this._timer = null;
    }
    const ws = this._ws;
    if (ws) {
      try {
        ws.close(1000, "client disconnect");
      } catch {
        // Closing a socket that is closing already is no error.
      }
    }
    this._welcomed = false;
    this._failPending("disconnected", "the client disconnected before the reply");
    this._rejectWaiter(new TicketgateError("cancelled", "disconnected before the welcome"));
    this._setState("closed");
  }

  /**
   * A business call (PROTOCOL §9): `{"type":"send","id","data"}`; resolves with the
   * reply's data. Rejects with TicketgateError: the error frame's code, `timeout`,
   * `disconnected` (the socket closed first), `not_connected`.
   * @param {unknown} data
   * @param {{timeoutMs?: number, id?: string}} [options]
   */
  send(data, options = {}) {
    return new Promise((resolve, reject) => {
      const ws = this._ws;
      if (!ws || !this._welcomed || ws.readyState !== OPEN) {
        reject(new TicketgateError("not_connected", "the socket is not open"));
        return;
      }
      const id = options.id ?? `c${++this._sendSeq}-${Math.floor(this._random() * 2 ** 32).toString(36)}`;
      if (!isSendId(id)) {
        reject(new TicketgateError("bad_request", "a send id is 1-64 characters of [A-Za-z0-9_-]"));
        return;
      }
      if (this._pending.has(id)) {
        reject(new TicketgateError("bad_request", `a send with id ${id} is waiting for its reply already`));
        return;
      }
      const timeoutMs = options.timeoutMs ?? this._sendTimeoutMs;
      const timer = this._setTimeout(() => {
        if (this._pending.delete(id)) {
          reject(new TicketgateError("timeout", `no reply to send ${id} within ${timeoutMs} ms`));
        }
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ type: "send", id, data }));
      } catch (err) {
        this._pending.delete(id);
        this._clearTimeout(timer);
        reject(new TicketgateError("disconnected", "the socket refused the frame", { cause: err }));
      }
    });
  }

  /**
   * Acknowledges a push (counted by the server; delivery follows `since`).
   * @param {string} id
   */
  ack(id) {
    this._sendFrame({ type: "ack", id });
  }

  /** An application ping; the `pong` comes as a `frame` event. */
  ping() {
    this._sendFrame({ type: "ping" });
  }

  // ---- internals: HTTP ------------------------------------------------------------

  /** @param {string} path */
  _url(path) {
    return this._base + path;
  }

  _derivedWsUrl() {
    return this._url("/v1/connect").replace(/^http/, "ws");
  }

  /**
   * A POST with a JSON body. `auth`: none, signed (X-TG-*), or bearer (signed + Bearer).
   * Adopts `X-New-Token` from Bearer answers.
   * @param {string} path
   * @param {unknown} body
   * @param {"none"|"signed"|"bearer"} auth
   */
  async _post(path, body, auth) {
    const url = this._url(path);
    const text = JSON.stringify(body ?? {});
    /** @type {Record<string, string>} */
    const headers = { "Content-Type": "application/json" };
    const s = this._session;
    if (auth !== "none") {
      if (!s) throw new TicketgateError("not_logged_in", "log in first");
      const timestamp = Math.floor(this._now() / 1000);
      const nonce = newNonce();
      // The signed path is the path this request goes to (PROTOCOL §8), without a query.
      const signedPath = new URL(url).pathname;
      headers["X-TG-Device"] = s.deviceId;
      headers["X-TG-Timestamp"] = String(timestamp);
      headers["X-TG-Nonce"] = nonce;
      headers["X-TG-Signature"] = await sign(s.key, {
        method: "POST",
        path: signedPath,
        deviceId: s.deviceId,
        timestamp,
        nonce,
        body: text,
      });
      if (auth === "bearer") headers.Authorization = `Bearer ${s.accessToken}`;
    }
    /** @type {Response} */
    let response;
    try {
      response = await this._fetch(url, { method: "POST", headers, body: text, credentials: "include" });
    } catch (err) {
      throw new TicketgateError("network", `cannot reach ${url}: ${asError(err).message}`, { cause: err });
    }
    if (auth === "bearer" && s) {
      const renewed = response.headers.get("X-New-Token");
      if (renewed) await this._adoptNewToken(s.sessionId, renewed);
    }
    return readAnswer(response);
  }

  /**
   * A Bearer + signed call with a fresh access token: renewed first when about to
   * expire, and once more when the server says it expired. `token_revoked` ends the
   * session.
   * @param {string} path
   * @param {unknown} body
   */
  async _bearer(path, body) {
    const s = this._session;
    if (!s) throw new TicketgateError("not_logged_in", "log in first");
    if (this._now() >= s.accessExpiresAt - EXPIRY_MARGIN_MS) await this.refresh();
    try {
      return await this._post(path, body, "bearer");
    } catch (err) {
      const code = /** @type {any} */ (err).code;
      if (code === "token_expired") {
        await this.refresh();
        return this._post(path, body, "bearer");
      }
      if (code === "token_revoked") await this._endSession("token_revoked", s.sessionId);
      throw err;
    }
  }

  // ---- internals: session -------------------------------------------------------

  /**
   * Takes a login-shaped answer (login, QR poll) as this client's session.
   * @param {any} answer
   * @param {string} deviceId
   */
  async _adoptLogin(answer, deviceId) {
    if (
      !answer ||
      typeof answer.access_token !== "string" ||
      typeof answer.signing_key !== "string" ||
      typeof answer.session_id !== "string"
    ) {
      throw new TicketgateError("bad_answer", "the login answer lacks access_token, signing_key or session_id");
    }
    const key = await importSigningKey(answer.signing_key);
    const claims = jwtClaims(answer.access_token);
    const bodyRefresh = typeof answer.refresh_token === "string" ? answer.refresh_token : null;
    this._session = {
      sessionId: answer.session_id,
      userId: typeof claims?.sub === "string" ? claims.sub : "",
      deviceId,
      clientType: this._clientType,
      accessToken: answer.access_token,
      accessExpiresAt: this._now() + (Number(answer.access_expires_in) || 0) * 1000,
      key,
      refreshToken: this._clientType === "mobile" ? bodyRefresh : null,
    };
    this._memRefresh = this._clientType === "web" ? bodyRefresh : null;
    await this._save();
    this._announce({ type: "session", sessionId: answer.session_id });
    if (this._memRefresh) {
      // A web session whose refresh token came in the body (a QR login): one refresh
      // with `refresh_in_cookie` moves it into the HttpOnly cookie, where every tab
      // can use it and no script can read it.
      try {
        await this.refresh();
      } catch (err) {
        this._events.emit("error", asError(err));
      }
    }
    return this.session;
  }

  /**
   * The refresh itself, inside the lock.
   * @param {Session} seen the session as it was when the caller decided to refresh
   */
  async _refreshLocked(seen) {
    const stored = await this._loadStored();
    if (!stored || stored.sessionId !== seen.sessionId) {
      if (stored) {
        // Another tab logged in anew: that session is this origin's now.
        this._adoptStored(stored);
        return this.session;
      }
      if (this._session && this._session.sessionId === seen.sessionId && (await this._storeUnavailable())) {
        // Nothing stored because the store is not usable: refresh from memory.
      } else {
        await this._endSession("logged out in another tab", seen.sessionId);
        throw new TicketgateError("session_ended", "the session has ended: log in again");
      }
    } else if (stored.accessToken !== seen.accessToken) {
      // Another tab (or call) renewed while this one waited for the lock.
      this._adoptStored(stored);
      return this.session;
    }
    const current = /** @type {Session} */ (this._session);
    /** @type {Record<string, unknown>} */
    const body = {};
    const refreshToken = this._clientType === "web" ? this._memRefresh : (stored?.refreshToken ?? current.refreshToken);
    if (refreshToken) body.refresh_token = refreshToken;
    if (this._clientType === "web") body.refresh_in_cookie = true;
    /** @type {any} */
    let answer;
    try {
      answer = await this._post("/v1/token/refresh", body, "signed");
    } catch (err) {
      const code = /** @type {any} */ (err).code;
      // `bad_request` here: no refresh cookie (cleared, or never set).
      if (SESSION_ENDING_CODES.has(code) || code === "bad_request") {
        await this._endSession(code, seen.sessionId);
      }
      throw err;
    }
    if (!answer || typeof answer.access_token !== "string") {
      throw new TicketgateError("bad_answer", "the refresh answer holds no access_token");
    }
    const bodyRefresh = typeof answer.refresh_token === "string" ? answer.refresh_token : null;
    this._memRefresh = this._clientType === "web" ? bodyRefresh : null;
    this._session = {
      ...current,
      accessToken: answer.access_token,
      accessExpiresAt: this._now() + (Number(answer.access_expires_in) || 0) * 1000,
      refreshToken: this._clientType === "mobile" ? bodyRefresh : null,
    };
    await this._save();
    this._announce({ type: "renewed", sessionId: current.sessionId });
    this._events.emit("renewed", { accessExpiresAt: this._session.accessExpiresAt, via: "refresh" });
    this._sendRefreshFrame();
    return this.session;
  }

  /** True when the store cannot be written (e.g. IndexedDB refused in a private window). */
  async _storeUnavailable() {
    try {
      await this._store.get(SESSION_KEY);
      return false;
    } catch {
      return true;
    }
  }

  /**
   * Adopts an `X-New-Token`: a fresh access token of the same session.
   * @param {string} sessionId the session the call was made with
   * @param {string} token
   */
  async _adoptNewToken(sessionId, token) {
    const s = this._session;
    if (!s || s.sessionId !== sessionId || s.accessToken === token) return;
    const claims = jwtClaims(token);
    if (claims && typeof claims.sid === "string" && claims.sid !== sessionId) return;
    const lifetimeMs =
      claims && typeof claims.exp === "number" && typeof claims.iat === "number" ? (claims.exp - claims.iat) * 1000 : 0;
    this._session = { ...s, accessToken: token, accessExpiresAt: lifetimeMs > 0 ? this._now() + lifetimeMs : s.accessExpiresAt };
    await this._save();
    this._announce({ type: "renewed", sessionId });
    this._events.emit("renewed", { accessExpiresAt: this._session.accessExpiresAt, via: "x-new-token" });
    this._sendRefreshFrame();
  }

  /** @param {Session} stored */
  _adoptStored(stored) {
    const before = this._session;
    // A body refresh token held in memory belongs to the session it came with.
    if (before && before.sessionId !== stored.sessionId) this._memRefresh = null;
    this._session = stored;
    this._deviceIdValue = stored.deviceId;
    if (!before || before.accessToken !== stored.accessToken) {
      this._events.emit("renewed", { accessExpiresAt: stored.accessExpiresAt, via: "other-tab" });
    }
    this._sendRefreshFrame();
  }

  /**
   * The stored session of this client type, or null.
   * @returns {Promise<Session|null>}
   */
  async _loadStored() {
    /** @type {any} */
    let v;
    try {
      v = await this._store.get(SESSION_KEY);
    } catch {
      return null;
    }
    if (
      !v ||
      typeof v !== "object" ||
      typeof v.sessionId !== "string" ||
      typeof v.accessToken !== "string" ||
      typeof v.deviceId !== "string" ||
      !v.key ||
      v.clientType !== this._clientType
    ) {
      return null;
    }
    return /** @type {Session} */ (v);
  }

  async _save() {
    const s = this._session;
    if (!s) return;
    /** @type {Session} */
    const record = {
      sessionId: s.sessionId,
      userId: s.userId,
      deviceId: s.deviceId,
      clientType: s.clientType,
      accessToken: s.accessToken,
      accessExpiresAt: s.accessExpiresAt,
      key: s.key,
    };
    // A mobile client (Node, an app's web view) has no cookie: its refresh token lives
    // in the store it was given. A web session's never does.
    if (s.clientType === "mobile" && s.refreshToken) record.refreshToken = s.refreshToken;
    try {
      await this._store.set(SESSION_KEY, record);
    } catch (err) {
      this._events.emit("error", new TicketgateError("storage", "the session could not be stored", { cause: err }));
    }
  }

  /**
   * Ends the session locally: memory, store (when it still holds this session), other
   * tabs, socket. Emits `loggedOut`.
   * @param {string} reason
   * @param {string} sessionId
   */
  async _endSession(reason, sessionId) {
    if (!this._session || this._session.sessionId !== sessionId) return;
    this._session = null;
    this._memRefresh = null;
    try {
      const stored = await this._store.get(SESSION_KEY);
      if (stored && /** @type {any} */ (stored).sessionId === sessionId) await this._store.delete(SESSION_KEY);
    } catch {
      // Nothing stored that could be cleared.
    }
    this._announce({ type: "ended", sessionId, reason });
    this._rejectWaiter(new TicketgateError("session_ended", `the session has ended (${reason}): log in again`));
    if (this._want) this.disconnect();
    this._events.emit("loggedOut", { reason });
  }

  /** @param {Record<string, unknown>} message */
  _announce(message) {
    try {
      this._channel?.postMessage(message);
    } catch {
      // A closed channel: other tabs find out from the store.
    }
  }

  /** @param {unknown} data */
  async _onChannel(data) {
    const msg = /** @type {any} */ (data);
    if (!msg || typeof msg !== "object" || typeof msg.sessionId !== "string") return;
    if (msg.type === "renewed" || msg.type === "session") {
      const stored = await this._loadStored();
      if (!stored || stored.sessionId !== msg.sessionId) return;
      if (msg.type === "renewed" && this._session?.sessionId !== msg.sessionId) return;
      if (this._session && this._session.sessionId === stored.sessionId && this._session.accessToken === stored.accessToken) {
        return;
      }
      this._adoptStored(stored);
    } else if (msg.type === "ended" && this._session?.sessionId === msg.sessionId) {
      this._session = null;
      this._memRefresh = null;
      if (this._want) this.disconnect();
      this._events.emit("loggedOut", { reason: typeof msg.reason === "string" ? msg.reason : "ended in another tab" });
    }
  }

  // ---- internals: socket ----------------------------------------------------------

  /** @param {import("../index.d.ts").ConnectionState} state */
  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._events.emit("state", { state });
  }

  /** One connect attempt: the resume ticket if one is live, else a mint; then the socket. */
  async _open() {
    const generation = ++this._generation;
    /** @type {string} */
    let ticket;
    /** @type {string} */
    let wsUrl;
    try {
      if (this._resume && this._now() < this._resume.until) {
        ticket = this._resume.ticket;
        wsUrl = this._wsUrl ?? this._derivedWsUrl();
      } else {
        const minted = await this.mintTicket();
        ticket = minted.ticket;
        wsUrl = minted.wsUrl;
      }
      this._resume = null;
    } catch (err) {
      if (generation !== this._generation || !this._want) return;
      this._connectFailed(asError(err));
      return;
    }
    if (generation !== this._generation || !this._want || !this._session) return;
    const deviceId = this._session.deviceId;
    /** @type {WebSocket} */
    let ws;
    try {
      const url = new URL(wsUrl);
      url.searchParams.set("device_id", deviceId);
      if (this._lastPushId !== null && this._lastPushId !== undefined) url.searchParams.set("since", this._lastPushId);
      ws = new this._WebSocket(url.toString(), ["ticketgate.v1", `ticket.${ticket}`]);
    } catch (err) {
      this._connectFailed(new TicketgateError("network", `cannot open the socket: ${asError(err).message}`, { cause: err }));
      return;
    }
    this._ws = ws;
    this._wsSession = this._session.sessionId;
    this._welcomed = false;
    this._tokenSentToSocket = this._session.accessToken;
    this._sinceSent = this._lastPushId;
    ws.onmessage = (ev) => this._onMessage(ws, ev.data);
    ws.onclose = (ev) => {
      this._onClose(ws, ev.code, ev.reason ?? "").catch((err) => this._events.emit("error", asError(err)));
    };
    ws.onerror = () => {
      // A close event follows every error; it decides.
    };
  }

  /**
   * A connect attempt failed before a socket: retry with backoff, unless retrying
   * cannot help (the session is over, or 400/403: e.g. device_mismatch).
   * @param {TicketgateError} err
   */
  _connectFailed(err) {
    this._events.emit("error", err);
    const terminal =
      SESSION_ENDING_CODES.has(err.code) ||
      err.code === "not_logged_in" ||
      err.code === "bad_answer" ||
      err.status === 400 ||
      err.status === 403;
    if (terminal) {
      this._want = false;
      this._rejectWaiter(err);
      this._setState("closed");
      return;
    }
    this._schedule(0, err.retryAfter);
  }

  /**
   * @param {WebSocket} ws
   * @param {unknown} data
   */
  _onMessage(ws, data) {
    if (ws !== this._ws) return;
    /** @type {any} */
    let frame;
    try {
      frame = JSON.parse(String(data));
    } catch {
      this._events.emit("error", new TicketgateError("bad_answer", "a frame that is not JSON"));
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome": {
        this._welcomed = true;
        this._openedAt = this._now();
        this._socketExp = Number(frame.expires_at) || 0;
        this._welcome = frame;
        this._setState("open");
        this._events.emit("welcome", frame);
        if ("recovered" in frame) {
          const lastId = typeof frame.last_id === "string" ? frame.last_id : null;
          // Lost pushes: continue from the newest one the server holds (the app
          // resynchronises from its own service).
          if (frame.recovered === false && lastId !== null) this._lastPushId = lastId;
          this._events.emit("recovered", { recovered: frame.recovered === true, since: this._sinceSent ?? null, lastId });
        }
        const waiter = this._waiter;
        this._waiter = null;
        waiter?.resolve(frame);
        // A token renewed while the socket was being opened extends it now.
        this._sendRefreshFrame();
        break;
      }
      case "push":
        if (typeof frame.id === "string") this._lastPushId = frame.id;
        this._events.emit("push", frame);
        break;
      case "reply":
      case "error": {
        const pending = typeof frame.id === "string" ? this._pending.get(frame.id) : undefined;
        if (pending) {
          this._pending.delete(frame.id);
          this._clearTimeout(pending.timer);
          if (frame.type === "reply") pending.resolve(frame.data);
          else pending.reject(new TicketgateError(String(frame.error), String(frame.message ?? frame.error)));
        } else {
          this._events.emit("frame", frame);
        }
        break;
      }
      case "expiring":
        this._events.emit("frame", frame);
        this._renewSocket(Number(frame.expires_at) || 0);
        break;
      case "refreshed":
        this._socketExp = Number(frame.expires_at) || this._socketExp;
        this._events.emit("frame", frame);
        break;
      case "resume":
        if (typeof frame.ticket === "string") {
          this._resume = { ticket: frame.ticket, until: this._now() + (Number(frame.expires_in) || 30) * 1000 };
        }
        // The ticket is a credential: listeners see that one came, not the ticket.
        this._events.emit("frame", { type: "resume", expires_in: frame.expires_in });
        break;
      default:
        this._events.emit("frame", frame);
    }
  }

  /**
   * Answers `expiring`: a token that outlives the socket's deadline (renewed by
   * X-New-Token or another tab) is sent as it is; otherwise refresh first.
   * @param {number} socketExp unix seconds
   */
  async _renewSocket(socketExp) {
    try {
      if (this._tokenOutlives(socketExp)) this._sendRefreshFrame(true);
      else await this.refresh();
    } catch (err) {
      this._events.emit("error", asError(err));
    }
  }

  /**
   * True when the current access token expires after `socketExp` (unix seconds).
   * @param {number} socketExp
   */
  _tokenOutlives(socketExp) {
    const s = this._session;
    const exp = s ? jwtClaims(s.accessToken)?.exp : undefined;
    if (typeof exp !== "number") return false;
    // A token of the same second that the socket has not seen yet is newer too.
    return exp > socketExp || (exp === socketExp && s?.accessToken !== this._tokenSentToSocket);
  }

  /**
   * Sends the current access token on the open socket (`refresh` frame), once per token.
   * @param {boolean} [force]
   */
  _sendRefreshFrame(force = false) {
    const s = this._session;
    const ws = this._ws;
    if (!s || !ws || !this._welcomed || ws.readyState !== OPEN || this._wsSession !== s.sessionId) return;
    if (!force && this._tokenSentToSocket === s.accessToken) return;
    this._tokenSentToSocket = s.accessToken;
    this._sendFrame({ type: "refresh", access_token: s.accessToken });
  }

  /** @param {Record<string, unknown>} frame */
  _sendFrame(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} reason
   */
  async _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    const welcomed = this._welcomed;
    this._welcomed = false;
    this._failPending("disconnected", `the socket closed (${code}) before the reply`);
    if (welcomed && this._now() - this._openedAt >= STABLE_MS) this._attempt = 0;
    if (!this._want) {
      this._events.emit("closed", { code, reason, willReconnect: false });
      this._setState("closed");
      return;
    }
    if (code === KICKED || code === REPLACED || (code >= 4500 && code <= 4999)) {
      const socketSession = this._wsSession;
      if (code === REPLACED) {
        // Replaced by a login in another tab of this origin: carry on with that session.
        const stored = await this._loadStored();
        if (stored && stored.sessionId !== socketSession) {
          this._adoptStored(stored);
          this._events.emit("closed", { code, reason, willReconnect: true });
          this._schedule(code, null);
          return;
        }
      }
      this._want = false;
      this._events.emit("closed", { code, reason, willReconnect: false });
      if (code === KICKED) this._events.emit("kicked", { code, reason });
      else if (code === REPLACED) this._events.emit("replaced", { code, reason });
      this._rejectWaiter(new TicketgateError(code === REPLACED ? "replaced" : "kicked", reason || `closed with ${code}`));
      this._setState("closed");
      if (socketSession) await this._endSession(code === REPLACED ? "replaced" : "kicked", socketSession);
      return;
    }
    if (closeAction(code) === "stop") {
      this._want = false;
      this._events.emit("closed", { code, reason, willReconnect: false });
      this._rejectWaiter(new TicketgateError("disconnected", reason || `closed with ${code}`));
      this._setState("closed");
      return;
    }
    this._events.emit("closed", { code, reason, willReconnect: true });
    if (code === EXPIRED) this._events.emit("expired", { code, reason });
    this._schedule(code, null);
  }

  /**
   * Schedules the next attempt after a full-jitter backoff (at least `Retry-After`).
   * @param {number} code the close code that caused it (0: a failed attempt)
   * @param {number|null} retryAfter seconds
   */
  _schedule(code, retryAfter) {
    this._attempt += 1;
    let delayMs = backoffDelay(this._attempt, { ...this._backoff, random: this._random });
    if (retryAfter) delayMs = Math.max(delayMs, retryAfter * 1000);
    this._setState("reconnecting");
    this._events.emit("reconnecting", { attempt: this._attempt, delayMs, code });
    const generation = this._generation;
    const socketExp = this._socketExp;
    this._timer = this._setTimeout(async () => {
      this._timer = null;
      if (!this._want || generation !== this._generation) return;
      if (code === EXPIRED && !this._tokenOutlives(socketExp)) {
        // 4004: the socket's token expired; renew before the mint.
        try {
          await this.refresh();
        } catch (err) {
          if (!this._want || generation !== this._generation) return;
          this._connectFailed(asError(err));
          return;
        }
      }
      if (!this._want || generation !== this._generation) return;
      this._open();
    }, delayMs);
  }

  /**
   * @param {string} code
   * @param {string} message
   */
  _failPending(code, message) {
    for (const [id, pending] of this._pending) {
      this._pending.delete(id);
      this._clearTimeout(pending.timer);
      pending.reject(new TicketgateError(code, message));
    }
  }

  /** @param {unknown} err */
  _rejectWaiter(err) {
    const waiter = this._waiter;
    this._waiter = null;
    waiter?.reject(err);
  }
}

/**
 * @param {unknown} err
 * @returns {TicketgateError}
 */
function asError(err) {
  if (err instanceof TicketgateError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new TicketgateError("client_error", message, { cause: err });
}
