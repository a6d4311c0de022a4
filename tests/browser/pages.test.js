// /demo and /admin/ in Chromium: log in, a push published from the admin page arrives,
// a kick from the admin page shows on the demo page; the admin page's key handling;
// no console error or CSP violation on either page.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { ADMIN_KEY, PASSWORD, demoLogin, launchBrowser, openDemo, screenshot, startNode, watchProblems } from "./harness.js";

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

async function openAdmin(context, key) {
  const page = await context.newPage();
  const problems = watchProblems(page, "admin");
  await page.goto(`${node.adminUrl}/admin/`);
  await page.waitForSelector("#key-form");
  await page.fill("#admin-key", key);
  await page.click("#key-submit");
  return { page, problems };
}

test("a push from the admin page arrives on /demo, and a kick from it shows there", async () => {
  const demoContext = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const adminContext = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const demo = await demoContext.newPage();
  const demoProblems = watchProblems(demo, "demo");
  try {
    await openDemo(demo, node);
    assert.equal(await demo.isHidden("#no-crypto"), true, "WebCrypto is there on 127.0.0.1");
    await demoLogin(demo, "alice");
    assert.match(await demo.textContent("#session-user"), /^alice \(web\)/);
    assert.match(await demo.textContent("#countdown"), /^\d+ s$/);

    const { page: admin, problems: adminProblems } = await openAdmin(adminContext, ADMIN_KEY);
    await admin.waitForSelector("#dashboard:not([hidden])");
    // The key is kept for this tab only.
    assert.equal(await admin.evaluate(() => sessionStorage.getItem("ticketgate-admin-key")), ADMIN_KEY);
    assert.equal(await admin.evaluate(() => localStorage.length), 0);
    // The live connection shows up, with the node's metrics.
    await admin.waitForSelector("#users tr[data-user=alice]");
    assert.equal(await admin.textContent("#conn-total"), "1");
    await admin.waitForFunction(() => document.querySelector('[data-metric="Sockets open"] .value')?.textContent === "1");
    await admin.waitForSelector("#keys tr[data-kid]");

    await admin.fill("#pub-user", "alice");
    await admin.fill("#pub-topic", "news");
    await admin.fill("#pub-data", '{"text": "hello from the admin page"}');
    await admin.click("#publish");
    await admin.waitForFunction(() => /delivered to 1 socket/.test(document.querySelector("#publish-result").textContent));
    await demo.waitForSelector("#pushes li.push");
    assert.match(await demo.textContent("#pushes li.push"), /news.*hello from the admin page/);
    await screenshot(admin, "admin", "docs/img/admin.png");

    // No upstream is configured: a send is answered, with upstream_unavailable.
    await demo.fill("#send-data", '{"ask": "anything"}');
    await demo.click("#send");
    await demo.waitForFunction(() => /upstream_unavailable/.test(document.querySelector("#reply").textContent));

    await admin.fill("#action-user", "alice");
    await admin.fill("#action-reason", "maintenance window");
    await admin.click("#kick");
    await demo.waitForSelector("#kicked:not([hidden])");
    assert.equal(await demo.textContent("#kicked-code"), "4503");
    assert.equal(await demo.textContent("#kicked-reason"), "maintenance window");
    await demo.waitForSelector("#socket-state[data-state=closed]");
    await admin.waitForFunction(() => /"connections":1/.test(document.querySelector("#action-result").textContent));
    await screenshot(demo, "demo", "docs/img/demo.png");

    assert.deepEqual(demoProblems, []);
    assert.deepEqual(adminProblems, []);
  } finally {
    await screenshot(demo, "demo-last").catch(() => {});
    await demoContext.close();
    await adminContext.close();
  }
});

test("the admin page asks for the key again after a 401 and keeps nothing", async () => {
  const context = await browser.newContext();
  try {
    const { page } = await openAdmin(context, "not-the-admin-key-at-all");
    await page.waitForSelector("#key-error:not([hidden])");
    assert.match(await page.textContent("#key-error"), /401/);
    assert.equal(await page.isHidden("#dashboard"), true);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("ticketgate-admin-key")), null);
    // The right key then works, in the same tab.
    await page.fill("#admin-key", ADMIN_KEY);
    await page.click("#key-submit");
    await page.waitForSelector("#dashboard:not([hidden])");
    await page.waitForFunction(() => document.querySelector("#conn-total").textContent !== "-");
    // "Forget the key" forgets it.
    await page.click("#forget-key");
    assert.equal(await page.evaluate(() => sessionStorage.getItem("ticketgate-admin-key")), null);
    assert.equal(await page.isVisible("#key-form"), true);
  } finally {
    await context.close();
  }
});

test("block from the admin page stops a login on /demo until unblocked", async () => {
  const adminContext = await browser.newContext();
  const demoContext = await browser.newContext();
  try {
    const { page: admin, problems } = await openAdmin(adminContext, ADMIN_KEY);
    await admin.waitForSelector("#dashboard:not([hidden])");
    await admin.fill("#action-user", "bob");
    await admin.click("#block");
    await admin.waitForFunction(() => /"blocked":true/.test(document.querySelector("#action-result").textContent));
    const demo = await demoContext.newPage();
    await openDemo(demo, node);
    await demo.fill("#username", "bob");
    await demo.fill("#password", PASSWORD);
    await demo.click("#login");
    await demo.waitForSelector("#login-error:not([hidden])");
    assert.match(await demo.textContent("#login-error"), /bad_credentials/);
    await admin.click("#unblock");
    await admin.waitForFunction(() => /"blocked":false/.test(document.querySelector("#action-result").textContent));
    await demoLogin(demo, "bob");
    assert.deepEqual(problems, []);
  } finally {
    await adminContext.close();
    await demoContext.close();
  }
});

test("a wrong password is shown on /demo and nothing is stored", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await openDemo(page, node);
    await page.fill("#username", "alice");
    await page.fill("#password", "not the password");
    await page.click("#login");
    await page.waitForSelector("#login-error:not([hidden])");
    assert.match(await page.textContent("#login-error"), /bad_credentials/);
    assert.equal(await page.textContent("#session-user"), "not logged in");
    assert.equal(await page.evaluate(() => localStorage.length), 0);
  } finally {
    await context.close();
  }
});

test("over plain http on a host that is not local, /demo says WebCrypto is missing", async () => {
  // A name that is not localhost, resolved to the node: not a secure context.
  const port = new URL(node.url).port;
  const insecure = await launchBrowser(["--host-resolver-rules=MAP tg-demo.test 127.0.0.1"]);
  try {
    const page = await insecure.newPage();
    const problems = watchProblems(page, "insecure demo");
    await page.goto(`http://tg-demo.test:${port}/demo`);
    await page.waitForSelector("body[data-ready=true]");
    assert.equal(await page.evaluate(() => isSecureContext), false);
    assert.equal(await page.isVisible("#no-crypto"), true);
    assert.match(await page.textContent("#no-crypto"), /HTTPS/);
    assert.equal(await page.isDisabled("#login"), true);
    assert.deepEqual(problems, []);
  } finally {
    await insecure.close();
  }
});

test("Chromium enforces the pages' policy: an inline script is refused, and reported", async () => {
  const context = await browser.newContext();
  try {
    for (const [name, url] of [["demo", `${node.url}/demo`], ["admin", `${node.adminUrl}/admin/`]]) {
      const page = await context.newPage();
      const problems = watchProblems(page, name);
      await page.goto(url);
      // What an injected <script> would do: the policy must stop it from running.
      const ran = await page.evaluate(async () => {
        const violation = new Promise((ok) => document.addEventListener("securitypolicyviolation", (e) => ok(e.violatedDirective), { once: true }));
        const script = document.createElement("script");
        script.textContent = "window.__injected = true";
        document.body.append(script);
        return { injected: window.__injected === true, directive: await violation };
      });
      assert.equal(ran.injected, false, `${name}: an inline script ran`);
      assert.match(ran.directive, /^script-src/, name);
      // The same violation is what the other tests' console watch would report.
      assert.ok(problems.some((p) => /Content Security Policy/.test(p)), `${name}: ${problems}`);
    }
  } finally {
    await context.close();
  }
});
