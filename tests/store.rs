//! The store contract, written once in [`cases`] and run against every store by
//! [`store_suite!`]: the embedded store (with and without its sweeper) and Redis (a
//! real `redis-server` per test). Then what only one store has: Redis's round trips and
//! outage behaviour, the memory store's sweeper.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use support::redis::RedisServer;
use ticketgate::store::{
    memory::MemoryStore,
    redis::{RedisSettings, RedisStore},
    AdmitOutcome, AdmitTicket, MintOutcome, MintTicket, SessionRecord, Store, StoreError,
    TicketGrant,
};
use ticketgate_sdk::ClientType;

/// A store under test, and whatever must live as long as it.
struct Fixture {
    store: Arc<dyn Store>,
    _redis: Option<RedisServer>,
}

async fn memory_store() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        _redis: None,
    }
}

async fn memory_store_with_sweeper() -> Fixture {
    let store = MemoryStore::new();
    store.spawn_sweeper(Duration::from_millis(20));
    Fixture {
        store: Arc::new(store),
        _redis: None,
    }
}

async fn redis_store() -> Fixture {
    let redis = RedisServer::start();
    let store = connect(&redis).await;
    Fixture {
        store: Arc::new(store),
        _redis: Some(redis),
    }
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
        let record = session_record(&unique("sess"));
        create(store, &record).await;
        record.session_id
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
