// The pure decisions: close codes and the backoff (mirrors the Rust SDK's close_action
// and backoff_delay).
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, closeAction, isSendId, qrIdOfPayload, qrPayload } from "../src/index.js";

test("close codes: 4000-4499, 1001, 1005, 1006, 1011-1014 reconnect; 4500-4999 and the rest stop", () => {
  for (const code of [4000, 4004, 4008, 4010, 4499, 1001, 1005, 1006, 1011, 1012, 1013, 1014]) {
    assert.equal(closeAction(code), "reconnect", `code ${code}`);
  }
  for (const code of [4500, 4503, 4509, 4999, 1000, 1002, 1003, 1007, 1008, 1009, 1010, 1015, 3000, 5000]) {
    assert.equal(closeAction(code), "stop", `code ${code}`);
  }
});

test("backoff: the ceiling doubles per attempt from the base and stops at the cap", () => {
  const top = () => 0.999999;
  const opts = { baseMs: 100, capMs: 1000, random: top };
  assert.equal(backoffDelay(1, opts), 99);
  assert.equal(backoffDelay(2, opts), 199);
  assert.equal(backoffDelay(3, opts), 399);
  assert.equal(backoffDelay(4, opts), 799);
  assert.equal(backoffDelay(5, opts), 999);
  assert.equal(backoffDelay(60, opts), 999);
  assert.equal(backoffDelay(0, opts), 99, "attempt 0 counts as 1");
});

test("backoff: full jitter, uniform over [0, ceiling]", () => {
  const at = (r) => backoffDelay(4, { baseMs: 100, capMs: 10000, random: () => r });
  assert.equal(at(0), 0);
  assert.equal(at(0.25), 200);
  assert.equal(at(0.5), 400);
  // Different random draws give different delays: a crowd spreads out.
  const delays = new Set([0.1, 0.2, 0.3, 0.4, 0.6, 0.7].map(at));
  assert.equal(delays.size, 6);
});

test("backoff: defaults are 500 ms doubling to 30 s", () => {
  assert.equal(backoffDelay(1, { random: () => 0.999999 }), 499);
  assert.equal(backoffDelay(20, { random: () => 0.999999 }), 29999);
});

test("send ids: 1-64 characters of [A-Za-z0-9_-]", () => {
  assert.ok(isSendId("a"));
  assert.ok(isSendId("req-17_A"));
  assert.ok(isSendId("x".repeat(64)));
  assert.ok(!isSendId(""));
  assert.ok(!isSendId("x".repeat(65)));
  assert.ok(!isSendId("a b"));
  assert.ok(!isSendId("a.b"));
  assert.ok(!isSendId(/** @type {any} */ (7)));
});

test("QR payloads: ticketgate://qr/<id> both ways", () => {
  assert.equal(qrPayload("abc.def"), "ticketgate://qr/abc.def");
  assert.equal(qrIdOfPayload("ticketgate://qr/abc.def"), "abc.def");
  assert.equal(qrIdOfPayload("ticketgate://qr/"), null);
  assert.equal(qrIdOfPayload("https://example.com"), null);
});
