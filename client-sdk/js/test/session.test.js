// Sessions: login in cookie mode, the stored key, renewals (X-New-Token, refresh), and
// tabs of one origin sharing one session with one refresh at a time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { memoryLocks, memoryStore, TicketgateError } from "../src/index.js";
import { ChannelHub, FakeServer, FakeTimers, fakeWebSocket, jwt, makeClient, until } from "./fakes.js";

/** A memory store that remembers every value ever written to it. */
function recordingStore() {
  const inner = memoryStore();
  const written = [];
  return {
    written,
    get: (k) => inner.get(k),
    set: (k, v) => {
      written.push([k, v]);
      return inner.set(k, v);
    },
    delete: (k) => inner.delete(k),
  };
}

/** Every string reachable from `value` (own enumerable properties). */
function strings(value, out = []) {
  if (typeof value === "string") out.push(value);
  else if (value && typeof value === "object") for (const v of Object.values(value)) strings(v, out);
  return out;
}

function assertNoRefreshTokenStored(store, server) {
  assert.ok(server.issued.length > 0, "the server issued refresh tokens");
  for (const [key, value] of store.written) {
    const found = strings(value).filter((s) => server.issued.some((t) => s.includes(t)));
    assert.deepEqual(found, [], `a refresh token was written under ${key}`);
    assert.ok(!(value && typeof value === "object" && "refreshToken" in value), `refreshToken under ${key}`);
  }
}

test("web login asks for the cookie, sends credentials, and stores no refresh token", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const storage = recordingStore();
  const client = makeClient(server, timers, { storage });
  const info = await client.login("alice", "pw");

  const [login] = server.requests;
  assert.equal(login.path, "/v1/login");
  assert.equal(login.credentials, "include");
  assert.equal(login.body.refresh_in_cookie, true);
  assert.equal(login.body.client_type, "web");
  assert.match(login.body.device_id, /^[0-9a-f-]{36}$/);
  assert.equal(server.jar.get("tg_refresh"), server.session.refresh, "the refresh token went into the cookie");
  assert.equal(info.userId, "alice");
  assert.equal(info.sessionId, server.session.id);
  assert.equal(info.deviceId, login.body.device_id);
  assert.ok(!JSON.stringify(info).includes("eyJ"), "the public session info holds no token");
  assertNoRefreshTokenStored(storage, server);

  const stored = await storage.get("session");
  assert.equal(stored.key.extractable, false, "the stored signing key is non-extractable");
  assert.equal(stored.key.algorithm.name, "HMAC");
  await assert.rejects(crypto.subtle.exportKey("raw", stored.key));
  assert.equal(typeof stored.accessToken, "string");
  assert.equal(await storage.get("device_id"), login.body.device_id);
});

test("a web refresh token that comes in a body is moved into the cookie, never stored", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers, { cookieMode: false }); // login answers put it in the body
  const storage = recordingStore();
  const client = makeClient(server, timers, { storage });
  await client.login("alice", "pw");

  assert.equal(server.count("/v1/token/refresh"), 1);
  const refresh = server.requests.find((r) => r.path === "/v1/token/refresh");
  assert.equal(refresh.body.refresh_token, server.issued[0]);
  assert.equal(refresh.body.refresh_in_cookie, true);
  assert.equal(server.jar.get("tg_refresh"), server.session.refresh);
  assertNoRefreshTokenStored(storage, server);

  // The next refresh uses the cookie, not a body token.
  await client.refresh();
  const last = server.requests.at(-1);
  assert.equal(last.body.refresh_token, undefined);
  assert.equal(last.cookie, server.issued[1]);
  assert.equal(server.session.revoked, false);
});

test("refresh is signed with the session's key (no Bearer) and renews the stored access token", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const storage = recordingStore();
  const client = makeClient(server, timers, { storage });
  await client.login("alice", "pw");
  const before = (await storage.get("session")).accessToken;
  const renewed = [];
  client.on("renewed", (e) => renewed.push(e));
  await client.refresh();
  const req = server.requests.at(-1);
  assert.equal(req.path, "/v1/token/refresh");
  assert.equal(req.headers.authorization, undefined);
  assert.ok(await server.verify(req), "signature verifies");
  assert.equal(req.credentials, "include");
  const after = (await storage.get("session")).accessToken;
  assert.notEqual(after, before);
  assert.deepEqual(renewed.map((e) => e.via), ["refresh"]);
  assertNoRefreshTokenStored(storage, server);
});

/** Two tabs of one origin: one store, one lock manager, one channel hub. */
async function twoTabs(locks = memoryLocks()) {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const shared = { storage: memoryStore(), locks, hub: new ChannelHub(), ws: fakeWebSocket() };
  const a = makeClient(server, timers, shared);
  const b = makeClient(server, timers, shared);
  await a.login("alice", "pw");
  assert.equal(await b.restore(), true);
  return { timers, server, shared, a, b };
}

test("two tabs refreshing at once make exactly one refresh call and share its token", async () => {
  const { server, shared, a, b } = await twoTabs();
  const viaB = [];
  b.on("renewed", (e) => viaB.push(e.via));
  await Promise.all([a.refresh(), b.refresh(), a.refresh(), b.refresh()]);
  assert.equal(server.count("/v1/token/refresh"), 1);
  assert.equal(server.session.revoked, false, "no reuse detected");
  const token = (await shared.storage.get("session")).accessToken;
  // Both tabs mint with the one new token.
  await a.mintTicket();
  await b.mintTicket();
  const mints = server.requests.filter((r) => r.path === "/v1/tickets");
  assert.deepEqual(mints.map((r) => r.headers.authorization), [`Bearer ${token}`, `Bearer ${token}`]);
  assert.ok(viaB.includes("other-tab"));
});

test("without a shared lock the same race trips reuse detection (what the lock prevents)", async () => {
  const noLock = { request: (_name, cb) => cb() };
  const { server, a, b } = await twoTabs(noLock);
  const results = await Promise.allSettled([a.refresh(), b.refresh()]);
  assert.equal(server.count("/v1/token/refresh"), 2);
  assert.equal(server.session.revoked, true);
  assert.ok(results.some((r) => r.status === "rejected" && r.reason.code === "refresh_reused"));
});

test("a tab whose socket is open sends another tab's renewed token in a refresh frame", async () => {
  const { timers, server, shared, a, b } = await twoTabs();
  const connecting = b.connect();
  await until(() => shared.ws.sockets.length === 1, "b's socket");
  const sock = shared.ws.sockets[0];
  sock.accept();
  sock.frame({ type: "welcome", session_id: server.session.id, conn_id: "c1", user_id: "alice", device_id: "d", expires_at: Math.floor(timers.now() / 1000) + 900 });
  await connecting;

  await a.refresh();
  await until(() => sock.sent.some((f) => f.type === "refresh"), "b's refresh frame");
  const token = (await shared.storage.get("session")).accessToken;
  assert.deepEqual(sock.sent.filter((f) => f.type === "refresh"), [{ type: "refresh", access_token: token }]);

  // b's socket then says it is expiring (it was admitted with the old token): b sends the
  // token it has, without a refresh call of its own.
  const refreshesBefore = server.count("/v1/token/refresh");
  sock.frame({ type: "expiring", expires_at: Math.floor(timers.now() / 1000) + 900 - 1 });
  await until(() => sock.sent.filter((f) => f.type === "refresh").length === 2, "b answers expiring");
  assert.equal(server.count("/v1/token/refresh"), refreshesBefore);
});

test("X-New-Token on a Bearer answer is adopted, stored, announced", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const storage = memoryStore();
  const client = makeClient(server, timers, { storage });
  await client.login("alice", "pw");
  const fresh = jwt({ sub: "alice", sid: server.session.id, iat: 100, exp: 1000 });
  server.handlers["/v1/tickets"] = async (req, srv) => {
    if (srv.count("/v1/tickets") === 1) {
      return { status: 201, body: { ticket: "t1", expires_in: 30, ws_url: "" }, headers: { "Content-Type": "application/json", "X-New-Token": fresh } };
    }
    return undefined;
  };
  const renewed = [];
  client.on("renewed", (e) => renewed.push(e));
  const minted = await client.mintTicket();
  assert.equal(minted.wsUrl, "wss://gw.example.test/v1/connect", "ws_url derived from baseUrl when absent");
  assert.equal((await storage.get("session")).accessToken, fresh);
  assert.deepEqual(renewed, [{ accessExpiresAt: timers.now() + 900_000, via: "x-new-token" }]);
  await client.mintTicket();
  assert.equal(server.requests.at(-1).headers.authorization, `Bearer ${fresh}`);
});

test("an expired access token is renewed before a Bearer call", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const client = makeClient(server, timers);
  await client.login("alice", "pw");
  timers.nowMs += 901_000;
  await client.mintTicket();
  assert.deepEqual(server.requests.map((r) => r.path), ["/v1/login", "/v1/token/refresh", "/v1/tickets"]);
});

test("a refresh the server refuses as reused ends the session in every tab", async () => {
  const { server, shared, a, b } = await twoTabs();
  server.session.revoked = true;
  const ended = [];
  b.on("loggedOut", (e) => ended.push(e.reason));
  await assert.rejects(a.refresh(), (e) => e instanceof TicketgateError && e.code === "refresh_reused");
  assert.equal(a.session, null);
  assert.equal(await shared.storage.get("session"), undefined);
  await until(() => ended.length === 1, "b hears of it");
  assert.equal(b.session, null);
});

test("logout is Bearer + signed, clears the store and ends the session in the other tab", async () => {
  const { server, shared, a, b } = await twoTabs();
  const ended = [];
  b.on("loggedOut", (e) => ended.push(e));
  await a.logout();
  const req = server.requests.at(-1);
  assert.equal(req.path, "/v1/logout");
  assert.match(req.headers.authorization, /^Bearer /);
  assert.ok(await server.verify(req));
  assert.equal(server.jar.has("tg_refresh"), false);
  assert.equal(await shared.storage.get("session"), undefined);
  assert.equal(a.session, null);
  await until(() => ended.length === 1, "b hears of it");
  assert.equal(b.session, null);
  await assert.rejects(b.refresh(), (e) => e.code === "not_logged_in");
});

test("tabs opened together agree on one device id", async () => {
  const storage = memoryStore();
  const locks = memoryLocks();
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const clients = [1, 2, 3].map(() => makeClient(server, timers, { storage, locks }));
  const ids = await Promise.all(clients.map((c) => c.deviceId()));
  assert.equal(new Set(ids).size, 1);
  assert.match(ids[0], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(await storage.get("device_id"), ids[0]);
});

test("a mobile client keeps its refresh token in its own store and sends it in the body", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const storage = memoryStore();
  const client = makeClient(server, timers, { storage }, { clientType: "mobile" });
  await client.login("alice", "pw");
  assert.equal(server.requests[0].body.refresh_in_cookie, undefined);
  assert.equal((await storage.get("session")).refreshToken, server.issued[0]);
  await client.refresh();
  assert.equal(server.requests.at(-1).body.refresh_token, server.issued[0]);
  assert.equal((await storage.get("session")).refreshToken, server.issued[1]);
});

test("a store that refuses every call still lets the page log in and refresh", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const refusing = {
    get: async () => {
      throw new Error("IndexedDB refused");
    },
    set: async () => {
      throw new Error("IndexedDB refused");
    },
    delete: async () => {
      throw new Error("IndexedDB refused");
    },
  };
  const client = makeClient(server, timers, { storage: refusing });
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const info = await client.login("alice", "pw");
  assert.match(info.deviceId, /^[0-9a-f-]{36}$/);
  await client.refresh();
  assert.equal(server.count("/v1/token/refresh"), 1);
  assert.equal(server.session.revoked, false);
  assert.ok(errors.includes("storage"));
});

test("a login in one tab gives the other tabs that session", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const shared = { storage: memoryStore(), locks: memoryLocks(), hub: new ChannelHub() };
  const a = makeClient(server, timers, shared);
  const b = makeClient(server, timers, shared);
  assert.equal(await b.restore(), false);
  await a.login("alice", "pw");
  await until(() => b.session !== null, "b adopts the session");
  assert.equal(b.session.sessionId, a.session.sessionId);
  await b.mintTicket();
  assert.equal(server.count("/v1/login"), 1);
});
