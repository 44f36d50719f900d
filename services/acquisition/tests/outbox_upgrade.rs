//! An acquisition database of the previous version (status changes in an
//! outbox table of its own) upgrades on both backends: pending events move
//! to the platform's outbox in their order, under their application.
use colend_platform::Db;
use colend_platform::config::Backends;
use colend_testkit::{BOTH, Backend, TempDir};

/// Storage as the previous version left it: its migrations before 0010 and
/// none of the platform's tables.
async fn previous_version(b: &Backends) -> Db {
    let old = TempDir::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    for entry in std::fs::read_dir(dir).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let version: u32 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if (1..10).contains(&version) {
            std::fs::copy(&path, old.0.join(name)).expect("copy");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.0.as_path())
        .await
        .expect("migrations before 0010");
    let db = Db::connect(b, "acquisition", &migrator)
        .await
        .expect("previous version");
    for sql in [
        "DROP TABLE colend_platform_migrations",
        "DROP TABLE outbox_dead_letters",
        "DROP TABLE outbox_events",
        "DROP INDEX idempotency_keys_created",
    ] {
        sqlx::query(sql).execute(&db.pool).await.expect(sql);
    }
    db
}

#[tokio::test]
async fn pending_status_changes_move_to_the_platform_outbox_in_order() {
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
        let old = previous_version(&b).await;
        sqlx::query(
            "INSERT INTO outbox (event_id, application_id, created_at, sent_at) VALUES \
             ('evt_2', 'app_1', 2, 0), ('evt_1', 'app_1', 1, 0), ('evt_3', 'app_2', 3, 0), ('evt_0', 'app_2', 0, 5)",
        )
        .execute(&old.pool)
        .await
        .expect("old outbox");
        old.pool.close().await;

        let db = colend_acquisition::connect(&b).await.expect("upgraded");
        let moved: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT event_id, aggregate_id, topic, payload FROM outbox_events ORDER BY seq",
        )
        .fetch_all(&db.pool)
        .await
        .expect("moved");
        let t = colend_acquisition::app::CHANGED_TOPIC;
        let row = |id: &str, app: &str| {
            (
                id.to_string(),
                app.to_string(),
                t.to_string(),
                String::new(),
            )
        };
        assert_eq!(
            moved,
            vec![
                row("evt_1", "app_1"),
                row("evt_2", "app_1"),
                row("evt_3", "app_2")
            ],
            "{backend:?}"
        );
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
            .fetch_one(&db.pool)
            .await
            .expect("old table");
        assert_eq!(left, 0, "{backend:?}");
        db.pool.close().await;
        if let Some(url) = &b.database_url {
            colend_testkit::drop_database(url).await;
        }
    }
}
