// The type declarations describe what the package exports, no more and no less; the
// package.json points at both.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import * as api from "../src/index.js";

const dts = readFileSync(new URL("../index.d.ts", import.meta.url), "utf8");
const declared = [...dts.matchAll(/^export (?:declare )?(?:function|class|const) (\w+)/gm)].map((m) => m[1]);

test("index.d.ts declares exactly what src/index.js exports", () => {
  assert.deepEqual([...new Set(declared)].sort(), Object.keys(api).sort());
});

test("every Client method the declarations name exists", () => {
  const body = dts.slice(dts.indexOf("export class Client"));
  const methods = [...body.matchAll(/^  (\w+)(?:<[^>]*>)?\(/gm)].map((m) => m[1]).filter((m) => m !== "constructor");
  assert.ok(methods.length >= 12, `found ${methods.length}`);
  for (const m of methods) assert.equal(typeof api.Client.prototype[m], "function", `Client.${m}`);
});

test("package.json: ES module, entry and types as the browser loads them, no dependencies", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(pkg.name, "ticketgate-client");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.exports["."].default, "./src/index.js");
  assert.equal(pkg.types, "./index.d.ts");
  assert.equal(pkg.dependencies, undefined);
});

test("the sources import only relative ./x.js files (a browser loads the directory as-is)", () => {
  const files = readdirSync(new URL("../src/", import.meta.url)).filter((f) => f.endsWith(".js"));
  assert.ok(files.includes("index.js") && files.length >= 5);
  for (const file of files) {
    const text = readFileSync(new URL(`../src/${file}`, import.meta.url), "utf8");
    for (const m of text.matchAll(/^(?:import|export)[^;]*?from\s+"([^"]+)"/gm)) {
      assert.match(m[1], /^\.\/[a-z]+\.js$/, `${file} imports ${m[1]}`);
    }
  }
});
