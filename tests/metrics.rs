//! `/metrics` on the admin listener: a fresh node lists every series with its `# HELP`
//! at zero, and refusals, closes and store outages count where an operator looks for
//! them.
//!
//! The recorder is process-wide, so the in-process tests of this binary take turns
//! ([`TURN`]) and compare readings before and after; the fresh node is the real binary
//! (a process of its own, nothing counted yet).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::bin::{add_user, free_port, ticketgate, wait_until_up};
use support::{close_code, TestServer};
use ticketgate::config::Rate;
use ticketgate_sdk::protocol::close;
use ticketgate_sdk::{ClientType, ErrorCode};

/// One in-process test at a time: they read the same process-wide counters.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ADMIN_KEY: &str = "metrics-test-admin-key-0123456789";

/// A `/metrics` answer: every sample by its full name (labels included), and the
/// families that have a `# HELP` and a `# TYPE` line.
struct Scrape {
    samples: HashMap<String, f64>,
    helped: Vec<String>,
    typed: Vec<(String, String)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape {
            samples: HashMap::new(),
            helped: Vec::new(),
            typed: Vec::new(),
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help.trim().is_empty(), "empty HELP for {name}");
                scrape.helped.push(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
                scrape.typed.push((name.to_owned(), kind.to_owned()));
            } else if !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let value = value.parse().expect("sample value is a number");
                scrape.samples.insert(series.to_owned(), value);
            }
        }
        scrape
    }

    /// The value of `series`; fails the test when it is not listed.
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} not listed"))
    }
}

async fn scrape(admin: SocketAddr, key: &str) -> Scrape {
    let response = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .expect("metrics answered");
    assert_eq!(response.status(), 200);
    Scrape::parse(&response.text().await.expect("metrics text"))
}

async fn scrape_node(server: &TestServer) -> Scrape {
    scrape(
        server.admin_addr,
        server.config.admin_key.as_deref().expect("admin key"),
    )
    .await
}

/// How much each of `series` grew between two scrapes.
fn grew(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    after.get(series) - before.get(series)
}

/// A `ticketgate serve` process on the embedded store; killed on drop.
struct Node {
    process: Child,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

async fn fresh_node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    add_user(dir.path(), "alice", "pw-alice-1234");
    let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let process = ticketgate(dir.path())
        .arg("serve")
        .env("TICKETGATE_LISTEN", public.to_string())
        .env("TICKETGATE_ADMIN_LISTEN", admin.to_string())
        .env("TICKETGATE_ADMIN_KEY", ADMIN_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let node = Node {
        process,
        admin,
        _dir: dir,
    };
    wait_until_up(&format!("http://{public}"), Duration::from_secs(10)).await;
    node
}

/// Every family an operator's dashboard reads, with its type.
const FAMILIES: [(&str, &str); 21] = [
    ("ticketgate_logins_total", "counter"),
    ("ticketgate_login_duration_seconds", "histogram"),
    ("ticketgate_mints_total", "counter"),
    ("ticketgate_mint_duration_seconds", "histogram"),
    ("ticketgate_admissions_total", "counter"),
    ("ticketgate_admission_duration_seconds", "histogram"),
    ("ticketgate_refreshes_total", "counter"),
    ("ticketgate_refresh_duration_seconds", "histogram"),
    ("ticketgate_refusals_total", "counter"),
    ("ticketgate_closes_total", "counter"),
    ("ticketgate_store_errors_total", "counter"),
    ("ticketgate_store_duration_seconds", "histogram"),
    ("ticketgate_connections", "gauge"),
    ("ticketgate_sessions_connected", "gauge"),
    ("ticketgate_limiter_keys", "gauge"),
    ("ticketgate_hub_last_message_age_seconds", "gauge"),
    ("ticketgate_qr_total", "counter"),
    ("ticketgate_push_acks_total", "counter"),
    ("ticketgate_push_recoveries_total", "counter"),
    ("ticketgate_pushes_total", "counter"),
    ("ticketgate_push_deliveries_total", "counter"),
];

/// The close codes the server sends (PROTOCOL: close codes).
const SERVER_CLOSE_CODES: [u16; 11] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::INVALID_PAYLOAD,
    close::POLICY,
    close::TOO_BIG,
    close::SESSION_EXPIRED,
    close::FLOOD,
    close::SLOW_CONSUMER,
    close::REVOKED,
    close::REPLACED,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_lists_every_series_with_its_help_at_zero() {
    let node = fresh_node().await;
    let scrape = scrape(node.admin, ADMIN_KEY).await;

    for (family, kind) in FAMILIES {
        assert!(
            scrape.helped.iter().any(|f| f == family),
            "no HELP for {family}"
        );
        assert!(
            scrape.typed.iter().any(|(f, k)| f == family && k == kind),
            "{family} is not a {kind}"
        );
    }
    // Every family listed has its HELP: nothing undocumented slips in.
    for (family, _) in &scrape.typed {
        assert!(scrape.helped.contains(family), "no HELP for {family}");
    }
    // Every labelled series is there from the start, at zero.
    let mut zero = Vec::new();
    for outcome in ["ok", "refused", "error"] {
        for method in ["password", "app"] {
            zero.push(format!(
                "ticketgate_logins_total{{method=\"{method}\",outcome=\"{outcome}\"}}"
            ));
        }
        for family in ["mints", "admissions", "refreshes"] {
            zero.push(format!(
                "ticketgate_{family}_total{{outcome=\"{outcome}\"}}"
            ));
        }
    }
    for code in ErrorCode::ALL {
        zero.push(format!(
            "ticketgate_refusals_total{{code=\"{}\"}}",
            code.as_str()
        ));
    }
    for code in SERVER_CLOSE_CODES {
        zero.push(format!("ticketgate_closes_total{{code=\"{code}\"}}"));
    }
    for event in ["created", "scanned", "confirmed", "expired", "refused"] {
        zero.push(format!("ticketgate_qr_total{{event=\"{event}\"}}"));
    }
    for operation in [
        "create_session",
        "mint_ticket",
        "admit_ticket",
        "rotate_refresh",
    ] {
        for kind in ["unavailable", "corrupt"] {
            zero.push(format!(
                "ticketgate_store_errors_total{{operation=\"{operation}\",kind=\"{kind}\"}}"
            ));
        }
        zero.push(format!(
            "ticketgate_store_duration_seconds_count{{operation=\"{operation}\"}}"
        ));
    }
    for histogram in ["mint", "admission", "refresh"] {
        zero.push(format!("ticketgate_{histogram}_duration_seconds_count"));
    }
    for method in ["password", "app"] {
        zero.push(format!(
            "ticketgate_login_duration_seconds_count{{method=\"{method}\"}}"
        ));
    }
    for limiter in [
        "login_ip",
        "login_user",
        "login_device",
        "fail_ip",
        "mint_device",
        "connect_ip",
        "session",
    ] {
        zero.push(format!("ticketgate_limiter_keys{{limiter=\"{limiter}\"}}"));
    }
    zero.extend(
        [
            "ticketgate_connections",
            "ticketgate_sessions_connected",
            "ticketgate_hub_last_message_age_seconds",
        ]
        .map(str::to_owned),
    );
    for series in &zero {
        assert_eq!(scrape.get(series), 0.0, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_count_by_outcome_and_a_refusal_under_its_code() {
    let _turn = TURN.lock().await;
    let server = TestServer::builder().start().await;
    let before = scrape_node(&server).await;

    let (_client, _session) = server.login().await;
    let wrong = server
        .client()
        .login("alice", "not the password", ClientType::Web)
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(wrong.code(), Some(ErrorCode::BadCredentials));

    let after = scrape_node(&server).await;
    let logins = |outcome: &str| {
        grew(
            &before,
            &after,
            &format!("ticketgate_logins_total{{method=\"password\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(logins("ok"), 1.0);
    assert_eq!(logins("refused"), 1.0);
    assert_eq!(logins("error"), 0.0);
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_refusals_total{code=\"bad_credentials\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_login_duration_seconds_count{method=\"password\"}"
        ),
        2.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mint_counts_under_its_code_and_outcome() {
    let _turn = TURN.lock().await;
    let server = TestServer::builder()
        .config(|c| c.rates.mint_device = Rate::parse("1/min").expect("rate"))
        .start()
        .await;
    let (client, session) = server.login().await;
    let before = scrape_node(&server).await;

    client.mint_ticket(&session).await.expect("the first mint");
    let refused = client
        .mint_ticket(&session)
        .await
        .expect_err("the second mint is over the quota");
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));

    let after = scrape_node(&server).await;
    assert_eq!(
        grew(&before, &after, "ticketgate_mints_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_mints_total{outcome=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_refusals_total{code=\"rate_limited\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(&before, &after, "ticketgate_mint_duration_seconds_count"),
        2.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_ticket_counts_as_a_refused_admission_with_its_code() {
    let _turn = TURN.lock().await;
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let before = scrape_node(&server).await;

    let (_ws, _) = client.connect(&session, &ticket).await.expect("admitted");
    let replayed = client
        .connect(&session, &ticket)
        .await
        .expect_err("a spent ticket is refused");
    assert_eq!(replayed.code(), Some(ErrorCode::TicketInvalid));

    let after = scrape_node(&server).await;
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_admissions_total{outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_admissions_total{outcome=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_refusals_total{code=\"ticket_invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_admission_duration_seconds_count"
        ),
        2.0
    );
    assert_eq!(after.get("ticketgate_connections"), 1.0);
    assert_eq!(after.get("ticketgate_sessions_connected"), 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_counts_as_ok() {
    let _turn = TURN.lock().await;
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let before = scrape_node(&server).await;

    client.refresh(&session).await.expect("refreshed");

    let after = scrape_node(&server).await;
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_refreshes_total{outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(&before, &after, "ticketgate_refresh_duration_seconds_count"),
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_counts_a_close_under_4503() {
    let _turn = TURN.lock().await;
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let (mut ws, welcome) = client.connect(&session, &ticket).await.expect("admitted");
    let before = scrape_node(&server).await;

    let kicked = reqwest::Client::new()
        .post(format!(
            "http://{}/admin/v1/users/{}/kick",
            server.admin_addr, welcome.user_id
        ))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("kick answered");
    assert_eq!(kicked.status(), 200);
    assert_eq!(close_code(&mut ws).await, Some(close::REVOKED));

    // Counted before the close frame went out, so it is there once the client has it.
    let after = scrape_node(&server).await;
    assert_eq!(
        grew(&before, &after, "ticketgate_closes_total{code=\"4503\"}"),
        1.0
    );
    assert_eq!(
        grew(&before, &after, "ticketgate_closes_total{code=\"1001\"}"),
        0.0
    );
    server.stop().await;
}

/// A published push counts once on the publishing node, with the sockets it reached;
/// a push to a user with no live socket counts as published, reaching none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_push_counts_with_the_sockets_it_reached() {
    let _turn = TURN.lock().await;
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let (_ws, welcome) = client.connect(&session, &ticket).await.expect("admitted");
    let before = scrape_node(&server).await;

    for user in [welcome.user_id.as_str(), "nobody-online"] {
        let published = reqwest::Client::new()
            .post(format!("http://{}/admin/v1/publish", server.admin_addr))
            .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
            .json(&serde_json::json!({"user_id": user, "topic": "t", "data": 1}))
            .send()
            .await
            .expect("publish answered");
        assert_eq!(published.status(), 200);
    }

    let after = scrape_node(&server).await;
    assert_eq!(grew(&before, &after, "ticketgate_pushes_total"), 2.0);
    assert_eq!(
        grew(&before, &after, "ticketgate_push_deliveries_total"),
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_counts_as_store_errors_and_failed_mints() {
    let _turn = TURN.lock().await;
    let server = TestServer::builder()
        .store(support::StoreKind::Redis)
        .start()
        .await;
    let (client, session) = server.login().await;
    let before = scrape_node(&server).await;

    server
        .redis
        .as_ref()
        .expect("a redis node")
        .lock()
        .expect("redis lock")
        .stop();
    let failed = client
        .mint_ticket(&session)
        .await
        .expect_err("no mint without the store");
    assert_eq!(failed.code(), Some(ErrorCode::StoreUnavailable));

    let after = scrape_node(&server).await;
    assert_eq!(
        grew(&before, &after, "ticketgate_mints_total{outcome=\"error\"}"),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "ticketgate_refusals_total{code=\"store_unavailable\"}"
        ),
        1.0
    );
    let store_errors = |scrape: &Scrape| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|(series, _)| {
                series.starts_with("ticketgate_store_errors_total{")
                    && series.contains("kind=\"unavailable\"")
            })
            .map(|(_, value)| value)
            .sum()
    };
    assert!(
        store_errors(&after) > store_errors(&before),
        "no store error counted"
    );
    server.stop().await;
}
