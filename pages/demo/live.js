// The demo page's live part, loaded by app.js once WebCrypto is known to be there: a
// person's view of the browser client `ticketgate-client`, served by this node at
// /demo/client/. Every effect on the page comes from the client's events;
// the page holds no token or key itself (the client keeps the session in IndexedDB and
// the refresh token lives in an HttpOnly cookie).
import { Client, TicketgateError } from "/demo/client/index.js";

const $ = (id) => document.getElementById(id);

/** Close codes a person may see, in words. */
const CLOSE_WORDS = {
  4503: "An operator ended this session (or it was logged out, blocked or revoked).",
  4509: "A newer login of this user in another browser took over.",
};

function log(text, kind = "info") {
  const item = document.createElement("li");
  item.className = `log-${kind}`;
  const time = new Date().toLocaleTimeString();
  item.textContent = `${time}  ${text}`;
  $("log").prepend(item);
  while ($("log").children.length > 200) $("log").lastElementChild.remove();
}

function describe(err) {
  if (err instanceof TicketgateError) return `${err.code}: ${err.message}`;
  return String(err?.message ?? err);
}

function showError(id, err) {
  const el = $(id);
  el.textContent = describe(err);
  el.hidden = false;
}

const client = new Client({ clientType: "web" });
let renewals = 0;
let countdownTimer = null;

// ---------------------------------------------------------------------------------
// What the client says
// ---------------------------------------------------------------------------------

client.on("state", ({ state }) => {
  const el = $("socket-state");
  el.textContent = state;
  el.dataset.state = state;
  $("disconnect").disabled = !(state === "open" || state === "connecting" || state === "reconnecting");
  $("connect").disabled = !client.session || state === "open" || state === "connecting";
  $("send").disabled = state !== "open";
  log(`socket: ${state}`);
});

client.on("welcome", (frame) => {
  let text = `welcome: connection ${frame.conn_id} for ${frame.user_id}`;
  if (frame.recovered !== undefined) {
    text += frame.recovered ? ", missed pushes recovered" : ", history could not cover the gap";
  }
  $("welcome-info").textContent = text;
  log(text, "ok");
});

client.on("push", (frame) => {
  const item = document.createElement("li");
  item.className = "push";
  const topic = document.createElement("strong");
  topic.textContent = frame.topic;
  const data = document.createElement("code");
  data.textContent = JSON.stringify(frame.data);
  const id = document.createElement("span");
  id.className = "hint";
  id.textContent = ` #${frame.id}`;
  item.append(topic, " ", data, id);
  $("pushes").prepend(item);
  log(`push ${frame.id} on ${frame.topic}`, "ok");
});

client.on("recovered", ({ recovered, since }) => {
  log(recovered ? `recovered pushes after ${since}` : `pushes after ${since} could not all be recovered`);
});

client.on("renewed", ({ accessExpiresAt, via }) => {
  renewals += 1;
  $("renewals").textContent = String(renewals);
  const how = { refresh: "refreshed by this tab", "x-new-token": "from an X-New-Token header", "other-tab": "refreshed by another tab" }[via] ?? via;
  $("renewal-last").textContent = `(last: ${how}, at ${new Date().toLocaleTimeString()})`;
  showSession();
  log(`access token renewed (${how}), valid until ${new Date(accessExpiresAt).toLocaleTimeString()}`, "ok");
});

function terminal({ code, reason }) {
  $("kicked").hidden = false;
  $("kicked").dataset.code = String(code);
  $("kicked-title").textContent = code === 4509 ? "Replaced by a newer login" : "Kicked by the server";
  $("kicked-code").textContent = String(code);
  $("kicked-reason").textContent = reason || "(none)";
  $("kicked-explain").textContent = CLOSE_WORDS[code] ?? "";
  log(`closed ${code} ${reason}: not reconnecting`, "error");
}
client.on("kicked", terminal);
client.on("replaced", terminal);
client.on("expired", ({ code }) => log(`closed ${code}: access expired; renewing and reconnecting`));
client.on("closed", ({ code, reason, willReconnect }) => {
  log(`socket closed ${code}${reason ? ` (${reason})` : ""}${willReconnect ? ", reconnecting" : ""}`);
});
client.on("reconnecting", ({ attempt, delayMs }) => log(`reconnect attempt ${attempt} in ${delayMs} ms`));
client.on("loggedOut", ({ reason }) => {
  log(`logged out: ${reason}`);
  showSession();
});
client.on("error", (err) => log(`error: ${describe(err)}`, "error"));

// ---------------------------------------------------------------------------------
// Session and countdown
// ---------------------------------------------------------------------------------

function showSession() {
  const s = client.session;
  $("session-user").textContent = s ? `${s.userId} (${s.clientType})` : "not logged in";
  $("session-id").textContent = s ? s.sessionId : "-";
  $("device-id").textContent = s ? s.deviceId : "-";
  $("logout").disabled = !s;
  $("connect").disabled = !s || client.state === "open";
  for (const id of ["approve-scan", "other-start"]) $(id).disabled = !s;
  $("login-card").classList.toggle("done", !!s);
  tick();
}

function tick() {
  const s = client.session;
  const el = $("countdown");
  if (!s) {
    el.textContent = "-";
    return;
  }
  const left = Math.max(0, Math.round((s.accessExpiresAt - Date.now()) / 1000));
  el.textContent = `${left} s`;
  el.dataset.seconds = String(left);
  el.dataset.expiresAt = String(s.accessExpiresAt);
}
countdownTimer = setInterval(tick, 1000);

async function start() {
  showSession();
  try {
    await client.connect();
  } catch (err) {
    log(`connect failed: ${describe(err)}`, "error");
  }
}

// ---------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").hidden = true;
  $("kicked").hidden = true;
  try {
    await client.login($("username").value, $("password").value);
    $("password").value = "";
    log(`logged in as ${client.session.userId}`, "ok");
    await start();
  } catch (err) {
    showError("login-error", err);
    log(`login failed: ${describe(err)}`, "error");
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await client.logout();
  } catch (err) {
    log(`logout: ${describe(err)}`, "error");
  }
  showSession();
});

$("connect").addEventListener("click", () => {
  $("kicked").hidden = true;
  start();
});
$("disconnect").addEventListener("click", () => client.disconnect());

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  let data;
  try {
    data = JSON.parse($("send-data").value);
  } catch {
    $("reply").textContent = "not JSON";
    return;
  }
  $("reply").textContent = "…";
  try {
    const reply = await client.send(data);
    $("reply").textContent = `reply: ${JSON.stringify(reply)}`;
  } catch (err) {
    $("reply").textContent = `error ${describe(err)}`;
  }
});

// QR, login_this: this browser (no session) shows a code; a logged-in device approves.
let pendingThis = null;
$("qr-this-start").addEventListener("click", async () => {
  pendingThis?.cancel();
  $("qr-this").hidden = false;
  $("qr-this-state").textContent = "waiting for a scan";
  try {
    pendingThis = await client.qr.loginThis({
      onCode: (code) => {
        $("qr-this-id").textContent = code.qrId;
        $("qr-this-img").src = code.svgUrl;
        $("qr-this-left").textContent = String(code.expiresIn);
        log(`QR code ${code.qrId} shown`);
      },
      onState: ({ state }) => {
        $("qr-this-state").textContent = state === "scanned" ? "scanned, waiting for approval" : "waiting for a scan";
      },
    });
    await pendingThis.done;
    $("qr-this").hidden = true;
    log(`logged in by QR as ${client.session.userId}`, "ok");
    await start();
  } catch (err) {
    $("qr-this-state").textContent = describe(err);
    log(`QR login: ${describe(err)}`, "error");
  }
});
$("qr-this-cancel").addEventListener("click", () => {
  pendingThis?.cancel();
  $("qr-this").hidden = true;
});

// QR, login_other, the new device: log in with a code a logged-in screen shows.
$("qr-with-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("qr-with-state").textContent = "scanning…";
  try {
    await client.qr.loginWith($("qr-with-id").value.trim(), {
      onScan: (info) => {
        $("qr-with-state").textContent = `scanned; waiting for the other screen to approve (${info.mode})`;
      },
    });
    $("qr-with-state").textContent = "logged in";
    await start();
  } catch (err) {
    $("qr-with-state").textContent = describe(err);
  }
});

// QR, login_this, the approving device (logged in): scan, look, approve.
$("approve-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("approve-confirm").disabled = true;
  try {
    const info = await client.qr.scan($("approve-id").value.trim());
    const when = new Date(info.created_at * 1000).toLocaleTimeString();
    $("approve-state").textContent =
      `a ${info.client_type} login from ${info.ip}, asked at ${when}: approve it if it is yours`;
    $("approve-confirm").disabled = false;
  } catch (err) {
    $("approve-state").textContent = describe(err);
  }
});
$("approve-confirm").addEventListener("click", async () => {
  try {
    await client.qr.confirm($("approve-id").value.trim());
    $("approve-state").textContent = "approved";
    $("approve-confirm").disabled = true;
    log("approved a QR login", "ok");
  } catch (err) {
    $("approve-state").textContent = describe(err);
  }
});

// QR, login_other: this logged-in screen shows a code for a new device.
let shown = null;
$("other-start").addEventListener("click", async () => {
  shown?.cancel();
  $("other").hidden = false;
  $("other-confirm").disabled = true;
  $("other-state").textContent = "waiting for a scan";
  try {
    shown = await client.qr.showLoginOther({
      onCode: (code) => {
        $("other-id").textContent = code.qrId;
        $("other-img").src = code.svgUrl;
      },
      onScanned: (info) => {
        $("other-state").textContent = `scanned from ${info.ip ?? "an unknown address"}: approve?`;
        $("other-confirm").disabled = false;
      },
    });
    await shown.done;
    $("other-state").textContent = "approved: the new device is logged in";
  } catch (err) {
    $("other-state").textContent = describe(err);
  }
});
$("other-confirm").addEventListener("click", async () => {
  try {
    await client.qr.confirm(shown.qrId);
    $("other-confirm").disabled = true;
  } catch (err) {
    $("other-state").textContent = describe(err);
  }
});

// A session stored by another tab of this browser is this tab's too.
(async () => {
  try {
    if (await client.restore()) {
      log(`restored the session of ${client.session.userId}`);
      await start();
    } else {
      showSession();
    }
  } catch (err) {
    log(`restore: ${describe(err)}`, "error");
  }
  document.body.dataset.ready = "true";
})();

addEventListener("pagehide", () => clearInterval(countdownTimer));
