//! The hub link of a node that goes silently dead: its Redis connections frozen by the
//! network (a NAT or load-balancer idle timeout: nothing closed, nothing delivered).
//! The node must notice, reconnect its subscriber, and catch up on the kicks it missed.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::proxy::Proxy;
use support::{RedisServer, TestServer};
use ticketgate_sdk::protocol::close;
use ticketgate_sdk::{ClientType, WsStream};
use tokio_tungstenite::tungstenite::Message;

/// How long after the freeze the kicked socket must be closed.
const CLOSE_LIMIT: Duration = Duration::from_secs(15);

async fn admin(server: &TestServer, path: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("http://{}{path}", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&body)
        .send()
        .await
        .expect("admin call")
        .json()
        .await
        .expect("admin answer")
}

async fn socket(server: &TestServer, user: &str) -> WsStream {
    let (client, session) = server.login_as(user, ClientType::Mobile).await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    client.connect(&session, &ticket).await.expect("connect").0
}

/// The close code once the server closes `ws` (`None`: closed without a close frame),
/// or `Err` if it is still open after `limit`.
async fn closed_within(ws: &mut WsStream, limit: Duration) -> Result<Option<u16>, String> {
    let closed = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(limit, closed)
        .await
        .map_err(|_| format!("socket still open after {limit:?}"))
}

/// Node A and node B share a Redis; B reaches it through a proxy. A user's socket is
/// on B. B's Redis connections freeze (new ones get through); the user is kicked on A.
/// B must close the socket (4503) in seconds, and hear the hub again afterwards (a push
/// sent on A reaches another socket on B).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_links_freeze_still_closes_kicked_sockets() {
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    let port = redis.lock().expect("redis").port();
    let proxy = Proxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await;
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let a = TestServer::builder()
        .redis(redis.clone())
        .data_dir(dir.clone())
        .start()
        .await;
    let via_proxy = proxy.redis_url();
    let b = TestServer::builder()
        .redis(redis)
        .data_dir(dir)
        .config(move |c| c.redis_url = Some(via_proxy))
        .start()
        .await;
    let mut kicked = socket(&b, "bob").await;
    let mut listening = socket(&b, "carol").await;

    // Every open connection of B goes silent; new ones get through.
    proxy.freeze();
    proxy.thaw();
    let frozen_at = Instant::now();
    let answer = admin(&a, "/admin/v1/users/bob/kick", json!({})).await;
    assert_eq!(answer["sessions"], 1, "{answer}");

    let closed = closed_within(&mut kicked, CLOSE_LIMIT).await;
    let after = frozen_at.elapsed();
    eprintln!(
        "kicked socket on the frozen node: {closed:?} {:.1} s after the freeze",
        after.as_secs_f64()
    );
    assert_eq!(closed, Ok(Some(close::REVOKED)));

    // B hears the hub again: a push sent on A reaches B's other socket at once.
    admin(
        &a,
        "/admin/v1/publish",
        json!({"user_id": "carol", "topic": "news", "data": {"n": 1}}),
    )
    .await;
    let frame = tokio::time::timeout(Duration::from_secs(2), listening.next())
        .await
        .expect("the push reached the socket on B in time")
        .expect("a frame")
        .expect("a good frame");
    let frame: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_eq!(
        (frame["type"].as_str(), frame["topic"].as_str()),
        (Some("push"), Some("news"))
    );
    drop(proxy);
}

/// The members of the heartbeat set (`tg:nodes`).
fn heartbeat_members(redis: &Mutex<RedisServer>) -> Vec<String> {
    match redis
        .lock()
        .expect("redis lock")
        .command(&["ZRANGE", "tg:nodes", "0", "-1"])
    {
        support::redis::Reply::Array(Some(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                support::redis::Reply::Bulk(Some(bytes)) => String::from_utf8(bytes).ok(),
                _ => None,
            })
            .collect(),
        other => panic!("ZRANGE answered {other:?}"),
    }
}

/// A node that stops leaves the heartbeat set on its way out: the other nodes count the
/// answers to wait for from that set, and would otherwise wait out every request's
/// answer timeout for the stopped node until its last heartbeat aged out (three beats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_the_heartbeat_set_at_once() {
    let (a, b) = support::two_nodes().await;
    let redis = a.redis.clone().expect("a Redis-backed node");
    let (a_id, b_id) = (a.config.node_id.clone(), b.config.node_id.clone());
    support::wait_until(|| {
        let members = heartbeat_members(&redis);
        members.contains(&a_id) && members.contains(&b_id)
    })
    .await;
    b.stop().await;
    let members = heartbeat_members(&redis);
    assert!(
        !members.contains(&b_id),
        "the stopped node is still counted: {members:?}"
    );
    assert!(members.contains(&a_id), "{members:?}");
}
