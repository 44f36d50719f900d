//! `colend outbox list|retry|drop` on funding's outbox with a dead letter,
//! on both backends: operators see it with its error, retry it, drop it;
//! both are in the audit log and the chain holds.
use colend_platform::audit::{Verdict, verify};
use colend_platform::config::Backends;
use colend_platform::outbox::{self, Event, Failure, Relay, Settings};
use colend_testkit::{BOTH, Backend, TempDir};
use std::process::Command;

fn colend(b: &Backends, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_colend"));
    cmd.arg("outbox")
        .args(args)
        .arg("--data-dir")
        .arg(&b.data_dir)
        .env("RUST_LOG", "error");
    match &b.database_url {
        Some(url) => cmd.env("DATABASE_URL", url),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let out = cmd.output().expect("colend runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A relay whose receiver refuses `ev1` for good and takes the rest.
fn relay(db: &colend_platform::Db) -> Relay {
    Relay::new(db.clone(), Settings::default(), |e: Event| async move {
        if e.event_id == "ev1" {
            Err(Failure::reject("acquisition refused the event as invalid"))
        } else {
            Ok(())
        }
    })
}

async fn audited(db: &colend_platform::Db, action: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT caller_subject, resource, reason FROM audit_log WHERE action = $1 ORDER BY seq",
    )
    .bind(action)
    .fetch_all(&db.pool)
    .await
    .expect("audit rows")
}

#[tokio::test]
async fn operators_list_retry_and_drop_dead_letters() {
    for backend in BOTH {
        let dir = TempDir::new();
        let b = Backends {
            database_url: match backend {
                Backend::Production => Some(colend_testkit::fresh_postgres().await),
                Backend::Embedded => None,
            },
            redis_url: None,
            data_dir: dir.0.clone(),
            cache_prefix: "colend-test:".into(),
        };
        let db = colend_funding::connect(&b).await.expect("funding storage");
        let mut tx = db.pool.begin().await.expect("begin");
        for (id, app) in [("ev1", "app_1"), ("ev2", "app_1"), ("ev3", "app_2")] {
            outbox::enqueue_with_id(&mut tx, id, app, "test", b"x")
                .await
                .expect("enqueue");
        }
        tx.commit().await.expect("commit");
        let r = relay(&db).run_once().await.expect("round");
        assert_eq!((r.delivered, r.dead_lettered), (1, 1), "{backend:?}");

        let (ok, out) = colend(&b, &["list", "--service", "funding"]);
        assert!(ok, "{out}");
        assert!(
            out.contains("funding: 1 pending") && out.contains("1 dead letter(s)"),
            "{out}"
        );
        assert!(
            out.contains("ev1") && out.contains("acquisition refused the event as invalid"),
            "{out}"
        );
        assert!(
            out.contains("ev2") && out.contains("waiting behind an earlier event"),
            "{out}"
        );
        let (ok, out) = colend(&b, &["list", "--service", "funding", "--json"]);
        assert!(ok, "{out}");
        let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(doc["dead_letters"], 1, "{doc}");
        assert_eq!(doc["dead_letter_events"][0]["attempts"], 1, "{doc}");
        assert_eq!(doc["pending_events"][0]["held"], true, "{doc}");

        // Retry: an unknown id is refused; the dead letter goes back.
        let (ok, out) = colend(
            &b,
            &[
                "retry",
                "--service",
                "funding",
                "--event-id",
                "nope",
                "--operator",
                "ops.wang",
            ],
        );
        assert!(!ok && out.contains("no dead letter"), "{out}");
        let (ok, out) = colend(
            &b,
            &[
                "retry",
                "--service",
                "funding",
                "--event-id",
                "ev1",
                "--operator",
                "ops.wang",
                "--reason",
                "acquisition fixed",
            ],
        );
        assert!(
            ok && out.contains("1 dead letter(s) back to pending"),
            "{out}"
        );
        let stats = outbox::stats(&db).await.expect("stats");
        assert_eq!((stats.pending, stats.dead_letters), (2, 0), "{backend:?}");
        assert_eq!(
            audited(&db, "colend outbox retry").await,
            vec![(
                "ops.wang".into(),
                "outbox:ev1".into(),
                "acquisition fixed".into()
            )]
        );

        // Refused again; dropped for good, and the application's next event goes.
        let r = relay(&db).run_once().await.expect("round");
        assert_eq!(r.dead_lettered, 1);
        let (ok, out) = colend(
            &b,
            &[
                "drop",
                "--service",
                "funding",
                "--event-id",
                "ev1",
                "--operator",
                "ops.wang",
                "--reason",
                "booked by hand in acquisition",
            ],
        );
        assert!(ok && out.contains("dead letter ev1 dropped"), "{out}");
        let r = relay(&db).run_once().await.expect("round");
        assert_eq!(r.delivered, 1, "ev2 goes once ev1 is dropped");
        let stats = outbox::stats(&db).await.expect("stats");
        assert_eq!((stats.pending, stats.dead_letters), (0, 0), "{backend:?}");
        assert_eq!(audited(&db, "colend outbox drop").await.len(), 1);
        assert!(matches!(
            verify(&db).await.expect("verify"),
            Verdict::Intact(2)
        ));
        db.pool.close().await;
        if let Some(url) = &b.database_url {
            colend_testkit::drop_database(url).await;
        }
    }
}

#[test]
fn a_missing_data_dir_or_an_unknown_service_is_refused() {
    let dir = TempDir::new();
    let missing = dir.0.join("nowhere");
    let b = Backends {
        database_url: None,
        redis_url: None,
        data_dir: missing.clone(),
        cache_prefix: String::new(),
    };
    let (ok, out) = colend(&b, &["list", "--service", "funding"]);
    assert!(!ok && out.contains("no funding storage"), "{out}");
    assert!(!missing.exists(), "no database was created");
    let (ok, out) = colend(&b, &["list", "--service", "ledger"]);
    assert!(!ok && out.contains("unknown service"), "{out}");
}
