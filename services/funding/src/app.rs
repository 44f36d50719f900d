//! Funding use cases.
use crate::domain::Pricing;
use crate::domain::{
    self, AccrualTerms, Accrued, Bucket, DayCount, Instalment, InstalmentState, Jurisdiction,
    LoanStatus, Method, Paid, Split, Terms, Waterfall,
};
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1 as pb;
use colend_platform::config::env_parse;
use colend_platform::db::Backend;
use colend_platform::time::{format_date, now_millis, parse_date, timestamp, today};
use colend_platform::{ApiError, ApiResult, Cache, Db, idempotency};
use prost::Message;
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

mod agreements;
mod conversion;
mod disbursement;
mod ledger;
mod loans;
mod queries;
mod relay;
mod repayment;
mod reservation;
mod reserve;

use conversion::*;
pub use conversion::{day_count_of, waterfall_of};
use ledger::*;
use loans::*;
use relay::*;
use reservation::*;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Co-lending rules (`COLEND_FUNDING_JURISDICTION`: CN, IN-2020 or IN-2025; default CN).
    pub jurisdiction: Jurisdiction,
    /// Minimum partner share (`COLEND_FUNDING_MIN_PARTNER_SHARE_BPS`; default: the jurisdiction's).
    pub min_partner_share_bps: i64,
    /// Rule C2: one partner's co-lent balance against net tier-1 capital (`COLEND_FUNDING_C2_BPS`, 2500).
    pub c2_bps: i64,
    /// Rule C3: all co-lent loans against the total loan balance (`COLEND_FUNDING_C3_BPS`, 5000).
    pub c3_bps: i64,
    /// A reservation not disbursed within this is voided (`COLEND_FUNDING_RESERVATION_TTL_SECS`, 86400).
    pub reservation_ttl: Duration,
    /// How often expired reservations are swept (`COLEND_FUNDING_SWEEP_SECS`, 30).
    pub sweep_every: Duration,
    /// Agreement cache TTL (`COLEND_FUNDING_AGREEMENT_CACHE_TTL_SECS`, default 60).
    pub agreement_ttl: Duration,
    /// Most reservations committed together (`COLEND_FUNDING_RESERVE_BATCH`, 256; 1 turns
    /// group commit off).
    pub reserve_batch: usize,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let j = colend_platform::config::env_or("COLEND_FUNDING_JURISDICTION", "CN");
        let jurisdiction = Jurisdiction::parse(&j).ok_or_else(|| {
            anyhow::anyhow!("COLEND_FUNDING_JURISDICTION={j:?} is not one of CN, IN-2020, IN-2025")
        })?;
        Ok(Settings {
            jurisdiction,
            min_partner_share_bps: env_parse(
                "COLEND_FUNDING_MIN_PARTNER_SHARE_BPS",
                jurisdiction.min_partner_share_bps(),
            )?,
            c2_bps: env_parse("COLEND_FUNDING_C2_BPS", 2_500)?,
            c3_bps: env_parse("COLEND_FUNDING_C3_BPS", 5_000)?,
            reservation_ttl: Duration::from_secs(env_parse(
                "COLEND_FUNDING_RESERVATION_TTL_SECS",
                86_400u64,
            )?),
            sweep_every: Duration::from_secs(env_parse("COLEND_FUNDING_SWEEP_SECS", 30u64)?.max(1)),
            agreement_ttl: Duration::from_secs(env_parse(
                "COLEND_FUNDING_AGREEMENT_CACHE_TTL_SECS",
                60u64,
            )?),
            reserve_batch: match env_parse("COLEND_FUNDING_RESERVE_BATCH", 256usize)? {
                n @ 1..=1_000 => n,
                n => anyhow::bail!("COLEND_FUNDING_RESERVE_BATCH={n} must be 1 to 1000"),
            },
        })
    }
}

#[derive(Clone)]
pub struct Funding {
    db: Db,
    cache: Cache,
    acquisition: AcquisitionServiceClient<colend_platform::grpc::TracedChannel>,
    call_timeout: Duration,
    settings: Settings,
    outbox_ready: Arc<tokio::sync::Notify>,
    reserver: reserve::Reserver,
}

fn money(minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        minor_units: minor,
        currency_code: currency.to_string(),
    })
}

impl Funding {
    pub fn new(
        db: Db,
        cache: Cache,
        acquisition: Channel,
        call_timeout: Duration,
        settings: Settings,
    ) -> Self {
        Funding {
            reserver: reserve::Reserver::start(db.clone(), &settings),
            db,
            cache,
            acquisition: AcquisitionServiceClient::new(
                colend_platform::rpc_trace::ClientTrace::new(acquisition),
            ),
            call_timeout,
            settings,
            outbox_ready: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Today's business date in the jurisdiction's time zone.
    pub fn business_today(&self) -> chrono::NaiveDate {
        today()
    }
}
