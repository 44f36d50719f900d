//! Loan events for acquisition: written to the platform's outbox in the
//! booking's transaction (`colend_platform::outbox`), relayed after.
use super::*;
use colend_platform::outbox;

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

/// The application status a booked repayment reports: SETTLED (terminal)
/// when it settled the loan, REPAYING otherwise.
pub(super) fn repayment_status(loan: &LoanRow) -> acq::ApplicationStatus {
    if loan.status == LoanStatus::Settled {
        acq::ApplicationStatus::Settled
    } else {
        acq::ApplicationStatus::Repaying
    }
}

/// The topic of funding's loan events in the outbox.
const TOPIC: &str = "acquisition.RecordLoanEvent";

/// Moves what funding's own outbox table (before the platform's) still
/// holds: migration 0010, run again by the relay while replicas of the
/// previous version may still write there.
const ADOPT_OLD_OUTBOX: &str = include_str!("../../migrations/0010_platform_outbox.sql");

/// Writes an event to the outbox, in the caller's transaction, under its
/// application: each application's events reach acquisition in order.
pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    event: &acq::RecordLoanEventRequest,
) -> ApiResult<()> {
    outbox::enqueue_with_id(
        conn,
        &event.request_id,
        &event.application_id,
        TOPIC,
        &event.encode_to_vec(),
    )
    .await?;
    Ok(())
}

impl Funding {
    /// Relays the outbox to acquisition in the background (the platform's
    /// relay: in order per application, applications in parallel, at least
    /// once, backoff and dead letters); woken right after a commit, and every
    /// second anyway.
    pub fn spawn_relay(&self, workers: &colend_platform::lifecycle::Workers) -> anyhow::Result<()> {
        let client = self.acquisition.clone();
        let timeout = self.call_timeout;
        outbox::Relay::new(self.db.clone(), outbox::Settings::from_env()?, move |e| {
            deliver(client.clone(), timeout, e)
        })
        .adopting(ADOPT_OLD_OUTBOX)
        .spawn(workers, "funding-outbox-relay", self.outbox_ready.clone());
        Ok(())
    }
}

/// Hands one loan event to acquisition (which deduplicates by its id).
async fn deliver(
    mut client: AcquisitionServiceClient<colend_platform::grpc::TracedChannel>,
    timeout: Duration,
    event: outbox::Event,
) -> Result<(), outbox::Failure> {
    let msg = acq::RecordLoanEventRequest::decode(event.payload.as_slice())
        .map_err(|err| outbox::Failure::reject(format!("not a RecordLoanEventRequest: {err}")))?;
    let req = colend_platform::grpc::request(msg.clone(), timeout, Some(&msg.partner_id));
    let Err(status) = client.record_loan_event(req).await else {
        return Ok(());
    };
    let e = colend_platform::error::from_downstream("acquisition", status);
    let why = format!("acquisition answered {}: {e}", e.reason());
    // A refusal acquisition stored as the answer for this event id, or a
    // body it calls invalid, will never change: no use trying again.
    let never = matches!(
        e,
        ApiError::InvalidArgument(_) | ApiError::IdempotencyKeyReused
    ) || idempotency::FINAL_REASONS.contains(&e.reason());
    Err(if never {
        outbox::Failure::reject(why)
    } else {
        outbox::Failure::retry(why)
    })
}
