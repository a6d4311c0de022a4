// Test doubles for the browser APIs the client uses: fetch (a small fake ticketgate that
// checks signatures and rotates refresh cookies with reuse detection), WebSocket,
// BroadcastChannel, timers. Node 20 has crypto.subtle, fetch's Response and Headers.
import { base64urlEncode, sign, memoryStore, memoryLocks, Client } from "../src/index.js";

export const KEY_BYTES = new Uint8Array(32).map((_, i) => i + 1);
export const KEY_B64 = base64urlEncode(KEY_BYTES);
export const ORIGIN = "https://gw.example.test";
const T0 = 1_795_000_000_000;

/**
 * Resolves once `cond()` is true, letting pending promises and crypto run between
 * checks. Bounded by turns of the event loop, not by time.
 */
export async function until(cond, what = "condition") {
  for (let i = 0; i < 5000; i++) {
    if (cond()) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error(`never happened: ${what}`);
}

/** Lets everything that can run now run (a bounded number of event-loop turns). */
export async function settle() {
  for (let i = 0; i < 200; i++) await new Promise((r) => setImmediate(r));
}

/** An unsigned JWT-shaped token: the client reads sub/sid/iat/exp, never verifies. */
export function jwt(claims) {
  const enc = (o) => base64urlEncode(new TextEncoder().encode(JSON.stringify(o)));
  return `${enc({ alg: "EdDSA", typ: "JWT" })}.${enc(claims)}.c2ln`;
}

/** Manual timers and clock: nothing fires until the test says so. */
export class FakeTimers {
  constructor(now = T0) {
    this.nowMs = now;
    this.seq = 0;
    this.timers = new Map();
    this.now = () => this.nowMs;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      this.timers.set(id, { fn, ms, at: this.nowMs + ms });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** The pending timers' delays, in the order they were set. */
  delays() {
    return [...this.timers.values()].map((t) => t.ms);
  }

  /** Runs the earliest pending timer (advancing the clock to it); false when none. */
  fireNext() {
    let best = null;
    for (const [id, t] of this.timers) if (!best || t.at < best[1].at) best = [id, t];
    if (!best) return false;
    this.timers.delete(best[0]);
    this.nowMs = Math.max(this.nowMs, best[1].at);
    best[1].fn();
    return true;
  }
}

/** BroadcastChannel stand-in: delivers to every other channel of the hub, asynchronously. */
export class ChannelHub {
  constructor() {
    this.channels = new Set();
    this.factory = (name) => {
      const hub = this;
      const ch = {
        name,
        onmessage: null,
        postMessage(data) {
          const copy = structuredClone(data);
          for (const other of hub.channels) {
            if (other !== ch && other.name === name) setImmediate(() => other.onmessage?.({ data: copy }));
          }
        },
        close() {
          hub.channels.delete(ch);
        },
      };
      this.channels.add(ch);
      return ch;
    };
  }
}

/** A fake WebSocket class whose instances the test drives as the server. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeSocket {
    static OPEN = 1;
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedByClient = null;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }
    // server side
    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }
    frame(obj) {
      this.onmessage?.({ data: JSON.stringify(obj) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    get ticket() {
      const p = this.protocols.find((x) => x.startsWith("ticket."));
      return p ? p.slice("ticket.".length) : null;
    }
    get query() {
      return new URL(this.url).searchParams;
    }
  }
  return { WebSocket: FakeSocket, sockets };
}

/**
 * A fake ticketgate behind fetch. It verifies X-TG-* signatures with KEY_BYTES, issues
 * access tokens, keeps the web refresh token in a cookie jar shared by every client
 * using this server (the tabs of one browser), rotates it on refresh and revokes the
 * session when a token that is no longer current is presented (reuse detection).
 */
export class FakeServer {
  constructor(timers, { cookieMode = true } = {}) {
    this.timers = timers;
    this.cookieMode = cookieMode;
    this.requests = [];
    this.jar = new Map();
    this.seq = 0;
    this.session = null;
    this.handlers = {};
    /** Every refresh token ever issued, to look for in the client's storage. */
    this.issued = [];
    this.tickets = 0;
    this.accessTtl = 900;
    this.fetch = (url, init) => this.handle(url, init);
  }

  count(path) {
    return this.requests.filter((r) => r.path === path).length;
  }

  nowSec() {
    return Math.floor(this.timers.now() / 1000);
  }

  access() {
    const iat = this.nowSec(); // tokens of one second differ by their jti
    return jwt({ sub: "alice", sid: this.session.id, iat, exp: iat + this.accessTtl, jti: `j${++this.seq}` });
  }

  newRefresh() {
    this.session.refresh = `${this.session.id}.r${++this.seq}`;
    this.issued.push(this.session.refresh);
    return this.session.refresh;
  }

  loginAnswer(inCookie) {
    const refresh = this.newRefresh();
    const body = {
      access_token: this.access(),
      signing_key: KEY_B64,
      session_id: this.session.id,
      access_expires_in: this.accessTtl,
      refresh_expires_in: 86400,
    };
    const headers = { "Content-Type": "application/json", "Cache-Control": "no-store" };
    if (inCookie) this.jar.set("tg_refresh", refresh);
    else body.refresh_token = refresh;
    return { status: 200, body, headers };
  }

  async verify(req) {
    const h = req.headers;
    const sig = await sign(KEY_BYTES, {
      method: req.method,
      path: req.path,
      deviceId: h["x-tg-device"],
      timestamp: Number(h["x-tg-timestamp"]),
      nonce: h["x-tg-nonce"],
      body: req.bodyText,
    });
    return sig === h["x-tg-signature"] && /^[A-Za-z0-9_-]{22,64}$/.test(h["x-tg-nonce"]);
  }

  async handle(url, init) {
    const u = new URL(url);
    const headers = Object.fromEntries(Object.entries(init.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
    const req = {
      url,
      path: u.pathname,
      method: init.method,
      headers,
      credentials: init.credentials,
      bodyText: init.body,
      body: init.body ? JSON.parse(init.body) : null,
      cookie: init.credentials === "include" ? this.jar.get("tg_refresh") : undefined,
    };
    this.requests.push(req);
    // A turn of the event loop between reading the cookie and answering, as on a network.
    await new Promise((r) => setImmediate(r));
    const custom = this.handlers[req.path] ?? this.handlers["*"];
    let out = custom ? await custom(req, this) : undefined;
    if (out === undefined) out = await this.route(req);
    const h = new Headers(out.headers ?? { "Content-Type": "application/json" });
    return new Response(out.status === 204 ? null : JSON.stringify(out.body ?? {}), { status: out.status, headers: h });
  }

  error(status, code, extra = {}, headers = {}) {
    return { status, body: { error: code, message: code, ...extra }, headers: { "Content-Type": "application/json", ...headers } };
  }

  async route(req) {
    switch (req.path) {
      case "/v1/login": {
        this.session = { id: `s${++this.seq}`, revoked: false, device: req.body.device_id };
        return this.loginAnswer(this.cookieMode && req.body.refresh_in_cookie === true && req.body.client_type === "web");
      }
      case "/v1/token/refresh": {
        if (!(await this.verify(req))) return this.error(401, "bad_signature");
        const presented = req.body.refresh_token ?? req.cookie;
        if (!presented) return this.error(400, "bad_request");
        if (this.session.revoked) return this.error(401, "refresh_reused");
        if (presented !== this.session.refresh) {
          this.session.revoked = true;
          return this.error(401, "refresh_reused");
        }
        return this.loginAnswer(req.body.refresh_in_cookie === true || req.body.refresh_token === undefined);
      }
      case "/v1/tickets": {
        if (!(await this.verify(req))) return this.error(401, "bad_signature");
        if (this.session.revoked) return this.error(401, "token_revoked");
        return { status: 201, body: { ticket: `t${++this.tickets}`, expires_in: 30, ws_url: "wss://ws.example.test/v1/connect" } };
      }
      case "/v1/logout": {
        if (!(await this.verify(req))) return this.error(401, "bad_signature");
        this.session.revoked = true;
        this.jar.delete("tg_refresh");
        return { status: 204 };
      }
      default:
        return this.error(404, "not_found");
    }
  }
}

/** A client wired to the fakes. `shared` holds what tabs of one origin share. */
export function makeClient(server, timers, shared = {}, extra = {}) {
  return new Client({
    baseUrl: ORIGIN,
    clientType: "web",
    fetch: server.fetch,
    WebSocket: shared.ws?.WebSocket,
    storage: shared.storage ?? memoryStore(),
    locks: shared.locks ?? memoryLocks(),
    channel: shared.hub ? shared.hub.factory : null,
    now: timers.now,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: shared.random ?? (() => 0.5),
    ...extra,
  });
}
