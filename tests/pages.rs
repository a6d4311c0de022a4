//! The pages for people (PROTOCOL §11) as HTTP sees them: `/demo` and `/admin/` with
//! their embedded assets, the headers that keep them safe, `TICKETGATE_DEMO=off`, no
//! way out of the embedded folders, and the admin calls the admin page makes
//! (`/admin/v1/connections` across nodes, `/admin/v1/keys`). What the pages do in a
//! browser is tested by `tests/browser/` (Chromium).

mod support;

use serde_json::{json, Value};
use support::raw::{Answer, Conn};
use support::{two_nodes, TestServer};
use ticketgate::auth::tokens::KeyRing;
use ticketgate_sdk::{ClientType, Session};

type Ws = ticketgate_sdk::WsStream;

async fn get(url: String) -> Answer {
    Answer::from_reqwest(reqwest::get(url).await.expect("GET")).await
}

/// Every page answer, errors included, carries the policy and `nosniff`.
fn assert_guarded(answer: &Answer, what: &str) {
    let csp = answer
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"));
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: {csp}");
    }
    assert!(!csp.contains("unsafe"), "{what}: {csp}");
    assert!(
        !csp.contains("http"),
        "{what}: a third-party origin in {csp}"
    );
    assert_eq!(
        answer.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
}

/// The page HTML loads scripts and styles from files only: no inline script, no
/// inline style, no `on*=` handler (the policy would refuse them, breaking the page).
fn assert_no_inline(html: &str, what: &str) {
    let lower = html.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let tag = &lower[at..at + lower[at..].find('>').expect("tag end")];
        assert!(tag.contains(" src="), "{what}: inline script {tag}");
    }
    assert!(!lower.contains("<style"), "{what}: inline <style>");
    assert!(!lower.contains(" style="), "{what}: a style attribute");
    assert!(!lower.contains(" onclick="), "{what}: an inline handler");
    assert!(!lower.contains("https://"), "{what}: a third-party origin");
}

#[tokio::test]
async fn the_demo_page_and_its_assets_are_served_under_the_policy() {
    let server = TestServer::builder().start().await;
    for path in ["/demo", "/demo/"] {
        let page = get(format!("{}{path}", server.url())).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_guarded(&page, path);
        assert_no_inline(&page.text(), path);
        assert!(page.text().contains("/demo/app.js"), "{}", page.text());
    }
    for (path, kind) in [
        ("/demo/app.js", "text/javascript; charset=utf-8"),
        ("/demo/live.js", "text/javascript; charset=utf-8"),
        ("/demo/page.css", "text/css; charset=utf-8"),
        ("/demo/client/index.js", "text/javascript; charset=utf-8"),
    ] {
        let asset = get(format!("{}{path}", server.url())).await;
        assert_eq!(asset.status, 200, "{path}");
        assert_eq!(asset.header("content-type"), Some(kind), "{path}");
        assert_guarded(&asset, path);
    }
    // The demo imports the client from where the server serves it.
    let live = get(format!("{}/demo/live.js", server.url())).await.text();
    assert!(live.contains("\"/demo/client/index.js\""), "{live}");
}

#[tokio::test]
async fn an_unchanged_asset_is_answered_304_by_its_etag() {
    let server = TestServer::builder().start().await;
    let url = format!("{}/demo/app.js", server.url());
    let first = get(url.clone()).await;
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    let again = reqwest::Client::new()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("GET");
    let again = Answer::from_reqwest(again).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_guarded(&again, "304");
    let stale = reqwest::Client::new()
        .get(&url)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .expect("GET");
    assert_eq!(stale.status(), 200);
}

#[tokio::test]
async fn unknown_assets_are_404_under_the_policy_too() {
    let server = TestServer::builder().start().await;
    for path in [
        "/demo/nope.js",
        "/demo/client/nope.js",
        "/demo/a/b/c",
        "/demo/index.html.bak",
    ] {
        let answer = get(format!("{}{path}", server.url())).await;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.json()["error"], "not_found", "{path}");
        assert_guarded(&answer, path);
    }
    let answer = get(format!("http://{}/admin/nope.js", server.admin_addr)).await;
    assert_eq!(answer.status, 404);
    assert_guarded(&answer, "/admin/nope.js");
}

/// A raw request (the client must not tidy the path), its answer.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    conn.send(head.as_bytes()).await;
    conn.answer().await
}

#[tokio::test]
async fn no_path_leaves_the_embedded_folders() {
    let server = TestServer::builder().start().await;
    let tries = [
        "/demo/../Cargo.toml",
        "/demo/%2e%2e/Cargo.toml",
        "/demo/%2E%2E%2FCargo.toml",
        "/demo/..%2fCargo.toml",
        "/demo/..%5cCargo.toml",
        "/demo/client/../../Cargo.toml",
        "/demo/client/%2e%2e/%2e%2e/Cargo.toml",
        "/demo/client/%2e%2e%2f%2e%2e%2fpages%2fdemo%2findex.html",
        "/demo//etc/passwd",
        "/demo/%2fetc%2fpasswd",
        "/demo/./index.html",
        "/demo/.%2findex.html",
    ];
    for path in tries {
        let answer = raw_get(server.addr, path).await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.text());
        assert!(!answer.text().contains("[package]"), "{path}");
    }
    for path in [
        "/admin/..%2fCargo.toml",
        "/admin/%2e%2e%2f%2e%2e%2fCargo.toml",
    ] {
        let answer = raw_get(server.admin_addr, path).await;
        assert_eq!(answer.status, 404, "{path}");
        assert!(!answer.text().contains("[package]"), "{path}");
    }
}

#[tokio::test]
async fn demo_off_answers_404() {
    let server = TestServer::builder()
        .config(|c| c.demo = false)
        .start()
        .await;
    for path in ["/demo", "/demo/", "/demo/app.js", "/demo/client/index.js"] {
        let answer = get(format!("{}{path}", server.url())).await;
        assert_eq!(answer.status, 404, "{path}");
    }
    // The admin page is not the demo's business.
    let admin = get(format!("http://{}/admin/", server.admin_addr)).await;
    assert_eq!(admin.status, 200);
}

#[tokio::test]
async fn the_admin_page_needs_no_key_but_every_call_it_makes_does() {
    let server = TestServer::builder().start().await;
    let base = format!("http://{}", server.admin_addr);
    for path in ["/admin/", "/admin"] {
        let page = get(format!("{base}{path}")).await;
        assert_eq!(page.status, 200, "{path}");
        assert_guarded(&page, path);
        assert_no_inline(&page.text(), path);
        assert!(page.text().contains("/admin/admin.js"), "{}", page.text());
    }
    let script = get(format!("{base}/admin/admin.js")).await;
    assert_eq!(script.status, 200);
    assert!(script.text().contains("sessionStorage"));
    assert!(!script.text().contains("localStorage"));
    // The stylesheet both pages share, under the admin listener's own prefix.
    let style = get(format!("{base}/admin/page.css")).await;
    assert_eq!(style.status, 200);
    assert_eq!(
        style.header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_guarded(&style, "/admin/page.css");
    let http = reqwest::Client::new();
    for path in [
        "/admin/v1/connections",
        "/admin/v1/keys",
        "/admin/v1/users/alice/connections",
        "/metrics",
    ] {
        let none = http.get(format!("{base}{path}")).send().await.expect("GET");
        assert_eq!(none.status(), 401, "{path} without a key");
        let wrong = http
            .get(format!("{base}{path}"))
            .bearer_auth("not-the-admin-key-at-all")
            .send()
            .await
            .expect("GET");
        assert_eq!(wrong.status(), 401, "{path} with a wrong key");
    }
    // The demo page is not served on the admin listener, nor the admin page publicly.
    assert_eq!(get(format!("{base}/demo")).await.status, 401);
    assert_eq!(get(format!("{}/admin/", server.url())).await.status, 404);
}

async fn admin_get(server: &TestServer, path: &str) -> Value {
    let answer = reqwest::Client::new()
        .get(format!("http://{}{path}", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .send()
        .await
        .expect("admin call");
    assert_eq!(answer.status(), 200, "{path}");
    answer.json().await.expect("json")
}

async fn socket(client: &ticketgate_sdk::Client, session: &Session) -> Ws {
    let ticket = client.mint_ticket(session).await.expect("mint");
    client.connect(session, &ticket).await.expect("connect").0
}

/// The overview asks every node: sockets held by node B are counted when node A is
/// asked, per node and per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_per_node_and_per_user_on_every_node() {
    let (a, b) = two_nodes().await;
    let (client_a, alice_web) = a.login_as("alice", ClientType::Web).await;
    let (client_b, alice_mobile) = b.login_as("alice", ClientType::Mobile).await;
    let (client_bob, bob) = b.login_as("bob", ClientType::Web).await;
    let _sockets = [
        socket(&client_a, &alice_web).await,
        socket(&client_a, &alice_web).await,
        socket(&client_b, &alice_mobile).await,
        socket(&client_bob, &bob).await,
    ];
    let (node_a, node_b) = (a.config.node_id.clone(), b.config.node_id.clone());
    let mut nodes = vec![
        json!({ "node_id": node_a, "connections": 2 }),
        json!({ "node_id": node_b, "connections": 2 }),
    ];
    nodes.sort_by_key(|n| n["node_id"].as_str().map(str::to_owned));
    let expected = json!({
        "total": 4,
        "nodes": nodes,
        "users": [
            { "user_id": "alice", "connections": 3, "nodes": { node_a.clone(): 2, node_b.clone(): 1 } },
            { "user_id": "bob", "connections": 1, "nodes": { node_b.clone(): 1 } },
        ],
        "users_truncated": false,
    });
    assert_eq!(admin_get(&a, "/admin/v1/connections").await, expected);
    assert_eq!(admin_get(&b, "/admin/v1/connections").await, expected);
}

#[tokio::test]
async fn no_connections_is_an_empty_overview() {
    let server = TestServer::builder().start().await;
    let answer = admin_get(&server, "/admin/v1/connections").await;
    assert_eq!(answer["total"], 0);
    assert_eq!(answer["users"], json!([]));
    assert_eq!(
        answer["nodes"][0]["node_id"],
        server.config.node_id.as_str()
    );
}

/// The keys call names the signer and every key that verifies: the same `kid`s as the
/// JWKS, and a freshly rotated key verifies at once but signs only once activated.
#[tokio::test]
async fn keys_say_which_kid_signs_and_which_verify() {
    let server = TestServer::builder().start().await;
    let jwks_kids = || async {
        let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", server.url()))
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect();
        kids.sort();
        kids
    };
    let first = admin_get(&server, "/admin/v1/keys").await;
    let signing = first["signing"].as_str().expect("signing").to_owned();
    assert_eq!(
        first["keys"],
        json!([{ "kid": signing, "created_at": 0, "status": "signing", "verifies": true }])
    );
    assert_eq!(jwks_kids().await, vec![signing.clone()]);
    // The access token a login gets is signed by the key named as signing.
    let (_, session) = server.login().await;
    let header = session.access_token.split('.').next().expect("jwt header");
    let header: Value =
        serde_json::from_slice(&base64_url_decode(header).expect("base64url header"))
            .expect("json header");
    assert_eq!(header["kid"], signing.as_str());

    let new_kid = KeyRing::rotate(&server.config.data_dir, None).expect("rotate");
    server.state.keys.reload().expect("reload");
    let after = admin_get(&server, "/admin/v1/keys").await;
    assert_eq!(after["signing"], signing.as_str(), "not yet activated");
    let keys = after["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kid"], signing.as_str());
    assert_eq!(keys[0]["status"], "signing");
    assert_eq!(keys[1]["kid"], new_kid.as_str());
    assert_eq!(keys[1]["status"], "activating");
    assert!(keys[1]["created_at"].as_i64().expect("created_at") > 0);
    let mut both = vec![signing, new_kid];
    both.sort();
    assert_eq!(jwks_kids().await, both);
}

fn base64_url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}
