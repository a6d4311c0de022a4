// @ts-check
/**
 * ticketgate-client: the browser (and Node) client of ticketgate.
 * Types: ../index.d.ts. Protocol: PROTOCOL.md §2-§5, §8 "Browsers", §9-§11.
 */
export { Client, REFRESH_LOCK, CHANNEL_NAME } from "./client.js";
export { TicketgateError } from "./errors.js";
export { canonical, sign, importSigningKey, newNonce, bodyHash, SCHEME } from "./signing.js";
export { base64urlDecode, base64urlEncode } from "./encoding.js";
export { closeAction, backoffDelay, isSendId } from "./policy.js";
export { qrPayload, qrIdOfPayload, QR_PAYLOAD_PREFIX } from "./qr.js";
export { memoryStore, indexedDbStore } from "./storage.js";
export { memoryLocks } from "./locks.js";
