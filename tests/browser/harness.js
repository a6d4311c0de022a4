// What every browser test needs: a ticketgate node of its own (the real binary, free
// ports, the embedded store, a temporary data dir and users file, an admin key) and
// Debian's Chromium driven by playwright-core. Nothing here downloads a browser.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
/** The repository's root. */
export const ROOT = resolve(here, "../..");
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(ROOT, process.env.CARGO_TARGET_DIR) : join(ROOT, "target");
/** The ticketgate binary under test (`TICKETGATE_BIN`, else the debug build). */
export const BIN = process.env.TICKETGATE_BIN ? resolve(process.env.TICKETGATE_BIN) : join(TARGET, "debug", "ticketgate");
/** Screenshots and other artifacts of a run. */
export const ARTIFACTS = join(TARGET, "browser-artifacts");
/** Debian's Chromium (`CHROMIUM`, else /usr/bin/chromium). */
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

export const PASSWORD = "correct horse battery staple";
export const ADMIN_KEY = "browser-test-admin-key-0123456789";

for (const [what, path, install] of [
  ["the ticketgate binary", BIN, "build it: cargo build (or set TICKETGATE_BIN)"],
  ["Chromium", CHROMIUM, "install it: apt-get install -y chromium"],
]) {
  if (!existsSync(path)) throw new Error(`${what} is missing at ${path}; ${install}`);
}

/** A free TCP port on 127.0.0.1. */
async function freePort() {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => ok(port));
    });
  });
}

const running = new Set();
// A test run that dies halfway still leaves no node behind.
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Starts a node. `env`: extra TICKETGATE_* settings. Resolves when /healthz answers.
 * @returns {Promise<{url: string, adminUrl: string, stop: () => Promise<void>, output: () => string}>}
 */
export async function startNode({ users = ["alice", "bob"], env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "tg-browser-"));
  const [port, adminPort] = [await freePort(), await freePort()];
  const settings = {
    TICKETGATE_LISTEN: `127.0.0.1:${port}`,
    TICKETGATE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    TICKETGATE_ADMIN_KEY: ADMIN_KEY,
    TICKETGATE_DATA_DIR: join(dir, "data"),
    TICKETGATE_USERS_FILE: join(dir, "users.toml"),
    TICKETGATE_STORE: "memory",
    TICKETGATE_NODE_ID: "browser-node",
    ...env,
  };
  const childEnv = { ...process.env, ...settings, RUST_LOG: "warn" };
  for (const user of users) {
    const added = spawnSync(BIN, ["user", "add", user, "--password-stdin"], {
      env: childEnv,
      input: `${PASSWORD}\n`,
      encoding: "utf8",
    });
    if (added.status !== 0) throw new Error(`ticketgate user add ${user} failed: ${added.stderr}`);
  }
  const child = spawn(BIN, ["serve"], { env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((ok) => child.once("exit", ok));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (running.delete(child)) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 20000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`ticketgate serve exited with ${child.exitCode}:\n${output}`);
    }
    try {
      if ((await fetch(`${url}/healthz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`ticketgate serve did not come up within 20 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, adminUrl: `http://127.0.0.1:${adminPort}`, stop, output: () => output };
}

/** Debian's Chromium, headless, kept off the network but for the node under test. */
export async function launchBrowser(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
      "--no-first-run",
      ...extraArgs,
    ],
  });
}

/**
 * Watches a page for console errors, uncaught exceptions and CSP violations.
 * `allowed`: answers (`{url, status}`) that the test expects to fail; Chromium logs
 * every HTTP error answer of a fetch as a console error, these are not counted.
 * @returns {string[]} the problems seen so far (a live array)
 */
export function watchProblems(page, name, allowed = () => false) {
  const problems = [];
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    // "Failed to load resource: the server responded with a status of 410 (Gone)", at the URL.
    const failed = /^Failed to load resource: the server responded with a status of (\d+)/.exec(msg.text());
    const at = msg.location()?.url;
    if (failed && at && allowed({ url: new URL(at), status: Number(failed[1]) })) return;
    problems.push(`${name} console: ${msg.text()}${failed ? ` (${at})` : ""}`);
  });
  page.on("pageerror", (err) => problems.push(`${name} exception: ${err.message}`));
  page.on("requestfailed", (req) => {
    // A socket closed by the server is not a failed request; anything else is.
    if (req.resourceType() !== "websocket") problems.push(`${name} request failed: ${req.url()} ${req.failure()?.errorText}`);
  });
  return problems;
}

/**
 * Saves a screenshot of `page` as `<ARTIFACTS>/<name>.png`; with `UPDATE_SCREENSHOTS=1`
 * also to `docsPath` in the repository (the README's pictures).
 */
export async function screenshot(page, name, docsPath) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  if (docsPath && process.env.UPDATE_SCREENSHOTS === "1") {
    await page.screenshot({ path: join(ROOT, docsPath), fullPage: true });
  }
  return path;
}

/** Opens /demo and waits until the page script has run. */
export async function openDemo(page, node) {
  await page.goto(`${node.url}/demo`);
  await page.waitForSelector("body[data-ready=true]");
}

/** Logs in on an open demo page and waits for the socket to be open. */
export async function demoLogin(page, user) {
  await page.fill("#username", user);
  await page.fill("#password", PASSWORD);
  await page.click("#login");
  await page.waitForSelector("#socket-state[data-state=open]");
}
