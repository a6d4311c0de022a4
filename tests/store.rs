//! The store contract, written once in [`cases`] and run against every store by
//! [`store_suite!`]: the memory store (with and without its sweeper), the durable store
//! (on a temporary file), Redis (a real `redis-server` per test), and a Redis Cluster
//! and a Sentinel set (one each per run of this binary, shared by the cases). Then what only one
//! store has: Redis's round trips and outage behaviour, the memory store's sweeper, the
//! durable store's file across a reopen.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use support::{redis::RedisServer, RedisCluster, RedisSentinel};
use ticketgate::store::{
    durable::{DurableError, DurableStore, FILE_NAME as STORE_FILE},
    memory::MemoryStore,
    redis::{RedisSettings, RedisStore},
    utc_day, AdmitOutcome, AdmitTicket, AppendPush, ConfirmOutcome, ConfirmQr, HistoryLimits,
    MintOutcome, MintTicket, NewQr, PollOutcome, PollQr, PushId, PushReplay, QrContext, QrMode,
    QrScanner, QrSession, RenewAccess, RenewOutcome, RotateOutcome, RotateRefresh, ScanOutcome,
    ScanQr, SessionRecord, Store, StoreError, TicketGrant, UserSession,
};
use ticketgate_sdk::ClientType;

/// A store under test, and whatever must live as long as it.
struct Fixture {
    store: Arc<dyn Store>,
    _redis: Option<RedisServer>,
    _dir: Option<tempfile::TempDir>,
}

async fn memory_store() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        _redis: None,
        _dir: None,
    }
}

async fn memory_store_with_sweeper() -> Fixture {
    let store = MemoryStore::new();
    store.spawn_sweeper(Duration::from_millis(20));
    Fixture {
        store: Arc::new(store),
        _redis: None,
        _dir: None,
    }
}

async fn redis_store() -> Fixture {
    let redis = RedisServer::start();
    let store = connect(&redis).await;
    Fixture {
        store: Arc::new(store),
        _redis: Some(redis),
        _dir: None,
    }
}

/// The test binary's shared Redis Cluster; each case uses keys of its own.
async fn cluster_store() -> Fixture {
    shared_redis_store(&RedisCluster::shared().url()).await
}

/// The test binary's shared primary/replica/Sentinel set.
async fn sentinel_store() -> Fixture {
    shared_redis_store(&RedisSentinel::shared().url()).await
}

async fn shared_redis_store(url: &str) -> Fixture {
    let store = RedisStore::connect(url, RedisSettings::default())
        .await
        .expect("connect to the shared test Redis");
    Fixture {
        store: Arc::new(store),
        _redis: None,
        _dir: None,
    }
}

async fn durable_store() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_durable(dir.path()).await;
    tokio::spawn(store.sweeper(Duration::from_millis(20)));
    Fixture {
        store: Arc::new(store),
        _redis: None,
        _dir: Some(dir),
    }
}

async fn open_durable(dir: &std::path::Path) -> DurableStore {
    let path = dir.join(STORE_FILE);
    tokio::task::spawn_blocking(move || DurableStore::open(&path))
        .await
        .expect("open task")
        .expect("open the store file")
}

async fn connect(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(&redis.url(), RedisSettings::default())
        .await
        .expect("connect to the test redis-server")
}

/// One `#[tokio::test]` per case in [`cases`], in a module named after the store.
macro_rules! store_suite {
    ($store:ident, $fixture:path) => {
        mod $store {
            store_suite!(@cases $fixture;
                session_create_read_revoke,
                session_expires_at_its_deadline,
                minted_ticket_is_admitted_with_its_grant,
                ticket_is_admitted_once,
                device_mismatch_burns_the_ticket,
                replayed_nonce_stores_nothing,
                revoked_session_mints_and_admits_nothing,
                ticket_expires_after_its_ttl,
                nonce_is_accepted_again_after_its_ttl,
                concurrent_admits_have_one_winner,
                concurrent_mints_with_one_nonce_have_one_winner,
                nonces_are_per_session,
                ping_answers,
                rotation_replaces_the_token_and_the_old_one_is_reuse,
                unknown_token_is_reuse,
                a_revoked_session_is_gone_not_reused,
                concurrent_rotations_of_one_token_have_one_winner,
                parent_token_is_accepted_within_grace,
                grandparent_token_is_reuse_even_within_grace,
                parent_token_after_grace_is_reuse,
                parent_token_without_grace_is_reuse,
                rotation_from_another_device_changes_nothing,
                rotations_stop_at_the_daily_cap,
                access_token_is_renewed_once_per_jti,
                renewals_and_rotations_share_the_daily_cap,
                renewal_of_a_gone_session_is_refused,
                concurrent_renewals_of_one_jti_have_one_winner,
                user_sessions_are_listed_oldest_first,
                expired_sessions_are_not_listed,
                users_are_blocked_one_by_one,
                qr_login_this_is_scanned_confirmed_and_redeemed_once,
                qr_login_other_gives_the_scanner_its_own_secret,
                qr_wrong_secret_or_device_learns_nothing,
                qr_rotation_replaces_the_id_and_keeps_the_secret,
                qr_fast_polls_slow_down_only_after_the_secret_verified,
                qr_only_the_approver_confirms,
                concurrent_qr_confirms_have_one_winner,
                concurrent_qr_redeems_have_one_winner,
                qr_expires_after_its_life,
                pushes_are_replayed_after_since_to_their_sessions,
                a_trimmed_history_recovers_only_what_it_holds,
                an_expired_history_starts_a_new_epoch,
                a_foreign_or_future_since_is_not_recovered,
                concurrent_appends_get_distinct_increasing_ids,
                histories_are_per_user,
            );
        }
    };
    (@cases $fixture:path; $($case:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture = $fixture().await;
            crate::cases::$case(fixture.store.clone()).await;
        }
    )+};
}

store_suite!(memory, crate::memory_store);
store_suite!(memory_swept, crate::memory_store_with_sweeper);
store_suite!(redis, crate::redis_store);
store_suite!(durable, crate::durable_store);
store_suite!(cluster, crate::cluster_store);
store_suite!(sentinel, crate::sentinel_store);

/// The contract every store keeps.
mod cases {
    use super::*;

    const DEVICE: &str = "7d0b8e9c-2f4a-4c1e-9b1a-3c5d7e9f1a2b";
    const OTHER_DEVICE: &str = "0e6f2a4c-8b1d-4e3f-a5c7-9d1b3f5a7c9e";
    /// Rounds of each concurrency race.
    const RACE_ROUNDS: usize = 20;

    pub(crate) async fn session_create_read_revoke(store: Arc<dyn Store>) {
        let record = session_record(&unique("sess"));
        let sid = record.session_id.as_str();
        assert_eq!(read(&store, sid).await, None);

        create(&store, &record).await;
        assert_eq!(read(&store, sid).await, Some(record.clone()));

        let replaced = SessionRecord {
            refresh_hash: "ab".repeat(32),
            client_type: ClientType::Web,
            ..record.clone()
        };
        create(&store, &replaced).await;
        assert_eq!(read(&store, sid).await, Some(replaced));

        assert!(store.revoke_session(sid).await.expect("revoke"));
        assert_eq!(read(&store, sid).await, None);
        assert!(!store.revoke_session(sid).await.expect("revoke again"));
    }

    pub(crate) async fn session_expires_at_its_deadline(store: Arc<dyn Store>) {
        let mut record = session_record(&unique("sess"));
        record.expires_at = now_unix() + 2;
        let sid = record.session_id.clone();
        create(&store, &record).await;
        assert_eq!(read(&store, &sid).await, Some(record.clone()));

        sleep_until_unix(record.expires_at, Duration::from_millis(500)).await;
        assert_eq!(read(&store, &sid).await, None);
        let grant = grant(DEVICE);
        assert_eq!(
            mint(&store, &minting(&sid, "n1", "t1", &grant)).await,
            MintOutcome::SessionGone
        );
        assert!(!store.revoke_session(&sid).await.expect("revoke"));

        // A record whose end has already passed is not stored at all.
        record.expires_at = now_unix() - 10;
        create(&store, &record).await;
        assert_eq!(read(&store, &sid).await, None);
    }

    pub(crate) async fn minted_ticket_is_admitted_with_its_grant(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        let grant = grant(DEVICE);
        assert!(grant.user_id.contains('|'));
        assert_eq!(
            mint(&store, &minting(&sid, "n1", "t1", &grant)).await,
            MintOutcome::Minted
        );
        assert_eq!(
            admit(&store, &sid, "t1", DEVICE).await,
            AdmitOutcome::Admitted(grant)
        );
    }

    pub(crate) async fn ticket_is_admitted_once(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        let grant = grant(DEVICE);
        mint_ok(&store, &minting(&sid, "n1", "t1", &grant)).await;
        assert!(matches!(
            admit(&store, &sid, "t1", DEVICE).await,
            AdmitOutcome::Admitted(_)
        ));
        assert_eq!(
            admit(&store, &sid, "t1", DEVICE).await,
            AdmitOutcome::Unknown
        );
        assert_eq!(
            admit(&store, &sid, "never-minted", DEVICE).await,
            AdmitOutcome::Unknown
        );
    }

    pub(crate) async fn device_mismatch_burns_the_ticket(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        let grant = grant(DEVICE);
        mint_ok(&store, &minting(&sid, "n1", "t1", &grant)).await;
        assert_eq!(
            admit(&store, &sid, "t1", OTHER_DEVICE).await,
            AdmitOutcome::DeviceMismatch
        );
        assert_eq!(
            admit(&store, &sid, "t1", DEVICE).await,
            AdmitOutcome::Unknown
        );

        // A device that merely starts like the bound one is another device.
        mint_ok(&store, &minting(&sid, "n2", "t2", &grant)).await;
        let prefix = &DEVICE[..8];
        assert_eq!(
            admit(&store, &sid, "t2", prefix).await,
            AdmitOutcome::DeviceMismatch
        );
    }

    pub(crate) async fn replayed_nonce_stores_nothing(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        let grant = grant(DEVICE);
        mint_ok(&store, &minting(&sid, "n1", "t1", &grant)).await;
        assert_eq!(
            mint(&store, &minting(&sid, "n1", "t2", &grant)).await,
            MintOutcome::NonceReplayed
        );
        assert_eq!(
            admit(&store, &sid, "t2", DEVICE).await,
            AdmitOutcome::Unknown
        );
        assert_eq!(
            admit(&store, &sid, "t1", DEVICE).await,
            AdmitOutcome::Admitted(grant)
        );
    }

    pub(crate) async fn revoked_session_mints_and_admits_nothing(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        let grant = grant(DEVICE);
        mint_ok(&store, &minting(&sid, "n1", "before", &grant)).await;
        assert!(store.revoke_session(&sid).await.expect("revoke"));

        // Minted before the revoke: refused, and burnt.
        assert_eq!(
            admit(&store, &sid, "before", DEVICE).await,
            AdmitOutcome::SessionGone
        );
        assert_eq!(
            admit(&store, &sid, "before", DEVICE).await,
            AdmitOutcome::Unknown
        );

        // Minted after: refused, and nothing was stored, not even the nonce.
        assert_eq!(
            mint(&store, &minting(&sid, "n2", "after", &grant)).await,
            MintOutcome::SessionGone
        );
        assert_eq!(
            admit(&store, &sid, "after", DEVICE).await,
            AdmitOutcome::Unknown
        );
        create(&store, &session_record(&sid)).await;
        assert_eq!(
            mint(&store, &minting(&sid, "n2", "again", &grant)).await,
            MintOutcome::Minted
        );

        assert_eq!(
            mint(&store, &minting(&unique("ghost"), "n1", "t1", &grant)).await,
            MintOutcome::SessionGone
        );
    }

    pub(crate) async fn ticket_expires_after_its_ttl(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        let grant = grant(DEVICE);
        let short = |nonce, ticket_id| MintTicket {
            ticket_ttl: Duration::from_millis(200),
            ..minting(&sid, nonce, ticket_id, &grant)
        };
        mint_ok(&store, &short("n1", "fresh")).await;
        mint_ok(&store, &short("n2", "stale")).await;
        assert!(matches!(
            admit(&store, &sid, "fresh", DEVICE).await,
            AdmitOutcome::Admitted(_)
        ));

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            admit(&store, &sid, "stale", DEVICE).await,
            AdmitOutcome::Unknown
        );
    }

    pub(crate) async fn nonce_is_accepted_again_after_its_ttl(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        let grant = grant(DEVICE);
        let short = |ticket_id| MintTicket {
            nonce_ttl: Duration::from_millis(200),
            ..minting(&sid, "n1", ticket_id, &grant)
        };
        mint_ok(&store, &short("t1")).await;
        assert_eq!(mint(&store, &short("t2")).await, MintOutcome::NonceReplayed);

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(mint(&store, &short("t3")).await, MintOutcome::Minted);
        assert_eq!(mint(&store, &short("t4")).await, MintOutcome::NonceReplayed);
    }

    pub(crate) async fn concurrent_admits_have_one_winner(store: Arc<dyn Store>) {
        const RACERS: usize = 200;
        let sid = live_session(&store).await;
        // Several rounds: the memory store's race window, if there were one, is short.
        for round in 0..RACE_ROUNDS {
            let ticket_id = format!("t{round}");
            let nonce = format!("n{round}");
            mint_ok(&store, &minting(&sid, &nonce, &ticket_id, &grant(DEVICE))).await;

            let outcomes = race(RACERS, |_| {
                let store = store.clone();
                let sid = sid.clone();
                let ticket_id = ticket_id.clone();
                async move { admit(&store, &sid, &ticket_id, DEVICE).await }
            })
            .await;

            let admitted = count(&outcomes, |o| matches!(o, AdmitOutcome::Admitted(_)));
            let unknown = count(&outcomes, |o| *o == AdmitOutcome::Unknown);
            assert_eq!(
                (admitted, unknown),
                (1, RACERS - 1),
                "round {round}: {outcomes:?}"
            );
        }
    }

    pub(crate) async fn concurrent_mints_with_one_nonce_have_one_winner(store: Arc<dyn Store>) {
        const RACERS: usize = 50;
        let sid = live_session(&store).await;
        for round in 0..RACE_ROUNDS {
            let nonce = format!("shared{round}");
            let ticket_id = |i: usize| format!("r{round}t{i}");

            let outcomes = race(RACERS, |i| {
                let store = store.clone();
                let sid = sid.clone();
                let (nonce, ticket_id) = (nonce.clone(), ticket_id(i));
                async move {
                    let grant = grant(DEVICE);
                    mint(&store, &minting(&sid, &nonce, &ticket_id, &grant)).await
                }
            })
            .await;

            let minted: Vec<usize> = (0..RACERS)
                .filter(|&i| outcomes[i] == MintOutcome::Minted)
                .collect();
            let replayed = count(&outcomes, |o| *o == MintOutcome::NonceReplayed);
            assert_eq!(
                (minted.len(), replayed),
                (1, RACERS - 1),
                "round {round}: {outcomes:?}"
            );

            // Only the winner's ticket exists.
            for i in 0..RACERS {
                let outcome = admit(&store, &sid, &ticket_id(i), DEVICE).await;
                if i == minted[0] {
                    assert!(matches!(outcome, AdmitOutcome::Admitted(_)), "{outcome:?}");
                } else {
                    assert_eq!(outcome, AdmitOutcome::Unknown, "round {round}, ticket {i}");
                }
            }
        }
    }

    pub(crate) async fn nonces_are_per_session(store: Arc<dyn Store>) {
        let first = live_session(&store).await;
        let second = live_session(&store).await;
        let grant = grant(DEVICE);
        mint_ok(&store, &minting(&first, "same", "t1", &grant)).await;
        mint_ok(&store, &minting(&second, "same", "t1", &grant)).await;
        assert!(matches!(
            admit(&store, &first, "t1", DEVICE).await,
            AdmitOutcome::Admitted(_)
        ));
        assert!(matches!(
            admit(&store, &second, "t1", DEVICE).await,
            AdmitOutcome::Admitted(_)
        ));
    }

    pub(crate) async fn ping_answers(store: Arc<dyn Store>) {
        store.ping().await.expect("ping");
    }

    pub(crate) async fn rotation_replaces_the_token_and_the_old_one_is_reuse(
        store: Arc<dyn Store>,
    ) {
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let old = record.refresh_hash.as_str();
        let new = fresh_hash();
        let rotated = SessionRecord {
            refresh_hash: new.clone(),
            ..record.clone()
        };
        assert_eq!(
            rotate(&store, &rotating(sid, old, &new)).await,
            RotateOutcome::Rotated(rotated.clone())
        );
        assert_eq!(read(&store, sid).await, Some(rotated));

        // The old token again: theft, the session dies.
        assert_eq!(
            rotate(&store, &rotating(sid, old, &fresh_hash())).await,
            RotateOutcome::Reused
        );
        assert_revoked_for_reuse(&store, sid, &new).await;
    }

    pub(crate) async fn a_revoked_session_is_gone_not_reused(store: Arc<dyn Store>) {
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        assert!(store.revoke_session(sid).await.expect("revoke"));
        assert_eq!(
            rotate(&store, &rotating(sid, &record.refresh_hash, &fresh_hash())).await,
            RotateOutcome::SessionGone
        );
    }

    pub(crate) async fn unknown_token_is_reuse(store: Arc<dyn Store>) {
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        assert_eq!(
            rotate(&store, &rotating(sid, &fresh_hash(), &fresh_hash())).await,
            RotateOutcome::Reused
        );
        assert_revoked_for_reuse(&store, sid, &record.refresh_hash).await;
    }

    pub(crate) async fn concurrent_rotations_of_one_token_have_one_winner(store: Arc<dyn Store>) {
        const RACERS: usize = 50;
        for round in 0..RACE_ROUNDS {
            let record = live_record(&store).await;
            let sid = record.session_id.clone();

            let outcomes = race(RACERS, |_| {
                let store = store.clone();
                let (sid, current) = (sid.clone(), record.refresh_hash.clone());
                async move { rotate(&store, &rotating(&sid, &current, &fresh_hash())).await }
            })
            .await;

            // Serially: one rotates, the next is reuse and revokes the family; the
            // rest find the reuse marker and are reuse too.
            let rotated = count(&outcomes, |o| matches!(o, RotateOutcome::Rotated(_)));
            let reused = count(&outcomes, |o| *o == RotateOutcome::Reused);
            let gone = count(&outcomes, |o| *o == RotateOutcome::SessionGone);
            assert_eq!(
                (rotated, reused, gone),
                (1, RACERS - 1, 0),
                "round {round}: {outcomes:?}"
            );
            assert_eq!(read(&store, &sid).await, None, "round {round}");
        }
    }

    pub(crate) async fn parent_token_is_accepted_within_grace(store: Arc<dyn Store>) {
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let grace = |presented, new| RotateRefresh {
            grace: Duration::from_secs(2),
            ..rotating(sid, presented, new)
        };
        let (parent, first, second) = (record.refresh_hash.as_str(), fresh_hash(), fresh_hash());
        rotate_ok(&store, &grace(parent, &first)).await;

        // A retry with the parent (the first answer was lost) rotates again...
        let retried = rotate_ok(&store, &grace(parent, &second)).await;
        assert_eq!(retried.refresh_hash, second);
        assert_eq!(read(&store, sid).await, Some(retried));

        // ...and the token the first call issued is no longer current.
        assert_eq!(
            rotate(&store, &grace(&first, &fresh_hash())).await,
            RotateOutcome::Reused
        );
        assert_revoked_for_reuse(&store, sid, &second).await;
    }

    pub(crate) async fn grandparent_token_is_reuse_even_within_grace(store: Arc<dyn Store>) {
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let grace = |presented, new| RotateRefresh {
            grace: Duration::from_secs(2),
            ..rotating(sid, presented, new)
        };
        let grandparent = record.refresh_hash.as_str();
        let (parent, current) = (fresh_hash(), fresh_hash());
        rotate_ok(&store, &grace(grandparent, &parent)).await;
        rotate_ok(&store, &grace(&parent, &current)).await;

        assert_eq!(
            rotate(&store, &grace(grandparent, &fresh_hash())).await,
            RotateOutcome::Reused
        );
        assert_revoked_for_reuse(&store, sid, &current).await;
    }

    pub(crate) async fn parent_token_after_grace_is_reuse(store: Arc<dyn Store>) {
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let grace = |presented, new| RotateRefresh {
            grace: Duration::from_millis(300),
            ..rotating(sid, presented, new)
        };
        let (parent, current) = (record.refresh_hash.as_str(), fresh_hash());
        rotate_ok(&store, &grace(parent, &current)).await;

        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            rotate(&store, &grace(parent, &fresh_hash())).await,
            RotateOutcome::Reused
        );
        assert_revoked_for_reuse(&store, sid, &current).await;
    }

    pub(crate) async fn parent_token_without_grace_is_reuse(store: Arc<dyn Store>) {
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let (parent, current) = (record.refresh_hash.as_str(), fresh_hash());
        rotate_ok(&store, &rotating(sid, parent, &current)).await;

        assert_eq!(
            rotate(&store, &rotating(sid, parent, &fresh_hash())).await,
            RotateOutcome::Reused
        );
        assert_revoked_for_reuse(&store, sid, &current).await;
    }

    pub(crate) async fn rotation_from_another_device_changes_nothing(store: Arc<dyn Store>) {
        clear_of_midnight().await;
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let current = record.refresh_hash.as_str();
        // Cap 1, so a mismatch that counted would show up as `Limit` below.
        let from = |device| RotateRefresh {
            device_id: device,
            cap_per_day: 1,
            ..rotating(sid, current, "f00d")
        };
        for device in [OTHER_DEVICE, &DEVICE[..8], ""] {
            assert_eq!(
                rotate(&store, &from(device)).await,
                RotateOutcome::DeviceMismatch,
                "device {device:?}"
            );
        }
        // Neither a wrong token: a mismatch is refused before the token is looked at.
        assert_eq!(
            rotate(
                &store,
                &RotateRefresh {
                    presented_hash: "bad",
                    ..from(OTHER_DEVICE)
                }
            )
            .await,
            RotateOutcome::DeviceMismatch
        );
        assert_eq!(read(&store, sid).await, Some(record.clone()));

        let rotated = rotate_ok(&store, &from(DEVICE)).await;
        assert_eq!(rotated.refresh_hash, "f00d");
    }

    pub(crate) async fn rotations_stop_at_the_daily_cap(store: Arc<dyn Store>) {
        clear_of_midnight().await;
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let capped = |cap_per_day, presented, new| RotateRefresh {
            cap_per_day,
            ..rotating(sid, presented, new)
        };
        // Five tokens: three rotations, a refused fourth, the fourth again with cap 4.
        let mut tokens = vec![record.refresh_hash.clone()];
        tokens.extend((0..4).map(|_| fresh_hash()));
        for pair in tokens[..4].windows(2) {
            rotate_ok(&store, &capped(3, &pair[0], &pair[1])).await;
        }

        assert_eq!(
            rotate(&store, &capped(3, &tokens[3], &tokens[4])).await,
            RotateOutcome::Limit
        );
        let unchanged = read(&store, sid).await.expect("session kept at the cap");
        assert_eq!(unchanged.refresh_hash, tokens[3]);

        // The refused token is still the current one: not reuse once the cap allows.
        rotate_ok(&store, &capped(4, &tokens[3], &tokens[4])).await;
    }

    pub(crate) async fn access_token_is_renewed_once_per_jti(store: Arc<dyn Store>) {
        clear_of_midnight().await;
        let sid = live_session(&store).await;
        assert_eq!(
            renew(&store, &renewing(&sid, "jti-1")).await,
            RenewOutcome::Renewed
        );
        assert_eq!(
            renew(&store, &renewing(&sid, "jti-1")).await,
            RenewOutcome::AlreadyRenewed
        );
        assert_eq!(
            renew(&store, &renewing(&sid, "jti-2")).await,
            RenewOutcome::Renewed
        );

        // The marker is the session's: another session's token with that jti renews.
        let other = live_session(&store).await;
        assert_eq!(
            renew(&store, &renewing(&other, "jti-1")).await,
            RenewOutcome::Renewed
        );
    }

    pub(crate) async fn renewals_and_rotations_share_the_daily_cap(store: Arc<dyn Store>) {
        clear_of_midnight().await;
        let record = live_record(&store).await;
        let sid = record.session_id.as_str();
        let renew_capped = |cap_per_day, jti| RenewAccess {
            cap_per_day,
            ..renewing(sid, jti)
        };
        let rotate_capped = |cap_per_day, presented, new| RotateRefresh {
            cap_per_day,
            ..rotating(sid, presented, new)
        };

        assert_eq!(
            renew(&store, &renew_capped(2, "jti-1")).await,
            RenewOutcome::Renewed
        );
        let (current, spare) = (fresh_hash(), fresh_hash());
        rotate_ok(&store, &rotate_capped(2, &record.refresh_hash, &current)).await;

        assert_eq!(
            renew(&store, &renew_capped(2, "jti-2")).await,
            RenewOutcome::Limit
        );
        assert_eq!(
            rotate(&store, &rotate_capped(2, &current, &spare)).await,
            RotateOutcome::Limit
        );

        // A refused renewal does not burn its jti.
        assert_eq!(
            renew(&store, &renew_capped(3, "jti-2")).await,
            RenewOutcome::Renewed
        );
        assert_eq!(
            rotate(&store, &rotate_capped(3, &current, &spare)).await,
            RotateOutcome::Limit
        );
    }

    pub(crate) async fn renewal_of_a_gone_session_is_refused(store: Arc<dyn Store>) {
        let sid = live_session(&store).await;
        assert!(store.revoke_session(&sid).await.expect("revoke"));
        assert_eq!(
            renew(&store, &renewing(&sid, "jti-1")).await,
            RenewOutcome::SessionGone
        );
        assert_eq!(
            renew(&store, &renewing(&unique("ghost"), "jti-1")).await,
            RenewOutcome::SessionGone
        );

        // Nothing was recorded: once the session exists, the jti renews.
        create(&store, &session_record(&sid)).await;
        assert_eq!(
            renew(&store, &renewing(&sid, "jti-1")).await,
            RenewOutcome::Renewed
        );
    }

    pub(crate) async fn concurrent_renewals_of_one_jti_have_one_winner(store: Arc<dyn Store>) {
        const RACERS: usize = 30;
        clear_of_midnight().await;
        let sid = live_session(&store).await;
        for round in 0..RACE_ROUNDS {
            let jti = format!("jti-{round}");
            let outcomes = race(RACERS, |_| {
                let store = store.clone();
                let (sid, jti) = (sid.clone(), jti.clone());
                async move { renew(&store, &renewing(&sid, &jti)).await }
            })
            .await;

            let renewed = count(&outcomes, |o| *o == RenewOutcome::Renewed);
            let already = count(&outcomes, |o| *o == RenewOutcome::AlreadyRenewed);
            assert_eq!(
                (renewed, already),
                (1, RACERS - 1),
                "round {round}: {outcomes:?}"
            );
        }

        // Each round counted once against the cap.
        let capped = |cap_per_day| RenewAccess {
            cap_per_day,
            ..renewing(&sid, "last")
        };
        let rounds = u32::try_from(RACE_ROUNDS).expect("few rounds");
        assert_eq!(renew(&store, &capped(rounds)).await, RenewOutcome::Limit);
        assert_eq!(
            renew(&store, &capped(rounds + 1)).await,
            RenewOutcome::Renewed
        );
    }

    pub(crate) async fn user_sessions_are_listed_oldest_first(store: Arc<dyn Store>) {
        let user = user_name("zoë.o-brien");
        let other = format!("{user}-2");
        let now = now_unix();
        let entry = |user: &str, age, client_type| SessionRecord {
            user_id: user.to_owned(),
            client_type,
            created_at: now - age,
            ..session_record(&unique("sess"))
        };
        let newest = entry(&user, 100, ClientType::Web);
        let oldest = entry(&user, 300, ClientType::Web);
        let middle = entry(&user, 200, ClientType::Mobile);
        let others = entry(&other, 400, ClientType::Api);
        for record in [&newest, &others, &oldest, &middle] {
            store.index_session(record).await.expect("index");
        }
        assert_eq!(
            listed(&store, &user).await,
            [&oldest, &middle, &newest].map(listing)
        );
        assert_eq!(listed(&store, &other).await, [listing(&others)]);

        unindex(&store, &user, &middle.session_id).await;
        assert_eq!(listed(&store, &user).await, [&oldest, &newest].map(listing));
        // Unindexing under the wrong user removes nothing.
        unindex(&store, &other, &oldest.session_id).await;
        unindex(&store, &user, &others.session_id).await;
        assert_eq!(listed(&store, &user).await, [&oldest, &newest].map(listing));
        assert_eq!(listed(&store, &other).await, [listing(&others)]);
        assert!(listed(&store, &user_name("nobody")).await.is_empty());
    }

    pub(crate) async fn expired_sessions_are_not_listed(store: Arc<dyn Store>) {
        let user = user_name("ops-bot@build.example");
        let now = now_unix();
        let entry = |age, expires_at| SessionRecord {
            user_id: user.clone(),
            created_at: now - age,
            expires_at,
            ..session_record(&unique("sess"))
        };
        let short = entry(50, now + 2);
        let long = entry(10, now + 3600);
        let ended = entry(100, now - 10);
        // The short one first: the index must outlive it for the long one's sake.
        for record in [&short, &long, &ended] {
            store.index_session(record).await.expect("index");
        }
        assert_eq!(listed(&store, &user).await, [&short, &long].map(listing));

        sleep_until_unix(short.expires_at, Duration::from_millis(500)).await;
        assert_eq!(listed(&store, &user).await, [listing(&long)]);
    }

    pub(crate) async fn users_are_blocked_one_by_one(store: Arc<dyn Store>) {
        let ann = user_name("ann.lee-smith");
        let bob = user_name("bob");
        let blocked = |user: String| {
            let store = store.clone();
            async move { store.is_blocked(&user).await.expect("is_blocked") }
        };
        let set = |user: String, on| {
            let store = store.clone();
            async move { store.set_blocked(&user, on).await.expect("set_blocked") }
        };
        assert!(!blocked(ann.clone()).await);
        assert!(!blocked(bob.clone()).await);

        set(ann.clone(), true).await;
        assert!(blocked(ann.clone()).await);
        assert!(!blocked(bob.clone()).await);

        set(bob.clone(), true).await;
        set(ann.clone(), false).await;
        assert!(!blocked(ann.clone()).await);
        assert!(blocked(bob.clone()).await);

        // Clearing a clear flag and setting a set one change nothing.
        set(ann.clone(), false).await;
        set(bob.clone(), true).await;
        assert!(!blocked(ann).await);
        assert!(blocked(bob).await);
    }

    // ---- QR logins ----

    const PC: &str = "4a1c2e3f-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
    const PHONE: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
    const OWNER_HASH: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const SCANNER_HASH: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const WRONG_HASH: &str = "1111111111111111111111111111111111111111111111111111111111111112";
    const ROTATE: Duration = Duration::from_secs(60);
    const INTERVAL: Duration = Duration::from_secs(2);

    /// A QR created at `t0` (unix ms); the family is new for every call.
    async fn new_qr(store: &Arc<dyn Store>, mode: QrMode, t0: i64) -> String {
        let family = unique("qr").replace('.', "");
        let approver = QrSession {
            session_id: "v1.pc-session",
            user_id: "alice",
        };
        let created = NewQr {
            family: &family,
            generation: "gen-0",
            mode,
            owner_hash: OWNER_HASH,
            owner_device: PC,
            owner_client_type: ClientType::Web,
            approver: (mode == QrMode::LoginOther).then_some(approver),
            ip: "203.0.113.7",
            now_ms: t0,
            ttl: Duration::from_secs(120),
        };
        store.create_qr(&created).await.expect("create qr");
        family
    }

    fn scanning<'a>(family: &'a str, generation: &'a str, now_ms: i64) -> ScanQr<'a> {
        ScanQr {
            family,
            generation,
            session: Some(QrSession {
                session_id: "v1.phone-session",
                user_id: "bob",
            }),
            secret_hash: SCANNER_HASH,
            ip: "198.51.100.9",
            now_ms,
            rotate_every: ROTATE,
        }
    }

    fn polling<'a>(
        family: &'a str,
        generation: &'a str,
        hash: &'a str,
        device: &'a str,
        now_ms: i64,
    ) -> PollQr<'a> {
        PollQr {
            family,
            generation,
            secret_hash: hash,
            device_id: device,
            client_type: ClientType::Web,
            now_ms,
            interval: INTERVAL,
            rotate_every: ROTATE,
            next_generation: "gen-1",
        }
    }

    async fn scan_qr(store: &Arc<dyn Store>, scan: &ScanQr<'_>) -> ScanOutcome {
        store.scan_qr(scan).await.expect("scan qr")
    }

    async fn confirm_qr(store: &Arc<dyn Store>, family: &str, sid: &str) -> ConfirmOutcome {
        let confirm = ConfirmQr {
            family,
            generation: "gen-0",
            session_id: sid,
        };
        store.confirm_qr(&confirm).await.expect("confirm qr")
    }

    async fn poll_qr(store: &Arc<dyn Store>, poll: &PollQr<'_>) -> PollOutcome {
        store.poll_qr(poll).await.expect("poll qr")
    }

    pub(crate) async fn qr_login_this_is_scanned_confirmed_and_redeemed_once(
        store: Arc<dyn Store>,
    ) {
        let t0 = now_unix() * 1000;
        let family = new_qr(&store, QrMode::LoginThis, t0).await;
        let poll = |t| polling(&family, "gen-0", OWNER_HASH, PC, t);
        assert_eq!(poll_qr(&store, &poll(t0)).await, PollOutcome::Pending);

        let mut anonymous = scanning(&family, "gen-0", t0 + 1);
        anonymous.session = None;
        assert_eq!(scan_qr(&store, &anonymous).await, ScanOutcome::NeedsSession);
        let context = QrContext {
            mode: QrMode::LoginThis,
            client_type: ClientType::Web,
            ip: "203.0.113.7".into(),
            created_at: t0 / 1000,
        };
        assert_eq!(
            scan_qr(&store, &scanning(&family, "gen-0", t0 + 2)).await,
            ScanOutcome::Scanned(context)
        );
        assert_eq!(
            scan_qr(&store, &scanning(&family, "gen-0", t0 + 3)).await,
            ScanOutcome::Gone
        );
        // The PC that asked learns nothing about the approving phone.
        assert_eq!(
            poll_qr(&store, &poll(t0 + 3_000)).await,
            PollOutcome::Scanned(None)
        );

        assert_eq!(
            confirm_qr(&store, &family, "v1.phone-session").await,
            ConfirmOutcome::Confirmed
        );
        assert_eq!(
            poll_qr(&store, &poll(t0 + 6_000)).await,
            PollOutcome::Redeemed {
                user_id: "bob".into(),
                approver_session_id: "v1.phone-session".into()
            }
        );
        assert_eq!(poll_qr(&store, &poll(t0 + 9_000)).await, PollOutcome::Gone);
        assert_eq!(
            confirm_qr(&store, &family, "v1.phone-session").await,
            ConfirmOutcome::Gone
        );
    }

    pub(crate) async fn qr_login_other_gives_the_scanner_its_own_secret(store: Arc<dyn Store>) {
        let t0 = now_unix() * 1000;
        let family = new_qr(&store, QrMode::LoginOther, t0).await;
        let mut anonymous = scanning(&family, "gen-0", t0 + 1);
        anonymous.session = None;
        assert!(
            matches!(scan_qr(&store, &anonymous).await, ScanOutcome::Scanned(c) if c.mode == QrMode::LoginOther)
        );
        // Later scans, with or without a session: gone.
        assert_eq!(scan_qr(&store, &anonymous).await, ScanOutcome::Gone);
        assert_eq!(
            scan_qr(&store, &scanning(&family, "gen-0", t0 + 2)).await,
            ScanOutcome::Gone
        );

        let phone = |t| polling(&family, "gen-0", SCANNER_HASH, PHONE, t);
        let pc = |t| polling(&family, "gen-0", OWNER_HASH, PC, t);
        // The approving PC is told who scanned; the phone is not told about itself.
        assert_eq!(
            poll_qr(&store, &phone(t0)).await,
            PollOutcome::Scanned(None)
        );
        let scanner = QrScanner {
            ip: "198.51.100.9".into(),
            scanned_at: (t0 + 1) / 1000,
        };
        assert_eq!(
            poll_qr(&store, &pc(t0)).await,
            PollOutcome::Scanned(Some(scanner))
        );
        // Only the PC's session confirms.
        assert_eq!(
            confirm_qr(&store, &family, "v1.phone-session").await,
            ConfirmOutcome::Gone
        );
        assert_eq!(
            confirm_qr(&store, &family, "v1.pc-session").await,
            ConfirmOutcome::Confirmed
        );
        // The PC sees "confirmed" but never redeems; the phone does, once.
        assert_eq!(
            poll_qr(&store, &pc(t0 + 3_000)).await,
            PollOutcome::Confirmed
        );
        assert_eq!(
            poll_qr(&store, &phone(t0 + 3_000)).await,
            PollOutcome::Redeemed {
                user_id: "alice".into(),
                approver_session_id: "v1.pc-session".into()
            }
        );
        assert_eq!(poll_qr(&store, &phone(t0 + 6_000)).await, PollOutcome::Gone);
        assert_eq!(poll_qr(&store, &pc(t0 + 6_000)).await, PollOutcome::Gone);
    }

    pub(crate) async fn qr_wrong_secret_or_device_learns_nothing(store: Arc<dyn Store>) {
        let t0 = now_unix() * 1000;
        let family = new_qr(&store, QrMode::LoginThis, t0).await;
        let unknown = unique("qr").replace('.', "");
        let answers = [
            polling(&family, "gen-0", WRONG_HASH, PC, t0),
            polling(&family, "gen-0", SCANNER_HASH, PC, t0),
            polling(&family, "gen-0", OWNER_HASH, PHONE, t0),
            PollQr {
                client_type: ClientType::Mobile,
                ..polling(&family, "gen-0", OWNER_HASH, PC, t0)
            },
            // Even for an old generation: no next id without the secret.
            polling(&family, "gen-old", WRONG_HASH, PC, t0),
            polling(&unknown, "gen-0", OWNER_HASH, PC, t0),
        ];
        for poll in &answers {
            assert_eq!(poll_qr(&store, poll).await, PollOutcome::Gone, "{poll:?}");
        }
        // None of those counted as the owner's poll: no slow-down for the owner.
        let owner = polling(&family, "gen-0", OWNER_HASH, PC, t0);
        assert_eq!(poll_qr(&store, &owner).await, PollOutcome::Pending);
    }

    pub(crate) async fn qr_rotation_replaces_the_id_and_keeps_the_secret(store: Arc<dyn Store>) {
        let t0 = now_unix() * 1000;
        let family = new_qr(&store, QrMode::LoginThis, t0).await;
        let due = t0 + ROTATE.as_millis() as i64;
        // Due but not yet rotated: a scan of the id on screen is refused already.
        assert_eq!(
            scan_qr(&store, &scanning(&family, "gen-0", due)).await,
            ScanOutcome::Gone
        );
        let rotated = PollOutcome::Rotated {
            next_generation: "gen-1".into(),
            expires_at_ms: t0 + 120_000,
        };
        let mut poll = polling(&family, "gen-0", OWNER_HASH, PC, due);
        assert_eq!(poll_qr(&store, &poll).await, rotated);
        // The old id keeps naming the new one (same secret), and nothing rotates twice.
        poll.now_ms = due + 3_000;
        poll.next_generation = "gen-2";
        assert_eq!(poll_qr(&store, &poll).await, rotated);
        assert_eq!(
            scan_qr(&store, &scanning(&family, "gen-0", due + 4_000)).await,
            ScanOutcome::Gone
        );
        let fresh = polling(&family, "gen-1", OWNER_HASH, PC, due + 6_000);
        assert_eq!(poll_qr(&store, &fresh).await, PollOutcome::Pending);
        assert!(matches!(
            scan_qr(&store, &scanning(&family, "gen-1", due + 7_000)).await,
            ScanOutcome::Scanned(_)
        ));
        // A scanned QR no longer rotates.
        let late = polling(
            &family,
            "gen-1",
            OWNER_HASH,
            PC,
            due + 3 * ROTATE.as_millis() as i64,
        );
        assert_eq!(poll_qr(&store, &late).await, PollOutcome::Scanned(None));
    }

    pub(crate) async fn qr_fast_polls_slow_down_only_after_the_secret_verified(
        store: Arc<dyn Store>,
    ) {
        let t0 = now_unix() * 1000;
        let family = new_qr(&store, QrMode::LoginThis, t0).await;
        let poll = |t| polling(&family, "gen-0", OWNER_HASH, PC, t);
        assert_eq!(poll_qr(&store, &poll(t0)).await, PollOutcome::Pending);
        assert_eq!(
            poll_qr(&store, &poll(t0 + 500)).await,
            PollOutcome::SlowDown(Duration::from_millis(1_500))
        );
        // A guesser polling fast gets "gone", never "slow down".
        let guess = polling(&family, "gen-0", WRONG_HASH, PC, t0 + 600);
        assert_eq!(poll_qr(&store, &guess).await, PollOutcome::Gone);
        // A refused poll is not counted: the pace runs from the last answered one.
        assert_eq!(
            poll_qr(&store, &poll(t0 + 2_000)).await,
            PollOutcome::Pending
        );
    }

    pub(crate) async fn qr_only_the_approver_confirms(store: Arc<dyn Store>) {
        let t0 = now_unix() * 1000;
        let family = new_qr(&store, QrMode::LoginThis, t0).await;
        // Not scanned yet: nobody confirms.
        assert_eq!(
            confirm_qr(&store, &family, "v1.phone-session").await,
            ConfirmOutcome::Gone
        );
        assert!(matches!(
            scan_qr(&store, &scanning(&family, "gen-0", t0 + 1)).await,
            ScanOutcome::Scanned(_)
        ));
        assert_eq!(
            confirm_qr(&store, &family, "v1.other-session").await,
            ConfirmOutcome::Gone
        );
        let wrong_generation = ConfirmQr {
            family: &family,
            generation: "gen-9",
            session_id: "v1.phone-session",
        };
        assert_eq!(
            store.confirm_qr(&wrong_generation).await.expect("confirm"),
            ConfirmOutcome::Gone
        );
        assert_eq!(
            confirm_qr(&store, &family, "v1.phone-session").await,
            ConfirmOutcome::Confirmed
        );
    }

    pub(crate) async fn concurrent_qr_confirms_have_one_winner(store: Arc<dyn Store>) {
        for _ in 0..RACE_ROUNDS {
            let t0 = now_unix() * 1000;
            let family = new_qr(&store, QrMode::LoginThis, t0).await;
            let scanned = scan_qr(&store, &scanning(&family, "gen-0", t0 + 1)).await;
            assert!(matches!(scanned, ScanOutcome::Scanned(_)));
            let outcomes = race(8, |_| {
                let (store, family) = (store.clone(), family.clone());
                async move { confirm_qr(&store, &family, "v1.phone-session").await }
            })
            .await;
            assert_eq!(
                count(&outcomes, |o| *o == ConfirmOutcome::Confirmed),
                1,
                "{outcomes:?}"
            );
        }
    }

    pub(crate) async fn concurrent_qr_redeems_have_one_winner(store: Arc<dyn Store>) {
        for _ in 0..RACE_ROUNDS {
            let t0 = now_unix() * 1000;
            let family = new_qr(&store, QrMode::LoginThis, t0).await;
            let scanned = scan_qr(&store, &scanning(&family, "gen-0", t0 + 1)).await;
            assert!(matches!(scanned, ScanOutcome::Scanned(_)));
            assert_eq!(
                confirm_qr(&store, &family, "v1.phone-session").await,
                ConfirmOutcome::Confirmed
            );
            let outcomes = race(8, |_| {
                let (store, family) = (store.clone(), family.clone());
                async move { poll_qr(&store, &polling(&family, "gen-0", OWNER_HASH, PC, t0)).await }
            })
            .await;
            let redeemed = count(&outcomes, |o| matches!(o, PollOutcome::Redeemed { .. }));
            assert_eq!(redeemed, 1, "{outcomes:?}");
        }
    }

    pub(crate) async fn qr_expires_after_its_life(store: Arc<dyn Store>) {
        let t0 = now_unix() * 1000;
        let family = unique("qr").replace('.', "");
        let created = NewQr {
            family: &family,
            generation: "gen-0",
            mode: QrMode::LoginThis,
            owner_hash: OWNER_HASH,
            owner_device: PC,
            owner_client_type: ClientType::Web,
            approver: None,
            ip: "203.0.113.7",
            now_ms: t0,
            ttl: Duration::from_millis(200),
        };
        store.create_qr(&created).await.expect("create qr");
        let poll = polling(&family, "gen-0", OWNER_HASH, PC, t0);
        assert_eq!(poll_qr(&store, &poll).await, PollOutcome::Pending);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let poll = polling(&family, "gen-0", OWNER_HASH, PC, t0 + 3_000);
        assert_eq!(poll_qr(&store, &poll).await, PollOutcome::Gone);
        assert_eq!(
            scan_qr(&store, &scanning(&family, "gen-0", t0 + 3_000)).await,
            ScanOutcome::Gone
        );
    }

    const HISTORY: HistoryLimits = HistoryLimits {
        max_len: 100,
        ttl: Duration::from_secs(60),
    };

    async fn append(
        store: &Arc<dyn Store>,
        user: &str,
        session: Option<&str>,
        data: &str,
        limits: HistoryLimits,
    ) -> String {
        let id = store
            .append_push(&AppendPush {
                user_id: user,
                session_id: session,
                topic: "news",
                data,
                limits,
            })
            .await
            .expect("append_push");
        assert!(PushId::is_well_formed(&id), "{id} has the protocol's form");
        id
    }

    async fn since(store: &Arc<dyn Store>, user: &str, since: &str, sid: &str) -> PushReplay {
        store
            .pushes_since(user, since, sid)
            .await
            .expect("pushes_since")
    }

    fn seq(id: &str) -> u64 {
        PushId::parse(id).expect("a server-made id").seq
    }

    fn ids(replay: &PushReplay) -> Vec<&str> {
        replay.pushes.iter().map(|p| p.id.as_str()).collect()
    }

    pub(crate) async fn pushes_are_replayed_after_since_to_their_sessions(store: Arc<dyn Store>) {
        let user = user_name("pat");
        let data = r#"{"n":[1,2.5,"x"],"big":12345678901234567890}"#;
        let p1 = append(&store, &user, None, "1", HISTORY).await;
        let p2 = append(&store, &user, Some("sid-one"), "2", HISTORY).await;
        let p3 = append(&store, &user, None, data, HISTORY).await;
        assert!(seq(&p1) < seq(&p2) && seq(&p2) < seq(&p3), "{p1} {p2} {p3}");

        let other = since(&store, &user, &p1, "sid-two").await;
        assert!(other.recovered);
        assert_eq!(other.last_id.as_deref(), Some(p3.as_str()));
        assert_eq!(ids(&other), [p3.as_str()], "another session never gets p2");
        assert_eq!(other.pushes[0].data, data, "the data's text is kept as is");
        assert_eq!(other.pushes[0].topic, "news");
        assert_eq!(other.pushes[0].session_id, None);

        let own = since(&store, &user, &p1, "sid-one").await;
        assert!(own.recovered);
        assert_eq!(ids(&own), [p2.as_str(), p3.as_str()]);
        assert_eq!(own.pushes[0].session_id.as_deref(), Some("sid-one"));

        let head = since(&store, &user, &p3, "sid-one").await;
        assert!(head.recovered, "nothing missed is recovered");
        assert!(head.pushes.is_empty());
        assert_eq!(head.last_id.as_deref(), Some(p3.as_str()));
    }

    pub(crate) async fn a_trimmed_history_recovers_only_what_it_holds(store: Arc<dyn Store>) {
        let user = user_name("tim");
        let small = HistoryLimits {
            max_len: 2,
            ..HISTORY
        };
        let mut pushed = Vec::new();
        for n in 0..4 {
            pushed.push(append(&store, &user, None, &n.to_string(), small).await);
        }
        let lost = since(&store, &user, &pushed[0], "s").await;
        assert!(!lost.recovered, "push 2 was trimmed: not recovered");
        assert!(lost.pushes.is_empty());
        assert_eq!(lost.last_id.as_deref(), Some(pushed[3].as_str()));

        let kept = since(&store, &user, &pushed[1], "s").await;
        assert!(kept.recovered, "pushes 3 and 4 are both held");
        assert_eq!(ids(&kept), [pushed[2].as_str(), pushed[3].as_str()]);
    }

    pub(crate) async fn an_expired_history_starts_a_new_epoch(store: Arc<dyn Store>) {
        let user = user_name("eve");
        let short = HistoryLimits {
            max_len: 10,
            ttl: Duration::from_millis(300),
        };
        let old = append(&store, &user, None, "1", short).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let gone = since(&store, &user, &old, "s").await;
        assert_eq!(gone, PushReplay::default(), "expired: no history at all");

        let new = append(&store, &user, None, "2", short).await;
        let (old_id, new_id) = (PushId::parse(&old), PushId::parse(&new));
        assert_ne!(
            old_id.map(|i| i.epoch),
            new_id.map(|i| i.epoch),
            "a history made anew never matches ids of the lost one"
        );
        let after = since(&store, &user, &old, "s").await;
        assert!(
            !after.recovered,
            "push 1 of the new epoch must not pass for recovered"
        );
        assert_eq!(after.last_id.as_deref(), Some(new.as_str()));
    }

    pub(crate) async fn a_foreign_or_future_since_is_not_recovered(store: Arc<dyn Store>) {
        let user = user_name("fay");
        let none = since(&store, &user, "abc:1", "s").await;
        assert_eq!(
            none,
            PushReplay::default(),
            "no history: not recovered, no last id"
        );

        let p1 = append(&store, &user, None, "1", HISTORY).await;
        let epoch = PushId::parse(&p1).expect("ours").epoch;
        for foreign in [
            "junk",
            "other:1",
            "x.y-z",
            &format!("{epoch}:2"),
            &format!("{epoch}:0"),
        ] {
            let replay = since(&store, &user, foreign, "s").await;
            assert!(
                !replay.recovered,
                "{foreign} is not a point of this history"
            );
            assert_eq!(replay.last_id.as_deref(), Some(p1.as_str()));
        }
    }

    pub(crate) async fn concurrent_appends_get_distinct_increasing_ids(store: Arc<dyn Store>) {
        let user = user_name("cat");
        let ids = race(20, |n| {
            let (store, user) = (store.clone(), user.clone());
            async move { append(&store, &user, None, &n.to_string(), HISTORY).await }
        })
        .await;
        let mut seqs: Vec<u64> = ids.iter().map(|id| seq(id)).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=20).collect::<Vec<_>>(),
            "one place each, no gaps"
        );
        let all = since(
            &store,
            &user,
            &format!("{}:1", PushId::parse(&ids[0]).expect("ours").epoch),
            "s",
        )
        .await;
        assert!(all.recovered);
        assert_eq!(all.pushes.len(), 19);
    }

    pub(crate) async fn histories_are_per_user(store: Arc<dyn Store>) {
        let (ann, bob) = (user_name("ann"), user_name("bob"));
        let a1 = append(&store, &ann, None, "1", HISTORY).await;
        let b1 = append(&store, &bob, None, "1", HISTORY).await;
        let a2 = append(&store, &ann, None, "2", HISTORY).await;
        let replay = since(&store, &ann, &a1, "s").await;
        assert_eq!(ids(&replay), [a2.as_str()]);
        assert!(!since(&store, &bob, &a1, "s").await.recovered);
        assert_eq!(
            since(&store, &bob, &b1, "s").await.last_id.as_deref(),
            Some(b1.as_str())
        );
    }

    // ---- helpers ----

    /// Runs `n` copies of a future, released together, and returns their outputs in
    /// spawn order.
    async fn race<F, Fut, T>(n: usize, make: F) -> Vec<T>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let start = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let start = start.clone();
                let racer = make(i);
                tokio::spawn(async move {
                    start.wait().await;
                    racer.await
                })
            })
            .collect();
        let mut outputs = Vec::with_capacity(n);
        for task in tasks {
            outputs.push(task.await.expect("racer panicked"));
        }
        outputs
    }

    fn count<T>(items: &[T], pred: impl Fn(&T) -> bool) -> usize {
        items.iter().filter(|i| pred(i)).count()
    }

    async fn live_session(store: &Arc<dyn Store>) -> String {
        live_record(store).await.session_id
    }

    async fn live_record(store: &Arc<dyn Store>) -> SessionRecord {
        let record = session_record(&unique("sess"));
        create(store, &record).await;
        record
    }

    async fn create(store: &Arc<dyn Store>, record: &SessionRecord) {
        store.create_session(record).await.expect("create session");
    }

    async fn read(store: &Arc<dyn Store>, sid: &str) -> Option<SessionRecord> {
        store.session(sid).await.expect("read session")
    }

    async fn mint(store: &Arc<dyn Store>, mint: &MintTicket<'_>) -> MintOutcome {
        store.mint_ticket(mint).await.expect("mint")
    }

    async fn mint_ok(store: &Arc<dyn Store>, minting: &MintTicket<'_>) {
        assert_eq!(mint(store, minting).await, MintOutcome::Minted);
    }

    async fn admit(
        store: &Arc<dyn Store>,
        sid: &str,
        ticket_id: &str,
        device: &str,
    ) -> AdmitOutcome {
        store
            .admit_ticket(&AdmitTicket {
                session_id: sid,
                ticket_id,
                device_id: device,
            })
            .await
            .expect("admit")
    }

    fn minting<'a>(
        sid: &'a str,
        nonce: &'a str,
        ticket_id: &'a str,
        grant: &'a TicketGrant,
    ) -> MintTicket<'a> {
        MintTicket {
            session_id: sid,
            nonce,
            nonce_ttl: Duration::from_secs(60),
            ticket_id,
            grant,
            ticket_ttl: Duration::from_secs(30),
        }
    }

    /// A rotation from the session's device, without grace, far from the cap.
    fn rotating<'a>(sid: &'a str, presented: &'a str, new: &'a str) -> RotateRefresh<'a> {
        RotateRefresh {
            session_id: sid,
            device_id: DEVICE,
            presented_hash: presented,
            new_hash: new,
            grace: Duration::ZERO,
            cap_per_day: 100,
        }
    }

    async fn rotate(store: &Arc<dyn Store>, rotation: &RotateRefresh<'_>) -> RotateOutcome {
        store.rotate_refresh(rotation).await.expect("rotate")
    }

    /// Rotates, expecting success; returns the record as rotated.
    async fn rotate_ok(store: &Arc<dyn Store>, rotation: &RotateRefresh<'_>) -> SessionRecord {
        match rotate(store, rotation).await {
            RotateOutcome::Rotated(record) => {
                assert_eq!(record.refresh_hash, rotation.new_hash);
                record
            }
            other => panic!("expected Rotated, got {other:?}"),
        }
    }

    /// The session was revoked for reuse: unreadable, minting refused, and every token
    /// of the family (even the newest) answers `Reused` from now on.
    async fn assert_revoked_for_reuse(store: &Arc<dyn Store>, sid: &str, current: &str) {
        assert_eq!(read(store, sid).await, None);
        assert_eq!(
            rotate(store, &rotating(sid, current, &fresh_hash())).await,
            RotateOutcome::Reused
        );
        assert_eq!(
            mint(store, &minting(sid, "n-gone", "t-gone", &grant(DEVICE))).await,
            MintOutcome::SessionGone
        );
    }

    fn renewing<'a>(sid: &'a str, jti: &'a str) -> RenewAccess<'a> {
        RenewAccess {
            session_id: sid,
            jti,
            jti_ttl: Duration::from_secs(60),
            cap_per_day: 100,
        }
    }

    async fn renew(store: &Arc<dyn Store>, renewal: &RenewAccess<'_>) -> RenewOutcome {
        store.renew_access(renewal).await.expect("renew")
    }

    /// A random refresh-token hash.
    fn fresh_hash() -> String {
        let half = || uuid::Uuid::new_v4().simple().to_string();
        half() + &half()
    }

    /// A unique user name with `.`, `-` and `@` in it.
    fn user_name(name: &str) -> String {
        format!("{}@example-corp.io", unique(name))
    }

    async fn listed(store: &Arc<dyn Store>, user: &str) -> Vec<UserSession> {
        store.user_sessions(user).await.expect("user sessions")
    }

    async fn unindex(store: &Arc<dyn Store>, user: &str, sid: &str) {
        store.unindex_session(user, sid).await.expect("unindex");
    }

    fn listing(record: &SessionRecord) -> UserSession {
        UserSession {
            session_id: record.session_id.clone(),
            client_type: record.client_type,
            created_at: record.created_at,
        }
    }

    /// Waits out the last seconds of a UTC day, so that a case counting against the
    /// daily cap runs within one day.
    async fn clear_of_midnight() {
        let now = now_unix();
        let next_day = (utc_day(now) + 1) * 86_400;
        if next_day - now < 10 {
            sleep_until_unix(next_day, Duration::from_millis(100)).await;
        }
    }

    async fn sleep_until_unix(unix: i64, margin: Duration) {
        let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).expect("positive time"));
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait + margin).await;
    }
}

// ---- Redis only ----

mod redis_only {
    use super::*;

    /// Calls per command between two `INFO commandstats`, without `info` itself.
    fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> BTreeMap<String, u64> {
        after
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, &n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    fn calls(expected: &[(&str, u64)]) -> BTreeMap<String, u64> {
        expected.iter().map(|&(n, c)| (n.to_owned(), c)).collect()
    }

    /// The client sends exactly one `EVALSHA` per mint and per admit. Redis counts the
    /// commands a script runs as well, so each expectation also lists the script's own
    /// `EXISTS`/`SET`/`GETDEL` on that path; any extra round trip shows up as a
    /// difference.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mint_and_admit_are_one_evalsha_each() {
        let redis = RedisServer::start();
        let store = connect(&redis).await;
        let record = session_record(&unique("sess"));
        let sid = record.session_id.as_str();
        store.create_session(&record).await.expect("create");
        let grant = grant("dev-a");
        let minting = |nonce, ticket_id| MintTicket {
            session_id: sid,
            nonce,
            nonce_ttl: Duration::from_secs(60),
            ticket_id,
            grant: &grant,
            ticket_ttl: Duration::from_secs(30),
        };
        let admission = |ticket_id, device_id| AdmitTicket {
            session_id: sid,
            ticket_id,
            device_id,
        };

        let mut before = redis.command_stats();
        let mut step = |what: &str, expected: &[(&str, u64)]| {
            let after = redis.command_stats();
            assert_eq!(delta(&before, &after), calls(expected), "{what}");
            before = after;
        };

        let minted = store.mint_ticket(&minting("n1", "t1")).await.expect("mint");
        assert_eq!(minted, MintOutcome::Minted);
        step("mint", &[("evalsha", 1), ("exists", 1), ("set", 2)]);

        let replayed = store.mint_ticket(&minting("n1", "t2")).await.expect("mint");
        assert_eq!(replayed, MintOutcome::NonceReplayed);
        step(
            "replayed mint",
            &[("evalsha", 1), ("exists", 1), ("set", 1)],
        );

        let admitted = store
            .admit_ticket(&admission("t1", "dev-a"))
            .await
            .expect("admit");
        assert_eq!(admitted, AdmitOutcome::Admitted(grant.clone()));
        step("admit", &[("evalsha", 1), ("getdel", 1), ("exists", 1)]);

        let unknown = store
            .admit_ticket(&admission("t1", "dev-a"))
            .await
            .expect("admit");
        assert_eq!(unknown, AdmitOutcome::Unknown);
        step("unknown admit", &[("evalsha", 1), ("getdel", 1)]);

        store.mint_ticket(&minting("n3", "t3")).await.expect("mint");
        step("mint", &[("evalsha", 1), ("exists", 1), ("set", 2)]);
        let mismatch = store
            .admit_ticket(&admission("t3", "dev-b"))
            .await
            .expect("admit");
        assert_eq!(mismatch, AdmitOutcome::DeviceMismatch);
        step("mismatched admit", &[("evalsha", 1), ("getdel", 1)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushed_scripts_are_reloaded() {
        let redis = RedisServer::start();
        let store = connect(&redis).await;
        let record = session_record(&unique("sess"));
        let sid = record.session_id.as_str();
        store.create_session(&record).await.expect("create");

        let flushed = redis.command(&["SCRIPT", "FLUSH"]);
        assert_eq!(flushed, support::redis::Reply::Simple("OK".into()));
        let before = redis.command_stats();

        let grant = grant("dev-a");
        let minted = store
            .mint_ticket(&MintTicket {
                session_id: sid,
                nonce: "n1",
                nonce_ttl: Duration::from_secs(60),
                ticket_id: "t1",
                grant: &grant,
                ticket_ttl: Duration::from_secs(30),
            })
            .await
            .expect("mint after SCRIPT FLUSH");
        assert_eq!(minted, MintOutcome::Minted);
        let admitted = store
            .admit_ticket(&AdmitTicket {
                session_id: sid,
                ticket_id: "t1",
                device_id: "dev-a",
            })
            .await
            .expect("admit after SCRIPT FLUSH");
        assert_eq!(admitted, AdmitOutcome::Admitted(grant));

        let reloads = delta(&before, &redis.command_stats());
        assert_eq!(reloads.get("script|load"), Some(&2), "{reloads:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outage_fails_fast_and_recovers_by_itself() {
        let mut redis = RedisServer::start();
        let store = connect(&redis).await;
        let record = session_record(&unique("sess"));
        let sid = record.session_id.clone();
        store.create_session(&record).await.expect("create");

        redis.stop();
        let grant = grant("dev-a");
        let minting = MintTicket {
            session_id: &sid,
            nonce: "n1",
            nonce_ttl: Duration::from_secs(60),
            ticket_id: "t1",
            grant: &grant,
            ticket_ttl: Duration::from_secs(30),
        };
        let admission = AdmitTicket {
            session_id: &sid,
            ticket_id: "t1",
            device_id: "dev-a",
        };
        // Right after the crash (in-flight and queued commands), and again once the
        // pool has been failing to reconnect for a while.
        every_call_is_unavailable(&store, &record, &minting, &admission).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        every_call_is_unavailable(&store, &record, &minting, &admission).await;

        redis.restart();
        let deadline = Instant::now() + Duration::from_secs(15);
        while store.ping().await.is_err() {
            assert!(Instant::now() < deadline, "store did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The restarted server is empty, script cache included.
        store
            .create_session(&record)
            .await
            .expect("create after restart");
        assert_eq!(
            store
                .mint_ticket(&minting)
                .await
                .expect("mint after restart"),
            MintOutcome::Minted
        );
        assert_eq!(
            store
                .admit_ticket(&admission)
                .await
                .expect("admit after restart"),
            AdmitOutcome::Admitted(grant.clone())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connecting_to_nothing_fails_fast() {
        let mut redis = RedisServer::start();
        redis.stop();
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            RedisStore::connect(&redis.url(), RedisSettings::default()),
        )
        .await
        .expect("connect hung");
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_url_is_refused() {
        let result =
            RedisStore::connect("redis://127.0.0.1:notaport", RedisSettings::default()).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }

    /// Runs every store call at once and checks that each fails with `Unavailable`
    /// within 3 s.
    async fn every_call_is_unavailable(
        store: &RedisStore,
        record: &SessionRecord,
        minting: &MintTicket<'_>,
        admission: &AdmitTicket<'_>,
    ) {
        let sid = record.session_id.as_str();
        let results = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                timed(store.ping()),
                timed(store.session(sid)),
                timed(store.create_session(record)),
                timed(store.revoke_session(sid)),
                timed(store.mint_ticket(minting)),
                timed(store.admit_ticket(admission)),
            )
        })
        .await
        .expect("store calls hung while redis was down");
        let (ping, session, create, revoke, mint, admit) = results;
        for (what, (elapsed, unavailable)) in [
            ("ping", ping),
            ("session", session),
            ("create_session", create),
            ("revoke_session", revoke),
            ("mint_ticket", mint),
            ("admit_ticket", admit),
        ] {
            assert!(unavailable, "{what} did not fail with Unavailable");
            assert!(elapsed < Duration::from_secs(3), "{what} took {elapsed:?}");
        }
    }

    /// How long a call took, and whether it failed with `Unavailable`.
    async fn timed<T>(
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> (Duration, bool) {
        let started = Instant::now();
        let unavailable = matches!(call.await, Err(StoreError::Unavailable(_)));
        (started.elapsed(), unavailable)
    }
}

// ---- memory only ----

mod memory_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sweeper_removes_expired_entries_and_stops_with_the_store() {
        let store = MemoryStore::new();
        let sweeper = store.spawn_sweeper(Duration::from_millis(20));
        let record = session_record(&unique("sess"));
        store.create_session(&record).await.expect("create");
        let grant = grant("dev-a");
        for i in 0..100 {
            let (nonce, ticket_id) = (format!("n{i}"), format!("t{i}"));
            let minted = store
                .mint_ticket(&MintTicket {
                    session_id: &record.session_id,
                    nonce: &nonce,
                    nonce_ttl: Duration::from_millis(50),
                    ticket_id: &ticket_id,
                    grant: &grant,
                    ticket_ttl: Duration::from_millis(50),
                })
                .await
                .expect("mint");
            assert_eq!(minted, MintOutcome::Minted);
        }
        assert_eq!(store.len(), 201);

        // Nothing reads those keys again; only the sweeper can remove them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.len(), 1, "only the session should be left");

        drop(store);
        tokio::time::timeout(Duration::from_secs(1), sweeper)
            .await
            .expect("sweeper outlived its store")
            .expect("sweeper panicked");
    }
}

// ---- durable only ----

/// What the durable store keeps across a close and a reopen of its file; a restart of
/// the binary under `kill -9` is `tests/durable_restart.rs`.
mod durable_only {
    use super::*;

    const DEVICE: &str = "7d0b8e9c-2f4a-4c1e-9b1a-3c5d7e9f1a2b";

    fn rotate<'a>(sid: &'a str, presented: &'a str, new: &'a str) -> RotateRefresh<'a> {
        RotateRefresh {
            session_id: sid,
            device_id: DEVICE,
            presented_hash: presented,
            new_hash: new,
            grace: Duration::ZERO,
            cap_per_day: 100,
        }
    }

    async fn reopen(store: DurableStore, dir: &std::path::Path) -> DurableStore {
        store.close().await;
        drop(store);
        open_durable(dir).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_index_and_block_flags_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path()).await;
        let record = session_record(&unique("sess"));
        let sid = record.session_id.as_str();
        store.create_session(&record).await.expect("create");
        store.index_session(&record).await.expect("index");
        let (a, b) = ("0f".repeat(32), "1e".repeat(32));
        let rotated = store
            .rotate_refresh(&rotate(sid, &a, &b))
            .await
            .expect("rotate");
        let RotateOutcome::Rotated(rotated) = rotated else {
            panic!("rotation refused: {rotated:?}");
        };
        store.set_blocked("mallory", true).await.expect("block");
        store.set_blocked("trent", true).await.expect("block");
        store.set_blocked("trent", false).await.expect("unblock");
        let listed = store.user_sessions(&record.user_id).await.expect("list");

        let store = reopen(store, dir.path()).await;
        assert_eq!(store.session(sid).await.expect("read"), Some(rotated));
        assert_eq!(
            store.user_sessions(&record.user_id).await.expect("list"),
            listed
        );
        assert_eq!(listed.len(), 1);
        assert!(store.is_blocked("mallory").await.expect("blocked"));
        assert!(!store.is_blocked("trent").await.expect("blocked"));
        // The current token still rotates; the old one is reuse and ends the session.
        let c = "2d".repeat(32);
        assert!(matches!(
            store
                .rotate_refresh(&rotate(sid, &b, &c))
                .await
                .expect("rotate"),
            RotateOutcome::Rotated(_)
        ));
        assert_eq!(
            store
                .rotate_refresh(&rotate(sid, &a, &c))
                .await
                .expect("rotate"),
            RotateOutcome::Reused
        );
        assert_eq!(store.session(sid).await.expect("read"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_rotated_before_a_reopen_is_reuse_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path()).await;
        let record = session_record(&unique("sess"));
        let sid = record.session_id.as_str();
        store.create_session(&record).await.expect("create");
        let (a, b, c) = ("0f".repeat(32), "1e".repeat(32), "2d".repeat(32));
        store
            .rotate_refresh(&rotate(sid, &a, &b))
            .await
            .expect("rotate");

        let store = reopen(store, dir.path()).await;
        assert_eq!(
            store
                .rotate_refresh(&rotate(sid, &a, &c))
                .await
                .expect("rotate"),
            RotateOutcome::Reused
        );
        // The reuse marker is kept too: after another reopen the rest of the family
        // still answers "reused", not "session gone".
        let store = reopen(store, dir.path()).await;
        assert_eq!(store.session(sid).await.expect("read"), None);
        assert_eq!(
            store
                .rotate_refresh(&rotate(sid, &b, &c))
                .await
                .expect("rotate"),
            RotateOutcome::Reused
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grace_window_and_daily_count_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path()).await;
        let record = session_record(&unique("sess"));
        let sid = record.session_id.as_str();
        store.create_session(&record).await.expect("create");
        let (a, b, c, d) = (
            "0f".repeat(32),
            "1e".repeat(32),
            "2d".repeat(32),
            "3c".repeat(32),
        );
        let capped = |presented, new| RotateRefresh {
            grace: Duration::from_secs(60),
            cap_per_day: 2,
            ..rotate(sid, presented, new)
        };
        assert!(matches!(
            store.rotate_refresh(&capped(&a, &b)).await.expect("rotate"),
            RotateOutcome::Rotated(_)
        ));

        let store = reopen(store, dir.path()).await;
        // The parent within grace is accepted (the second refresh of the day)...
        assert!(matches!(
            store.rotate_refresh(&capped(&a, &c)).await.expect("rotate"),
            RotateOutcome::Rotated(_)
        ));
        // ...and the count of the day came back from the file with it.
        let store = reopen(store, dir.path()).await;
        assert_eq!(
            store.rotate_refresh(&capped(&c, &d)).await.expect("rotate"),
            RotateOutcome::Limit
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_sessions_stay_ended_and_short_lived_records_are_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path()).await;
        let ended = session_record(&unique("sess"));
        let kept = SessionRecord {
            user_id: ended.user_id.clone(),
            ..session_record(&unique("sess"))
        };
        for record in [&ended, &kept] {
            store.create_session(record).await.expect("create");
            store.index_session(record).await.expect("index");
        }
        assert!(store
            .revoke_session(&ended.session_id)
            .await
            .expect("revoke"));
        store
            .unindex_session(&ended.user_id, &ended.session_id)
            .await
            .expect("unindex");
        let grant = grant(DEVICE);
        let mint = MintTicket {
            session_id: &kept.session_id,
            nonce: "nonce-kept-in-memory-only",
            nonce_ttl: Duration::from_secs(120),
            ticket_id: "ticket-1",
            grant: &grant,
            ticket_ttl: Duration::from_secs(30),
        };
        assert_eq!(
            store.mint_ticket(&mint).await.expect("mint"),
            MintOutcome::Minted
        );
        let before_reopen = now_unix();

        let store = reopen(store, dir.path()).await;
        assert_eq!(store.session(&ended.session_id).await.expect("read"), None);
        let listed = store.user_sessions(&kept.user_id).await.expect("list");
        let ids: Vec<_> = listed.iter().map(|s| s.session_id.as_str()).collect();
        assert_eq!(ids, [kept.session_id.as_str()]);
        // The ticket and the nonce lived in memory only: the ticket is unknown, and
        // the forgotten nonce is covered by the replay floor, which is this opening.
        let admit = AdmitTicket {
            session_id: &kept.session_id,
            ticket_id: "ticket-1",
            device_id: DEVICE,
        };
        assert_eq!(
            store.admit_ticket(&admit).await.expect("admit"),
            AdmitOutcome::Unknown
        );
        let floor = store
            .replay_floor()
            .expect("a durable store has a replay floor");
        assert!(floor >= before_reopen, "floor {floor} < {before_reopen}");
        assert!(floor <= now_unix());
    }

    /// Concurrent changes of one key reach the file in the order they took effect in
    /// memory: what a reopen finds is what memory held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_changes_reach_the_file_as_memory_has_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path()).await;
        let user = unique("user");
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (store, user) = (store.clone(), user.clone());
            tasks.push(tokio::spawn(async move {
                let record = SessionRecord {
                    user_id: user.clone(),
                    ..session_record(&unique("sess"))
                };
                store.create_session(&record).await.expect("create");
                store.index_session(&record).await.expect("index");
                if i % 2 == 1 {
                    store
                        .revoke_session(&record.session_id)
                        .await
                        .expect("revoke");
                    store
                        .unindex_session(&user, &record.session_id)
                        .await
                        .expect("unindex");
                }
                store.set_blocked(&user, i % 3 == 0).await.expect("block");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let listed = store.user_sessions(&user).await.expect("list");
        let blocked = store.is_blocked(&user).await.expect("blocked");
        assert_eq!(listed.len(), 32);

        let store = reopen(store, dir.path()).await;
        assert_eq!(store.user_sessions(&user).await.expect("list"), listed);
        assert_eq!(store.is_blocked(&user).await.expect("blocked"), blocked);
        for session in &listed {
            assert!(store
                .session(&session.session_id)
                .await
                .expect("read")
                .is_some());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_records_are_swept_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path()).await;
        tokio::spawn(store.sweeper(Duration::from_millis(20)));
        let long = session_record(&unique("sess"));
        let short = SessionRecord {
            // At least a second left when it is written: it reaches the file.
            expires_at: now_unix() + 2,
            ..session_record(&unique("sess"))
        };
        store.create_session(&long).await.expect("create");
        store.create_session(&short).await.expect("create");
        // The user's index first expires with the short session, then is extended
        // by the long one: it must not be swept at its first expiry.
        store.index_session(&short).await.expect("index");
        store.index_session(&long).await.expect("index");
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let mut left = file_keys(&store, dir.path()).await;
        left.sort();
        let mut expected = vec![
            format!("tg:{{{}}}:session", long.session_id),
            format!("tg:{{u:{}}}:sessions", long.user_id),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }

    /// Closes the store and lists the keys of its file, read with redb directly.
    async fn file_keys(store: &DurableStore, dir: &std::path::Path) -> Vec<String> {
        store.close().await;
        let path = dir.join(STORE_FILE);
        let db = redb::Database::open(&path).expect("open the file");
        let read = db.begin_read().expect("read");
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("entries");
        let table = read.open_table(table).expect("entries");
        use redb::ReadableTable;
        let keys = table
            .iter()
            .expect("iter")
            .map(|e| e.expect("entry").0.value().to_owned())
            .collect();
        keys
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_opener_is_refused_while_the_file_is_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_durable(dir.path()).await;
        let path = dir.path().join(STORE_FILE);
        let second = DurableStore::open(&path).expect_err("the file is locked");
        assert!(matches!(second, DurableError::Locked { .. }));
        let message = second.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("another process"), "{message}");
        store.close().await;
        DurableStore::open(&path).expect("open after close");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let _store = open_durable(dir.path()).await;
        let mode = std::fs::metadata(dir.path().join(STORE_FILE))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STORE_FILE);
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &garbage).expect("write");
        let err = DurableStore::open(&path).expect_err("garbage is not a store");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert_eq!(std::fs::read(&path).expect("read"), garbage);
    }

    #[test]
    fn a_record_it_cannot_read_is_an_error_not_a_wipe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STORE_FILE);
        drop(DurableStore::open(&path).expect("create"));
        // The writer thread closes the file once its sender is dropped.
        let db = loop {
            match redb::Database::open(&path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("open: {e}"),
            }
        };
        let write = db.begin_write().expect("write");
        {
            let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("entries");
            let mut table = write.open_table(table).expect("entries");
            table
                .insert("tg:{v1.x}:session", b"{not json".as_slice())
                .expect("insert");
        }
        write.commit().expect("commit");
        drop(db);
        let err = DurableStore::open(&path).expect_err("an unreadable record");
        assert!(matches!(err, DurableError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("tg:{v1.x}:session"), "{err}");
        let db = redb::Database::open(&path).expect("still a redb file");
        let read = db.begin_read().expect("read");
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("entries");
        let table = read.open_table(table).expect("entries");
        assert!(table.get("tg:{v1.x}:session").expect("get").is_some());
    }
}

// ---- fixtures' data ----

fn session_record(sid: &str) -> SessionRecord {
    let now = now_unix();
    SessionRecord {
        session_id: sid.to_owned(),
        user_id: "app:Zoë|ops|☃".to_owned(),
        device_id: "7d0b8e9c-2f4a-4c1e-9b1a-3c5d7e9f1a2b".to_owned(),
        client_type: ClientType::Mobile,
        created_at: now,
        expires_at: now + 3600,
        refresh_hash: "0f".repeat(32),
    }
}

/// A grant whose user id holds `|` and non-ASCII characters, to prove the encoding
/// round-trips.
fn grant(device: &str) -> TicketGrant {
    TicketGrant {
        device_id: device.to_owned(),
        user_id: "app:Zoë|ops|☃ 𝄞".to_owned(),
        client_type: ClientType::Mobile,
        access_expires_at: now_unix() + 900,
    }
}

fn unique(prefix: &str) -> String {
    format!("v1.{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn now_unix() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_secs()).expect("time fits i64")
}
