//! The cross-node hub on a Redis Cluster: kicks and pushes reach sockets on other
//! nodes over sharded pub/sub (SPUBLISH on hash-tagged partition channels, never a
//! classic PUBLISH, which a Cluster copies to every one of its nodes), and the hub
//! subscribes again after the primary of a partition fails over.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{close_code, two_nodes_at, RedisCluster, StoreKind, TestServer};
use ticketgate_sdk::protocol::close;
use ticketgate_sdk::{ClientType, WsStream};
use tokio_tungstenite::tungstenite::Message;

async fn admin(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}{path}", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&body)
        .send()
        .await
        .expect("admin call")
}

/// Publishes `n` to `user` through `server`; the answer (`id`, `delivered`), or the
/// status of a refusal.
async fn push(server: &TestServer, user: &str, n: u64) -> Result<Value, u16> {
    let response = admin(
        server,
        "/admin/v1/publish",
        json!({"user_id": user, "topic": "t", "data": {"n": n}}),
    )
    .await;
    match response.status().as_u16() {
        200 => Ok(response.json().await.expect("publish answer")),
        status => Err(status),
    }
}

async fn socket(server: &TestServer, user: &str) -> WsStream {
    let (client, session) = server.login_as(user, ClientType::Mobile).await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    client.connect(&session, &ticket).await.expect("connect").0
}

/// The next push frame's `(id, n)`; fails the test after 10 s.
async fn next_push(ws: &mut WsStream) -> (String, u64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await.expect("a frame").expect("not an error") {
                Message::Text(t) => {
                    let f: Value = serde_json::from_str(t.as_str()).expect("json");
                    if f["type"] == "push" {
                        return (
                            f["id"].as_str().expect("id").to_owned(),
                            f["data"]["n"].as_u64().expect("n"),
                        );
                    }
                }
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    })
    .await
    .expect("a push in time")
}

/// Calls of `name` summed over the cluster, since `before`.
fn calls(cluster: &RedisCluster, before: &HashMap<String, u64>, name: &str) -> u64 {
    let now = cluster.command_stats();
    now.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_and_pushes_cross_nodes_over_sharded_channels_only() {
    let _turn = StoreKind::Cluster.take_turn().await;
    let cluster = RedisCluster::shared();
    let (a, b) = two_nodes_at(&cluster.url()).await;
    let mut ws = socket(&b, "bob").await;
    let before = cluster.command_stats();

    let answer = push(&a, "bob", 1).await.expect("published");
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(
        next_push(&mut ws).await,
        (answer["id"].as_str().expect("an id").to_owned(), 1)
    );

    let kicked = admin(&a, "/admin/v1/users/bob/kick", json!({})).await;
    assert_eq!(kicked.status(), 200);
    let kicked: Value = kicked.json().await.expect("kick answer");
    assert_eq!(kicked, json!({"sessions": 1, "connections": 1}));
    assert_eq!(close_code(&mut ws).await, Some(close::REVOKED));

    assert_eq!(
        calls(cluster, &before, "publish"),
        0,
        "no classic PUBLISH on a Cluster: it is copied to every Redis node"
    );
    // Push: the request and one answer per node; kick: the same.
    assert!(calls(cluster, &before, "spublish") >= 6);
}

/// `cluster_stats_messages_<name>_sent` of `CLUSTER INFO`, summed over the nodes: what
/// the Cluster's nodes sent each other on their bus.
fn bus_messages(cluster: &RedisCluster, name: &str) -> u64 {
    let field = format!("cluster_stats_messages_{name}_sent:");
    cluster
        .live_nodes()
        .map(|node| {
            let info = node.command(&["CLUSTER", "INFO"]).text().expect("text");
            info.lines()
                .find_map(|l| l.strip_prefix(field.as_str()))
                .map_or(0, |n| n.trim().parse::<u64>().expect("a count"))
        })
        .sum()
}

/// What one kick and one push cost the Redis Cluster as the number of ticketgate nodes
/// grows: publish commands (each reaches every node's subscriber) and the messages the
/// Cluster's nodes pass each other on their bus. Printed for docs/scaling.md (run
/// with `--nocapture`); asserted: the hub's messages never cross the Cluster bus to
/// shards that do not own them (sharded pub/sub reaches the owner's replica only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_per_kick_and_push_as_nodes_grow() {
    let _turn = StoreKind::Cluster.take_turn().await;
    let cluster = RedisCluster::shared();
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut nodes = Vec::new();
    println!("nodes | op   | publish | spublish | bus publish | bus publishshard");
    for n in 1..=3 {
        nodes.push(
            TestServer::builder()
                .redis_url(cluster.url())
                .data_dir(dir.clone())
                .start()
                .await,
        );
        // Every node beats once, so a request waits for every answer.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut ws = socket(&nodes[n - 1], "carol").await;
        for op in ["push", "kick"] {
            let (stats, publish, shard) = (
                cluster.command_stats(),
                bus_messages(cluster, "publish"),
                bus_messages(cluster, "publishshard"),
            );
            if op == "push" {
                let answer = push(&nodes[0], "carol", 1).await.expect("published");
                assert_eq!(answer["delivered"], 1, "{answer}");
                next_push(&mut ws).await;
            } else {
                let kicked = admin(&nodes[0], "/admin/v1/users/carol/kick", json!({})).await;
                assert_eq!(kicked.status(), 200);
                assert_eq!(close_code(&mut ws).await, Some(close::REVOKED));
            }
            let row = (
                calls(cluster, &stats, "publish"),
                calls(cluster, &stats, "spublish"),
                bus_messages(cluster, "publish") - publish,
                bus_messages(cluster, "publishshard") - shard,
            );
            println!(
                "{n:5} | {op:4} | {:7} | {:8} | {:11} | {:16}",
                row.0, row.1, row.2, row.3
            );
            assert_eq!(row.0, 0, "no classic PUBLISH");
            assert_eq!(row.2, 0, "nothing broadcast over the Cluster bus");
        }
    }
}

/// The primary that holds `user`'s push history: the one serving the slot of the user's
/// hub partition (the history shares it).
fn primary_of_history(cluster: &RedisCluster, user: &str) -> u16 {
    let pattern = format!("*:pushes:{user}");
    cluster
        .primaries()
        .into_iter()
        .find(|p| {
            matches!(
                p.command(&["KEYS", &pattern]),
                support::redis::Reply::Array(Some(keys)) if !keys.is_empty()
            )
        })
        .map(|p| p.port())
        .expect("a primary holds the history")
}

/// The primary of a partition's slot dies (SIGKILL) and its replica takes over: the
/// hub subscribes to the partition again on the new primary, and a later push through
/// another node still reaches the socket, which stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_arrives_after_its_partitions_primary_failed_over() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes_at(&cluster.url()).await;
    let mut ws = socket(&b, "bob").await;
    let first = push(&a, "bob", 1).await.expect("published");
    assert_eq!(first["delivered"], 1, "{first}");
    assert_eq!(next_push(&mut ws).await.1, 1);

    let killed = cluster.node(primary_of_history(&cluster, "bob"));
    killed.kill();
    cluster.wait_for_failover(Duration::from_secs(20));

    // Until the nodes have found the new primary, a push may be refused (503) or reach
    // nobody yet; one must get through within seconds, and reach the socket on b.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 1;
    let delivered = loop {
        n += 1;
        match push(&a, "bob", n).await {
            Ok(answer) if answer["delivered"] == 1 => break n,
            Ok(_) | Err(503) => {}
            Err(status) => panic!("publish answered {status}"),
        }
        assert!(
            Instant::now() < deadline,
            "no push delivered after the failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        let (_, got) = next_push(&mut ws).await;
        if got == delivered {
            break;
        }
        assert!(got < delivered, "pushes in order");
    }
}

/// A slot of a hub partition moves to another primary (resharding): Redis unsubscribes
/// every node from that partition's channel without closing anything, and fred does
/// not say so. The partition falls quiet on each node, whose link check then finds its
/// own message does not come back, reconnects and subscribes again: pushes reach the
/// socket again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_slot_moved_is_subscribed_again() {
    let cluster = RedisCluster::start();
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut nodes = Vec::new();
    for _ in 0..2 {
        // No history: nothing is stored in the partition's slot, so it can move.
        let node = TestServer::builder()
            .redis_url(cluster.url())
            .data_dir(dir.clone())
            .config(|c| c.push_history = 0)
            .start()
            .await;
        nodes.push(node);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut ws = socket(b, "bob").await;
    assert_eq!(push(a, "bob", 1).await.expect("published")["delivered"], 1);
    assert_eq!(next_push(&mut ws).await.1, 1);

    // bob's partition: the hub channel in the sixteenth of the slot range of "bob".
    let sixteenth = |slot: u16| usize::from(slot) * 16 / usize::from(support::cluster::SLOTS);
    let partition = sixteenth(cluster.slot_of("bob"));
    let channel = cluster
        .primaries()
        .into_iter()
        .flat_map(|p| match p.command(&["PUBSUB", "SHARDCHANNELS"]) {
            support::redis::Reply::Array(Some(names)) => names,
            other => panic!("PUBSUB SHARDCHANNELS: {other:?}"),
        })
        .filter_map(|name| name.text())
        .find(|name| sixteenth(cluster.slot_of(name)) == partition)
        .expect("bob's partition channel is subscribed");
    let slot = cluster.slot_of(&channel).to_string();
    let owner = cluster.primary_of_slot(cluster.slot_of(&channel));
    assert_eq!(
        owner.command(&["CLUSTER", "COUNTKEYSINSLOT", &slot]),
        support::redis::Reply::Integer(0),
        "the slot holds no keys"
    );
    let target = cluster
        .primaries()
        .into_iter()
        .find(|p| p.port() != owner.port())
        .expect("another primary");
    let target_id = target.command(&["CLUSTER", "MYID"]).text().expect("id");
    let mut primaries = vec![target, owner];
    primaries.extend(cluster.primaries());
    for node in primaries {
        let reply = node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        assert_eq!(reply, support::redis::Reply::Simple("OK".into()));
    }

    // The first publish after the move may meet a MOVED (503: fred tries a command
    // once); the next go to the new owner, where no node listens until it notices.
    // Pushes keep coming meanwhile, so the hub as a whole never falls quiet.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 1;
    let mut lost = 0;
    loop {
        n += 1;
        match push(a, "bob", n).await {
            Ok(answer) if answer["delivered"] == 1 => break,
            Ok(_) => lost += 1,
            Err(503) => {}
            Err(status) => panic!("publish answered {status}"),
        }
        assert!(
            Instant::now() < deadline,
            "the partition was not subscribed again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(lost > 0, "the move unsubscribed the nodes");
    loop {
        let (_, got) = next_push(&mut ws).await;
        if got == n {
            break;
        }
    }
}
