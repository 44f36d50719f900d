//! Leases of journeys, fenced by epoch, against real storage on both
//! backends: a stale owner's writes are refused, and a long step keeps its
//! lease by renewing it.
use super::*;
use colend_platform::Endpoints;
use colend_platform::config::Backends;
use colend_testkit::{BOTH, Backend, TempDir};
use std::sync::atomic::{AtomicU32, Ordering};

struct Setup {
    db: Db,
    backends: Backends,
    _dir: TempDir,
}

async fn setup(backend: Backend) -> Setup {
    let dir = TempDir::new();
    let backends = colend_testkit::backends(backend, &dir).await;
    let db = crate::connect(&backends)
        .await
        .expect("acquisition storage");
    Setup {
        db,
        backends,
        _dir: dir,
    }
}

impl Setup {
    /// A replica named `owner` (no other service is reached in these tests).
    fn replica(&self, owner: &str, lease_ms: i64) -> Journey {
        let mesh = Mesh::from_env(
            self.backends.clone(),
            Endpoints::all_at("http://127.0.0.1:9"),
        )
        .expect("mesh");
        Journey::with_config(
            self.db.clone(),
            &mesh,
            Config {
                owner: owner.into(),
                lease_ms,
                sweep: Duration::from_secs(60),
                attempts: 3,
                backoff: Duration::from_millis(10),
            },
        )
        .expect("journey")
    }

    /// An application at SUBMITTED with no lease.
    async fn application(&self, id: &str) {
        sqlx::query(
            "INSERT INTO applications (application_id, partner_id, status, reason_codes, business_name, credit_code, \
             masked_resident_id, person_key, business_key, currency, requested_amount, term_months, purpose, \
             repayment_method, request_body, consent_scopes, consent_channel, consent_text_version, consent_granted_at, \
             kyc_check_id, kyc_age, kyc_region, decision, funding, created_at, updated_at) \
             VALUES ($1, 'p1', 'SUBMITTED', '', 'b', 'c', 'm', 'pk', 'bk', 'CNY', 100, 12, 1, 1, '', '', '', '', 0, \
             '', 0, '', '', '', 0, 0)",
        )
        .bind(id)
        .execute(&self.db.pool)
        .await
        .expect("an application");
    }

    /// (status, lease owner, lease epoch, history events).
    async fn row(&self, id: &str) -> (String, String, i64, i64) {
        let (status, owner, epoch): (String, String, i64) = sqlx::query_as(
            "SELECT status, lease_owner, lease_epoch FROM applications WHERE application_id = $1",
        )
        .bind(id)
        .fetch_one(&self.db.pool)
        .await
        .expect("the application");
        let (events,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM application_events WHERE application_id = $1")
                .bind(id)
                .fetch_one(&self.db.pool)
                .await
                .expect("its history");
        (status, owner, epoch, events)
    }

    async fn stop(self) {
        self.db.pool.close().await;
        if let Some(url) = &self.backends.database_url {
            colend_testkit::drop_database(url).await;
        }
    }
}

fn kyc_passed() -> StepResult {
    StepResult {
        to: Status::KycPassed,
        detail: "checked".into(),
        reasons: Vec::new(),
        columns: vec![("kyc_age", "40".into()), ("kyc_region", "330106".into())],
    }
}

fn parked() -> StepResult {
    StepResult {
        to: Status::Parked,
        detail: "parked".into(),
        reasons: vec!["DEPENDENCY_UNAVAILABLE".into()],
        columns: vec![("parked_step", "SUBMITTED".into())],
    }
}

fn fence<'a>(id: &'a str, held: &'a Held) -> Fence<'a> {
    Fence {
        id,
        from: Status::Submitted,
        held,
    }
}

async fn stale_owner_is_fenced(backend: Backend) {
    let s = setup(backend).await;
    let (a, b) = (s.replica("a", 1500), s.replica("b", 1500));
    s.application("app_fence").await;
    let e1 = a
        .claim("app_fence")
        .await
        .unwrap()
        .expect("a takes the lease");
    assert_eq!(e1, 1);
    assert_eq!(
        b.claim("app_fence").await.unwrap(),
        None,
        "a live lease is not taken over"
    );
    // a stalls past its lease; b takes the journey over at the next epoch.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let e2 = b.claim("app_fence").await.unwrap().expect("b takes over");
    assert_eq!(e2, e1 + 1);
    // a wakes: every write it makes names epoch 1 and is refused.
    let held_a = Held::new(e1);
    assert!(!a.renew(fence("app_fence", &held_a)).await.unwrap());
    assert!(
        !a.transition("app_fence", Status::Submitted, e1, parked())
            .await
            .unwrap()
    );
    assert!(
        !a.transition("app_fence", Status::Submitted, e1, kyc_passed())
            .await
            .unwrap()
    );
    let input = credit::DecisionInput::default();
    let f = Fence {
        id: "app_fence",
        from: Status::KycPassed,
        held: &held_a,
    };
    assert!(matches!(
        a.record_credit_input(f, &input).await,
        Err(Halt::Lost)
    ));
    assert_eq!(
        s.row("app_fence").await,
        ("SUBMITTED".into(), "b".into(), 2, 0),
        "nothing of the stale owner's was written"
    );
    // Its step stops before calling anyone.
    let calls = AtomicU32::new(0);
    let stalled = tokio::time::Instant::now() - Duration::from_secs(1);
    let held_old = Held {
        epoch: e1,
        renewed: std::sync::Mutex::new(stalled),
    };
    let step = a
        .with_retries(Some(fence("app_fence", &held_old)), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ApiError>(()) }
        })
        .await;
    assert!(matches!(step, Err(Halt::Lost)), "{step:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The owner at epoch 2 commits, and keeps the lease for the next step.
    assert!(
        b.transition("app_fence", Status::Submitted, e2, kyc_passed())
            .await
            .unwrap()
    );
    assert_eq!(
        s.row("app_fence").await,
        ("KYC_PASSED".into(), "b".into(), 2, 1)
    );
    // The same replica taking its own journey back (a restart) moves the epoch on too.
    assert_eq!(b.claim("app_fence").await.unwrap(), Some(3));
    assert!(
        !b.transition("app_fence", Status::KycPassed, e2, parked())
            .await
            .unwrap()
    );
    s.stop().await;
}

async fn renewal_keeps_a_long_step(backend: Backend) {
    let s = setup(backend).await;
    let (a, b) = (s.replica("a", 1000), s.replica("b", 1000));
    s.application("app_long").await;
    let epoch = a
        .claim("app_long")
        .await
        .unwrap()
        .expect("a takes the lease");
    let held = Held::new(epoch);
    // A step three leases long (a slow call, retried once), while another
    // replica keeps trying to take the journey over.
    let attempts = AtomicU32::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let step = async {
        let step = a.with_retries(Some(fence("app_long", &held)), || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                if n == 0 {
                    Err(ApiError::Dependency {
                        service: "credit".into(),
                        message: "deadline exceeded".into(),
                    })
                } else {
                    Ok(7)
                }
            }
        });
        let step = step.await;
        done.store(true, Ordering::SeqCst);
        step
    };
    let contender = async {
        while !done.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if b.claim("app_long").await.unwrap().is_some() {
                return true;
            }
        }
        false
    };
    let (step, taken) = tokio::join!(step, contender);
    assert!(matches!(step, Ok(Ok(7))), "{step:?}");
    assert!(!taken, "the renewed lease was never taken over");
    assert!(
        a.transition("app_long", Status::Submitted, epoch, kyc_passed())
            .await
            .unwrap()
    );
    assert_eq!(s.row("app_long").await.0, "KYC_PASSED");

    // Taken over while a call is outstanding (here, by writing the epoch
    // on): the next renewal finds it, and the step stops before its answer.
    s.application("app_taken").await;
    let epoch = a
        .claim("app_taken")
        .await
        .unwrap()
        .expect("a takes the lease");
    let held = Held::new(epoch);
    let started = tokio::time::Instant::now();
    let step = a.with_retries(Some(fence("app_taken", &held)), || async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, ApiError>(())
    });
    let take_over = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sqlx::query(
            "UPDATE applications SET lease_owner = 'b', lease_epoch = lease_epoch + 1 \
             WHERE application_id = 'app_taken'",
        )
        .execute(&s.db.pool)
        .await
        .unwrap();
    };
    let (step, ()) = tokio::join!(step, take_over);
    assert!(matches!(step, Err(Halt::Lost)), "{step:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        !a.transition("app_taken", Status::Submitted, epoch, parked())
            .await
            .unwrap()
    );
    assert_eq!(s.row("app_taken").await.0, "SUBMITTED");
    s.stop().await;
}

#[tokio::test]
async fn stale_owner_is_fenced_embedded() {
    stale_owner_is_fenced(BOTH[0]).await;
}

#[tokio::test]
async fn stale_owner_is_fenced_postgres() {
    stale_owner_is_fenced(BOTH[1]).await;
}

#[tokio::test]
async fn renewal_keeps_a_long_step_embedded() {
    renewal_keeps_a_long_step(BOTH[0]).await;
}

#[tokio::test]
async fn renewal_keeps_a_long_step_postgres() {
    renewal_keeps_a_long_step(BOTH[1]).await;
}
