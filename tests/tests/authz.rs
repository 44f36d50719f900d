//! The authorization matrix, generated from the service descriptors: every
//! RPC of every colend service × every caller class (and no credentials),
//! then every partner RPC that names a resource × {own, another partner's,
//! nonexistent}. A new RPC missing from the policy fails here.
use colend::demo::{DemoArgs, execute};
use colend_contracts::acquisition::v1::{
    self as acq, acquisition_service_client::AcquisitionServiceClient,
};
use colend_contracts::credit::v1::{self as credit, credit_service_client::CreditServiceClient};
use colend_contracts::funding::v1::{self as fund, funding_service_client::FundingServiceClient};
use colend_contracts::kyc::v1::{self as kyc, kyc_service_client::KycServiceClient};
use colend_platform::auth::{Class, POLICY, allowed};
use colend_testkit::rpc::{self, Method, methods};
use colend_testkit::{Backend, TestServer, anonymous, as_bank, as_partner, as_service};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

/// The status code `m` ends with when called with an empty message and
/// `req`'s metadata.
async fn call(ch: &Channel, m: &Method, req: tonic::Request<()>) -> Code {
    match rpc::call(ch, m, req.metadata().clone(), None).await {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

async fn function_level(s: &TestServer) -> usize {
    let all = methods();
    // Every RPC has a policy line, and every policy line is an RPC.
    for m in &all {
        assert!(
            POLICY.iter().any(|(p, _)| *p == m.path),
            "{} is not in the authorization policy",
            m.path
        );
    }
    for (p, _) in POLICY {
        assert!(
            all.iter().any(|m| m.path == *p),
            "policy names unknown RPC {p}"
        );
    }
    let mut cells = 0;
    for m in &all {
        // No credentials: UNAUTHENTICATED, whatever the RPC.
        assert_eq!(
            call(&s.channel, m, anonymous(())).await,
            Code::Unauthenticated,
            "{} without a token",
            m.path
        );
        cells += 1;
        for class in Class::ALL {
            let code = call(
                &s.channel,
                m,
                match class {
                    Class::Partner => as_partner("matrix-p", ()),
                    Class::Bank => as_bank(()),
                    Class::Internal => as_service("matrix-p", ()),
                },
            )
            .await;
            if allowed(class, &m.path) {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{} as {}: {code:?}, but the policy allows it",
                    m.path,
                    class.name()
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{} as {}",
                    m.path,
                    class.name()
                );
            }
            cells += 1;
        }
    }
    cells
}

/// (code, message, details) of a failed call.
type Refusal = (Code, String, Vec<u8>);

fn refusal<T>(r: Result<T, tonic::Status>) -> Refusal {
    match r {
        Ok(_) => (Code::Ok, String::new(), vec![]),
        Err(s) => (s.code(), s.message().to_string(), s.details().to_vec()),
    }
}

async fn object_level(s: &TestServer) -> usize {
    // Partner A's resources, made by the demo (as partner A and the bank).
    let args = DemoArgs {
        endpoint: s.endpoint.clone(),
        kyc_endpoint: None,
        funding_endpoint: None,
        reconciliation_endpoint: None,
        applications: 8,
        json: true,
        partner: Some("authz-a".into()),
        concurrency: 4,
        seed: Some(7),
        partner_share_bps: 3_000,
    };
    let sum = execute(&args).await.expect("demo runs");
    assert_eq!(sum.errors, 0, "{:?}", sum.error_samples);
    let ch = s.channel.clone();
    let mut acqc = AcquisitionServiceClient::new(ch.clone());
    let list = |p: &str| {
        as_partner(
            p,
            acq::ListApplicationsRequest {
                page_size: 100,
                page_token: String::new(),
                ..Default::default()
            },
        )
    };
    let apps = acqc
        .list_applications(list("authz-a"))
        .await
        .unwrap()
        .into_inner()
        .applications;
    let app = apps
        .iter()
        .find(|a| a.funding.is_some() && a.decision.is_some() && !a.kyc_check_id.is_empty())
        .expect("a funded application")
        .clone();
    // Another partner lists none of A's.
    let theirs = acqc
        .list_applications(list("authz-b"))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert!(theirs.iter().all(|a| a.partner_id == "authz-b"));
    assert!(
        !theirs
            .iter()
            .any(|a| a.application_id == app.application_id)
    );

    let loan_id = app.funding.as_ref().unwrap().loan_id.clone();
    let decision_id = app.decision.as_ref().unwrap().decision_id.clone();
    let mut cells = 2;
    // For each resource RPC: own → OK; another partner's and a nonexistent
    // one → the same NOT_FOUND, byte for byte.
    macro_rules! cell {
        ($name:expr, $call:expr, $own:expr, $missing:expr) => {{
            let own = refusal($call("authz-a", $own).await);
            assert_eq!(own.0, Code::Ok, "{} own: {own:?}", $name);
            let other = refusal($call("authz-b", $own).await);
            let none = refusal($call("authz-a", $missing).await);
            assert_eq!(other.0, Code::NotFound, "{} of another partner", $name);
            assert_eq!(
                other, none,
                "{}: another partner's and a missing one differ",
                $name
            );
            cells += 3;
        }};
    }
    let a = ch.clone();
    cell!(
        "GetApplication",
        |p: &'static str, id: String| {
            let mut c = AcquisitionServiceClient::new(a.clone());
            async move {
                c.get_application(as_partner(
                    p,
                    acq::GetApplicationRequest { application_id: id },
                ))
                .await
            }
        },
        app.application_id.clone(),
        "app_00000000000000000000000000000000".to_string()
    );
    cell!(
        "WatchApplication",
        |p: &'static str, id: String| {
            let mut c = AcquisitionServiceClient::new(a.clone());
            async move {
                match c
                    .watch_application(as_partner(
                        p,
                        acq::WatchApplicationRequest { application_id: id },
                    ))
                    .await
                {
                    Ok(r) => match r.into_inner().next().await {
                        Some(Err(s)) => Err(s),
                        _ => Ok(()),
                    },
                    Err(s) => Err(s),
                }
            }
        },
        app.application_id.clone(),
        "app_00000000000000000000000000000000".to_string()
    );
    cell!(
        "GetLoan",
        |p: &'static str, id: String| {
            let mut c = FundingServiceClient::new(a.clone());
            async move {
                c.get_loan(as_partner(p, fund::GetLoanRequest { loan_id: id }))
                    .await
            }
        },
        loan_id.clone(),
        "loan_00000000000000000000000000000000".to_string()
    );
    // ListLoans: a partner lists its own loans only; the bank reads and
    // lists any partner's.
    {
        let mut fc = FundingServiceClient::new(a.clone());
        let all = fund::ListLoansRequest {
            page_size: 500,
            ..Default::default()
        };
        let own = fc
            .list_loans(as_partner("authz-a", all.clone()))
            .await
            .unwrap()
            .into_inner()
            .loans;
        assert!(own.iter().any(|l| l.loan_id == loan_id));
        assert!(own.iter().all(|l| l.partner_id == "authz-a"));
        let theirs = fc
            .list_loans(as_partner("authz-b", all.clone()))
            .await
            .unwrap()
            .into_inner()
            .loans;
        assert!(theirs.iter().all(|l| l.partner_id == "authz-b"));
        let steer = fc
            .list_loans(as_partner(
                "authz-b",
                fund::ListLoansRequest {
                    partner_id: "authz-a".into(),
                    ..all.clone()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(steer.code(), Code::InvalidArgument);
        let bank = fc
            .list_loans(as_bank(fund::ListLoansRequest {
                partner_id: "authz-a".into(),
                ..all
            }))
            .await
            .unwrap()
            .into_inner()
            .loans;
        assert_eq!(
            bank.iter().map(|l| &l.loan_id).collect::<Vec<_>>(),
            own.iter().map(|l| &l.loan_id).collect::<Vec<_>>()
        );
        let read = fc
            .get_loan(as_bank(fund::GetLoanRequest {
                loan_id: loan_id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .loan
            .unwrap();
        assert_eq!(read.partner_id, "authz-a");
        cells += 5;
    }
    cell!(
        "GetCheck",
        |p: &'static str, id: String| {
            let mut c = KycServiceClient::new(a.clone());
            async move {
                c.get_check(as_partner(p, kyc::GetCheckRequest { check_id: id }))
                    .await
            }
        },
        app.kyc_check_id.clone(),
        "kyc_00000000000000000000000000000000".to_string()
    );
    cell!(
        "GetDecision",
        |p: &'static str, id: String| {
            let mut c = CreditServiceClient::new(a.clone());
            async move {
                c.get_decision(as_partner(
                    p,
                    credit::GetDecisionRequest { decision_id: id },
                ))
                .await
            }
        },
        decision_id.clone(),
        "dec_00000000000000000000000000000000".to_string()
    );
    // A partner token cannot be steered to another partner by the header.
    let mut r = as_partner(
        "authz-b",
        acq::GetApplicationRequest {
            application_id: app.application_id.clone(),
        },
    );
    r.metadata_mut().insert(
        colend_platform::caller::PARTNER_HEADER,
        "authz-a".parse().unwrap(),
    );
    assert_eq!(
        acqc.get_application(r).await.unwrap_err().code(),
        Code::NotFound
    );
    // AccrueInterest posts income on every partner's loans: the bank's
    // alone, even asked with a well-formed request.
    {
        let mut fc = FundingServiceClient::new(a.clone());
        let req = fund::AccrueInterestRequest {
            request_id: "authz-accrue".into(),
            as_of: "2020-01-01".into(),
        };
        let partner = fc.accrue_interest(as_partner("authz-a", req.clone())).await;
        let internal = fc.accrue_interest(as_service("authz-a", req.clone())).await;
        for denied in [partner, internal] {
            assert_eq!(refusal(denied).0, Code::PermissionDenied);
        }
        let bank = fc.accrue_interest(as_bank(req)).await.unwrap().into_inner();
        assert_eq!((bank.as_of.as_str(), bank.loans_accrued), ("2020-01-01", 0));
        cells += 3;
    }
    cells + 1
}

#[tokio::test]
async fn authorization_matrix() {
    let s = TestServer::start(Backend::Embedded, colend::register_all).await;
    let f = function_level(&s).await;
    let o = object_level(&s).await;
    eprintln!("authorization matrix: {f} function-level cells, {o} object-level cells");
    s.stop().await;
}
