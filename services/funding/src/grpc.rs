//! The gRPC face of funding.
use crate::app::{Funding, LoanFilter};
use crate::domain::LoanStatus;
use colend_contracts::common::v1::{Money, RepaymentMethod};
use colend_contracts::funding::v1::{
    self as pb,
    funding_service_server::{FundingService, FundingServiceServer},
};
use colend_platform::idempotency::request_hash;
use colend_platform::time::parse_date;
use colend_platform::{Amount, ApiError, Violations, caller, paging};
use tonic::{Request, Response, Status};

pub fn server(app: Funding) -> FundingServiceServer<FundingGrpc> {
    // Requests are small: anything above 1 MiB is refused before decoding.
    FundingServiceServer::new(FundingGrpc { app })
        .max_decoding_message_size(colend_platform::grpc::MAX_REQUEST_BYTES)
        .max_encoding_message_size(colend_platform::grpc::MAX_RESPONSE_BYTES)
}

pub struct FundingGrpc {
    app: Funding,
}

#[tonic::async_trait]
impl FundingService for FundingGrpc {
    async fn upsert_agreement(
        &self,
        request: Request<pb::UpsertAgreementRequest>,
    ) -> Result<Response<pb::UpsertAgreementResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        let Some(a) = r.agreement.clone() else {
            return Err(ApiError::field("agreement", "is required").into());
        };
        v.check(
            caller::valid_partner_id(&a.partner_id),
            "agreement.partner_id",
            "must be 1 to 64 characters of letters, digits, '-' or '_'",
        );
        v.check(
            (0..=10_000).contains(&a.partner_share_bps),
            "agreement.partner_share_bps",
            "must be 0 to 10000",
        );
        v.check(
            (0..=10_000).contains(&a.bank_rate_bps),
            "agreement.bank_rate_bps",
            "must be 0 to 10000",
        );
        v.check(
            (0..=10_000).contains(&a.partner_rate_bps),
            "agreement.partner_rate_bps",
            "must be 0 to 10000",
        );
        v.check(
            (0..=10_000).contains(&a.penalty_rate_bps),
            "agreement.penalty_rate_bps",
            "must be 0 to 10000",
        );
        if let Some(problem) = crate::app::waterfall_problem(&a.waterfall) {
            v.add("agreement.waterfall", problem);
        }
        v.check(
            (0..=10_000).contains(&a.fee_partner_share_bps),
            "agreement.fee_partner_share_bps",
            "must be 0 to 10000",
        );
        v.check(
            a.credit_enhancer_id.is_empty() || caller::valid_partner_id(&a.credit_enhancer_id),
            "agreement.credit_enhancer_id",
            "must be empty or 1 to 64 characters of letters, digits, '-' or '_'",
        );
        v.money("agreement.daily_quota", &a.daily_quota, Amount::Required);
        v.money("agreement.total_quota", &a.total_quota, Amount::Required);
        if let (Some(d), Some(t)) = (&a.daily_quota, &a.total_quota) {
            v.check(
                d.currency_code == t.currency_code,
                "agreement.daily_quota.currency_code",
                "must match total_quota",
            );
        }
        v.check(
            parse_date(&a.effective_from).is_some(),
            "agreement.effective_from",
            "must be a date YYYY-MM-DD",
        );
        v.into_result()?;
        let hash = request_hash(&r);
        let stored = self.app.upsert_agreement(r.request_id, hash, a).await?;
        Ok(Response::new(pb::UpsertAgreementResponse {
            agreement: Some(stored),
        }))
    }

    async fn get_agreement(
        &self,
        request: Request<pb::GetAgreementRequest>,
    ) -> Result<Response<pb::GetAgreementResponse>, Status> {
        let r = request.into_inner();
        let a = self
            .app
            .agreement(&r.partner_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("agreement".into()))?;
        Ok(Response::new(pb::GetAgreementResponse {
            agreement: Some(a),
        }))
    }

    async fn reserve_funding(
        &self,
        request: Request<pb::ReserveFundingRequest>,
    ) -> Result<Response<pb::ReserveFundingResponse>, Status> {
        let caller = caller::partner_id(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        v.id("application_id", &r.application_id);
        v.check(
            r.partner_id == caller,
            "partner_id",
            "must be the calling partner",
        );
        v.money("principal", &r.principal, Amount::Positive);
        // A ceiling far above any loan bounds servicing's arithmetic.
        v.check(
            r.principal
                .as_ref()
                .is_none_or(|p| p.minor_units <= crate::domain::MAX_PRINCIPAL),
            "principal",
            &format!(
                "must be at most {} minor units",
                crate::domain::MAX_PRINCIPAL
            ),
        );
        v.check(
            (1..=360).contains(&r.term_months),
            "term_months",
            "must be 1 to 360",
        );
        v.check(
            (0..=10_000).contains(&r.annual_rate_bps),
            "annual_rate_bps",
            "must be 0 to 10000",
        );
        v.check(
            (0..=10_000).contains(&r.annual_fee_bps),
            "annual_fee_bps",
            "must be 0 to 10000",
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
        v.into_result()?;
        let hash = request_hash(&r);
        let loan = self.app.reserve(r.request_id.clone(), hash, r).await?;
        Ok(Response::new(pb::ReserveFundingResponse {
            loan: Some(loan),
        }))
    }

    async fn release_funding(
        &self,
        request: Request<pb::ReleaseFundingRequest>,
    ) -> Result<Response<pb::ReleaseFundingResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        if r.loan_id.is_empty() {
            v.id("application_id", &r.application_id);
        } else {
            v.id("loan_id", &r.loan_id);
            v.check(
                r.application_id.is_empty(),
                "application_id",
                "give loan_id or application_id, not both",
            );
        }
        v.check(
            r.reason.chars().count() <= 500,
            "reason",
            "must be at most 500 characters",
        );
        v.into_result()?;
        let hash = request_hash(&r);
        let loan = self
            .app
            .release(r.request_id, hash, r.loan_id, r.application_id, r.reason)
            .await?;
        Ok(Response::new(pb::ReleaseFundingResponse {
            loan: Some(loan),
        }))
    }

    async fn book_disbursement(
        &self,
        request: Request<pb::BookDisbursementRequest>,
    ) -> Result<Response<pb::BookDisbursementResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        v.id("loan_id", &r.loan_id);
        let date = parse_date(&r.value_date);
        v.check(date.is_some(), "value_date", "must be a date YYYY-MM-DD");
        v.id("bank_transaction_ref", &r.bank_transaction_ref);
        v.into_result()?;
        let hash = request_hash(&r);
        let loan = self
            .app
            .book_disbursement(
                r.request_id,
                hash,
                r.loan_id,
                date.unwrap_or_default(),
                r.bank_transaction_ref,
            )
            .await?;
        Ok(Response::new(pb::BookDisbursementResponse {
            loan: Some(loan),
        }))
    }

    async fn book_repayment(
        &self,
        request: Request<pb::BookRepaymentRequest>,
    ) -> Result<Response<pb::BookRepaymentResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        v.id("loan_id", &r.loan_id);
        v.money("amount", &r.amount, Amount::Positive);
        let date = parse_date(&r.value_date);
        v.check(date.is_some(), "value_date", "must be a date YYYY-MM-DD");
        v.id("bank_transaction_ref", &r.bank_transaction_ref);
        v.into_result()?;
        // A repayment is in the loan's currency (which never changes), or refused.
        let paid_in = r.amount.as_ref().map_or("", |m| m.currency_code.as_str());
        if let Some(loan_currency) = self.app.loan_currency(&r.loan_id).await?
            && paid_in != loan_currency
        {
            return Err(ApiError::currency_mismatch(
                loan_currency.clone(),
                format!("the loan is in {loan_currency}, the repayment in {paid_in}"),
            )
            .into());
        }
        let hash = request_hash(&r);
        let resp = self
            .app
            .book_repayment(
                r.request_id,
                hash,
                r.loan_id,
                r.amount.unwrap_or_default(),
                date.unwrap_or_default(),
                r.bank_transaction_ref,
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn get_loan(
        &self,
        request: Request<pb::GetLoanRequest>,
    ) -> Result<Response<pb::GetLoanResponse>, Status> {
        // The bank reads any loan; a partner only its own (another
        // partner's is NOT_FOUND, as a missing one).
        let caller = if caller::is_bank(&request) {
            None
        } else {
            Some(caller::partner_id(&request)?)
        };
        let r = request.into_inner();
        let loan = self.app.get_loan(caller.as_deref(), &r.loan_id).await?;
        Ok(Response::new(pb::GetLoanResponse { loan: Some(loan) }))
    }

    async fn list_loans(
        &self,
        request: Request<pb::ListLoansRequest>,
    ) -> Result<Response<pb::ListLoansResponse>, Status> {
        let partner = if caller::is_bank(&request) {
            // The bank's view: one partner's loans, or every partner's.
            let p = request.get_ref().partner_id.clone();
            if !p.is_empty() && !caller::valid_partner_id(&p) {
                return Err(ApiError::field("partner_id", "is not a partner id").into());
            }
            (!p.is_empty()).then_some(p)
        } else {
            let own = caller::partner_id(&request)?;
            let asked = &request.get_ref().partner_id;
            if !asked.is_empty() && *asked != own {
                return Err(
                    ApiError::field("partner_id", "must be empty or the calling partner").into(),
                );
            }
            Some(own)
        };
        let r = request.into_inner();
        let mut v = Violations::new();
        let size = paging::page_size(r.page_size);
        v.check(size.is_ok(), "page_size", "must be between 0 and 500");
        let after = paging::decode_token(&r.page_token);
        v.check(
            after.is_ok(),
            "page_token",
            "is not a token this service issued",
        );
        // UNSPECIFIED: any status.
        let status = match pb::LoanStatus::try_from(r.status) {
            Ok(s) => LoanStatus::parse(s.as_str_name().trim_start_matches("LOAN_STATUS_")),
            Err(_) => {
                v.add("status", "is not a LoanStatus value");
                None
            }
        };
        let date = |v: &mut Violations, field: &str, s: &str| {
            if s.is_empty() {
                return None;
            }
            let d = parse_date(s);
            v.check(d.is_some(), field, "must be empty or a date YYYY-MM-DD");
            d
        };
        let reserved_from = date(&mut v, "reserved_from", &r.reserved_from);
        let reserved_to = date(&mut v, "reserved_to", &r.reserved_to);
        if let (Some(f), Some(t)) = (reserved_from, reserved_to) {
            v.check(t >= f, "reserved_to", "must not be before reserved_from");
        }
        v.into_result()?;
        let filter = LoanFilter {
            partner_id: partner,
            status,
            reserved_from,
            reserved_to,
        };
        let (loans, next) = self.app.list_loans(&filter, size?, &after?).await?;
        Ok(Response::new(pb::ListLoansResponse {
            loans,
            next_page_token: paging::encode_token(&next),
        }))
    }

    async fn accrue_interest(
        &self,
        request: Request<pb::AccrueInterestRequest>,
    ) -> Result<Response<pb::AccrueInterestResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        let as_of = parse_date(&r.as_of);
        v.check(as_of.is_some(), "as_of", "must be a date YYYY-MM-DD");
        v.into_result()?;
        let hash = request_hash(&r);
        let resp = self
            .app
            .accrue_interest(r.request_id, hash, as_of.unwrap_or_default())
            .await?;
        Ok(Response::new(resp))
    }

    async fn get_trial_balance(
        &self,
        _request: Request<pb::GetTrialBalanceRequest>,
    ) -> Result<Response<pb::GetTrialBalanceResponse>, Status> {
        Ok(Response::new(self.app.trial_balance().await?))
    }

    async fn set_bank_reference(
        &self,
        request: Request<pb::SetBankReferenceRequest>,
    ) -> Result<Response<pb::SetBankReferenceResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        let Some(reference) = r.reference.clone() else {
            return Err(ApiError::field("reference", "is required").into());
        };
        v.money(
            "reference.net_tier1_capital",
            &reference.net_tier1_capital,
            Amount::Positive,
        );
        v.money(
            "reference.total_loan_balance",
            &reference.total_loan_balance,
            Amount::Positive,
        );
        if let (Some(a), Some(b)) = (&reference.net_tier1_capital, &reference.total_loan_balance) {
            v.check(
                a.currency_code == b.currency_code,
                "reference.total_loan_balance.currency_code",
                "must match net_tier1_capital",
            );
        }
        v.check(
            parse_date(&reference.as_of).is_some(),
            "reference.as_of",
            "must be a date YYYY-MM-DD",
        );
        v.into_result()?;
        let hash = request_hash(&r);
        let stored = self
            .app
            .set_bank_reference(r.request_id, hash, reference)
            .await?;
        Ok(Response::new(pb::SetBankReferenceResponse {
            reference: Some(stored),
        }))
    }

    async fn get_bank_reference(
        &self,
        request: Request<pb::GetBankReferenceRequest>,
    ) -> Result<Response<pb::GetBankReferenceResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.app.bank_reference(&r.partner_id).await?))
    }

    async fn whitelist_institution(
        &self,
        request: Request<pb::WhitelistInstitutionRequest>,
    ) -> Result<Response<pb::WhitelistInstitutionResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        let Some(e) = r.entry.clone() else {
            return Err(ApiError::field("entry", "is required").into());
        };
        v.check(
            caller::valid_partner_id(&e.institution_id),
            "entry.institution_id",
            "must be 1 to 64 characters of letters, digits, '-' or '_'",
        );
        v.check(
            matches!(
                pb::InstitutionKind::try_from(e.kind),
                Ok(pb::InstitutionKind::Partner | pb::InstitutionKind::CreditEnhancer)
            ),
            "entry.kind",
            "must be PARTNER or CREDIT_ENHANCER",
        );
        v.check(
            e.group_id.is_empty() || caller::valid_partner_id(&e.group_id),
            "entry.group_id",
            "must be empty or 1 to 64 characters of letters, digits, '-' or '_'",
        );
        let from = parse_date(&e.effective_from);
        v.check(
            from.is_some(),
            "entry.effective_from",
            "must be a date YYYY-MM-DD",
        );
        if !e.effective_to.is_empty() {
            let to = parse_date(&e.effective_to);
            v.check(
                to.is_some() && from.is_none_or(|f| to.is_some_and(|t| t >= f)),
                "entry.effective_to",
                "must be empty or a date YYYY-MM-DD not before effective_from",
            );
        }
        v.into_result()?;
        let hash = request_hash(&r);
        let stored = self.app.whitelist(r.request_id, hash, e).await?;
        Ok(Response::new(pb::WhitelistInstitutionResponse {
            entry: Some(stored),
        }))
    }

    async fn get_borrower_exposure(
        &self,
        request: Request<pb::GetBorrowerExposureRequest>,
    ) -> Result<Response<pb::GetBorrowerExposureResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.check(
            (1..=128).contains(&r.borrower_key.len()),
            "borrower_key",
            "must be 1 to 128 characters",
        );
        if !r.currency_code.is_empty() {
            v.currency("currency_code", &r.currency_code);
        }
        v.into_result()?;
        // Empty: the jurisdiction's own currency.
        let currency = if r.currency_code.is_empty() {
            self.app.settings().jurisdiction.currency().to_string()
        } else {
            r.currency_code
        };
        let owed = self.app.borrower_exposure(&r.borrower_key).await?;
        let exposure = owed
            .iter()
            .find(|(c, _)| *c == currency)
            .map_or(0, |(_, n)| *n);
        Ok(Response::new(pb::GetBorrowerExposureResponse {
            exposure: Some(Money {
                minor_units: exposure,
                currency_code: currency,
            }),
            by_currency: owed
                .into_iter()
                .map(|(currency_code, minor_units)| Money {
                    minor_units,
                    currency_code,
                })
                .collect(),
        }))
    }

    type StreamLedgerMovementsStream = futures::stream::Iter<
        std::vec::IntoIter<Result<pb::StreamLedgerMovementsResponse, Status>>,
    >;

    async fn stream_ledger_movements(
        &self,
        request: Request<pb::StreamLedgerMovementsRequest>,
    ) -> Result<Response<Self::StreamLedgerMovementsStream>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.check(
            caller::valid_partner_id(&r.partner_id),
            "partner_id",
            "must be 1 to 64 characters of letters, digits, '-' or '_'",
        );
        v.check(
            parse_date(&r.value_date).is_some(),
            "value_date",
            "must be a date YYYY-MM-DD",
        );
        v.into_result()?;
        let all = self
            .app
            .ledger_movements(&r.partner_id, &r.value_date)
            .await?;
        let batches: Vec<_> = all
            .chunks(1_000)
            .map(|c| {
                Ok(pb::StreamLedgerMovementsResponse {
                    movements: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(batches)))
    }
}
