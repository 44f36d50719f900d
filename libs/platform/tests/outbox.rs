//! The outbox and the platform's own tables, on both backends: an SQLite
//! file, and a fresh PostgreSQL database (which must be reachable).
use colend_platform::Db;
use colend_platform::config::Backends;
use colend_platform::db::Backend;
use colend_platform::outbox::{self, Event, Failure, Relay, Settings};
use colend_testkit::TempDir;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A service as it was before the platform owned the shared tables.
static LEGACY: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/legacy");
/// The same service now: it moves its own outbox's events into the platform's.
static CURRENT: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/current");
const MOVE_SQL: &str = include_str!("migrations/current/0002_move_outbox.sql");

const SCHEMA: &str = "outbox_test";
const BOTH: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// An SQLite file in `dir`, or a fresh PostgreSQL database.
async fn backends(backend: Backend, dir: &TempDir) -> Backends {
    Backends {
        database_url: match backend {
            Backend::Postgres => Some(colend_testkit::fresh_postgres().await),
            Backend::Sqlite => None,
        },
        redis_url: None,
        data_dir: dir.0.clone(),
        cache_prefix: "colend-test:".into(),
    }
}

struct Store {
    db: Db,
    backends: Backends,
    _dir: TempDir,
}

impl Store {
    async fn new(backend: Backend) -> Store {
        let dir = TempDir::new();
        let backends = backends(backend, &dir).await;
        let db = Db::connect(&backends, SCHEMA, &CURRENT)
            .await
            .expect("connecting");
        Store {
            db,
            backends,
            _dir: dir,
        }
    }

    /// Another replica's connection to the same storage.
    async fn replica(&self) -> Db {
        Db::connect(&self.backends, SCHEMA, &CURRENT)
            .await
            .expect("connecting a second replica")
    }

    async fn close(self) {
        self.db.pool.close().await;
        if let Some(url) = &self.backends.database_url {
            colend_testkit::drop_database(url).await;
        }
    }
}

async fn put(db: &Db, events: &[(&str, &str, &[u8])]) {
    let mut tx = db.pool.begin().await.expect("begin");
    for (id, aggregate, payload) in events {
        assert!(
            outbox::enqueue_with_id(&mut tx, id, aggregate, "test.event", payload)
                .await
                .expect("enqueue")
        );
    }
    tx.commit().await.expect("commit");
}

fn fast() -> Settings {
    Settings {
        max_attempts: 10,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        batch: 100,
        concurrency: 8,
        lease: Duration::from_secs(10),
        retention: Duration::from_secs(3_600),
        owner: "colend".into(),
        named: false,
    }
}

type Log = Arc<Mutex<Vec<String>>>;

fn logged(log: &Log) -> Vec<String> {
    log.lock().expect("log").clone()
}

fn position(log: &[String], id: &str) -> usize {
    log.iter()
        .position(|x| x == id)
        .unwrap_or_else(|| panic!("{id} was not delivered: {log:?}"))
}

/// Runs rounds (a few ms apart) until nothing is pending, at most `n`.
async fn drain(relay: &Relay, db: &Db, n: usize) {
    for _ in 0..n {
        relay.run_once().await.expect("round");
        if outbox::stats(db).await.expect("stats").pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    panic!(
        "still pending after {n} rounds: {:?}",
        outbox::pending(db, 100).await
    );
}

/// Runs rounds until `until` holds, at most `n`.
async fn rounds_until(relay: &Relay, db: &Db, n: usize, until: impl Fn(outbox::Stats) -> bool) {
    for _ in 0..n {
        relay.run_once().await.expect("round");
        if until(outbox::stats(db).await.expect("stats")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    panic!("condition not reached after {n} rounds");
}

/// A round claims more events than it can deliver within half the lease:
/// those whose turn comes too late are given back unsent (their attempt
/// not spent), so no delivery runs past its claim, and every event still
/// goes exactly once.
#[tokio::test]
async fn a_round_never_delivers_past_half_its_lease() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        let events: Vec<(String, String)> = (0..8)
            .map(|i| (format!("e{i}"), format!("agg{i}")))
            .collect();
        let refs: Vec<(&str, &str, &[u8])> = events
            .iter()
            .map(|(id, agg)| (id.as_str(), agg.as_str(), b"x".as_slice()))
            .collect();
        put(&st.db, &refs).await;
        let log: Log = Arc::default();
        let l = log.clone();
        let settings = Settings {
            // One at a time, 60 ms each: about two fit in half of a 300 ms lease.
            concurrency: 1,
            lease: Duration::from_millis(300),
            ..fast()
        };
        let relay = Relay::new(st.db.clone(), settings, move |e: Event| {
            let l = l.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(60)).await;
                l.lock()
                    .expect("log")
                    .push(format!("{}@{}", e.event_id, e.attempt));
                Ok(())
            }
        });
        let first = relay.run_once().await.expect("round");
        assert!(
            first.delivered >= 1 && first.delivered < 8,
            "{backend:?}: the first round delivered {} of 8",
            first.delivered
        );
        drain(&relay, &st.db, 100).await;
        let log = logged(&log);
        let mut ids: Vec<&str> = log.iter().filter_map(|x| x.split('@').next()).collect();
        ids.sort_unstable();
        let expected: Vec<String> = (0..8).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, expected, "{backend:?}: each delivered once: {log:?}");
        // Given back unsent costs no attempt; only a delivery cut off at the
        // deadline does (at most once here).
        assert!(
            log.iter().all(|x| x.ends_with("@1") || x.ends_with("@2")),
            "{backend:?}: {log:?}"
        );
        st.close().await;
    }
}

#[tokio::test]
async fn in_order_per_aggregate_while_other_aggregates_go_on() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        put(
            &st.db,
            &[
                ("a1", "A", b"1"),
                ("b1", "B", b"1"),
                ("a2", "A", b"2"),
                ("b2", "B", b"2"),
                ("a3", "A", b"3"),
            ],
        )
        .await;
        let log: Log = Arc::default();
        let l = log.clone();
        let relay = Relay::new(st.db.clone(), fast(), move |e: Event| {
            let l = l.clone();
            async move {
                // A's head fails until B is done: B must not wait for it.
                let b_done = l.lock().expect("log").iter().any(|x| x == "b2");
                if e.event_id == "a1" && !b_done {
                    return Err(Failure::retry("receiver away"));
                }
                l.lock().expect("log").push(e.event_id);
                Ok(())
            }
        });
        drain(&relay, &st.db, 500).await;
        let log = logged(&log);
        assert_eq!(log.len(), 5, "{backend:?}: each delivered once: {log:?}");
        assert!(position(&log, "a1") < position(&log, "a2"), "{log:?}");
        assert!(position(&log, "a2") < position(&log, "a3"), "{log:?}");
        assert!(position(&log, "b1") < position(&log, "b2"), "{log:?}");
        assert!(
            position(&log, "b2") < position(&log, "a1"),
            "{backend:?}: B went on while A's head failed: {log:?}"
        );
        st.close().await;
    }
}

#[tokio::test]
async fn a_failed_event_backs_off_exponentially_and_holds_its_aggregate() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        put(&st.db, &[("x1", "X", b"1"), ("x2", "X", b"2")]).await;
        let settings = Settings {
            backoff: Duration::from_millis(300),
            max_backoff: Duration::from_secs(10),
            ..fast()
        };
        let relay = Relay::new(st.db.clone(), settings, |_e: Event| async {
            Err(Failure::retry("receiver away"))
        });
        let next_attempt = |db: Db| async move {
            let (attempts, next, error): (i64, i64, String) = sqlx::query_as(
                "SELECT attempts, next_attempt_at, last_error FROM outbox_events WHERE event_id = 'x1'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("x1");
            (attempts, next, error)
        };

        let before = colend_platform::time::now_millis();
        let r = relay.run_once().await.expect("round 1");
        assert_eq!(
            (r.claimed, r.retrying),
            (1, 1),
            "{backend:?}: only the head is tried"
        );
        let (attempts, next, error) = next_attempt(st.db.clone()).await;
        assert_eq!(attempts, 1);
        assert_eq!(error, "receiver away");
        let wait = next - before;
        assert!(
            (300..=375 + 200).contains(&wait),
            "{backend:?}: first wait {wait} ms"
        );

        // Not due yet: nothing is claimed, and x2 waits behind x1.
        let r = relay.run_once().await.expect("round 2");
        assert_eq!(r.claimed, 0, "{backend:?}");
        let pending = outbox::pending(&st.db, 10).await.expect("pending");
        assert_eq!(pending.len(), 2);
        assert!(!pending[0].held && pending[1].held, "{pending:?}");

        tokio::time::sleep(Duration::from_millis(450)).await;
        let before = colend_platform::time::now_millis();
        let r = relay.run_once().await.expect("round 3");
        assert_eq!((r.claimed, r.retrying), (1, 1), "{backend:?}");
        let (attempts, next, _) = next_attempt(st.db.clone()).await;
        assert_eq!(attempts, 2);
        let wait = next - before;
        assert!(
            (600..=750 + 200).contains(&wait),
            "{backend:?}: second wait {wait} ms"
        );
        st.close().await;
    }
}

#[tokio::test]
async fn dead_letter_after_the_last_attempt_then_retry_puts_it_back_in_order() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        put(
            &st.db,
            &[("x1", "X", b"1"), ("y1", "Y", b"1"), ("x2", "X", b"2")],
        )
        .await;
        let log: Log = Arc::default();
        let refuse = Arc::new(AtomicBool::new(true));
        let (l, r) = (log.clone(), refuse.clone());
        let settings = Settings {
            max_attempts: 3,
            ..fast()
        };
        let relay = Relay::new(st.db.clone(), settings, move |e: Event| {
            let (l, r) = (l.clone(), r.clone());
            async move {
                if e.event_id == "x1" && r.load(Ordering::SeqCst) {
                    return Err(Failure::retry(format!("refused on attempt {}", e.attempt)));
                }
                l.lock().expect("log").push(e.event_id);
                Ok(())
            }
        });
        rounds_until(&relay, &st.db, 500, |s| s.dead_letters == 1).await;
        for _ in 0..5 {
            relay.run_once().await.expect("round");
        }
        let dead = outbox::dead_letters(&st.db, 10)
            .await
            .expect("dead letters");
        assert_eq!(dead.len(), 1, "{backend:?}");
        assert_eq!(dead[0].event_id, "x1");
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(dead[0].last_error, "refused on attempt 3");
        assert_eq!(
            logged(&log),
            vec!["y1"],
            "{backend:?}: x2 is held behind x1"
        );
        let pending = outbox::pending(&st.db, 10).await.expect("pending");
        assert_eq!(pending.len(), 1);
        assert!(
            pending[0].event_id == "x2" && pending[0].held,
            "{pending:?}"
        );
        let stats = outbox::stats(&st.db).await.expect("stats");
        assert_eq!((stats.pending, stats.dead_letters), (1, 1));

        // The receiver is fixed; the dead letter goes back, before x2.
        refuse.store(false, Ordering::SeqCst);
        assert_eq!(
            outbox::retry_alone(&st.db, Some("nope"))
                .await
                .expect("retry"),
            0
        );
        assert_eq!(
            outbox::retry_alone(&st.db, Some("x1"))
                .await
                .expect("retry"),
            1
        );
        drain(&relay, &st.db, 100).await;
        assert_eq!(logged(&log), vec!["y1", "x1", "x2"], "{backend:?}");
        assert_eq!(outbox::stats(&st.db).await.expect("stats").dead_letters, 0);
        st.close().await;
    }
}

#[tokio::test]
async fn an_undecodable_payload_is_a_dead_letter_at_once_and_the_relay_goes_on() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        put(
            &st.db,
            &[
                ("p1", "P", b"poison"),
                ("q1", "Q", b"fine"),
                ("p2", "P", b"fine"),
                ("c1", "C", b"fine"),
            ],
        )
        .await;
        // A row whose stored payload was damaged.
        sqlx::query("UPDATE outbox_events SET payload = 'zz' WHERE event_id = 'c1'")
            .execute(&st.db.pool)
            .await
            .expect("damage");
        let log: Log = Arc::default();
        let l = log.clone();
        let relay = Relay::new(st.db.clone(), fast(), move |e: Event| {
            let l = l.clone();
            async move {
                if e.payload == b"poison" {
                    return Err(Failure::reject("payload does not decode"));
                }
                l.lock().expect("log").push(e.event_id);
                Ok(())
            }
        });
        let r = relay.run_once().await.expect("round");
        assert_eq!(
            (r.claimed, r.delivered, r.dead_lettered),
            (3, 1, 2),
            "{backend:?}"
        );
        let dead = outbox::dead_letters(&st.db, 10)
            .await
            .expect("dead letters");
        let by_id: HashMap<_, _> = dead.iter().map(|d| (d.event_id.as_str(), d)).collect();
        assert_eq!(by_id["p1"].attempts, 1);
        assert_eq!(by_id["p1"].last_error, "payload does not decode");
        assert!(by_id["c1"].last_error.contains("not hex"), "{dead:?}");
        drain_or_held(&relay).await;
        assert_eq!(
            logged(&log),
            vec!["q1"],
            "{backend:?}: p2 is held behind p1"
        );

        // Dropping the poison releases its aggregate.
        let mut conn = st.db.pool.acquire().await.expect("conn");
        assert!(
            outbox::drop_dead_letter(&mut conn, "p1")
                .await
                .expect("drop")
        );
        assert!(
            !outbox::drop_dead_letter(&mut conn, "p1")
                .await
                .expect("drop again")
        );
        drop(conn);
        drain(&relay, &st.db, 100).await;
        assert_eq!(logged(&log), vec!["q1", "p2"], "{backend:?}");
        st.close().await;
    }
}

/// A few rounds that find nothing to do.
async fn drain_or_held(relay: &Relay) {
    for _ in 0..3 {
        let r = relay.run_once().await.expect("round");
        assert_eq!(r.delivered, 0, "{r:?}");
    }
}

#[tokio::test]
async fn sent_events_are_purged_after_the_retention() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        put(&st.db, &[("s1", "S", b"1"), ("s2", "T", b"1")]).await;
        let relay = Relay::new(st.db.clone(), fast(), |_e: Event| async { Ok(()) });
        drain(&relay, &st.db, 50).await;
        put(&st.db, &[("s3", "U", b"1")]).await;
        let two_hours_ago = colend_platform::time::now_millis() - 2 * 3_600_000;
        sqlx::query("UPDATE outbox_events SET sent_at = $1 WHERE event_id = 's1'")
            .bind(two_hours_ago)
            .execute(&st.db.pool)
            .await
            .expect("age s1");
        let purged = outbox::purge(&st.db, Duration::from_secs(3_600))
            .await
            .expect("purge");
        assert_eq!(purged, 1, "{backend:?}");
        let left: Vec<(String, i64)> =
            sqlx::query_as("SELECT event_id, sent_at FROM outbox_events ORDER BY seq")
                .fetch_all(&st.db.pool)
                .await
                .expect("left");
        let ids: Vec<&str> = left.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["s2", "s3"],
            "{backend:?}: recent and pending kept"
        );
        assert!(left[0].1 > 0 && left[1].1 == 0);
        st.close().await;
    }
}

/// Two replicas relay one table: no event is ever being delivered by both
/// at once, each is delivered once, and each aggregate in order.
#[tokio::test]
async fn two_relays_never_deliver_one_event_at_once() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        let second = st.replica().await;
        let mut events = Vec::new();
        for n in 0..8 {
            for a in 0..30 {
                events.push((format!("e{a}-{n}"), format!("agg{a}")));
            }
        }
        let refs: Vec<(&str, &str, &[u8])> = events
            .iter()
            .map(|(id, agg)| (id.as_str(), agg.as_str(), &b"x"[..]))
            .collect();
        put(&st.db, &refs).await;

        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let overlaps = Arc::new(AtomicUsize::new(0));
        // (relay, aggregate, seq, event id) of every successful delivery.
        type Deliveries = Arc<Mutex<Vec<(usize, String, i64, String)>>>;
        let delivered: Deliveries = Arc::default();
        let relay = |who: usize, db: Db| {
            let (in_flight, overlaps, delivered) =
                (in_flight.clone(), overlaps.clone(), delivered.clone());
            let settings = Settings {
                max_attempts: 1_000,
                batch: 16,
                ..fast()
            };
            Relay::new(db, settings, move |e: Event| {
                let (in_flight, overlaps, delivered) =
                    (in_flight.clone(), overlaps.clone(), delivered.clone());
                async move {
                    if !in_flight.lock().expect("set").insert(e.event_id.clone()) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis((e.seq % 3) as u64)).await;
                    in_flight.lock().expect("set").remove(&e.event_id);
                    // One attempt in five fails, deterministically.
                    if (e.seq * 7 + e.attempt) % 5 == 0 {
                        return Err(Failure::retry("flaky receiver"));
                    }
                    delivered
                        .lock()
                        .expect("log")
                        .push((who, e.aggregate_id, e.seq, e.event_id));
                    Ok(())
                }
            })
        };
        let run = |r: Relay, db: Db| async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let round = r.run_once().await.expect("round");
                if outbox::stats(&db).await.expect("stats").pending == 0 {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "relays stalled");
                if !round.more() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        let one = tokio::spawn(run(relay(1, st.db.clone()), st.db.clone()));
        let two = tokio::spawn(run(relay(2, second.clone()), second.clone()));
        one.await.expect("relay 1");
        two.await.expect("relay 2");

        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "{backend:?}");
        let delivered = delivered.lock().expect("log").clone();
        let mut times: HashMap<&str, usize> = HashMap::new();
        for (_, _, _, id) in &delivered {
            *times.entry(id.as_str()).or_default() += 1;
        }
        assert_eq!(times.len(), 240, "{backend:?}: every event delivered");
        assert!(times.values().all(|n| *n == 1), "{backend:?}: once each");
        let mut last: HashMap<&str, i64> = HashMap::new();
        for (_, agg, seq, id) in &delivered {
            let prev = last.insert(agg.as_str(), *seq).unwrap_or(0);
            assert!(*seq > prev, "{backend:?}: {id} after seq {prev} of {agg}");
        }
        if backend == Backend::Postgres {
            for who in [1, 2] {
                assert!(
                    delivered.iter().any(|(w, ..)| *w == who),
                    "relay {who} delivered nothing"
                );
            }
        }
        second.pool.close().await;
        st.close().await;
    }
}

/// A relay that died mid-delivery left its claims: the same replica,
/// restarted, takes them back at once; another replica's claims wait for
/// their lease.
#[tokio::test]
async fn a_restarted_replica_takes_back_the_claims_it_left() {
    for backend in BOTH {
        let st = Store::new(backend).await;
        put(&st.db, &[("mine", "M", b"1"), ("theirs", "T", b"1")]).await;
        let later = colend_platform::time::now_millis() + 600_000;
        for (id, claim) in [
            ("mine", format!("replica-a/{SCHEMA}|previous-run#1")),
            ("theirs", format!("replica-b/{SCHEMA}|their-run#1")),
        ] {
            sqlx::query(
                "UPDATE outbox_events SET claimed_by = $1, claimed_until = $2, attempts = 1 WHERE event_id = $3",
            )
            .bind(claim)
            .bind(later)
            .bind(id)
            .execute(&st.db.pool)
            .await
            .expect("claim");
        }
        let log: Log = Arc::default();
        let l = log.clone();
        let settings = Settings {
            owner: "replica-a".into(),
            named: true,
            ..fast()
        };
        let relay = Relay::new(st.db.clone(), settings, move |e: Event| {
            let l = l.clone();
            async move {
                l.lock()
                    .expect("log")
                    .push(format!("{}@{}", e.event_id, e.attempt));
                Ok(())
            }
        });
        for _ in 0..3 {
            relay.run_once().await.expect("round");
        }
        assert_eq!(logged(&log), vec!["mine@2"], "{backend:?}");
        let pending = outbox::pending(&st.db, 10).await.expect("pending");
        assert!(
            pending.len() == 1 && pending[0].event_id == "theirs" && pending[0].in_flight,
            "{pending:?}"
        );
        st.close().await;
    }
}

async fn count(db: &Db, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    n
}

async fn has_index(db: &Db, name: &str) -> bool {
    let sql = match db.backend {
        Backend::Postgres => {
            "SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = $1"
        }
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = $1",
    };
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .expect("index lookup");
    n == 1
}

/// A database made by the previous version (the service's own tables,
/// no platform tables) upgrades: the shared tables are adopted with the
/// created_at index, the old outbox's pending events are moved in order,
/// and a second start changes nothing.
#[tokio::test]
async fn an_existing_database_upgrades_and_keeps_its_pending_events() {
    for backend in BOTH {
        let dir = TempDir::new();
        let fresh = backends(backend, &dir).await;
        // The previous version: the legacy migration only, no platform tables.
        let old = Db::connect(&fresh, SCHEMA, &LEGACY).await.expect("legacy");
        for sql in [
            "DROP TABLE colend_platform_migrations",
            "DROP TABLE outbox_dead_letters",
            "DROP TABLE outbox_events",
            "DROP INDEX idempotency_keys_created",
            "INSERT INTO outbox (event_id, aggregate, payload, created_at, sent_at) VALUES \
             ('old2', 'A', '02', 2, 0), ('old1', 'A', '01', 1, 0), ('gone', 'B', '03', 3, 9)",
            "INSERT INTO idempotency_keys (scope, request_id, request_hash, outcome, response, created_at) \
             VALUES ('S', 'r1', 'h', 'ok', '', 5)",
        ] {
            sqlx::query(sql)
                .execute(&old.pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert!(!has_index(&old, "idempotency_keys_created").await);
        old.pool.close().await;

        let db = Db::connect(&fresh, SCHEMA, &CURRENT)
            .await
            .expect("upgrade");
        let moved: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT event_id, aggregate_id, payload FROM outbox_events ORDER BY seq",
        )
        .fetch_all(&db.pool)
        .await
        .expect("moved");
        assert_eq!(
            moved,
            vec![
                ("old1".into(), "A".into(), "01".into()),
                ("old2".into(), "A".into(), "02".into())
            ],
            "{backend:?}"
        );
        assert_eq!(count(&db, "SELECT COUNT(*) FROM outbox").await, 0);
        assert!(
            has_index(&db, "idempotency_keys_created").await,
            "{backend:?}"
        );
        assert_eq!(count(&db, "SELECT COUNT(*) FROM idempotency_keys").await, 1);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_head").await, 1);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM colend_platform_migrations").await,
            2
        );

        // A replica of the previous version still writes to its own table
        // during a rolling upgrade: the relay takes those events over too.
        sqlx::query(
            "INSERT INTO outbox (event_id, aggregate, payload, created_at, sent_at) VALUES ('late', 'A', '04', 4, 0)",
        )
        .execute(&db.pool)
        .await
        .expect("late");
        let log: Log = Arc::default();
        let l = log.clone();
        let relay = Relay::new(db.clone(), fast(), move |e: Event| {
            let l = l.clone();
            async move {
                l.lock().expect("log").push(e.event_id);
                Ok(())
            }
        })
        .adopting(MOVE_SQL);
        drain(&relay, &db, 50).await;
        assert_eq!(logged(&log), vec!["old1", "old2", "late"], "{backend:?}");
        assert_eq!(count(&db, "SELECT COUNT(*) FROM outbox").await, 0);
        db.pool.close().await;

        // Starting again changes nothing; an edited platform migration is refused.
        let db = Db::connect(&fresh, SCHEMA, &CURRENT).await.expect("again");
        sqlx::query("UPDATE colend_platform_migrations SET checksum = 'edited' WHERE version = 2")
            .execute(&db.pool)
            .await
            .expect("tamper");
        db.pool.close().await;
        let err = Db::connect(&fresh, SCHEMA, &CURRENT)
            .await
            .expect_err("an edited migration");
        assert!(format!("{err:#}").contains("modified"), "{err:#}");
        if let Some(url) = &fresh.database_url {
            colend_testkit::drop_database(url).await;
        }
        drop(dir);
    }
}
