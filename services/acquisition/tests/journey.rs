//! Journeys under faults, against real servers on port 0 on both backends:
//! acquisition reaches credit and funding through fault proxies.
//! - The credit step's body is recorded before its first call: a retry
//!   after a lost answer sends the same body though the borrower's exposure
//!   changed in between.
//! - ABANDON records ABANDONING first; a failed compensation leaves it
//!   there (RETRY refused, borrower still in flight), and ABANDON again
//!   finishes it: the reservation voided, the borrower released.
//! - RETRY racing ABANDON on many parked journeys, half of them holding a
//!   live reservation (parked at APPROVED: the reservation made, its answer
//!   lost), half without one: exactly one wins each time, an ABANDON that
//!   wins voids the reservation held, and no live reservation sits under a
//!   closed application.
use colend_acquisition::journey::Config;
use colend_contracts::acquisition::v1::{
    self as pb, acquisition_service_client::AcquisitionServiceClient,
};
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::credit::v1 as cpb;
use colend_contracts::funding::v1::{self as fpb, funding_service_client::FundingServiceClient};
use colend_core::{CreditCode, ResidentId};
use colend_platform::Db;
use colend_testkit::proxy::{FaultProxy, Mode};
use colend_testkit::{BOTH, Backend, TestServer, as_bank, as_partner, as_service, reason};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

/// A good application for borrower number `n` (distinct people and businesses).
fn submission(rid: &str, n: u32) -> pb::SubmitApplicationRequest {
    let id_body = format!("33010619850312{:03}", n % 1000);
    let cc_body = format!("91330106MA2GL{:04}", n % 10_000);
    pb::SubmitApplicationRequest {
        request_id: rid.into(),
        business: Some(pb::Business {
            name: format!("杭州嘉禾电子有限公司{n}"),
            credit_code: format!("{cc_body}{}", CreditCode::check_char(&cc_body).unwrap()),
            years_in_business: 6,
        }),
        legal_representative: Some(pb::LegalRepresentative {
            name: "陈静".into(),
            resident_id: format!("{id_body}{}", ResidentId::check_char(&id_body).unwrap()),
            mobile: "13912345678".into(),
        }),
        requested_amount: cny(20_000_000),
        term_months: 12,
        purpose: pb::LoanPurpose::WorkingCapital as i32,
        repayment_method: RepaymentMethod::EqualPrincipal as i32,
        partner_score: 720,
        scenario: Some(pb::ScenarioData {
            annual_tax_revenue: cny(300_000_000),
            invoice_turnover_12m: cny(350_000_000),
            turnover_trend_bps: 800,
            open_loans_elsewhere: 1,
        }),
        consent: Some(pb::Consent {
            scopes: vec!["credit_report".into()],
            granted_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            channel: "app".into(),
            text_version: "v1".into(),
        }),
        partner_decision: Some(pb::PartnerDecision {
            approved: true,
            reference: format!("partner-{rid}"),
        }),
    }
}

/// Acquisition, KYC, credit and funding on one listener; acquisition
/// reaches credit and funding through fault proxies.
struct Rig {
    server: TestServer,
    credit_path: FaultProxy,
    funding_path: FaultProxy,
    acq: AcquisitionServiceClient<Channel>,
    funding: FundingServiceClient<Channel>,
    acq_db: Db,
    funding_db: Db,
}

impl Rig {
    /// Journey steps are tried `attempts` times, each call bounded by `call_ms`.
    async fn start(backend: Backend, attempts: u32, call_ms: u64) -> Rig {
        let proxies: Arc<Mutex<Option<(FaultProxy, FaultProxy)>>> = Arc::default();
        let made = proxies.clone();
        let server = TestServer::start(backend, move |mesh| async move {
            let port: u16 = mesh
                .endpoints
                .kyc
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("the server's port");
            let (credit_path, funding_path) =
                (FaultProxy::start(port).await, FaultProxy::start(port).await);
            let mut acq_mesh = mesh.clone();
            acq_mesh.endpoints.credit = credit_path.url();
            acq_mesh.endpoints.funding = funding_path.url();
            acq_mesh.call_timeout = Duration::from_millis(call_ms);
            *made.lock().unwrap() = Some((credit_path, funding_path));
            let config = Config {
                owner: "test/acquisition".into(),
                lease_ms: 10_000,
                sweep: Duration::from_millis(500),
                attempts,
                backoff: Duration::from_millis(50),
            };
            Ok(vec![
                colend_acquisition::register_with(acq_mesh, config).await?,
                colend_kyc::register(mesh.clone()).await?,
                colend_credit::register(mesh.clone()).await?,
                colend_funding::register(mesh).await?,
            ])
        })
        .await;
        let (credit_path, funding_path) = proxies.lock().unwrap().take().expect("proxies");
        let mut funding = FundingServiceClient::new(server.channel.clone());
        funding
            .whitelist_institution(as_bank(fpb::WhitelistInstitutionRequest {
                request_id: "wl".into(),
                entry: Some(fpb::WhitelistEntry {
                    institution_id: "p1".into(),
                    kind: fpb::InstitutionKind::Partner as i32,
                    effective_from: "2026-01-01".into(),
                    effective_to: String::new(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
        funding
            .set_bank_reference(as_bank(fpb::SetBankReferenceRequest {
                request_id: "ref".into(),
                reference: Some(fpb::BankReference {
                    net_tier1_capital: cny(100_000_000_000_000),
                    total_loan_balance: cny(1_000_000_000_000_000),
                    as_of: "2026-09-30".into(),
                }),
            }))
            .await
            .unwrap();
        funding
            .upsert_agreement(as_bank(fpb::UpsertAgreementRequest {
                request_id: "ag".into(),
                agreement: Some(fpb::Agreement {
                    partner_id: "p1".into(),
                    partner_share_bps: 3_500,
                    bank_rate_bps: 800,
                    partner_rate_bps: 1_000,
                    daily_quota: cny(1_000_000_000_000),
                    total_quota: cny(1_000_000_000_000),
                    effective_from: "2026-01-01".into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
        let acq_db = colend_acquisition::connect(&server.backends).await.unwrap();
        let funding_db = colend_funding::connect(&server.backends).await.unwrap();
        Rig {
            acq: AcquisitionServiceClient::new(server.channel.clone()),
            funding,
            credit_path,
            funding_path,
            acq_db,
            funding_db,
            server,
        }
    }

    async fn stop(self) {
        self.acq_db.pool.close().await;
        self.funding_db.pool.close().await;
        self.server.stop().await;
    }

    async fn submit(&self, rid: &str, n: u32) -> pb::Application {
        self.acq
            .clone()
            .submit_application(as_partner("p1", submission(rid, n)))
            .await
            .unwrap()
            .into_inner()
            .application
            .unwrap()
    }

    async fn get(&self, id: &str) -> pb::Application {
        self.acq
            .clone()
            .get_application(as_partner(
                "p1",
                pb::GetApplicationRequest {
                    application_id: id.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .application
            .unwrap()
    }

    /// Polls until `done` holds of the application (at most 60 s).
    async fn wait(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&pb::Application) -> bool,
    ) -> pb::Application {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let app = self.get(id).await;
            if done(&app) {
                return app;
            }
            assert!(
                Instant::now() < give_up,
                "{id} never became {what}: {app:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_status(&self, id: &str, status: pb::ApplicationStatus) -> pb::Application {
        self.wait(id, status.as_str_name(), |a| a.status == status as i32)
            .await
    }

    async fn resume(
        &self,
        rid: &str,
        id: &str,
        action: pb::ResumeAction,
    ) -> Result<pb::Application, tonic::Status> {
        self.acq
            .clone()
            .resume_application(as_bank(pb::ResumeApplicationRequest {
                request_id: rid.into(),
                application_id: id.into(),
                action: action as i32,
                operator: "ops.wang".into(),
                reason: format!("test {rid}"),
            }))
            .await
            .map(|r| r.into_inner().application.unwrap())
    }

    /// (credit_input, person_key) as stored.
    async fn stored(&self, id: &str) -> (String, String) {
        sqlx::query_as(
            "SELECT credit_input, person_key FROM applications WHERE application_id = $1",
        )
        .bind(id)
        .fetch_one(&self.acq_db.pool)
        .await
        .unwrap()
    }

    /// The statuses of the application's loans in funding.
    async fn loans(&self, id: &str) -> Vec<String> {
        sqlx::query_as::<_, (String,)>("SELECT status FROM loans WHERE application_id = $1")
            .bind(id)
            .fetch_all(&self.funding_db.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(s,)| s)
            .collect()
    }

    async fn in_flight(&self, id: &str) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM inflight_borrowers WHERE application_id = $1")
                .bind(id)
                .fetch_one(&self.acq_db.pool)
                .await
                .unwrap();
        n
    }
}

/// Ends a network fault: open connections (cut mid-frame) are reset, new ones pass.
async fn heal(proxy: &FaultProxy) {
    proxy.set(Mode::Reset);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Mode::Pass(Duration::ZERO));
}

fn statuses(app: &pb::Application) -> Vec<pb::ApplicationStatus> {
    app.history
        .iter()
        .map(|h| pb::ApplicationStatus::try_from(h.status).unwrap())
        .collect()
}

/// The status the journey parked at (the event before PARKED).
fn parked_at(app: &pb::Application) -> pb::ApplicationStatus {
    let s = statuses(app);
    let at = s
        .iter()
        .rposition(|x| *x == pb::ApplicationStatus::Parked)
        .expect("parked");
    s[at - 1]
}

async fn credit_body_is_stable(backend: Backend) {
    let r = Rig::start(backend, 3, 500).await;
    // The bank decides, but its answers are lost: the journey parks.
    r.credit_path.set(Mode::DropResponses);
    let app = r.submit("cb-1", 1).await;
    let id = app.application_id.clone();
    let parked = r.wait_status(&id, pb::ApplicationStatus::Parked).await;
    assert_eq!(parked_at(&parked), pb::ApplicationStatus::KycPassed);
    assert_eq!(parked.reason_codes, vec!["DEPENDENCY_UNAVAILABLE"]);
    let (input, person_key) = r.stored(&id).await;
    let recorded = cpb::DecisionInput::decode(hex::decode(&input).unwrap().as_slice()).unwrap();
    assert_eq!(recorded.application_id, id);
    assert_eq!(
        recorded
            .existing_exposure
            .as_ref()
            .map_or(0, |m| m.minor_units),
        0
    );
    // The borrower's exposure changes before the retry: a reservation for
    // another of their applications.
    r.funding
        .clone()
        .reserve_funding(as_service(
            "p1",
            fpb::ReserveFundingRequest {
                request_id: "elsewhere".into(),
                application_id: "app_elsewhere".into(),
                partner_id: "p1".into(),
                principal: cny(5_000_000),
                term_months: 12,
                annual_rate_bps: 1_000,
                repayment_method: RepaymentMethod::EqualPrincipal as i32,
                borrower_key: person_key.clone(),
                annual_fee_bps: 0,
            },
        ))
        .await
        .unwrap();
    let exposure = r
        .funding
        .clone()
        .get_borrower_exposure(as_service(
            "p1",
            fpb::GetBorrowerExposureRequest {
                borrower_key: person_key,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .exposure
        .unwrap();
    assert_eq!(exposure.minor_units, 5_000_000);
    // Retried: the same body goes out under "<id>:credit", so the bank's
    // first decision comes back (not IDEMPOTENCY_KEY_REUSED), and the
    // journey goes on to funding.
    heal(&r.credit_path).await;
    r.resume("cb-retry", &id, pb::ResumeAction::Retry)
        .await
        .unwrap();
    let done = r
        .wait(&id, "settled", |a| {
            a.status != pb::ApplicationStatus::KycPassed as i32
                && a.status != pb::ApplicationStatus::Approved as i32
        })
        .await;
    assert_eq!(
        done.status,
        pb::ApplicationStatus::FundsReserved as i32,
        "{done:?}"
    );
    assert_eq!(r.stored(&id).await.0, input, "the recorded input is kept");
    r.stop().await;
}

async fn abandon_resumes(backend: Backend) {
    // Six attempts: the heal's reset window (200 ms) can fail the first
    // few quick retries of the credit call; the later ones must get through.
    let r = Rig::start(backend, 6, 500).await;
    // The bank's first answers get lost; once the input is recorded and the
    // bank is reachable again, funding's answers are lost instead: the
    // reservation is made, and the journey parks at APPROVED holding it.
    r.credit_path.set(Mode::BlackHole);
    let app = r.submit("ab-1", 2).await;
    let id = app.application_id.clone();
    let give_up = Instant::now() + Duration::from_secs(30);
    while r.stored(&id).await.0.is_empty() {
        assert!(
            Instant::now() < give_up,
            "the credit input was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.funding_path.set(Mode::DropResponses);
    heal(&r.credit_path).await;
    let parked = r.wait_status(&id, pb::ApplicationStatus::Parked).await;
    assert_eq!(
        parked_at(&parked),
        pb::ApplicationStatus::Approved,
        "{parked:?}"
    );
    assert_eq!(r.loans(&id).await, vec!["RESERVED"]);

    // ABANDON while funding cannot be reached: the decision is recorded,
    // the compensation fails, the application stays ABANDONING.
    r.funding_path.set(Mode::BlackHole);
    let e = r
        .resume("abandon-1", &id, pb::ResumeAction::Abandon)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DEPENDENCY_UNAVAILABLE", "{e:?}");
    let abandoning = r.get(&id).await;
    assert_eq!(abandoning.status, pb::ApplicationStatus::Abandoning as i32);
    let last = abandoning.history.last().unwrap();
    assert_eq!(last.status, pb::ApplicationStatus::Abandoning as i32);
    assert_eq!(last.reason_codes, vec!["ABANDONED"]);
    assert_eq!(r.loans(&id).await, vec!["RESERVED"]);
    // From now on RETRY is refused, and the borrower is still in flight.
    let e = r
        .resume("retry-1", &id, pb::ResumeAction::Retry)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "INVALID_STATE")
    );
    assert_eq!(r.in_flight(&id).await, 2);
    let e = r
        .acq
        .clone()
        .submit_application(as_partner("p1", submission("ab-1-again", 2)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DUPLICATE_APPLICATION");

    // ABANDON again (the same request) once funding is back: finished.
    heal(&r.funding_path).await;
    let closed = r
        .resume("abandon-1", &id, pb::ResumeAction::Abandon)
        .await
        .unwrap();
    assert_eq!(closed.status, pb::ApplicationStatus::Failed as i32);
    assert_eq!(closed.reason_codes, vec!["ABANDONED"]);
    let s = statuses(&closed);
    let from = s
        .iter()
        .position(|x| *x == pb::ApplicationStatus::Abandoning)
        .unwrap();
    assert_eq!(s.last(), Some(&pb::ApplicationStatus::Failed));
    assert!(s[from..].contains(&pb::ApplicationStatus::Failed));
    let failed = closed.history.last().unwrap();
    assert!(
        failed.detail.contains("voided") && failed.detail.contains("ops.wang"),
        "{}",
        failed.detail
    );
    assert_eq!(r.loans(&id).await, vec!["VOID"]);
    assert_eq!(r.in_flight(&id).await, 0);
    // A replay changes nothing; another ABANDON is refused.
    let again = r
        .resume("abandon-1", &id, pb::ResumeAction::Abandon)
        .await
        .unwrap();
    assert_eq!(again.history.len(), closed.history.len());
    let e = r
        .resume("abandon-2", &id, pb::ResumeAction::Abandon)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_STATE");
    // The borrower may apply again.
    r.submit("ab-1-later", 2).await;
    r.stop().await;
}

/// Ends a network fault at once: open connections (cut mid-frame) are
/// reset, and new ones pass a moment later, so a step retried right after
/// the reset gets through.
async fn heal_quickly(proxy: &FaultProxy) {
    proxy.set(Mode::Reset);
    tokio::time::sleep(Duration::from_millis(30)).await;
    proxy.set(Mode::Pass(Duration::ZERO));
}

/// Waits until every one of `ids` has its credit input recorded.
async fn credit_inputs_recorded(r: &Rig, ids: &[String]) {
    let give_up = Instant::now() + Duration::from_secs(30);
    for id in ids {
        while r.stored(id).await.0.is_empty() {
            assert!(
                Instant::now() < give_up,
                "{id}: the credit input was never recorded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `rounds` times, `per_round` journeys park, then a RETRY and an ABANDON
/// are sent together for each. Half of each round park at APPROVED holding
/// a live reservation (the bank decided while funding's answers were being
/// lost: the reservation was made); the other half park at KYC_PASSED
/// without one (funding unreachable when the exposure is read).
async fn retry_races_abandon(backend: Backend, rounds: u32, per_round: u32) {
    // Calls get longer here: many journeys run at once. Four attempts: a
    // step retried across a reset of its path gets through.
    let r = Rig::start(backend, 4, 1_500).await;
    // (RETRY won, ABANDON won), each over a live reservation / without one.
    let mut outcomes = ((0, 0), (0, 0));
    for round in 0..rounds {
        let held_half = per_round / 2;
        let submit_all = |from: u32, count: u32| {
            let r = &r;
            futures::future::join_all((from..from + count).map(move |k| async move {
                let n = 100 + round * per_round + k;
                r.submit(&format!("race-{n}"), n).await.application_id
            }))
        };
        // Held: the credit input recorded (the exposure read from funding),
        // the bank unreachable; then funding's answers are lost and the bank
        // is back: the reservation is made and the journey parks holding it.
        r.credit_path.set(Mode::BlackHole);
        let held = submit_all(0, held_half).await;
        credit_inputs_recorded(&r, &held).await;
        r.funding_path.set(Mode::DropResponses);
        // Without: funding's answers are lost before the exposure is read.
        let without = submit_all(held_half, per_round - held_half).await;
        heal_quickly(&r.credit_path).await;
        let mut ids = held.clone();
        ids.extend(without.iter().cloned());
        let mut holding = std::collections::HashSet::new();
        for id in &ids {
            let parked = r.wait_status(id, pb::ApplicationStatus::Parked).await;
            let loans = r.loans(id).await;
            if held.contains(id) && loans == vec!["RESERVED"] {
                assert_eq!(parked_at(&parked), pb::ApplicationStatus::Approved, "{id}");
                holding.insert(id.clone());
            } else {
                assert!(loans.is_empty(), "{id}: {loans:?}");
            }
        }
        assert!(
            holding.len() * 2 >= held.len(),
            "round {round}: only {} of {} journeys parked holding a reservation",
            holding.len(),
            held.len()
        );
        heal(&r.funding_path).await;
        let races = ids.iter().enumerate().map(|(k, id)| {
            let r = &r;
            async move {
                let (retry_id, abandon_id) = (format!("retry-{id}"), format!("abandon-{id}"));
                let retry = r.resume(&retry_id, id, pb::ResumeAction::Retry);
                let abandon = r.resume(&abandon_id, id, pb::ResumeAction::Abandon);
                // Either may be sent first.
                let (retried, abandoned) = if k % 2 == 0 {
                    tokio::join!(retry, abandon)
                } else {
                    let (a, b) = tokio::join!(abandon, retry);
                    (b, a)
                };
                (id.clone(), retried, abandoned)
            }
        });
        for (id, retried, abandoned) in futures::future::join_all(races).await {
            let held = holding.contains(&id);
            match (retried, abandoned) {
                (Ok(app), Err(e)) => {
                    assert_eq!(reason(&e), "INVALID_STATE", "{id}: {e:?}");
                    assert_ne!(app.status, pb::ApplicationStatus::Parked as i32);
                    if held {
                        outcomes.0.0 += 1;
                    } else {
                        outcomes.0.1 += 1;
                    }
                }
                (Err(e), Ok(app)) => {
                    assert_eq!(reason(&e), "INVALID_STATE", "{id}: {e:?}");
                    assert_eq!(app.status, pb::ApplicationStatus::Failed as i32);
                    if held {
                        outcomes.1.0 += 1;
                    } else {
                        outcomes.1.1 += 1;
                    }
                }
                (retried, abandoned) => {
                    panic!("{id}: exactly one decision must win: {retried:?} / {abandoned:?}")
                }
            }
        }
        // Every journey settles; no live reservation under a closed application.
        for id in &ids {
            let app = r
                .wait(id, "settled", |a| {
                    !matches!(
                        pb::ApplicationStatus::try_from(a.status),
                        Ok(pb::ApplicationStatus::Submitted
                            | pb::ApplicationStatus::KycPassed
                            | pb::ApplicationStatus::Approved)
                    )
                })
                .await;
            let loans = r.loans(id).await;
            match pb::ApplicationStatus::try_from(app.status).unwrap() {
                pb::ApplicationStatus::FundsReserved => {
                    assert_eq!(loans, vec!["RESERVED"], "{id}");
                    assert_eq!(r.in_flight(id).await, 2, "{id}");
                }
                pb::ApplicationStatus::Failed => {
                    if holding.contains(id) {
                        // ABANDON voided the reservation the journey held.
                        assert_eq!(loans, vec!["VOID"], "{id}");
                    } else {
                        assert!(loans.iter().all(|l| l == "VOID"), "{id}: {loans:?}");
                    }
                    assert_eq!(r.in_flight(id).await, 0, "{id}");
                    let s = statuses(&app);
                    assert!(
                        !s.contains(&pb::ApplicationStatus::FundsReserved),
                        "{id}: {s:?}"
                    );
                }
                // A retried journey may park again (a call timed out under
                // load); it holds no reservation a closed application could.
                pb::ApplicationStatus::Parked => {
                    assert!(
                        !statuses(&app).contains(&pb::ApplicationStatus::Abandoning),
                        "{id}: {app:?}"
                    );
                    assert!(loans.iter().all(|l| l == "RESERVED"), "{id}: {loans:?}");
                }
                other => panic!("{id} ended {other:?}: {app:?}"),
            }
        }
    }
    let ((retry_held, retry_without), (abandon_held, abandon_without)) = outcomes;
    assert_eq!(
        retry_held + retry_without + abandon_held + abandon_without,
        rounds * per_round
    );
    eprintln!(
        "RETRY won {} times ({retry_held} over a live reservation), ABANDON {} times \
         ({abandon_held} voiding a live reservation), of {}",
        retry_held + retry_without,
        abandon_held + abandon_without,
        rounds * per_round
    );
    // The race that matters: ABANDON voiding a reservation the journey held.
    assert!(
        abandon_held > 0,
        "ABANDON never won over a live reservation"
    );
    r.stop().await;
}

#[tokio::test]
async fn credit_body_is_stable_embedded() {
    credit_body_is_stable(BOTH[0]).await;
}

#[tokio::test]
async fn credit_body_is_stable_postgres() {
    credit_body_is_stable(BOTH[1]).await;
}

#[tokio::test]
async fn abandon_resumes_embedded() {
    abandon_resumes(BOTH[0]).await;
}

#[tokio::test]
async fn abandon_resumes_postgres() {
    abandon_resumes(BOTH[1]).await;
}

#[tokio::test]
async fn retry_races_abandon_embedded() {
    retry_races_abandon(BOTH[0], 1, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_races_abandon_postgres() {
    retry_races_abandon(BOTH[1], 4, 25).await;
}
