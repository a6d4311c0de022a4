// QR-code login, login_this, between two browsers: a browser without a session shows
// a code (the server's SVG), a logged-in browser approves it, and the first one is then
// logged in with a session and a socket of its own.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { demoLogin, launchBrowser, openDemo, screenshot, startNode, watchProblems } from "./harness.js";

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

test("login_this: a phone's browser approves the code another browser shows", async () => {
  const pcContext = await browser.newContext();
  const phoneContext = await browser.newContext();
  const pc = await pcContext.newPage();
  const phone = await phoneContext.newPage();
  const pcProblems = watchProblems(pc, "pc");
  const phoneProblems = watchProblems(phone, "phone");
  try {
    await openDemo(phone, node);
    await demoLogin(phone, "bob");
    const phoneSession = await phone.textContent("#session-id");

    await openDemo(pc, node);
    await pc.click("#qr-this-start");
    await pc.waitForFunction(() => document.querySelector("#qr-this-id").textContent.length > 0);
    const qrId = await pc.textContent("#qr-this-id");
    // The server's SVG is shown (same origin, allowed by the policy).
    await pc.waitForFunction(() => {
      const img = document.querySelector("#qr-this-img");
      return img.complete && img.naturalWidth > 0;
    });
    assert.match(await pc.getAttribute("#qr-this-img", "src"), new RegExp(`/v1/qr/${qrId}/qr\\.svg$`));
    await screenshot(pc, "qr-pc-code");

    await phone.fill("#approve-id", qrId);
    await phone.click("#approve-scan");
    await phone.waitForSelector("#approve-confirm:not([disabled])");
    assert.match(await phone.textContent("#approve-state"), /a web login from 127\.0\.0\.1/);
    await phone.click("#approve-confirm");
    await phone.waitForFunction(() => document.querySelector("#approve-state").textContent === "approved");

    await pc.waitForSelector("#socket-state[data-state=open]");
    assert.match(await pc.textContent("#session-user"), /^bob \(web\)/);
    const pcSession = await pc.textContent("#session-id");
    assert.notEqual(pcSession, phoneSession, "the PC has a session of its own");
    await screenshot(pc, "qr-pc-logged-in");
    // Different client types would both live; two web logins of one user: the newer
    // replaces the older (one session per user and client type), and that is shown.
    await phone.waitForSelector("#kicked:not([hidden])");
    assert.equal(await phone.textContent("#kicked-code"), "4509");
    assert.deepEqual([...pcProblems, ...phoneProblems], []);
  } finally {
    await pcContext.close();
    await phoneContext.close();
  }
});

test("login_other: a logged-in browser shows a code, a new browser logs in with it once approved", async () => {
  const pcContext = await browser.newContext();
  const phoneContext = await browser.newContext();
  const pc = await pcContext.newPage();
  const phone = await phoneContext.newPage();
  // The showing browser polls its QR until it learns the end: once the phone has
  // redeemed it, that poll is answered 410 (the QR is gone), which the client takes
  // as done. Chromium logs the 410 as a console error; it is the only one allowed.
  const redeemed = ({ url, status }) => status === 410 && /^\/v1\/qr\/[^/]+\/poll$/.test(url.pathname);
  const pcProblems = watchProblems(pc, "pc", redeemed);
  const phoneProblems = watchProblems(phone, "phone");
  try {
    await openDemo(pc, node);
    await demoLogin(pc, "alice");
    await pc.click("#other-start");
    await pc.waitForFunction(() => document.querySelector("#other-id").textContent.length > 0);
    const qrId = await pc.textContent("#other-id");
    await pc.waitForFunction(() => {
      const img = document.querySelector("#other-img");
      return img.complete && img.naturalWidth > 0;
    });

    await openDemo(phone, node);
    await phone.fill("#qr-with-id", qrId);
    await phone.click("#qr-with");
    // The PC learns of the scan and approves it; only then is the phone let in.
    await pc.waitForSelector("#other-confirm:not([disabled])");
    assert.match(await pc.textContent("#other-state"), /scanned from 127\.0\.0\.1/);
    assert.equal(await phone.textContent("#session-user"), "not logged in");
    await pc.click("#other-confirm");
    await phone.waitForSelector("#socket-state[data-state=open]");
    assert.match(await phone.textContent("#session-user"), /^alice \(web\)/);
    assert.notEqual(await phone.textContent("#session-id"), await pc.textContent("#session-id"));
    await screenshot(phone, "qr-other-phone");
    assert.deepEqual([...pcProblems, ...phoneProblems], []);
  } finally {
    await pcContext.close();
    await phoneContext.close();
  }
});
