//! Push history and recovery (PROTOCOL §10): a push is kept in its user's history
//! before it is delivered, and a client that connects with `?since=<id>` gets, after
//! the welcome, every push it missed, then live ones, none twice, in id order.
//! On both stores, and across two nodes of one Redis.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{close_code, two_nodes, StoreKind, TestServer};
use ticketgate_sdk::protocol::{close, ClientFrame};
use ticketgate_sdk::{Client, ClientType, Session, Ticket, Welcome, WsStream};
use tokio_tungstenite::tungstenite::Message;

async fn publish(server: &TestServer, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("http://{}/admin/v1/publish", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&body)
        .send()
        .await
        .expect("publish sent")
        .json()
        .await
        .expect("publish answer")
}

/// Publishes `n` to alice; answers the push's id.
async fn push(server: &TestServer, n: u64) -> String {
    let answer = publish(
        server,
        json!({"user_id": "alice", "topic": "t", "data": {"n": n}}),
    )
    .await;
    answer["id"]
        .as_str()
        .expect("publish answers an id")
        .to_owned()
}

async fn connect(client: &Client, session: &Session, since: Option<&str>) -> (WsStream, Welcome) {
    let ticket = client.mint_ticket(session).await.expect("mint");
    client
        .connect_since(session, &ticket, since)
        .await
        .expect("connect")
}

/// The next text frame, as JSON.
async fn frame(ws: &mut WsStream) -> Value {
    loop {
        match ws.next().await.expect("a frame").expect("not an error") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// The next push frame's id (and its data's `n`).
async fn next_push(ws: &mut WsStream) -> (String, u64) {
    let f = frame(ws).await;
    assert_eq!(f["type"], "push", "{f}");
    (
        f["id"].as_str().expect("id").to_owned(),
        f["data"]["n"].as_u64().expect("n"),
    )
}

/// Proves nothing else is queued before now: a ping's pong comes next.
async fn nothing_queued(ws: &mut WsStream) {
    let ping = serde_json::to_string(&ClientFrame::Ping).expect("json");
    ws.send(Message::text(ping)).await.expect("send ping");
    assert_eq!(
        frame(ws).await["type"],
        "pong",
        "nothing came before the pong"
    );
}

both_stores!(
    a_push_published_while_offline_arrives_at_the_next_connect,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let (mut ws, welcome) = connect(&client, &session, None).await;
        assert_eq!(
            (welcome.recovered, welcome.last_id.clone()),
            (None, None),
            "no since: no fields"
        );
        let p1 = push(&server, 1).await;
        assert_eq!(next_push(&mut ws).await, (p1.clone(), 1));
        drop(ws);

        // Nobody of bob's is connected: the answer still carries the id.
        let answer = publish(&server, json!({"user_id": "bob", "topic": "t", "data": 0})).await;
        assert_eq!(answer["delivered"], 0);
        assert!(
            answer["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{answer}"
        );

        let p2 = push(&server, 2).await;
        let p3 = push(&server, 3).await;
        let (mut ws, welcome) = connect(&client, &session, Some(&p1)).await;
        assert_eq!(welcome.recovered, Some(true));
        assert_eq!(welcome.last_id.as_deref(), Some(p3.as_str()));
        assert_eq!(next_push(&mut ws).await, (p2, 2));
        assert_eq!(next_push(&mut ws).await, (p3, 3));
        let p4 = push(&server, 4).await;
        assert_eq!(next_push(&mut ws).await, (p4, 4), "live after the replay");
        nothing_queued(&mut ws).await;
    }
);

both_stores!(
    a_trimmed_or_expired_history_is_not_recovered,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| {
                c.push_history = 2;
                c.push_history_ttl = Duration::from_millis(800);
            })
            .start()
            .await;
        let (client, session) = server.login().await;
        let mut ids = Vec::new();
        for n in 1..=4 {
            ids.push(push(&server, n).await);
        }
        let (mut ws, welcome) = connect(&client, &session, Some(&ids[0])).await;
        assert_eq!(welcome.recovered, Some(false), "push 2 was trimmed");
        assert_eq!(welcome.last_id.as_deref(), Some(ids[3].as_str()));
        nothing_queued(&mut ws).await;
        drop(ws);

        let (mut ws, welcome) = connect(&client, &session, Some(&ids[1])).await;
        assert_eq!(welcome.recovered, Some(true), "3 and 4 are held");
        assert_eq!(next_push(&mut ws).await.1, 3);
        assert_eq!(next_push(&mut ws).await.1, 4);
        drop(ws);

        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (mut ws, welcome) = connect(&client, &session, Some(&ids[3])).await;
        assert_eq!(welcome.recovered, Some(false), "the history expired");
        assert_eq!(welcome.last_id, None);
        nothing_queued(&mut ws).await;
    }
);

both_stores!(history_off_is_never_recovered, |kind| async move {
    let server = TestServer::builder()
        .store(kind)
        .config(|c| c.push_history = 0)
        .start()
        .await;
    let (client, session) = server.login().await;
    let p1 = push(&server, 1).await;
    let _p2 = push(&server, 2).await;
    let (mut ws, welcome) = connect(&client, &session, Some(&p1)).await;
    assert_eq!((welcome.recovered, welcome.last_id), (Some(false), None));
    nothing_queued(&mut ws).await;
    let p3 = push(&server, 3).await;
    assert_eq!(next_push(&mut ws).await, (p3, 3), "live pushes still flow");
});

both_stores!(
    a_session_push_is_never_replayed_to_another_session,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (phone, on_phone) = server.login_as("alice", ClientType::Mobile).await;
        let (web, on_web) = server.login_as("alice", ClientType::Web).await;
        let p0 = push(&server, 0).await;
        let to_phone = publish(
            &server,
            json!({"session_id": on_phone.session_id, "topic": "t", "data": {"n": 1}}),
        )
        .await;
        let s1 = to_phone["id"].as_str().expect("id").to_owned();
        let p2 = push(&server, 2).await;

        let (mut ws, welcome) = connect(&web, &on_web, Some(&p0)).await;
        assert_eq!(welcome.recovered, Some(true));
        assert_eq!(welcome.last_id.as_deref(), Some(p2.as_str()));
        assert_eq!(
            next_push(&mut ws).await,
            (p2.clone(), 2),
            "the phone's push is skipped"
        );
        nothing_queued(&mut ws).await;

        let (mut ws, _) = connect(&phone, &on_phone, Some(&p0)).await;
        assert_eq!(next_push(&mut ws).await, (s1, 1));
        assert_eq!(next_push(&mut ws).await, (p2, 2));
        nothing_queued(&mut ws).await;
    }
);

both_stores!(
    last_id_lets_a_new_client_start_at_the_head,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        push(&server, 1).await;
        let p2 = push(&server, 2).await;
        // A client with nothing to resume from presents any id: not recovered, and
        // the head of the history to start from.
        let (ws, welcome) = connect(&client, &session, Some("none")).await;
        assert_eq!(welcome.recovered, Some(false));
        assert_eq!(welcome.last_id.as_deref(), Some(p2.as_str()));
        drop(ws);
        let (mut ws, welcome) = connect(&client, &session, Some(&p2)).await;
        assert_eq!(welcome.recovered, Some(true));
        nothing_queued(&mut ws).await;
        let p3 = push(&server, 3).await;
        assert_eq!(next_push(&mut ws).await, (p3, 3));
    }
);

both_stores!(
    a_malformed_since_is_refused_before_the_ticket_is_spent,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let ticket: Ticket = client.mint_ticket(&session).await.expect("mint");
        for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
            let err = client
                .connect_since(&session, &ticket, Some(bad))
                .await
                .expect_err("refused");
            match err {
                ticketgate_sdk::ClientError::Api {
                    status, raw_code, ..
                } => {
                    assert_eq!((status, raw_code.as_str()), (400, "bad_request"), "{bad:?}")
                }
                other => panic!("expected 400 for {bad:?}, got {other:?}"),
            }
        }
        client
            .connect_since(&session, &ticket, Some(&"x".repeat(64)))
            .await
            .expect("the ticket is still good");
    }
);

/// Two nodes of one deployment: one Redis, one data dir.
/// A publisher through node b, and a client on node a that is drained mid-stream and
/// resumes on b with the resume ticket and its last id: every push arrives once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_publishing_across_a_drain_is_received_once_in_order() {
    const N: u64 = 150;
    let (a, b) = two_nodes().await;
    let b = Arc::new(b);
    let (client, session) = a.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let (mut ws, _) = client.connect(&session, &ticket).await.expect("connect");

    let publisher = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 1..=N {
                ids.push(push(&b, n).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ids
        })
    };
    let mut got: Vec<(String, u64)> = Vec::new();
    while got.len() < 20 {
        got.push(next_push(&mut ws).await);
    }
    let stop = tokio::spawn(a.stop());
    // Pushes keep coming until the resume frame and the 1001.
    let resume = loop {
        let f = frame(&mut ws).await;
        match f["type"].as_str() {
            Some("push") => got.push((
                f["id"].as_str().expect("id").to_owned(),
                f["data"]["n"].as_u64().expect("n"),
            )),
            Some("resume") => break f,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close_code(&mut ws).await, Some(close::GOING_AWAY));
    stop.await.expect("a stopped");

    let mut resumed = ticket.clone();
    resumed.ticket = resume["ticket"].as_str().expect("ticket").to_owned();
    resumed.ws_url = format!("ws://{}/v1/connect", b.addr);
    let last = got.last().expect("some pushes").0.clone();
    let (mut ws, welcome) = client
        .connect_since(&session, &resumed, Some(&last))
        .await
        .expect("resumed on b");
    assert_eq!(welcome.recovered, Some(true));
    while got.len() < N as usize {
        got.push(next_push(&mut ws).await);
    }
    let published = publisher.await.expect("publisher");
    let numbers: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(numbers, (1..=N).collect::<Vec<_>>(), "each once, in order");
    let ids: Vec<String> = got.into_iter().map(|g| g.0).collect();
    assert_eq!(ids, published, "the ids the publisher was answered");
    nothing_queued(&mut ws).await;
}

/// Two publishers, one through each node, and a socket of the user on each node: both
/// sockets get the same pushes in the same order, the order of their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_from_two_nodes_come_in_one_order_to_every_socket() {
    let (a, b) = two_nodes().await;
    one_order_for_every_socket(a, b).await;
}

/// The same on a Redis Cluster, whose hub is sharded: a user's pushes all travel on the
/// user's partition, whose slot the history shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_from_two_nodes_come_in_one_order_to_every_socket_on_a_cluster() {
    let _turn = StoreKind::Cluster.take_turn().await;
    let (a, b) = support::two_nodes_at(&support::RedisCluster::shared().url()).await;
    one_order_for_every_socket(a, b).await;
}

async fn one_order_for_every_socket(a: TestServer, b: TestServer) {
    const EACH: u64 = 60;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let (client, session) = a.login().await;
    let (mut on_a, _) = connect(&client, &session, None).await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let mut at_b = ticket.clone();
    at_b.ws_url = format!("ws://{}/v1/connect", b.addr);
    let (mut on_b, _) = client.connect(&session, &at_b).await.expect("connect to b");

    let publishers: Vec<_> = [(a.clone(), 0), (b.clone(), 1000)]
        .into_iter()
        .map(|(node, base)| {
            tokio::spawn(async move {
                for n in 1..=EACH {
                    push(&node, base + n).await;
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for ws in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..2 * EACH {
            got.push(next_push(ws).await);
        }
        seen.push(got);
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    assert_eq!(seen[0], seen[1], "one order for every socket");
    let seqs: Vec<u64> = seen[0]
        .iter()
        .map(|(id, _)| {
            let (_, seq) = id.rsplit_once(':').expect("epoch:seq");
            seq.parse().expect("seq")
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in id order: {seqs:?}"
    );
}

/// A burst of pushes published through one node reaches the sockets on another node,
/// every one of them: the hub's subscriber must not drop messages under a burst (a
/// dropped hub message is a push that is in the history but never reaches a socket
/// that stays open, so its client never asks for it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_through_another_node_reaches_every_socket() {
    // Per user and round: fewer than a socket's inbox holds, so none is a slow consumer.
    const PER_USER: u64 = 24;
    const ROUNDS: u64 = 4;
    let (a, b) = two_nodes().await;
    let users = ["alice", "bob", "carol"];
    let mut sockets = Vec::new();
    for user in users {
        let (client, session) = a.login_as(user, ClientType::Mobile).await;
        sockets.push(connect(&client, &session, None).await.0);
    }
    for round in 0..ROUNDS {
        let publishes = users.iter().flat_map(|user| {
            let b = &b;
            (0..PER_USER).map(move |i| async move {
                let n = round * PER_USER + i;
                publish(b, json!({"user_id": user, "topic": "t", "data": {"n": n}})).await
            })
        });
        futures_util::future::join_all(publishes).await;
        // Each socket drains this round before the next one is published.
        for ws in &mut sockets {
            for _ in 0..PER_USER {
                tokio::time::timeout(Duration::from_secs(10), next_push(ws))
                    .await
                    .expect("every push of the burst arrives");
            }
        }
    }
    for ws in &mut sockets {
        nothing_queued(ws).await;
    }
}
