// QR-code login, both directions (PROTOCOL §5): polling pace, rotation, slow_down,
// who signs what.
import { test } from "node:test";
import assert from "node:assert/strict";
import { memoryStore, TicketgateError } from "../src/index.js";
import { FakeServer, FakeTimers, ORIGIN, makeClient, settle, until } from "./fakes.js";

/**
 * A fake server whose QR routes answer from a script: `polls` is the list of answers to
 * successive polls, each a function (req, server) => response.
 */
function qrServer(polls) {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  const queue = [...polls];
  server.handlers["*"] = async (req, srv) => {
    if (req.path === "/v1/qr") {
      return { status: 201, body: { qr_id: "q1", poll_secret: "ps-1", mode: req.body.mode ?? "login_this", expires_in: 120, rotate_in: 60 } };
    }
    if (/^\/v1\/qr\/[^/]+\/poll$/.test(req.path)) {
      const next = queue.shift();
      if (!next) throw new Error("polled more often than scripted");
      return next(req, srv);
    }
    return undefined;
  };
  return { timers, server };
}

const ok = (body) => () => ({ status: 200, body });
const loginAnswer = (req, srv) => {
  srv.session = { id: "s-qr", revoked: false };
  const answer = srv.loginAnswer(false); // a QR poll answers with the refresh token in the body
  answer.body.state = "confirmed";
  return answer;
};

/** Fires the poll timers one by one until `done` settles; returns the delays waited. */
async function drive(timers, done) {
  const delays = [];
  let settled = false;
  done.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 50 && !settled; i++) {
    await until(() => settled || timers.timers.size > 0, "a poll timer or the end");
    if (settled) break;
    delays.push(...timers.delays());
    timers.fireNext();
  }
  return delays;
}

test("loginThis polls every 2 s, honours slow_down, follows rotation, and adopts the session", async () => {
  const { timers, server } = qrServer([
    ok({ state: "pending" }),
    (_r, srv) => srv.error(429, "slow_down", {}, { "Retry-After": "5" }),
    (_r, srv) => srv.error(410, "qr_expired", { next_qr_id: "q2", expires_in: 60, rotate_in: 60 }),
    ok({ state: "scanned" }),
    loginAnswer,
  ]);
  const storage = memoryStore();
  const client = makeClient(server, timers, { storage });
  const codes = [];
  const states = [];
  const pending = await client.qr.loginThis({ onCode: (c) => codes.push(c), onState: (s) => states.push(s.state) });

  const create = server.requests[0];
  assert.equal(create.path, "/v1/qr");
  assert.equal(create.headers.authorization, undefined, "login_this is created without a session");
  assert.deepEqual(create.body, { mode: "login_this", device_id: await client.deviceId(), client_type: "web" });

  const delays = await drive(timers, pending.done);
  const info = await pending.done;
  assert.deepEqual(delays, [2000, 2000, 5000, 2000, 2000], "2 s apart, 5 s after slow_down");
  const polls = server.requests.filter((r) => r.path.endsWith("/poll"));
  assert.deepEqual(polls.map((r) => r.path.split("/")[3]), ["q1", "q1", "q1", "q2", "q2"]);
  for (const p of polls) {
    assert.equal(p.body.poll_secret, "ps-1", "rotation keeps the poll secret");
    assert.equal(p.body.device_id, await client.deviceId());
    assert.equal(p.body.client_type, "web");
  }
  assert.deepEqual(
    codes.map((c) => [c.qrId, c.svgUrl, c.payload]),
    [
      ["q1", `${ORIGIN}/v1/qr/q1/qr.svg`, "ticketgate://qr/q1"],
      ["q2", `${ORIGIN}/v1/qr/q2/qr.svg`, "ticketgate://qr/q2"],
    ],
  );
  assert.equal(pending.qrId, "q2");
  assert.deepEqual(states, ["pending", "scanned"]);
  assert.equal(info.sessionId, "s-qr");
  assert.equal(client.session.sessionId, "s-qr");

  // The refresh token came in the poll's body: one refresh moved it into the cookie.
  const refresh = server.requests.find((r) => r.path === "/v1/token/refresh");
  assert.equal(refresh.body.refresh_token, server.issued[0]);
  assert.equal(refresh.body.refresh_in_cookie, true);
  assert.equal(server.jar.get("tg_refresh"), server.session.refresh);
  const stored = await storage.get("session");
  assert.ok(!JSON.stringify(stored).includes(server.issued[0]) && !JSON.stringify(stored).includes(server.issued[1]));
});

test("slow_down without Retry-After still waits the poll interval", async () => {
  const { timers, server } = qrServer([(_r, srv) => srv.error(429, "slow_down"), loginAnswer]);
  const client = makeClient(server, timers);
  const pending = await client.qr.loginThis();
  assert.deepEqual(await drive(timers, pending.done), [2000, 2000]);
  await pending.done;
});

test("a QR that expires without a successor ends the flow with qr_expired", async () => {
  const { timers, server } = qrServer([ok({ state: "pending" }), (_r, srv) => srv.error(410, "qr_expired")]);
  const client = makeClient(server, timers);
  const pending = await client.qr.loginThis();
  await drive(timers, pending.done);
  await assert.rejects(pending.done, (e) => e instanceof TicketgateError && e.code === "qr_expired" && e.status === 410);
  assert.equal(timers.timers.size, 0, "no further poll");
});

test("cancel stops polling", async () => {
  const { timers, server } = qrServer([ok({ state: "pending" })]);
  const client = makeClient(server, timers);
  const pending = await client.qr.loginThis();
  await until(() => timers.timers.size === 1);
  pending.cancel();
  await assert.rejects(pending.done, (e) => e.code === "cancelled");
  assert.equal(timers.timers.size, 0);
  await settle();
  assert.equal(server.requests.filter((r) => r.path.endsWith("/poll")).length, 0);
});

test("a logged-in phone scans and confirms with Bearer + signed calls", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  server.handlers["*"] = (req) => {
    if (req.path === "/v1/qr/q1.abc/scan") return { status: 200, body: { state: "scanned", mode: "login_this", client_type: "web", ip: "198.51.100.7", created_at: 1795000000 } };
    if (req.path === "/v1/qr/q1.abc/confirm") return { status: 200, body: { state: "confirmed" } };
    return undefined;
  };
  const phone = makeClient(server, timers, {}, { clientType: "mobile" });
  await phone.login("alice", "pw");
  const info = await phone.qr.scan("ticketgate://qr/q1.abc");
  assert.deepEqual(info, { state: "scanned", mode: "login_this", client_type: "web", ip: "198.51.100.7", created_at: 1795000000 });
  await phone.qr.confirm("q1.abc");
  for (const req of server.requests.slice(-2)) {
    assert.match(req.headers.authorization, /^Bearer /);
    assert.ok(await server.verify(req), `${req.path} is signed over its own path`);
  }
});

test("showLoginOther: Bearer + signed create, onScanned once with who scanned, done after confirm", async () => {
  const { timers, server } = qrServer([
    ok({ state: "pending" }),
    ok({ state: "scanned", scanner: { ip: "203.0.113.9", scanned_at: 1795000100 } }),
    ok({ state: "scanned", scanner: { ip: "203.0.113.9", scanned_at: 1795000100 } }),
    // The phone redeemed right after the confirmation: the QR is gone.
    (_r, srv) => srv.error(410, "qr_expired"),
  ]);
  const pc = makeClient(server, timers);
  await pc.login("alice", "pw");
  const sessionBefore = pc.session;
  server.handlers["/v1/qr/q1/confirm"] = () => ({ status: 200, body: { state: "confirmed" } });
  const scanned = [];
  const shown = await pc.qr.showLoginOther({ onScanned: (i) => scanned.push(i) });
  const create = server.requests.find((r) => r.path === "/v1/qr");
  assert.deepEqual(create.body, { mode: "login_other" });
  assert.ok(await server.verify(create));
  assert.match(create.headers.authorization, /^Bearer /);

  // Poll until scanned, then confirm.
  for (let i = 0; i < 2; i++) {
    await until(() => timers.timers.size === 1);
    timers.fireNext();
  }
  await until(() => scanned.length === 1, "onScanned");
  assert.deepEqual(scanned, [{ ip: "203.0.113.9", scannedAt: 1795000100 }]);
  await pc.qr.confirm(shown.qrId);
  await drive(timers, shown.done);
  await shown.done;
  assert.equal(scanned.length, 1);
  const polls = server.requests.filter((r) => r.path.endsWith("/poll"));
  assert.equal(polls[0].body.device_id, sessionBefore.deviceId);
  assert.equal(pc.session.sessionId, sessionBefore.sessionId, "the showing PC keeps its own session");
});

test("showLoginOther: a QR that expires without being confirmed here ends with qr_expired", async () => {
  const { timers, server } = qrServer([(_r, srv) => srv.error(410, "qr_expired")]);
  const pc = makeClient(server, timers);
  await pc.login("alice", "pw");
  const shown = await pc.qr.showLoginOther();
  await drive(timers, shown.done);
  await assert.rejects(shown.done, (e) => e.code === "qr_expired");
});

test("loginWith: the new phone scans without a session, polls with its secret and device, gets a session", async () => {
  const { timers, server } = qrServer([ok({ state: "scanned" }), loginAnswer]);
  server.handlers["/v1/qr/q9/scan"] = () => ({
    status: 200,
    body: { state: "scanned", mode: "login_other", client_type: "web", ip: "192.0.2.1", created_at: 1795000000, poll_secret: "phone-secret" },
  });
  const phone = makeClient(server, timers, {}, { clientType: "mobile" });
  const scans = [];
  const done = phone.qr.loginWith("ticketgate://qr/q9", { onScan: (i) => scans.push(i) });
  await drive(timers, done);
  const info = await done;
  const scan = server.requests.find((r) => r.path === "/v1/qr/q9/scan");
  assert.equal(scan.headers.authorization, undefined);
  assert.equal(scan.headers["x-tg-signature"], undefined);
  assert.deepEqual(scans, [{ state: "scanned", mode: "login_other", client_type: "web", ip: "192.0.2.1", created_at: 1795000000 }]);
  const polls = server.requests.filter((r) => r.path === "/v1/qr/q9/poll");
  assert.equal(polls.length, 2);
  for (const p of polls) {
    assert.deepEqual(p.body, { poll_secret: "phone-secret", device_id: await phone.deviceId(), client_type: "mobile" });
  }
  assert.equal(info.sessionId, "s-qr");
  assert.equal(phone.session.clientType, "mobile");
});

test("loginWith refuses a login_this code (no poll secret in the scan answer)", async () => {
  const timers = new FakeTimers();
  const server = new FakeServer(timers);
  server.handlers["/v1/qr/q1/scan"] = (_r, srv) => srv.error(401, "token_invalid");
  const phone = makeClient(server, timers);
  await assert.rejects(phone.qr.loginWith("q1"), (e) => e.code === "token_invalid");
});
