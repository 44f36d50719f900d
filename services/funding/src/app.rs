//! Funding use cases.
use crate::domain::Pricing;
use crate::domain::{
    self, Accrued, Bucket, DayCount, Instalment, InstalmentState, InterestSplit, Jurisdiction,
    LoanState, LoanStatus, Method, Paid, Party, Split, Terms, Waterfall,
};
use colend_contracts::acquisition::v1 as acq;
use colend_contracts::acquisition::v1::acquisition_service_client::AcquisitionServiceClient;
use colend_contracts::common::v1::{Funder, Money, RepaymentMethod};
use colend_contracts::funding::v1 as pb;
use colend_platform::config::env_parse;
use colend_platform::db::Backend;
use colend_platform::time::{
    Clock, Tz, business_date, format_date, now_millis, parse_date, timestamp,
};
use colend_platform::{ApiError, ApiResult, Cache, Db, idempotency};
use prost::Message;
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

mod accrual_run;
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
pub use conversion::{day_count_of, waterfall_of, waterfall_problem};
use ledger::*;
use loans::*;
pub use queries::LoanFilter;
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
    /// The time zone of business days (`COLEND_FUNDING_TIME_ZONE`, an IANA name; default the
    /// jurisdiction's: CN Asia/Shanghai, IN-2020 and IN-2025 Asia/Kolkata). Daily quotas,
    /// whitelist and agreement effective dates, reservation and value dates are its dates.
    pub time_zone: Tz,
    /// How many days after today a disbursement may be value-dated
    /// (`COLEND_FUNDING_DISBURSEMENT_FORWARD_DAYS`, 0 to 366; default 0).
    pub disbursement_forward_days: u32,
    /// How far beyond the payoff a repayment may go, basis points of the
    /// payoff (`COLEND_FUNDING_OVERPAYMENT_TOLERANCE_BPS`, 0 to 10000; default
    /// 10): up to it the loan settles and the excess is owed back to the
    /// borrower; beyond it the repayment is refused.
    pub overpayment_tolerance_bps: i64,
    /// Rule C12: the most a loan may cost a year all in, interest and fees
    /// over a 365-day year (`COLEND_FUNDING_ALL_IN_CAP_BPS`, 0 to 100000;
    /// default 2400), checked when it is reserved.
    pub all_in_cap_bps: i64,
    /// Where "now" is read for business decisions: the system clock (tests may set a
    /// manual one).
    pub clock: Clock,
    /// Funding accrues every disbursed loan itself once per business day
    /// (`COLEND_FUNDING_DAILY_ACCRUAL`, default true; the date is checked every
    /// `COLEND_FUNDING_SWEEP_SECS`).
    pub daily_accrual: bool,
    /// The daily run accrues through this many days before today
    /// (`COLEND_FUNDING_ACCRUAL_LAG_DAYS`, 0 to 30; default 1, so the bank can
    /// still book a repayment value-dated yesterday).
    pub accrual_lag_days: u32,
}

/// The time zone `COLEND_FUNDING_TIME_ZONE` names, else the jurisdiction's
/// (`COLEND_FUNDING_JURISDICTION`): the business day funding runs on, for
/// tools that book against it.
pub fn time_zone_from_env() -> anyhow::Result<Tz> {
    let j = colend_platform::config::env_or("COLEND_FUNDING_JURISDICTION", "CN");
    let jurisdiction = Jurisdiction::parse(&j).ok_or_else(|| {
        anyhow::anyhow!("COLEND_FUNDING_JURISDICTION={j:?} is not one of CN, IN-2020, IN-2025")
    })?;
    colend_platform::time::time_zone_env("COLEND_FUNDING_TIME_ZONE", jurisdiction.time_zone())
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
            time_zone: time_zone_from_env()?,
            disbursement_forward_days: match env_parse(
                "COLEND_FUNDING_DISBURSEMENT_FORWARD_DAYS",
                0u32,
            )? {
                n @ 0..=366 => n,
                n => anyhow::bail!("COLEND_FUNDING_DISBURSEMENT_FORWARD_DAYS={n} must be 0 to 366"),
            },
            overpayment_tolerance_bps: match env_parse(
                "COLEND_FUNDING_OVERPAYMENT_TOLERANCE_BPS",
                10i64,
            )? {
                n @ 0..=10_000 => n,
                n => {
                    anyhow::bail!("COLEND_FUNDING_OVERPAYMENT_TOLERANCE_BPS={n} must be 0 to 10000")
                }
            },
            all_in_cap_bps: match env_parse("COLEND_FUNDING_ALL_IN_CAP_BPS", 2_400i64)? {
                n @ 0..=100_000 => n,
                n => anyhow::bail!("COLEND_FUNDING_ALL_IN_CAP_BPS={n} must be 0 to 100000"),
            },
            clock: Clock::System,
            daily_accrual: env_parse("COLEND_FUNDING_DAILY_ACCRUAL", true)?,
            accrual_lag_days: match env_parse("COLEND_FUNDING_ACCRUAL_LAG_DAYS", 1u32)? {
                n @ 0..=30 => n,
                n => anyhow::bail!("COLEND_FUNDING_ACCRUAL_LAG_DAYS={n} must be 0 to 30"),
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
        self.settings.clock.business_date(self.settings.time_zone)
    }

    /// Now (epoch milliseconds) for business decisions: reservation expiry.
    pub fn now(&self) -> i64 {
        self.settings.clock.now_millis()
    }

    /// Each lender's minimum share of a loan (rule C1 and the jurisdiction's bank minimum).
    pub fn share_minimums(&self) -> domain::ShareMinimums {
        domain::ShareMinimums {
            partner_bps: self.settings.min_partner_share_bps,
            bank_bps: self.settings.jurisdiction.min_bank_share_bps(),
        }
    }
}
