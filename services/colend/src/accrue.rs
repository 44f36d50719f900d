//! `colend accrue`: the bank's accrual run through a business date
//! (`FundingService/AccrueInterest`), as the bank core would call it.
use clap::Args;
use colend_contracts::common::v1::Money;
use colend_contracts::funding::v1::{self as pb, funding_service_client::FundingServiceClient};
use colend_platform::grpc::channel;

#[derive(Args)]
pub struct AccrueArgs {
    /// Funding service address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// Accrue every disbursed loan through this business date, YYYY-MM-DD
    /// (not after today in funding's time zone).
    #[arg(long)]
    pub as_of: String,
    /// Idempotency key (default: a new one). The same key and date again
    /// returns the first run's answer.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A call as the bank core: a token from `COLEND_BANK_TOKEN`, or signed
/// with this process's key (`COLEND_AUTH_KEYS`, or the development key).
fn as_bank<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    match colend_platform::config::env_opt("COLEND_BANK_TOKEN") {
        Some(t) => {
            r.metadata_mut()
                .insert("authorization", colend_platform::auth::bearer(&t));
        }
        None => colend_platform::auth::sign_request(
            &mut r,
            colend_platform::auth::Class::Bank,
            None,
            "colend-accrue",
        ),
    }
    r
}

/// "CNY 123.45", with the currency's decimal places.
fn amounts(list: &[Money]) -> String {
    if list.is_empty() {
        return "nothing".into();
    }
    list.iter()
        .map(
            |m| match colend_core::money::Currency::parse(&m.currency_code) {
                Ok(c) => format!("{c} {}", c.format(m.minor_units)),
                Err(_) => format!("{} {} (minor units)", m.currency_code, m.minor_units),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(a: AccrueArgs) -> anyhow::Result<()> {
    let request_id = a
        .request_id
        .unwrap_or_else(|| format!("accrue-{}", uuid::Uuid::now_v7().simple()));
    let mut c = FundingServiceClient::new(channel(&a.endpoint)?);
    let r = c
        .accrue_interest(as_bank(pb::AccrueInterestRequest {
            request_id: request_id.clone(),
            as_of: a.as_of,
        }))
        .await
        .map_err(|s| crate::recon::status_error("AccrueInterest", s))?
        .into_inner();
    if a.json {
        let list = |l: &[Money]| -> Vec<serde_json::Value> {
            l.iter()
                .map(|m| serde_json::json!({"currency_code": m.currency_code, "minor_units": m.minor_units}))
                .collect()
        };
        let v = serde_json::json!({
            "request_id": request_id,
            "as_of": r.as_of,
            "loans_accrued": r.loans_accrued,
            "interest": list(&r.interest),
            "fee": list(&r.fee),
            "penalty": list(&r.penalty),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "accrued through {} ({request_id}): {} loan(s); interest {}; fees {}; penalty {}",
            r.as_of,
            r.loans_accrued,
            amounts(&r.interest),
            amounts(&r.fee),
            amounts(&r.penalty)
        );
    }
    Ok(())
}
