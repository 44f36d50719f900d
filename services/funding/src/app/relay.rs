//! Loan events for acquisition: written in the booking's transaction, relayed after.
use super::*;

/// A loan event for acquisition.
pub(super) fn loan_event(
    loan: &LoanRow,
    event_id: String,
    status: acq::ApplicationStatus,
    detail: String,
    reasons: &[&str],
) -> acq::RecordLoanEventRequest {
    acq::RecordLoanEventRequest {
        request_id: event_id,
        application_id: loan.application_id.clone(),
        partner_id: loan.partner_id.clone(),
        status: status as i32,
        detail,
        reason_codes: reasons.iter().map(|r| r.to_string()).collect(),
    }
}

/// Writes an event to the outbox, in the caller's transaction.
pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    event: &acq::RecordLoanEventRequest,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, payload, created_at, sent_at, attempts) VALUES ($1, $2, $3, 0, 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&event.request_id)
    .bind(hex::encode(event.encode_to_vec()))
    .bind(now_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Funding {
    /// Relays the outbox to acquisition in the background, in order, at
    /// least once; woken right after a commit, and every second anyway.
    pub fn spawn_relay(&self, workers: &colend_platform::lifecycle::Workers) {
        let this = self.clone();
        workers.spawn_relay(
            "funding-outbox-relay",
            self.outbox_ready.clone(),
            move || {
                let this = this.clone();
                async move { this.relay_once().await }
            },
        );
    }

    /// Sends pending events: in order for each application, applications in
    /// parallel; an application whose event fails waits for the next round
    /// without holding up the others. Returns true when a full batch went out.
    pub(super) async fn relay_once(&self) -> ApiResult<bool> {
        let pending: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id, payload FROM outbox WHERE sent_at = 0 ORDER BY created_at, event_id LIMIT 500",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let full = pending.len() == 500;
        metrics::gauge!("colend_outbox_pending").set(pending.len() as f64);
        let mut by_application: Vec<(String, Vec<(String, acq::RecordLoanEventRequest)>)> =
            Vec::new();
        for (event_id, payload) in pending {
            let msg = hex::decode(&payload)
                .ok()
                .and_then(|b| acq::RecordLoanEventRequest::decode(b.as_slice()).ok())
                .ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("bad outbox payload {event_id}"))
                })?;
            match by_application
                .iter_mut()
                .find(|(app, _)| *app == msg.application_id)
            {
                Some((_, events)) => events.push((event_id, msg)),
                None => by_application.push((msg.application_id.clone(), vec![(event_id, msg)])),
            }
        }
        let sends = by_application.into_iter().map(|(_, events)| {
            let mut client = self.acquisition.clone();
            let timeout = self.call_timeout;
            async move {
                let mut sent = Vec::new();
                for (event_id, msg) in events {
                    let req = colend_platform::grpc::request(msg.clone(), timeout, Some(&msg.partner_id));
                    match client.record_loan_event(req).await {
                        Ok(_) => sent.push(Ok(event_id)),
                        Err(s) => {
                            tracing::warn!(event_id, code = ?s.code(), "acquisition did not take a loan event; will retry");
                            sent.push(Err(event_id));
                            break;
                        }
                    }
                }
                sent
            }
        });
        for result in futures::future::join_all(sends).await.into_iter().flatten() {
            let (sql, id) = match result {
                Ok(id) => (
                    "UPDATE outbox SET sent_at = $1, attempts = attempts + 1 WHERE event_id = $2",
                    id,
                ),
                Err(id) => (
                    "UPDATE outbox SET attempts = attempts + 1 WHERE event_id = $2 AND $1 >= 0",
                    id,
                ),
            };
            sqlx::query(sql)
                .bind(now_millis())
                .bind(&id)
                .execute(&self.db.pool)
                .await?;
        }
        Ok(full)
    }
}
