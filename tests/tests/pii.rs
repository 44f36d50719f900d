//! Personal data stays sealed: a demo run with every log line and span
//! captured (debug level, JSON, span fields included) holds no borrower's
//! resident ID, mobile number or name in clear, and neither does the data:
//! the SQLite files byte for byte, or every row of every table in
//! PostgreSQL, or any Redis key or value.
use colend::borrowers::generate;
use colend::demo::{DemoArgs, execute};
use colend_testkit::{Backend, TestServer};
use sqlx::{Connection, Row};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

const SEED: u64 = 31;
const APPLICATIONS: usize = 40;

/// The personal data the demo's borrowers carry; and the same without the
/// names the bank itself puts on its KYC watchlist (fuzzy name screening
/// needs the listed names, which the watchlist keeps as reference data).
fn secrets() -> (Vec<String>, Vec<String>) {
    let (mut all, mut stored) = (Vec::new(), Vec::new());
    for b in generate(APPLICATIONS, SEED, colend_platform::time::today()) {
        for s in [&b.resident_id, &b.mobile] {
            all.push(s.clone());
            stored.push(s.clone());
        }
        all.push(b.person_name.clone());
        if b.plant != colend::borrowers::Plant::Watchlisted {
            stored.push(b.person_name.clone());
        }
    }
    (all, stored)
}

fn found_in(haystack: &[u8], secrets: &[String]) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| {
            let n = s.as_bytes();
            haystack.windows(n.len()).any(|w| w == n)
        })
        .cloned()
        .collect()
}

async fn demo(s: &TestServer, partner: &str) {
    let args = DemoArgs {
        endpoint: s.endpoint.clone(),
        kyc_endpoint: None,
        funding_endpoint: None,
        reconciliation_endpoint: None,
        applications: APPLICATIONS,
        json: true,
        partner: Some(partner.into()),
        concurrency: 8,
        seed: Some(SEED),
        partner_share_bps: 3_000,
    };
    let sum = execute(&args).await.expect("demo runs");
    assert_eq!(sum.errors, 0, "{:?}", sum.error_samples);
    assert!(sum.funded.loans > 0);
}

fn mesh(backend: Backend) -> impl std::future::Future<Output = TestServer> {
    TestServer::start(backend, colend::register_all)
}

#[tokio::test]
async fn no_personal_data_in_clear() {
    let logs = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_span_list(true)
        .with_current_span(true)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,h2=info,hyper=info,hyper_util=info,tower=info,sqlx=info,tonic=info",
        ))
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
    let (all, secrets) = secrets();
    assert!(all.len() >= 3 * APPLICATIONS && secrets.len() > 2 * APPLICATIONS);

    // Embedded: the SQLite files, byte for byte.
    let s = mesh(Backend::Embedded).await;
    demo(&s, "pii-embedded").await;
    let mut files = 0;
    for entry in std::fs::read_dir(&s.backends.data_dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let hits = found_in(&bytes, &secrets);
        assert!(
            hits.is_empty(),
            "{} holds {hits:?} in clear",
            path.display()
        );
        files += 1;
    }
    assert!(files >= 5, "{files} database files");
    s.stop().await;

    // PostgreSQL + Redis: every row of every table as text; every key and value.
    let s = mesh(Backend::Production).await;
    demo(&s, "pii-production").await;
    let url = s.backends.database_url.clone().unwrap();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let tables = sqlx::query(
        "SELECT CAST(table_schema AS TEXT), CAST(table_name AS TEXT) FROM information_schema.tables \
         WHERE table_schema IN ('acquisition', 'kyc', 'credit', 'funding', 'reconciliation') \
         AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut rows = 0;
    for t in &tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let dump = sqlx::query(&format!("SELECT CAST(t AS TEXT) FROM {schema}.{table} t"))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for r in dump {
            let text: String = r.get(0);
            let hits = found_in(text.as_bytes(), &secrets);
            assert!(hits.is_empty(), "{schema}.{table} holds {hits:?} in clear");
            rows += 1;
        }
    }
    assert!(rows > 100, "{rows} rows scanned");
    let client = redis::Client::open(colend_testkit::redis_url()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", s.backends.cache_prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for k in &keys {
        assert!(found_in(k.as_bytes(), &secrets).is_empty(), "Redis key {k}");
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut r)
            .await
            .unwrap_or(None);
        if let Some(v) = v {
            assert!(found_in(&v, &secrets).is_empty(), "Redis value of {k}");
        }
    }
    s.stop().await;

    // Every log line and span field of both runs.
    let captured = logs.0.lock().unwrap().clone();
    assert!(captured.len() > 10_000, "{} bytes of logs", captured.len());
    let hits = found_in(&captured, &all);
    assert!(hits.is_empty(), "logs or spans hold {hits:?} in clear");
    eprintln!(
        "{} secrets checked against {} bytes of logs and spans, {files} SQLite files, {rows} PostgreSQL rows, {} Redis keys",
        all.len(),
        captured.len(),
        keys.len()
    );
}
