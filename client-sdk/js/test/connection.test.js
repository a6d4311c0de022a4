// The managed socket: mint + subprotocol ticket, reconnect policy per close code,
// resume tickets, `since`, silent renewal, send/reply pairing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, memoryStore, TicketgateError } from "../src/index.js";
import { FakeServer, FakeTimers, fakeWebSocket, makeClient, settle, until } from "./fakes.js";

/** A logged-in client with an open socket (welcome received). */
async function connected({ since, random, storage = memoryStore() } = {}) {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const ws = fakeWebSocket();
  const client = makeClient(server, timers, { ws, storage, random });
  await client.login("alice", "pw");
  const events = [];
  for (const name of ["state", "welcome", "push", "recovered", "renewed", "kicked", "replaced", "expired", "closed", "reconnecting", "frame", "loggedOut", "error"]) {
    client.on(name, (payload) => events.push([name, payload]));
  }
  const welcome = client.connect(since === undefined ? {} : { since });
  await until(() => ws.sockets.length === 1, "the first socket");
  const sock = ws.sockets[0];
  accept(sock, server, timers);
  await welcome;
  return { timers, server, ws, client, sock, events, storage };
}

function accept(sock, server, timers, extra = {}) {
  sock.accept();
  sock.frame({
    type: "welcome",
    session_id: server.session.id,
    conn_id: `c${sock.ticket}`,
    user_id: "alice",
    device_id: sock.query.get("device_id"),
    expires_at: Math.floor(timers.now() / 1000) + 900,
    ...extra,
  });
}

const named = (events, name) => events.filter(([n]) => n === name).map(([, p]) => p);

test("connect mints with Bearer + signature and opens the socket with the ticket as a subprotocol", async () => {
  const { server, ws, client, sock, events } = await connected();
  const mint = server.requests.find((r) => r.path === "/v1/tickets");
  assert.match(mint.headers.authorization, /^Bearer ey/);
  assert.ok(await server.verify(mint), "the mint is signed over the path /v1/tickets");
  assert.equal(mint.bodyText, "{}");
  assert.deepEqual(sock.protocols, ["ticketgate.v1", "ticket.t1"]);
  const url = new URL(sock.url);
  assert.equal(url.origin + url.pathname, "wss://ws.example.test/v1/connect");
  assert.equal(url.searchParams.get("device_id"), mint.headers["x-tg-device"]);
  assert.equal(url.searchParams.has("since"), false);
  assert.equal(url.searchParams.has("ticket"), false, "the ticket never goes in the URL");
  assert.equal(client.state, "open");
  assert.deepEqual(named(events, "state").map((s) => s.state), ["connecting", "open"]);
  assert.equal(ws.sockets.length, 1);
});

test("connect({since}) asks for the replay and reports the welcome's recovery", async () => {
  const { client, events, sock } = await connected({ since: "p7" });
  assert.equal(sock.query.get("since"), "p7");
  // connected() sent a welcome without `recovered`: no recovered event for it.
  assert.deepEqual(named(events, "recovered"), []);
  assert.equal(client.lastPushId, "p7");
});

test("a welcome that says pushes were lost continues from its last_id", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const ws = fakeWebSocket();
  const client = makeClient(server, timers, { ws });
  await client.login("alice", "pw");
  const recovered = [];
  client.on("recovered", (e) => recovered.push(e));
  const p = client.connect({ since: "p1" });
  await until(() => ws.sockets.length === 1);
  accept(ws.sockets[0], server, timers, { recovered: false, last_id: "p9" });
  await p;
  assert.deepEqual(recovered, [{ recovered: false, since: "p1", lastId: "p9" }]);
  assert.equal(client.lastPushId, "p9");
});

test("after a network drop the client reconnects with since = the last push id seen", async () => {
  const { timers, server, ws, client, sock, events } = await connected();
  sock.frame({ type: "push", id: "p1", topic: "t", data: 1 });
  sock.frame({ type: "push", id: "p2", topic: "t", data: { n: 2 } });
  assert.deepEqual(named(events, "push").map((p) => p.id), ["p1", "p2"]);
  assert.equal(client.lastPushId, "p2");
  sock.serverClose(1006);
  assert.deepEqual(named(events, "closed").at(-1), { code: 1006, reason: "", willReconnect: true });
  assert.equal(client.state, "reconnecting");
  assert.equal(timers.fireNext(), true);
  await until(() => ws.sockets.length === 2, "the second socket");
  assert.equal(server.count("/v1/tickets"), 2, "a fresh ticket was minted");
  assert.equal(ws.sockets[1].ticket, "t2");
  assert.equal(ws.sockets[1].query.get("since"), "p2");
  accept(ws.sockets[1], server, timers, { recovered: true, last_id: "p2" });
  assert.deepEqual(named(events, "recovered"), [{ recovered: true, since: "p2", lastId: "p2" }]);
  assert.equal(client.state, "open");
});

test("1001 after a resume frame reconnects with the resume ticket and makes no mint call", async () => {
  const { timers, server, ws, sock, events } = await connected();
  sock.frame({ type: "push", id: "p5", topic: "t", data: null });
  sock.frame({ type: "resume", ticket: "resume-abc", expires_in: 30 });
  const resumeFrame = named(events, "frame").find((f) => f.type === "resume");
  assert.equal(resumeFrame.ticket, undefined, "listeners do not see the resume ticket");
  sock.serverClose(1001, "draining");
  timers.fireNext();
  await until(() => ws.sockets.length === 2, "the second socket");
  assert.equal(server.count("/v1/tickets"), 1, "no mint");
  assert.deepEqual(ws.sockets[1].protocols, ["ticketgate.v1", "ticket.resume-abc"]);
  assert.equal(ws.sockets[1].query.get("since"), "p5");
  assert.equal(new URL(ws.sockets[1].url).host, "ws.example.test", "the mint's ws_url is reused");

  // A resume ticket is single use: the next reconnect mints.
  ws.sockets[1].serverClose(1006);
  timers.fireNext();
  await until(() => ws.sockets.length === 3, "the third socket");
  assert.equal(server.count("/v1/tickets"), 2);
  assert.equal(ws.sockets[2].ticket, "t2");
});

test("an expired resume ticket is not used", async () => {
  const { timers, server, ws, sock } = await connected();
  sock.frame({ type: "resume", ticket: "resume-old", expires_in: 30 });
  timers.nowMs += 31_000;
  sock.serverClose(1001);
  timers.fireNext();
  await until(() => ws.sockets.length === 2);
  assert.equal(server.count("/v1/tickets"), 2);
  assert.equal(ws.sockets[1].ticket, "t2");
});

for (const [code, event] of [
  [4503, "kicked"],
  [4509, "replaced"],
]) {
  test(`${code} is terminal: a ${event} event, no reconnect, the stored session is gone`, async () => {
    const { timers, server, ws, client, sock, events, storage } = await connected();
    const mintsBefore = server.count("/v1/tickets");
    sock.serverClose(code, "by the operator");
    await until(() => named(events, "loggedOut").length === 1, "loggedOut");
    assert.deepEqual(named(events, event), [{ code, reason: "by the operator" }]);
    assert.deepEqual(named(events, "closed"), [{ code, reason: "by the operator", willReconnect: false }]);
    assert.deepEqual(named(events, "reconnecting"), []);
    assert.equal(timers.timers.size, 0, "no reconnect scheduled");
    await settle();
    assert.equal(ws.sockets.length, 1);
    assert.equal(server.count("/v1/tickets"), mintsBefore);
    assert.equal(client.state, "closed");
    assert.equal(client.session, null);
    assert.equal(await storage.get("session"), undefined);
  });
}

test("4509 because another tab of this origin logged in: carry on with that session", async () => {
  const storage = memoryStore();
  const { timers, server, ws, client, sock, events } = await connected({ storage });
  const other = makeClient(server, timers, { storage, ws });
  await other.login("alice", "pw");
  const newToken = (await storage.get("session")).accessToken;
  sock.serverClose(4509);
  await until(() => timers.timers.size === 1, "a reconnect is scheduled");
  assert.deepEqual(named(events, "replaced"), []);
  timers.fireNext();
  await until(() => ws.sockets.length === 2);
  assert.equal(server.requests.at(-1).headers.authorization, `Bearer ${newToken}`);
  assert.equal(client.session.sessionId, server.session.id);
});

test("4004 renews the access token first, then mints and reconnects", async () => {
  const { timers, server, ws, sock, events } = await connected();
  sock.serverClose(4004, "session expired");
  assert.deepEqual(named(events, "expired"), [{ code: 4004, reason: "session expired" }]);
  timers.fireNext();
  await until(() => ws.sockets.length === 2, "the second socket");
  const paths = server.requests.map((r) => r.path);
  assert.deepEqual(paths.slice(-2), ["/v1/token/refresh", "/v1/tickets"]);
  const token = server.requests.at(-1).headers.authorization;
  assert.notEqual(token, server.requests.find((r) => r.path === "/v1/tickets").headers.authorization);
});

test("expiring is answered with one refresh call and a refresh frame with the new token", async () => {
  const { timers, server, sock, storage, events } = await connected();
  const exp = Math.floor(timers.now() / 1000) + 900;
  sock.frame({ type: "expiring", expires_at: exp });
  await until(() => sock.sent.some((f) => f.type === "refresh"), "the refresh frame");
  assert.equal(server.count("/v1/token/refresh"), 1);
  const token = (await storage.get("session")).accessToken;
  assert.deepEqual(sock.sent, [{ type: "refresh", access_token: token }]);
  sock.frame({ type: "refreshed", expires_at: exp + 300 });
  assert.deepEqual(named(events, "renewed").map((e) => e.via), ["refresh"]);
});

for (const code of [4008, 4010, 1001, 1006, 1011, 1012, 1013]) {
  test(`close ${code} reconnects`, async () => {
    const { timers, ws, sock } = await connected();
    sock.serverClose(code);
    assert.equal(timers.fireNext(), true);
    await until(() => ws.sockets.length === 2);
  });
}

for (const code of [1000, 1008, 1009]) {
  test(`close ${code} does not reconnect`, async () => {
    const { timers, ws, client, sock, events } = await connected();
    sock.serverClose(code);
    assert.equal(timers.timers.size, 0);
    await settle();
    assert.equal(ws.sockets.length, 1);
    assert.equal(client.state, "closed");
    assert.equal(named(events, "closed")[0].willReconnect, false);
  });
}

test("failed attempts in a row wait longer each time, jittered by the injected random", async () => {
  const draws = [0.5, 0.25, 0.75, 0.5];
  const random = () => draws.shift();
  const { timers, ws, sock, events } = await connected({ random });
  const delays = [];
  let current = sock;
  for (let i = 0; i < 4; i++) {
    current.serverClose(1006);
    delays.push(...timers.delays());
    timers.fireNext();
    await until(() => ws.sockets.length === i + 2, `socket ${i + 2}`);
    current = ws.sockets[i + 1]; // never welcomed: the attempts count on
  }
  // ceilings 500, 1000, 2000, 4000 ms times the draws
  assert.deepEqual(delays, [250, 250, 1500, 2000]);
  assert.deepEqual(named(events, "reconnecting").map((e) => e.attempt), [1, 2, 3, 4]);
  assert.deepEqual(delays, [1, 2, 3, 4].map((a, i) => backoffDelay(a, { random: () => [0.5, 0.25, 0.75, 0.5][i] })));
});

test("a mint refused with 503 and Retry-After waits at least that long", async () => {
  const { timers, server, sock } = await connected({ random: () => 0 });
  server.handlers["/v1/tickets"] = (_req, srv) => srv.error(503, "store_unavailable", {}, { "Retry-After": "7" });
  sock.serverClose(1006);
  timers.fireNext();
  await until(() => server.count("/v1/tickets") === 2 && timers.timers.size === 1, "a second wait");
  assert.deepEqual(timers.delays(), [7000]);
});

test("a mint refused with token_revoked stops: connect rejects and nothing is retried", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const ws = fakeWebSocket();
  const client = makeClient(server, timers, { ws });
  await client.login("alice", "pw");
  server.session.revoked = true;
  await assert.rejects(client.connect(), (e) => e instanceof TicketgateError && ["token_revoked", "session_ended"].includes(e.code));
  assert.equal(timers.timers.size, 0);
  assert.equal(ws.sockets.length, 0);
  assert.equal(client.session, null);
});

test("send pairs replies by id, out of order", async () => {
  const { sock, client } = await connected();
  const first = client.send({ op: "a" });
  const second = client.send({ op: "b" });
  const [f1, f2] = sock.sent;
  assert.equal(f1.type, "send");
  assert.deepEqual(f1.data, { op: "a" });
  assert.match(f1.id, /^[A-Za-z0-9_-]{1,64}$/);
  assert.notEqual(f1.id, f2.id);
  sock.frame({ type: "reply", id: f2.id, data: "B" });
  sock.frame({ type: "reply", id: f1.id, data: "A" });
  assert.deepEqual(await Promise.all([first, second]), ["A", "B"]);
});

test("send rejects with the error frame's code", async () => {
  const { sock, client } = await connected();
  const call = client.send(1, { id: "req-1" });
  sock.frame({ type: "error", id: "req-1", error: "busy", message: "too many sends in flight" });
  await assert.rejects(call, (e) => e instanceof TicketgateError && e.code === "busy" && e.message === "too many sends in flight");
});

test("send times out, and a late reply is not mistaken for another call's", async () => {
  const { sock, client, timers, events } = await connected();
  const call = client.send("x", { id: "slow", timeoutMs: 1234 });
  assert.deepEqual(timers.delays(), [1234]);
  timers.fireNext();
  await assert.rejects(call, (e) => e.code === "timeout");
  sock.frame({ type: "reply", id: "slow", data: "late" });
  assert.deepEqual(named(events, "frame").at(-1), { type: "reply", id: "slow", data: "late" });
});

test("send rejects when the socket closes first, and when it is not open", async () => {
  const { sock, client, timers } = await connected();
  const call = client.send("x");
  sock.serverClose(1006);
  await assert.rejects(call, (e) => e.code === "disconnected");
  await assert.rejects(client.send("y"), (e) => e.code === "not_connected");
  timers.fireNext();
});

test("send refuses a malformed or duplicate id", async () => {
  const { client } = await connected();
  await assert.rejects(client.send(1, { id: "a b" }), (e) => e.code === "bad_request");
  const pending = client.send(1, { id: "dup" });
  await assert.rejects(client.send(2, { id: "dup" }), (e) => e.code === "bad_request");
  client.disconnect();
  await assert.rejects(pending, (e) => e.code === "disconnected");
});

test("disconnect closes with 1000 and never reconnects", async () => {
  const { client, sock, timers, ws, events } = await connected();
  client.disconnect();
  assert.deepEqual(sock.closedByClient, { code: 1000, reason: "client disconnect" });
  sock.serverClose(1000);
  assert.equal(timers.timers.size, 0);
  await settle();
  assert.equal(ws.sockets.length, 1);
  assert.equal(client.state, "closed");
  assert.deepEqual(named(events, "closed"), [{ code: 1000, reason: "", willReconnect: false }]);
});

test("ack and ping frames", async () => {
  const { client, sock } = await connected();
  client.ack("p1");
  client.ping();
  assert.deepEqual(sock.sent, [{ type: "ack", id: "p1" }, { type: "ping" }]);
});

test("a socket that stayed up 30 s resets the backoff; a short one does not", async () => {
  const { timers, ws, sock, server, events } = await connected({ random: () => 0.999999 });
  sock.serverClose(1006);
  timers.fireNext();
  await until(() => ws.sockets.length === 2);
  accept(ws.sockets[1], server, timers);
  ws.sockets[1].serverClose(1006); // up for no time: the failures are in a row
  timers.fireNext();
  await until(() => ws.sockets.length === 3);
  accept(ws.sockets[2], server, timers);
  timers.nowMs += 30_000;
  ws.sockets[2].serverClose(1006);
  assert.deepEqual(named(events, "reconnecting").map((e) => [e.attempt, e.delayMs]), [
    [1, 499],
    [2, 999],
    [1, 499],
  ]);
});
