// Type declarations of `ticketgate-client`, the browser (and Node) client of ticketgate.
// The code is plain ES modules in ./src (no build step); these declarations describe it.
// Contract: PROTOCOL.md §2-§5, §8 "Browsers", §9-§11.

/** The client type of a session: `web` (refresh token in an HttpOnly cookie) or `mobile`. */
export type ClientType = "web" | "mobile";

/** The connection state, as reported by the `state` event. */
export type ConnectionState = "offline" | "connecting" | "open" | "reconnecting" | "closed";

/** An error of the protocol or of this client. */
export class TicketgateError extends Error {
  constructor(code: string, message: string, options?: { status?: number; retryAfter?: number | null; cause?: unknown });
  /**
   * The protocol's error code (`bad_credentials`, `token_revoked`, `slow_down`, `busy`,
   * `upstream_unavailable`, an upstream's own code, ...) or one of this client's:
   * `timeout` (no reply in time), `disconnected` (the socket closed before the reply),
   * `not_connected`, `not_logged_in`, `session_ended`, `network` (fetch failed),
   * `bad_answer` (the server's answer could not be read), `cancelled`, `kicked` /
   * `replaced` (a `connect()` ended by 4503 / 4509 before its welcome), `storage`
   * (IndexedDB refused a write), `client_error` (anything else).
   */
  readonly code: string;
  /** The HTTP status, or 0 when the error did not come from an HTTP answer. */
  readonly status: number;
  /** Seconds from a `Retry-After` header, or null. */
  readonly retryAfter: number | null;
  /** The error answer's whole JSON body when there was one (e.g. a rotated QR's `next_qr_id`). */
  readonly body?: unknown;
}

/** The first line of the canonical string: `TG1-HMAC-SHA256`. */
export const SCHEME: string;
/** The Web Lock every tab of an origin takes around a refresh: `ticketgate-refresh`. */
export const REFRESH_LOCK: string;
/** The BroadcastChannel on which tabs announce renewals, logins and logouts: `ticketgate`. */
export const CHANNEL_NAME: string;
/** The prefix of a ticketgate QR code's text: `ticketgate://qr/`. */
export const QR_PAYLOAD_PREFIX: string;

/** The signed parts of a request (PROTOCOL §2). */
export interface SignedParts {
  /** HTTP method; upper-cased in the canonical string. */
  method: string;
  /** The request path without its query string, e.g. `/v1/tickets`. */
  path: string;
  /** The `X-TG-Device` value. */
  deviceId: string;
  /** The `X-TG-Timestamp` value, unix seconds. */
  timestamp: number;
  /** The `X-TG-Nonce` value. */
  nonce: string;
  /** The raw request body: a string (UTF-8 encoded), bytes, or absent (the empty body). */
  body?: string | Uint8Array | ArrayBuffer | null;
}

/** The canonical string of a request: seven lines joined by `\n`, no trailing newline. */
export function canonical(parts: SignedParts): Promise<string>;

/**
 * The `X-TG-Signature` of a request: lowercase hex HMAC-SHA256 of the canonical string.
 * `key`: the raw key bytes, or a CryptoKey (HMAC, SHA-256, usage `sign`) as made by
 * {@link importSigningKey}.
 */
export function sign(key: Uint8Array | ArrayBuffer | CryptoKey, parts: SignedParts): Promise<string>;

/** Imports a base64url `signing_key` as a non-extractable HMAC-SHA256 CryptoKey (usage `sign`). */
export function importSigningKey(keyB64url: string): Promise<CryptoKey>;

/** A fresh nonce: 128 random bits (crypto.getRandomValues), base64url without padding (22 chars). */
export function newNonce(): string;

/** Lowercase hex SHA-256 of a body (of the empty string when absent). */
export function bodyHash(body?: string | Uint8Array | ArrayBuffer | null): Promise<string>;

/** Decodes base64url (padding optional). Throws TicketgateError `bad_request` on bad input. */
export function base64urlDecode(text: string): Uint8Array;

/** Encodes bytes as base64url without padding. */
export function base64urlEncode(bytes: Uint8Array): string;

/** What to do after a socket closed with `code`: reconnect (by itself) or stop. */
export function closeAction(code: number): "reconnect" | "stop";

/**
 * Full-jitter backoff: uniform in [0, min(capMs, baseMs * 2^(attempt-1))] milliseconds.
 * `random` returns a number in [0, 1) (default Math.random).
 */
export function backoffDelay(attempt: number, options?: { baseMs?: number; capMs?: number; random?: () => number }): number;

/** True when `id` is a well-formed `send` id: 1-64 characters of `[A-Za-z0-9_-]`. */
export function isSendId(id: string): boolean;

/** The QR code's text for a `qr_id`: `ticketgate://qr/<qr_id>`. */
export function qrPayload(qrId: string): string;

/** The `qr_id` of a scanned QR code's text, or null when it is not a ticketgate QR. */
export function qrIdOfPayload(text: string): string | null;

/**
 * Where the client keeps its device id and session: an IndexedDB-like key/value store
 * whose values may be CryptoKeys (structured clone). The default in a browser is
 * {@link indexedDbStore}; elsewhere {@link memoryStore}.
 */
export interface KeyValueStore {
  get(key: string): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
}

/** A KeyValueStore in IndexedDB (database `name`, default `ticketgate`, one object store). */
export function indexedDbStore(name?: string): KeyValueStore;

/** A KeyValueStore in memory (for Node and tests); share one object between clients to share a session. */
export function memoryStore(): KeyValueStore;

/** The part of `navigator.locks` the client uses. */
export interface LockManagerLike {
  request<T>(name: string, callback: (lock: unknown) => Promise<T> | T): Promise<T>;
}

/** An in-process exclusive lock manager (the fallback where Web Locks is absent). */
export function memoryLocks(): LockManagerLike;

/** The part of BroadcastChannel the client uses. */
export interface ChannelLike {
  postMessage(message: unknown): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  close(): void;
}

/** Options of a {@link Client}. Everything but `baseUrl` and `clientType` is for tests and non-browser runtimes. */
export interface ClientOptions {
  /** The gateway's base URL. Default: `location.origin` in a browser. */
  baseUrl?: string;
  /** `web` (default in a browser: refresh token in the HttpOnly cookie) or `mobile`. */
  clientType?: ClientType;
  /** fetch implementation (default globalThis.fetch). Called with `credentials: "include"`. */
  fetch?: typeof fetch;
  /** WebSocket constructor (default globalThis.WebSocket). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Where the device id and session live (default: IndexedDB when present, else memory). */
  storage?: KeyValueStore;
  /** Lock manager (default navigator.locks, else an in-process mutex). */
  locks?: LockManagerLike;
  /** Channel factory (default `name => new BroadcastChannel(name)` when present). */
  channel?: ((name: string) => ChannelLike) | null;
  /** Random numbers in [0, 1) for the backoff jitter (default Math.random). */
  random?: () => number;
  /** Milliseconds since the epoch (default Date.now). */
  now?: () => number;
  /** Timer functions (default the global ones). */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  /** First reconnect waits up to this long (ms, default 500); doubles per failure in a row. */
  backoffBaseMs?: number;
  /** Longest reconnect wait (ms, default 30000). */
  backoffCapMs?: number;
  /** Default `send` timeout (ms, default 10000). */
  sendTimeoutMs?: number;
  /** Shortest interval between two QR polls (ms, default 2000). */
  qrPollIntervalMs?: number;
}

/** What the client knows about its session (never a token or key). */
export interface SessionInfo {
  sessionId: string;
  userId: string;
  deviceId: string;
  clientType: ClientType;
  /** When the current access token expires, ms since the epoch. */
  accessExpiresAt: number;
}

/** `welcome`: the first frame of every socket (PROTOCOL §4, §10). */
export interface WelcomeFrame {
  type: "welcome";
  session_id: string;
  conn_id: string;
  user_id: string;
  device_id: string;
  /** Unix seconds when the socket closes with 4004 unless renewed. */
  expires_at: number;
  /** Present when connected with `since`. */
  recovered?: boolean;
  /** Present when connected with `since`: the newest id of the user's history. */
  last_id?: string | null;
}

/** `push`: a message for this user or device. */
export interface PushFrame {
  type: "push";
  id: string;
  topic: string;
  data: unknown;
}

/** The events a Client emits, with their payloads. */
export interface ClientEvents {
  state: { state: ConnectionState };
  welcome: WelcomeFrame;
  push: PushFrame;
  /**
   * Right after a welcome that answered `since` (PROTOCOL §10). `recovered` false: some
   * pushes after `since` were lost (resynchronise from your own service); the client then
   * continues from `lastId`. `since`: what this socket asked from; `lastId`: the newest
   * id of the user's history. The replayed pushes follow as `push` events.
   */
  recovered: { recovered: boolean; since: string | null; lastId: string | null };
  /** A new access token: from a refresh, an `X-New-Token` header, or another tab. */
  renewed: { accessExpiresAt: number; via: "refresh" | "x-new-token" | "other-tab" };
  /** Closed with 4503: kicked, logged out, blocked or revoked. Terminal. */
  kicked: { code: 4503; reason: string };
  /** Closed with 4509: replaced by a newer login. Terminal. */
  replaced: { code: 4509; reason: string };
  /** Closed with 4004: the client renews and reconnects by itself. */
  expired: { code: 4004; reason: string };
  /** Every socket close (1006 when it ended without a close frame). */
  closed: { code: number; reason: string; willReconnect: boolean };
  /** A reconnect is scheduled. */
  reconnecting: { attempt: number; delayMs: number; code: number };
  /** Any other server frame (`pong`, `refreshed`, `expiring`, an `error` without id, `resume`). */
  frame: { type: string; [key: string]: unknown };
  /** The session is gone (logout, kick, replaced, refresh refused): log in again. */
  loggedOut: { reason: string };
  /** Something failed that has no caller to reject (a reconnect's mint, a silent renewal). */
  error: TicketgateError;
}

/** A QR code to show: its id (replaced on rotation), the server-rendered SVG, seconds left. */
export interface QrCode {
  qrId: string;
  svgUrl: string;
  /** The text inside the QR code: `ticketgate://qr/<qrId>`. */
  payload: string;
  expiresIn: number;
  rotateIn: number;
}

/** What a scan answers: where the login goes, to show before approving. */
export interface QrScanInfo {
  state: "scanned";
  mode: "login_this" | "login_other";
  client_type: string;
  ip: string;
  created_at: number;
}

/** A QR login in progress. */
export interface PendingQr {
  /** The current qr_id (changes on rotation). */
  readonly qrId: string;
  /** Resolves when the flow is over (a session for this client, or confirmed); rejects on expiry or error. */
  readonly done: Promise<SessionInfo | void>;
  /** Stops polling; `done` rejects with TicketgateError `cancelled`. */
  cancel(): void;
}

/** QR-code login, both directions (PROTOCOL §5). */
export interface QrApi {
  /** login_this: this device (no session) shows a QR; a logged-in phone approves; `done` resolves with this client's new session. */
  loginThis(options?: {
    onCode?: (code: QrCode) => void;
    onState?: (state: { state: "pending" | "scanned" }) => void;
  }): Promise<PendingQr>;
  /** A logged-in phone scans a `login_this` QR (Bearer + signed): where the login goes. Takes a qr_id or the QR's text. */
  scan(qrIdOrPayload: string): Promise<QrScanInfo>;
  /** Approves a scanned QR (Bearer + signed): the phone in login_this, the showing PC in login_other. */
  confirm(qrIdOrPayload: string): Promise<void>;
  /** login_other: this logged-in device shows a QR for a new phone; `onScanned` tells who scanned (then confirm). `done` resolves when confirmed. */
  showLoginOther(options?: {
    onCode?: (code: QrCode) => void;
    onScanned?: (info: { ip: string | null; scannedAt: number | null }) => void;
  }): Promise<PendingQr>;
  /** login_other, the new phone: scan without a session, then poll until the PC confirms; resolves with this client's new session. */
  loginWith(
    qrIdOrPayload: string,
    options?: { onScan?: (info: QrScanInfo) => void }
  ): Promise<SessionInfo>;
}

/** A ticketgate client: one session per origin (shared by its tabs), one managed socket. */
export class Client {
  constructor(options?: ClientOptions);
  /** The current session, or null. */
  readonly session: SessionInfo | null;
  /** The connection state. */
  readonly state: ConnectionState;
  /** The id of the last push seen (passed as `since` on every reconnect). */
  readonly lastPushId: string | null;
  /** The device id (a UUID kept per origin); resolves it from storage or creates it. */
  deviceId(): Promise<string>;
  /** Subscribes to an event; returns a function that unsubscribes. */
  on<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): () => void;
  /** Unsubscribes. */
  off<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): void;
  /** Logs in with a password. Web: the refresh token goes into the HttpOnly cookie only. */
  login(username: string, password: string): Promise<SessionInfo>;
  /** Adopts a stored session (this tab's or another tab's). True when one exists. */
  restore(): Promise<boolean>;
  /** Renews the access token (one refresh at a time across tabs). */
  refresh(): Promise<SessionInfo>;
  /** Mints a ticket and opens the socket; resolves at the welcome. Reconnects by itself afterwards. */
  connect(options?: { since?: string | null }): Promise<WelcomeFrame>;
  /** A business call (§9): resolves with the reply's data, rejects with TicketgateError. */
  send(data: unknown, options?: { timeoutMs?: number; id?: string }): Promise<unknown>;
  /** Acknowledges a push (§10; counted by the server, does not change delivery). */
  ack(id: string): void;
  /** Sends an application ping; the server answers with a `pong` frame event. */
  ping(): void;
  /** Mints a ticket (Bearer + signed). */
  mintTicket(): Promise<{ ticket: string; expiresIn: number; wsUrl: string }>;
  /** Logs out (POST /v1/logout) and clears the stored session, in every tab. */
  logout(): Promise<void>;
  /** Closes the socket (1000) and stops reconnecting. */
  disconnect(): void;
  /** QR-code login. */
  readonly qr: QrApi;
}
