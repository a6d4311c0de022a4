// PROTOCOL §2: the canonical string and its signature, against the vectors file the
// Rust SDK reads too (client-sdk/vectors/signing.json: one file, both suites).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  base64urlDecode,
  base64urlEncode,
  bodyHash,
  canonical,
  importSigningKey,
  newNonce,
  sign,
  TicketgateError,
} from "../src/index.js";

const vectors = JSON.parse(readFileSync(new URL("../../vectors/signing.json", import.meta.url), "utf8")).vectors;

const parts = (v) => ({
  method: v.method,
  path: v.path,
  deviceId: v.device_id,
  timestamp: v.timestamp,
  nonce: v.nonce,
  body: v.body,
});

test("the vectors file is there and not empty", () => {
  assert.ok(vectors.length >= 6, `only ${vectors.length} vectors`);
});

for (const v of vectors) {
  test(`vector "${v.name}": canonical string and signature with raw key bytes`, async () => {
    assert.equal(await canonical(parts(v)), v.canonical);
    assert.equal(await sign(base64urlDecode(v.key_b64url), parts(v)), v.signature);
  });

  test(`vector "${v.name}": the same signature with a non-extractable CryptoKey`, async () => {
    const key = await importSigningKey(v.key_b64url);
    assert.equal(key.extractable, false);
    assert.deepEqual(key.usages, ["sign"]);
    assert.equal(await sign(key, parts(v)), v.signature);
  });
}

test("a non-extractable signing key cannot be read back", async () => {
  const key = await importSigningKey(vectors[0].key_b64url);
  await assert.rejects(crypto.subtle.exportKey("raw", key));
});

test("a different key, body, path or nonce changes the signature", async () => {
  const v = vectors[0];
  const key = base64urlDecode(v.key_b64url);
  const other = new Uint8Array(key);
  other[0] ^= 1;
  assert.notEqual(await sign(other, parts(v)), v.signature);
  assert.notEqual(await sign(key, { ...parts(v), body: "{ }" }), v.signature);
  assert.notEqual(await sign(key, { ...parts(v), path: "/v1/tickets/" }), v.signature);
  assert.notEqual(await sign(key, { ...parts(v), nonce: v.nonce + "x" }), v.signature);
});

test("canonical: the method is upper-cased, seven lines, no trailing newline", async () => {
  const c = await canonical({ method: "post", path: "/v1/tickets", deviceId: "d", timestamp: 1, nonce: "n", body: "" });
  assert.equal(c, "TG1-HMAC-SHA256\nPOST\n/v1/tickets\nd\n1\nn\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  assert.equal(c.split("\n").length, 7);
});

test("canonical: an absent, null and empty body hash alike; bytes and strings alike", async () => {
  const empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  assert.equal(await bodyHash(), empty);
  assert.equal(await bodyHash(null), empty);
  assert.equal(await bodyHash(""), empty);
  assert.equal(await bodyHash(new Uint8Array(0)), empty);
  const unicode = '{"refresh_token":"rt.ÄÖÜ-测试"}';
  assert.equal(await bodyHash(new TextEncoder().encode(unicode)), await bodyHash(unicode));
  assert.equal(await bodyHash(new TextEncoder().encode(unicode).buffer), await bodyHash(unicode));
  // The UTF-8 bytes are hashed, not UTF-16 code units.
  assert.notEqual(await bodyHash(unicode), await bodyHash("{\"refresh_token\":\"rt.AOU-ce\"}"));
});

test("canonical: a line break or control character in a header value is refused", async () => {
  const ok = { method: "POST", path: "/v1/tickets", deviceId: "d", timestamp: 1, nonce: "n", body: "" };
  for (const [field, value] of [
    ["deviceId", "d\nX"],
    ["nonce", "n\r"],
    ["path", "/v1/tickets\n/v1/logout"],
    ["method", "PO\u0000ST"],
  ]) {
    await assert.rejects(canonical({ ...ok, [field]: value }), (e) => e instanceof TicketgateError && e.code === "bad_request");
  }
  await assert.rejects(canonical({ ...ok, timestamp: 1.5 }), TicketgateError);
  await assert.rejects(canonical({ ...ok, timestamp: "1" }), TicketgateError);
  // The query string is not the signer's business, but it is kept as given: callers pass the path only.
  assert.match(await canonical({ ...ok, path: "/v1/qr/a.b/scan" }), /\n\/v1\/qr\/a\.b\/scan\n/);
});

test("nonces: 128 random bits as 22 base64url characters, never repeated", () => {
  const seen = new Set();
  for (let i = 0; i < 1000; i++) {
    const n = newNonce();
    assert.match(n, /^[A-Za-z0-9_-]{22}$/);
    assert.equal(base64urlDecode(n).length, 16);
    seen.add(n);
  }
  assert.equal(seen.size, 1000);
});

test("base64url: round trip, padding optional, bad input refused", () => {
  const bytes = new Uint8Array([0, 255, 251, 239, 190, 62, 63]);
  const text = base64urlEncode(bytes);
  assert.match(text, /^[A-Za-z0-9_-]+$/);
  assert.deepEqual(base64urlDecode(text), bytes);
  assert.deepEqual(base64urlDecode("AAE="), new Uint8Array([0, 1]));
  assert.throws(() => base64urlDecode("a+b/"), TicketgateError);
  assert.throws(() => base64urlDecode("A"), TicketgateError);
});
