//! A funding database of the previous version (loan events in a table of
//! its own) upgrades on both backends: pending events move to the
//! platform's outbox in their order, under their application; sent ones go.
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
    let db = Db::connect(b, "funding", &migrator)
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

const LOAN: &str = "INSERT INTO loans (loan_id, application_id, partner_id, status, currency, principal, bank_amount, \
    partner_amount, agreement_version, partner_share_bps, bank_rate_bps, partner_rate_bps, annual_rate_bps, term_months, \
    method, reserved_on, disbursed_on, disbursement_ref, principal_paid, interest_paid, penalty_paid, \
    partner_principal_paid, partner_interest_paid, partner_penalty_paid, created_at, updated_at) \
    VALUES ($1, $2, 'p1', 'DISBURSED', 'CNY', 100, 70, 30, 1, 3000, 500, 800, 600, 12, 1, '2026-01-01', \
    '2026-01-02', 'd1', 0, 0, 0, 0, 0, 0, 1, 1)";

#[tokio::test]
async fn pending_loan_events_move_to_the_platform_outbox_in_order() {
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
        for (loan, app) in [("L1", "A1"), ("L2", "A2")] {
            sqlx::query(LOAN)
                .bind(loan)
                .bind(app)
                .execute(&old.pool)
                .await
                .expect("loan");
        }
        sqlx::query(
            "INSERT INTO repayments (repayment_id, loan_id, amount, value_date, bank_ref, body, created_at) \
             VALUES ('R1', 'L1', 10, '2026-02-01', 'b1', '', 2)",
        )
        .execute(&old.pool)
        .await
        .expect("repayment");
        sqlx::query(
            "INSERT INTO outbox (event_id, payload, created_at, sent_at, attempts) VALUES \
             ('repaid:R1', '0b', 2, 0, 0), ('disbursed:L1', '0a', 1, 0, 3), ('void:L2', '0c', 3, 0, 0), \
             ('disbursed:L9', '0d', 4, 0, 0), ('disbursed:L2', '0e', 0, 9, 1)",
        )
        .execute(&old.pool)
        .await
        .expect("old outbox");
        old.pool.close().await;

        let db = colend_funding::connect(&b).await.expect("upgraded");
        let moved: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT event_id, aggregate_id, topic, payload, created_at FROM outbox_events ORDER BY seq",
        )
        .fetch_all(&db.pool)
        .await
        .expect("moved");
        let t = "acquisition.RecordLoanEvent";
        let row = |id: &str, agg: &str, p: &str, at: i64| {
            (
                id.to_string(),
                agg.to_string(),
                t.to_string(),
                p.to_string(),
                at,
            )
        };
        assert_eq!(
            moved,
            vec![
                row("disbursed:L1", "A1", "0a", 1),
                row("repaid:R1", "A1", "0b", 2),
                row("void:L2", "A2", "0c", 3),
                // A loan that is not there: an aggregate of its own.
                row("disbursed:L9", "disbursed:L9", "0d", 4),
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
