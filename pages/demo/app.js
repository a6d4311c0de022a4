// The demo page's entry: the client signs every request with WebCrypto, which browsers
// offer only to secure pages (HTTPS, localhost). Without it the page says so and stops;
// with it the live part (live.js, which imports the client from "/demo/client/index.js")
// runs.
const secure = globalThis.isSecureContext && globalThis.crypto?.subtle;

if (secure) {
  await import("/demo/live.js");
} else {
  document.getElementById("no-crypto").hidden = false;
  for (const button of document.querySelectorAll("button")) button.disabled = true;
  document.body.dataset.ready = "true";
}
