// The signing vectors (client-sdk/vectors/signing.json, the file the Rust SDK and the
// client's Node tests read) computed inside Chromium by the client the node serves.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { launchBrowser, openDemo, ROOT, startNode, watchProblems } from "./harness.js";

let node;
let browser;

before(async () => {
  node = await startNode();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

test("every signing vector, with raw key bytes and with a non-extractable CryptoKey", async () => {
  const { vectors } = JSON.parse(readFileSync(join(ROOT, "client-sdk/vectors/signing.json"), "utf8"));
  assert.ok(vectors.length > 0);
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = watchProblems(page, "demo");
  try {
    await openDemo(page, node);
    const results = await page.evaluate(async (vectors) => {
      const client = await import("/demo/client/index.js");
      const out = [];
      for (const v of vectors) {
        const parts = { method: v.method, path: v.path, deviceId: v.device_id, timestamp: v.timestamp, nonce: v.nonce, body: v.body };
        const key = await client.importSigningKey(v.key_b64url);
        out.push({
          name: v.name,
          canonical: await client.canonical(parts),
          withBytes: await client.sign(client.base64urlDecode(v.key_b64url), parts),
          withKey: await client.sign(key, parts),
          extractable: key.extractable,
        });
      }
      return out;
    }, vectors);
    for (const [i, v] of vectors.entries()) {
      const r = results[i];
      assert.equal(r.canonical, v.canonical, `${v.name}: canonical`);
      assert.equal(r.withBytes, v.signature, `${v.name}: raw key`);
      assert.equal(r.withKey, v.signature, `${v.name}: CryptoKey`);
      assert.equal(r.extractable, false, `${v.name}: the key is not extractable`);
    }
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
