// @ts-check
import { TicketgateError } from "./errors.js";

const utf8 = new TextEncoder();

/**
 * UTF-8 bytes of a string; bytes pass through; null/undefined is the empty body.
 * @param {string|Uint8Array|ArrayBuffer|null|undefined} body
 * @returns {Uint8Array}
 */
export function toBytes(body) {
  if (body === null || body === undefined) return new Uint8Array(0);
  if (typeof body === "string") return utf8.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  throw new TicketgateError("bad_request", "a body is a string, a Uint8Array or an ArrayBuffer");
}

/**
 * Lowercase hex of bytes.
 * @param {ArrayBuffer|Uint8Array} bytes
 * @returns {string}
 */
export function hex(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let out = "";
  for (const b of view) out += b.toString(16).padStart(2, "0");
  return out;
}

/**
 * Encodes bytes as base64url without padding (RFC 4648 §5).
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function base64urlEncode(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * Decodes base64url, padding optional.
 * @param {string} text
 * @returns {Uint8Array}
 */
export function base64urlDecode(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*={0,2}$/.test(text) || text.replace(/=+$/, "").length % 4 === 1) {
    throw new TicketgateError("bad_request", "not base64url");
  }
  const b64 = text.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/**
 * The claims of a JWT, read without verifying it (the server verifies; the client only
 * reads `sub`, `iat` and `exp` for display and timing). Null when unreadable.
 * @param {string} token
 * @returns {Record<string, any>|null}
 */
export function jwtClaims(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    return JSON.parse(new TextDecoder().decode(base64urlDecode(parts[1])));
  } catch {
    return null;
  }
}
