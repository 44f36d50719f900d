//! The gRPC face of reconciliation.
use crate::app::Reconciliation;
use colend_contracts::reconciliation::v1::{
    self as pb,
    reconciliation_service_server::{ReconciliationService, ReconciliationServiceServer},
};
use colend_platform::idempotency::request_hash;
use colend_platform::time::parse_date;
use colend_platform::{Violations, caller, paging};
use tonic::{Request, Response, Status};

/// Most records in one IngestRecords batch.
pub const MAX_BATCH: usize = 10_000;

pub fn server(app: Reconciliation) -> ReconciliationServiceServer<ReconGrpc> {
    ReconciliationServiceServer::new(ReconGrpc { app }).max_decoding_message_size(16 * 1024 * 1024)
}

pub struct ReconGrpc {
    app: Reconciliation,
}

fn check_common(v: &mut Violations, request_id: &str, partner_id: &str, date: &str) {
    v.request_id(request_id);
    v.check(
        caller::valid_partner_id(partner_id),
        "partner_id",
        "must be 1 to 64 characters of letters, digits, '-' or '_'",
    );
    v.check(
        parse_date(date).is_some(),
        "business_date",
        "must be a date YYYY-MM-DD",
    );
}

#[tonic::async_trait]
impl ReconciliationService for ReconGrpc {
    async fn ingest_records(
        &self,
        request: Request<pb::IngestRecordsRequest>,
    ) -> Result<Response<pb::IngestRecordsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        check_common(&mut v, &r.request_id, &r.partner_id, &r.business_date);
        v.check(
            matches!(
                pb::Side::try_from(r.side),
                Ok(pb::Side::Bank | pb::Side::Partner)
            ),
            "side",
            "must be BANK or PARTNER",
        );
        v.check(
            r.records.len() <= MAX_BATCH,
            "records",
            "at most 10000 records a batch",
        );
        for (i, rec) in r.records.iter().enumerate() {
            let f = |n: &str| format!("records[{i}].{n}");
            if !matches!(
                pb::RecordKind::try_from(rec.kind),
                Ok(pb::RecordKind::Disbursement | pb::RecordKind::Repayment)
            ) {
                v.add(&f("kind"), "must be DISBURSEMENT or REPAYMENT");
            }
            if rec.transaction_id.is_empty() || rec.transaction_id.len() > 64 {
                v.add(&f("transaction_id"), "must be 1 to 64 characters");
            }
            if rec.loan_id.len() > 64 {
                v.add(&f("loan_id"), "must be at most 64 characters");
            }
            if parse_date(&rec.value_date).is_none() {
                v.add(&f("value_date"), "must be a date YYYY-MM-DD");
            }
            match (&rec.amount, &rec.bank_portion, &rec.partner_portion) {
                (Some(a), Some(b), Some(p)) => {
                    if colend_core::Currency::parse(&a.currency_code).is_err() {
                        v.add(
                            &f("amount.currency_code"),
                            "must be an ISO 4217 code such as CNY",
                        );
                    }
                    if a.minor_units < 0 || b.minor_units < 0 || p.minor_units < 0 {
                        v.add(&f("amount"), "amounts must not be negative");
                    }
                    if b.minor_units.checked_add(p.minor_units) != Some(a.minor_units) {
                        v.add(
                            &f("partner_portion"),
                            "bank_portion + partner_portion must equal amount",
                        );
                    }
                    if b.currency_code != a.currency_code || p.currency_code != a.currency_code {
                        v.add(
                            &f("bank_portion.currency_code"),
                            "portions must be in the amount's currency",
                        );
                    }
                }
                _ => v.add(
                    &f("amount"),
                    "amount, bank_portion and partner_portion are required",
                ),
            }
        }
        v.into_result()?;
        let hash = request_hash(&r);
        let accepted = self.app.ingest(r.request_id.clone(), hash, r).await?;
        Ok(Response::new(pb::IngestRecordsResponse { accepted }))
    }

    async fn run_reconciliation(
        &self,
        request: Request<pb::RunReconciliationRequest>,
    ) -> Result<Response<pb::RunReconciliationResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        check_common(&mut v, &r.request_id, &r.partner_id, &r.business_date);
        v.into_result()?;
        let hash = request_hash(&r);
        let run = self
            .app
            .run(r.request_id, hash, r.partner_id, r.business_date)
            .await?;
        Ok(Response::new(pb::RunReconciliationResponse {
            run: Some(run),
        }))
    }

    async fn list_breaks(
        &self,
        request: Request<pb::ListBreaksRequest>,
    ) -> Result<Response<pb::ListBreaksResponse>, Status> {
        let r = request.into_inner();
        let size = paging::page_size(r.page_size)?;
        let after = paging::decode_token(&r.page_token)?;
        let (breaks, next) = self.app.breaks(&r.run_id, size, &after).await?;
        Ok(Response::new(pb::ListBreaksResponse {
            breaks,
            next_page_token: paging::encode_token(&next),
        }))
    }
}
