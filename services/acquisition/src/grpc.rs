//! The gRPC face of acquisition.
use crate::app::Acquisition;
use crate::domain::Status as AppStatus;
use colend_contracts::acquisition::v1::{
    self as pb,
    acquisition_service_server::{AcquisitionService, AcquisitionServiceServer},
};
use colend_contracts::common::v1::RepaymentMethod;
use colend_core::{CreditCode, Mobile, PersonName, ResidentId};
use colend_platform::idempotency::request_hash;
use colend_platform::{Amount, ApiError, Violations, caller, paging};
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub fn server(app: Acquisition) -> AcquisitionServiceServer<AcquisitionGrpc> {
    // Requests are small: anything above 1 MiB is refused before decoding.
    AcquisitionServiceServer::new(AcquisitionGrpc { app })
        .max_decoding_message_size(colend_platform::grpc::MAX_REQUEST_BYTES)
        .max_encoding_message_size(colend_platform::grpc::MAX_RESPONSE_BYTES)
}

pub struct AcquisitionGrpc {
    app: Acquisition,
}

/// Validates every field of a submission.
pub fn validate_submit(r: &pb::SubmitApplicationRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.request_id(&r.request_id);
    match &r.business {
        None => v.add("business", "is required"),
        Some(b) => {
            let n = b.name.trim().chars().count();
            v.check(
                (1..=128).contains(&n),
                "business.name",
                "must be 1 to 128 characters",
            );
            if let Err(e) = CreditCode::parse(&b.credit_code) {
                v.add(
                    "business.credit_code",
                    format!("is not a valid unified social credit code: {e}"),
                );
            }
            v.check(
                (0..=200).contains(&b.years_in_business),
                "business.years_in_business",
                "must be 0 to 200",
            );
        }
    }
    match &r.legal_representative {
        None => v.add("legal_representative", "is required"),
        Some(l) => {
            v.check(
                PersonName::new(&l.name).is_some(),
                "legal_representative.name",
                "must be 1 to 64 characters",
            );
            if let Err(e) = ResidentId::parse(&l.resident_id) {
                v.add(
                    "legal_representative.resident_id",
                    format!("is not a valid resident ID number: {e}"),
                );
            }
            if let Err(e) = Mobile::parse(&l.mobile) {
                v.add(
                    "legal_representative.mobile",
                    format!("is not a valid mobile number: {e}"),
                );
            }
        }
    }
    v.money("requested_amount", &r.requested_amount, Amount::Positive);
    v.check(
        (1..=360).contains(&r.term_months),
        "term_months",
        "must be 1 to 360",
    );
    v.check(
        pb::LoanPurpose::try_from(r.purpose).is_ok_and(|p| p != pb::LoanPurpose::Unspecified),
        "purpose",
        "must be one of the LoanPurpose values",
    );
    v.check(
        matches!(
            RepaymentMethod::try_from(r.repayment_method),
            Ok(RepaymentMethod::EqualInstalment
                | RepaymentMethod::EqualPrincipal
                | RepaymentMethod::InterestFirst)
        ),
        "repayment_method",
        "must be EQUAL_INSTALMENT, EQUAL_PRINCIPAL or INTEREST_FIRST",
    );
    v.check(
        (0..=1000).contains(&r.partner_score),
        "partner_score",
        "must be 0 to 1000",
    );
    if let Some(s) = &r.scenario {
        v.money(
            "scenario.annual_tax_revenue",
            &s.annual_tax_revenue,
            Amount::Optional,
        );
        v.money(
            "scenario.invoice_turnover_12m",
            &s.invoice_turnover_12m,
            Amount::Optional,
        );
        // The bank compares them with the requested amount: one currency.
        if let Some(requested) = &r.requested_amount {
            let c = requested.currency_code.as_str();
            v.same_currency(
                "scenario.annual_tax_revenue.currency_code",
                &s.annual_tax_revenue,
                c,
                "requested_amount",
            );
            v.same_currency(
                "scenario.invoice_turnover_12m.currency_code",
                &s.invoice_turnover_12m,
                c,
                "requested_amount",
            );
        }
        v.check(
            (-10_000..=100_000).contains(&s.turnover_trend_bps),
            "scenario.turnover_trend_bps",
            "must be -10000 to 100000",
        );
        v.check(
            (0..=1000).contains(&s.open_loans_elsewhere),
            "scenario.open_loans_elsewhere",
            "must be 0 to 1000",
        );
    }
    match &r.partner_decision {
        None => v.add(
            "partner_decision",
            "is required: the partner's own decision on the loan it co-funds",
        ),
        Some(d) => v.check(
            (1..=64).contains(&d.reference.len()),
            "partner_decision.reference",
            "must be 1 to 64 characters",
        ),
    }
    match &r.consent {
        None => v.add("consent", "is required: the borrower's consent to data use"),
        Some(c) => {
            v.check(
                !c.scopes.is_empty()
                    && c.scopes.len() <= 20
                    && c.scopes.iter().all(|s| (1..=64).contains(&s.len())),
                "consent.scopes",
                "must list 1 to 20 scopes of 1 to 64 characters",
            );
            match &c.granted_at {
                None => v.add("consent.granted_at", "is required"),
                Some(t) => v.check(
                    colend_platform::time::millis_of(t)
                        <= colend_platform::time::now_millis() + 300_000,
                    "consent.granted_at",
                    "must not be in the future",
                ),
            }
            v.check(
                (1..=32).contains(&c.channel.len()),
                "consent.channel",
                "must be 1 to 32 characters",
            );
            v.check(
                (1..=32).contains(&c.text_version.len()),
                "consent.text_version",
                "must be 1 to 32 characters",
            );
        }
    }
    v.into_result()
}

fn is_final_for_watch(status: i32) -> bool {
    pb::ApplicationStatus::try_from(status)
        .ok()
        .and_then(|s| AppStatus::parse(s.as_str_name().trim_start_matches("APPLICATION_STATUS_")))
        .is_some_and(|s| s.is_terminal())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchApplicationResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AcquisitionService for AcquisitionGrpc {
    async fn submit_application(
        &self,
        request: Request<pb::SubmitApplicationRequest>,
    ) -> Result<Response<pb::SubmitApplicationResponse>, Status> {
        let partner = caller::partner_id(&request)?;
        let r = request.into_inner();
        validate_submit(&r)?;
        let hash = request_hash(&r);
        let app = self.app.submit(partner, hash, r).await?;
        Ok(Response::new(pb::SubmitApplicationResponse {
            application: Some(app),
        }))
    }

    async fn get_application(
        &self,
        request: Request<pb::GetApplicationRequest>,
    ) -> Result<Response<pb::GetApplicationResponse>, Status> {
        let partner = caller::partner_id(&request)?;
        let r = request.into_inner();
        let app = self.app.get(&partner, &r.application_id).await?;
        Ok(Response::new(pb::GetApplicationResponse {
            application: Some(app),
        }))
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        let bank = request
            .extensions()
            .get::<colend_platform::auth::Caller>()
            .is_some_and(|c| c.0.class == colend_platform::auth::Class::Bank);
        let partner = if bank {
            // The bank's view: one partner's applications, or every partner's.
            let p = request.get_ref().partner_id.clone();
            if !p.is_empty() && !caller::valid_partner_id(&p) {
                return Err(ApiError::field("partner_id", "is not a partner id").into());
            }
            p
        } else {
            let own = caller::partner_id(&request)?;
            let asked = &request.get_ref().partner_id;
            if !asked.is_empty() && *asked != own {
                return Err(
                    ApiError::field("partner_id", "must be empty or the calling partner").into(),
                );
            }
            own
        };
        let r = request.into_inner();
        let size = paging::page_size(r.page_size)?;
        let before = paging::decode_token(&r.page_token)?;
        let status = match pb::ApplicationStatus::try_from(r.status) {
            Ok(pb::ApplicationStatus::Unspecified) => None,
            Ok(s) => AppStatus::parse(s.as_str_name().trim_start_matches("APPLICATION_STATUS_")),
            Err(_) => {
                return Err(ApiError::field("status", "is not an ApplicationStatus value").into());
            }
        };
        let (applications, next) = self.app.list(&partner, size, &before, status).await?;
        Ok(Response::new(pb::ListApplicationsResponse {
            applications,
            next_page_token: paging::encode_token(&next),
        }))
    }

    type WatchApplicationStream = WatchStream;

    async fn watch_application(
        &self,
        request: Request<pb::WatchApplicationRequest>,
    ) -> Result<Response<Self::WatchApplicationStream>, Status> {
        let partner = caller::partner_id(&request)?;
        let id = request.into_inner().application_id;
        let journey = self.app.journey().clone();
        // Subscribe before the first read, so no change falls in between.
        let mut changes = journey.subscribe();
        let first = journey
            .current(&id, &partner)
            .await?
            .ok_or_else(|| ApiError::NotFound("application".into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = first.updated_at;
            let mut done = is_final_for_watch(first.status);
            if tx
                .send(Ok(pb::WatchApplicationResponse {
                    application: Some(first),
                }))
                .await
                .is_err()
            {
                return;
            }
            // Changes made by another replica are found by the periodic check.
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            while !done {
                tokio::select! {
                    msg = changes.recv() => {
                        match msg {
                            Ok(changed) if changed != id => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                            _ => {}
                        }
                    }
                    _ = tick.tick() => {}
                    _ = tx.closed() => return,
                }
                match journey.current(&id, &partner).await {
                    Ok(Some(app)) if app.updated_at != last => {
                        last = app.updated_at;
                        done = is_final_for_watch(app.status);
                        if tx
                            .send(Ok(pb::WatchApplicationResponse {
                                application: Some(app),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn record_loan_event(
        &self,
        request: Request<pb::RecordLoanEventRequest>,
    ) -> Result<Response<pb::RecordLoanEventResponse>, Status> {
        let partner = caller::partner_id(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        v.check(
            r.partner_id == partner,
            "partner_id",
            "must be the calling partner",
        );
        v.check(
            !r.application_id.is_empty(),
            "application_id",
            "is required",
        );
        v.check(
            r.detail.chars().count() <= 500,
            "detail",
            "must be at most 500 characters",
        );
        v.into_result()?;
        let hash = request_hash(&r);
        let app = self.app.record_loan_event(hash, r).await?;
        Ok(Response::new(pb::RecordLoanEventResponse {
            application: Some(app),
        }))
    }

    async fn resume_application(
        &self,
        request: Request<pb::ResumeApplicationRequest>,
    ) -> Result<Response<pb::ResumeApplicationResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        v.id("application_id", &r.application_id);
        v.check(
            r.action == pb::ResumeAction::Retry as i32
                || r.action == pb::ResumeAction::Abandon as i32,
            "action",
            "must be RETRY or ABANDON",
        );
        v.check(
            (1..=64).contains(&r.operator.chars().count()),
            "operator",
            "must be 1 to 64 characters",
        );
        v.check(
            (1..=500).contains(&r.reason.chars().count()),
            "reason",
            "must be 1 to 500 characters",
        );
        v.into_result()?;
        let hash = request_hash(&r);
        let app = self.app.resume(hash, r).await?;
        Ok(Response::new(pb::ResumeApplicationResponse {
            application: Some(app),
        }))
    }
}
