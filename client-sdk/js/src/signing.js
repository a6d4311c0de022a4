// @ts-check
/**
 * Request signing (PROTOCOL §2) with WebCrypto: the canonical string, its HMAC-SHA256,
 * nonces. Runs unchanged in browsers and in Node 20 (both have `crypto.subtle`).
 *
 * ```text
 * TG1-HMAC-SHA256
 * <METHOD>
 * <path, no query>
 * <device_id>
 * <timestamp>
 * <nonce>
 * <lowercase hex SHA-256 of the raw body>
 * ```
 */
import { base64urlDecode, base64urlEncode, hex, toBytes } from "./encoding.js";
import { TicketgateError } from "./errors.js";

/** The first line of the canonical string: the scheme and its version. */
export const SCHEME = "TG1-HMAC-SHA256";

/** @typedef {{method: string, path: string, deviceId: string, timestamp: number, nonce: string, body?: string|Uint8Array|ArrayBuffer|null}} SignedParts */

/**
 * Lowercase hex SHA-256 of a body (of the empty string when absent).
 * @param {string|Uint8Array|ArrayBuffer|null} [body]
 * @returns {Promise<string>}
 */
export async function bodyHash(body) {
  return hex(await crypto.subtle.digest("SHA-256", toBytes(body)));
}

/**
 * The canonical string: seven lines joined by `\n`, no trailing newline. A value holding
 * a line break would make the string ambiguous (and the server refuses such headers),
 * so it is refused here.
 * @param {SignedParts} parts
 * @returns {Promise<string>}
 */
export async function canonical(parts) {
  const { method, path, deviceId, timestamp, nonce, body } = parts;
  if (!Number.isSafeInteger(timestamp)) {
    throw new TicketgateError("bad_request", "timestamp must be an integer (unix seconds)");
  }
  for (const [name, value] of [["method", method], ["path", path], ["deviceId", deviceId], ["nonce", nonce]]) {
    if (typeof value !== "string" || /[\u0000-\u001f\u007f]/.test(value)) {
      throw new TicketgateError("bad_request", `${name} must be a string without control characters`);
    }
  }
  return [SCHEME, method.toUpperCase(), path, deviceId, String(timestamp), nonce, await bodyHash(body)].join("\n");
}

/**
 * True for a WebCrypto key (duck-typed: CryptoKey is not a global in every runtime).
 * @param {unknown} key
 * @returns {key is CryptoKey}
 */
function isCryptoKey(key) {
  return typeof key === "object" && key !== null && "algorithm" in key && "usages" in key && "type" in key;
}

/**
 * Imports a base64url `signing_key` (login/refresh answer) as a non-extractable
 * HMAC-SHA256 key that can only sign: script on the page can use it, never read it.
 * @param {string} keyB64url
 * @returns {Promise<CryptoKey>}
 */
export async function importSigningKey(keyB64url) {
  return importRawKey(base64urlDecode(keyB64url));
}

/**
 * @param {Uint8Array} bytes
 * @returns {Promise<CryptoKey>}
 */
function importRawKey(bytes) {
  return crypto.subtle.importKey("raw", bytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

/**
 * The `X-TG-Signature` value: lowercase hex HMAC-SHA256 of the canonical string.
 * @param {Uint8Array|ArrayBuffer|CryptoKey} key raw key bytes or an HMAC CryptoKey
 * @param {SignedParts} parts
 * @returns {Promise<string>}
 */
export async function sign(key, parts) {
  const cryptoKey = isCryptoKey(key) ? key : await importRawKey(toBytes(/** @type {any} */ (key)));
  const text = await canonical(parts);
  return hex(await crypto.subtle.sign("HMAC", cryptoKey, new TextEncoder().encode(text)));
}

/**
 * A fresh nonce: 128 random bits from crypto.getRandomValues, base64url (22 chars).
 * @returns {string}
 */
export function newNonce() {
  return base64urlEncode(crypto.getRandomValues(new Uint8Array(16)));
}
