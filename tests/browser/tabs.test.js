// Two tabs of one browser share one session: through an access-token expiry they make
// exactly one POST /v1/token/refresh between them (no reuse detection tripped), both
// sockets are renewed in place (no 4004 close), and neither tab is kicked.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { demoLogin, launchBrowser, openDemo, screenshot, startNode, watchProblems } from "./harness.js";

/** Access tokens live this long; the renewal window is 30 % of it (6 s). */
const ACCESS_TTL_S = 20;

let node;
let browser;

before(async () => {
  node = await startNode({ env: { TICKETGATE_ACCESS_TTL: `${ACCESS_TTL_S}s` } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

test("two tabs through an access-token expiry: one refresh, both sockets renewed, nobody kicked", async () => {
  const context = await browser.newContext();
  const refreshes = [];
  context.on("request", (req) => {
    if (new URL(req.url()).pathname === "/v1/token/refresh") refreshes.push(Date.now());
  });
  const first = await context.newPage();
  const second = await context.newPage();
  const firstProblems = watchProblems(first, "tab 1");
  const secondProblems = watchProblems(second, "tab 2");
  try {
    await openDemo(first, node);
    await demoLogin(first, "alice");
    const expiresAt = Number(await first.getAttribute("#countdown", "data-expires-at"));
    assert.ok(expiresAt > Date.now(), "an access token that has not expired yet");
    // The second tab adopts the stored session and opens a socket of its own.
    await openDemo(second, node);
    await second.waitForSelector("#socket-state[data-state=open]");
    assert.equal(await second.textContent("#session-id"), await first.textContent("#session-id"));

    // Both tabs renew, and the first token's expiry passes.
    for (const tab of [first, second]) {
      await tab.waitForFunction(() => Number(document.querySelector("#renewals").textContent) >= 1, null, {
        timeout: ACCESS_TTL_S * 1000 + 5000,
      });
    }
    const past = expiresAt + 1500;
    if (past > Date.now()) await first.waitForTimeout(past - Date.now());

    // The renewed token is renewed again some seconds later (another single refresh):
    // count the calls up to the first token's expiry only.
    const uptoExpiry = refreshes.filter((at) => at <= past);
    assert.equal(uptoExpiry.length, 1, `refresh calls up to the expiry: ${uptoExpiry.length}`);
    for (const [name, tab] of [["tab 1", first], ["tab 2", second]]) {
      assert.equal(await tab.getAttribute("#socket-state", "data-state"), "open", name);
      assert.equal(await tab.isHidden("#kicked"), true, `${name} was not kicked`);
      const log = await tab.textContent("#log");
      assert.doesNotMatch(log, /socket closed/, `${name}: the socket stayed open: ${log}`);
      assert.ok(Number(await tab.getAttribute("#countdown", "data-expires-at")) > expiresAt, `${name} holds the new token`);
    }
    assert.match(await second.textContent("#renewal-last"), /another tab|this tab/);
    await screenshot(first, "tabs-first");
    await screenshot(second, "tabs-second");
    assert.deepEqual([...firstProblems, ...secondProblems], []);
  } finally {
    await context.close();
  }
});
