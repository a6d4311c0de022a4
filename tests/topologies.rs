//! The Redis Cluster and Sentinel fixtures themselves: they form, a store connects
//! through their URLs, and a killed primary is replaced (what the failover tests rely
//! on).

mod support;

use std::time::Duration;

use support::{RedisCluster, RedisSentinel};
use ticketgate::store::redis::{RedisSettings, RedisStore};
use ticketgate::store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_fails_over_and_its_killed_primary_rejoins() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.primaries().len(), 3);
    let store = RedisStore::connect(&cluster.url(), RedisSettings::default())
        .await
        .expect("connect to the cluster");
    store.ping().await.expect("ping");

    let key = "tg:{fixture}:probe";
    let primary = cluster.primary_of_key(key).port();
    let killed = cluster.kill_primary_of_key(key);
    assert_eq!(killed.port(), primary);
    assert!(!killed.is_running());
    cluster.wait_for_failover(Duration::from_secs(20));
    assert_ne!(
        cluster.primary_of_key(key).port(),
        primary,
        "a replica took over"
    );

    killed.restart();
    assert!(killed.is_running());
    cluster.wait_for_failover(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_set_fails_over() {
    let set = RedisSentinel::start();
    let store = RedisStore::connect(&set.url(), RedisSettings::default())
        .await
        .expect("connect through the sentinels");
    store.ping().await.expect("ping");

    let old = set.kill_primary().port();
    let (new, _took) = set.wait_for_failover(Duration::from_secs(20));
    assert_ne!(new.port(), old);
}
