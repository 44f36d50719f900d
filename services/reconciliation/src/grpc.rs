//! The gRPC face of reconciliation.
use crate::app::{Reconciliation, RunSpec};
use colend_contracts::reconciliation::v1::{
    self as pb,
    reconciliation_service_server::{ReconciliationService, ReconciliationServiceServer},
};
use colend_platform::idempotency::request_hash;
use colend_platform::time::parse_date;
use colend_platform::{ApiError, Violations, caller, paging};
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Most records in one IngestRecords batch or one streamed RecordBatch.
pub const MAX_BATCH: usize = 10_000;
/// Breaks per StreamBreaks message.
const STREAM_PAGE: i64 = 1_000;

pub fn server(app: Reconciliation) -> ReconciliationServiceServer<ReconGrpc> {
    ReconciliationServiceServer::new(ReconGrpc { app })
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024)
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

fn check_options(v: &mut Violations, field: &str, o: &Option<pb::RunOptions>) {
    if let Some(o) = o {
        v.check(
            (0..=1_000_000).contains(&o.amount_tolerance_minor),
            &format!("{field}.amount_tolerance_minor"),
            "must be 0 to 1000000",
        );
        v.check(
            (0..=31).contains(&o.value_date_tolerance_days),
            &format!("{field}.value_date_tolerance_days"),
            "must be 0 to 31",
        );
    }
}

fn check_filter(v: &mut Violations, run_id: &str, f: &Option<pb::BreakFilter>) {
    let f = f.clone().unwrap_or_default();
    if run_id.is_empty() {
        v.check(
            caller::valid_partner_id(&f.partner_id),
            "filter.partner_id",
            "is required when no run_id is given",
        );
    } else {
        v.id("run_id", run_id);
    }
    v.check(
        pb::BreakClass::try_from(f.break_class).is_ok(),
        "filter.break_class",
        "must be a BreakClass",
    );
    v.check(
        pb::BreakStatus::try_from(f.status).is_ok(),
        "filter.status",
        "must be a BreakStatus",
    );
    v.check(
        pb::Pair::try_from(f.pair).is_ok(),
        "filter.pair",
        "must be a Pair",
    );
    v.check(
        f.loan_id.len() <= 64,
        "filter.loan_id",
        "must be at most 64 characters",
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
            if let Err(e) = crate::app::rec_checked(rec.clone()) {
                for (field, m) in e {
                    v.add(&format!("records[{i}].{field}"), m);
                }
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
        check_options(&mut v, "options", &r.options);
        v.into_result()?;
        let hash = request_hash(&r);
        let spec = RunSpec {
            partner_id: r.partner_id.clone(),
            business_date: r.business_date.clone(),
            options: r.options.unwrap_or_default(),
        };
        let mut b = self.app.begin(spec).await?;
        self.app.feed_staged(&mut b).await?;
        let scope = format!("RunReconciliation:{}", r.partner_id);
        let run = self.app.finish(b, scope, r.request_id, hash).await?;
        Ok(Response::new(pb::RunReconciliationResponse {
            run: Some(run),
        }))
    }

    async fn reconcile_stream(
        &self,
        request: Request<Streaming<pb::ReconcileStreamRequest>>,
    ) -> Result<Response<pb::ReconcileStreamResponse>, Status> {
        use pb::reconcile_stream_request::Item;
        let mut stream = request.into_inner();
        let start = match stream.next().await {
            Some(Ok(pb::ReconcileStreamRequest {
                item: Some(Item::Start(s)),
            })) => s,
            Some(Err(s)) => return Err(s),
            _ => {
                return Err(
                    ApiError::field("start", "the first message must start the run").into(),
                );
            }
        };
        let mut v = Violations::new();
        check_common(
            &mut v,
            &start.request_id,
            &start.partner_id,
            &start.business_date,
        );
        check_options(&mut v, "start.options", &start.options);
        v.into_result()?;
        let spec = RunSpec {
            partner_id: start.partner_id.clone(),
            business_date: start.business_date.clone(),
            options: start.options.unwrap_or_default(),
        };
        let mut b = self.app.begin(spec).await?;
        let mut message = 1usize;
        while let Some(m) = stream.next().await {
            message += 1;
            match m?.item {
                Some(Item::Batch(batch)) => {
                    let side = pb::Side::try_from(batch.side).unwrap_or(pb::Side::Unspecified);
                    if !matches!(side, pb::Side::Bank | pb::Side::Partner) {
                        return Err(ApiError::field(
                            "batch.side",
                            &format!("must be BANK or PARTNER (message {message})"),
                        )
                        .into());
                    }
                    if batch.records.len() > MAX_BATCH {
                        return Err(ApiError::field(
                            "batch.records",
                            &format!("at most 10000 records a batch (message {message})"),
                        )
                        .into());
                    }
                    for r in batch.records {
                        b.record(side, r);
                    }
                }
                Some(Item::Malformed(row)) => {
                    let side = pb::Side::try_from(row.side).unwrap_or(pb::Side::Unspecified);
                    let reason: String = row.reason.chars().take(500).collect();
                    b.reject(side, row.line, reason);
                }
                Some(Item::Start(_)) | None => {
                    return Err(ApiError::field(
                        "start",
                        &format!("only the first message may start the run (message {message})"),
                    )
                    .into());
                }
            }
        }
        let hash = b.hash(&start);
        let scope = format!("ReconcileStream:{}", start.partner_id);
        let run = self.app.finish(b, scope, start.request_id, hash).await?;
        Ok(Response::new(pb::ReconcileStreamResponse {
            run: Some(run),
        }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.id("run_id", &r.run_id);
        v.into_result()?;
        let run = self.app.get_run(&r.run_id).await?;
        Ok(Response::new(pb::GetRunResponse { run: Some(run) }))
    }

    async fn list_breaks(
        &self,
        request: Request<pb::ListBreaksRequest>,
    ) -> Result<Response<pb::ListBreaksResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        check_filter(&mut v, &r.run_id, &r.filter);
        v.into_result()?;
        let size = paging::page_size(r.page_size)?;
        let after = paging::decode_token(&r.page_token)?;
        let f = r.filter.unwrap_or_default();
        let (breaks, next) = self.app.breaks(&r.run_id, &f, size, &after).await?;
        Ok(Response::new(pb::ListBreaksResponse {
            breaks,
            next_page_token: paging::encode_token(&next),
        }))
    }

    type StreamBreaksStream = ReceiverStream<Result<pb::StreamBreaksResponse, Status>>;

    async fn stream_breaks(
        &self,
        request: Request<pb::StreamBreaksRequest>,
    ) -> Result<Response<Self::StreamBreaksStream>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        check_filter(&mut v, &r.run_id, &r.filter);
        v.into_result()?;
        let f = r.filter.unwrap_or_default();
        // Fails now (NOT_FOUND) rather than as an empty stream.
        let (first, mut after) = self.app.breaks(&r.run_id, &f, STREAM_PAGE, "").await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let app = self.app.clone();
        tokio::spawn(async move {
            let mut page = first;
            loop {
                if !page.is_empty()
                    && tx
                        .send(Ok(pb::StreamBreaksResponse { breaks: page }))
                        .await
                        .is_err()
                {
                    return;
                }
                if after.is_empty() {
                    return;
                }
                match app.breaks(&r.run_id, &f, STREAM_PAGE, &after).await {
                    Ok((p, next)) => {
                        page = p;
                        after = next;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resolve_break(
        &self,
        request: Request<pb::ResolveBreakRequest>,
    ) -> Result<Response<pb::ResolveBreakResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        v.id("break_id", &r.break_id);
        v.text("resolved_by", &r.resolved_by, 128);
        v.text("reason", &r.reason, 1_000);
        v.into_result()?;
        let hash = request_hash(&r);
        let b = self
            .app
            .resolve(
                r.request_id,
                hash,
                r.break_id,
                r.resolved_by,
                r.reason,
                r.settle,
            )
            .await?;
        Ok(Response::new(pb::ResolveBreakResponse { r#break: Some(b) }))
    }

    type StreamSettlementLinesStream =
        ReceiverStream<Result<pb::StreamSettlementLinesResponse, Status>>;

    async fn stream_settlement_lines(
        &self,
        request: Request<pb::StreamSettlementLinesRequest>,
    ) -> Result<Response<Self::StreamSettlementLinesStream>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.id("run_id", &r.run_id);
        v.into_result()?;
        self.app.get_run(&r.run_id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let app = self.app.clone();
        tokio::spawn(async move {
            for chunk in 0.. {
                let msg = match app.settlement_chunk(&r.run_id, chunk).await {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => return,
                    Err(e) => Err(e.into()),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
