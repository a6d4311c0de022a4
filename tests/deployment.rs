//! Nodes that share a Redis form one deployment only if they share the server secret:
//! a node started with another data dir would refuse every token and ticket of the
//! others (and they its), so it must refuse to start instead, and say why.

mod support;

use std::sync::{Arc, Mutex};

use support::{RedisServer, TestServer};
use ticketgate::server::StartError;
use ticketgate_sdk::ClientType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_server_secret_refuses_to_join_a_redis() {
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    let shared = Arc::new(tempfile::tempdir().expect("tempdir"));
    let first = TestServer::builder()
        .redis(redis.clone())
        .data_dir(shared.clone())
        .start()
        .await;
    // A second node of the same deployment starts, and takes the first one's tokens.
    let second = TestServer::builder()
        .redis(redis.clone())
        .data_dir(shared.clone())
        .start()
        .await;
    let (client, session) = first.login_as("alice", ClientType::Mobile).await;
    let ticket = client
        .mint_ticket(&session)
        .await
        .expect("mint on the first");
    second
        .client()
        .connect(&session, &ticket)
        .await
        .expect("the second node admits the first one's ticket");

    let recorded = match redis
        .lock()
        .expect("redis")
        .command(&["GET", "tg:deployment"])
    {
        support::redis::Reply::Bulk(Some(value)) => String::from_utf8(value).expect("text"),
        other => panic!("no fingerprint recorded: {other:?}"),
    };
    let secret = std::fs::read(shared.path().join("data/server.secret")).expect("secret");
    assert_eq!(recorded.len(), 32, "{recorded}");
    assert!(
        !recorded.contains(&hex::encode(&secret)),
        "the secret itself is recorded"
    );

    // A third node with a data dir of its own: refused, with the remedy.
    let refused = TestServer::builder()
        .redis(redis.clone())
        .try_start()
        .await
        .err()
        .expect("a node with another secret must not start");
    let StartError::SplitDeployment { ours, theirs } = &refused else {
        panic!("refused for another reason: {refused}");
    };
    assert_eq!(theirs, &recorded);
    assert_ne!(ours, theirs);
    let message = refused.to_string();
    for hint in ["server.secret", "tg:deployment", "Redis of its own"] {
        assert!(message.contains(hint), "{message}");
    }
    // Still one deployment: the refused node changed nothing.
    let ticket = client.mint_ticket(&session).await.expect("mint");
    second
        .client()
        .connect(&session, &ticket)
        .await
        .expect("still admitted");

    second.stop().await;
    first.stop().await;
}
