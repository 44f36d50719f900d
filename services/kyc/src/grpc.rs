//! The gRPC face of KYC: validate, convert, call the use case, convert back.
use crate::app::{CheckInput, Kyc};
use colend_contracts::kyc::v1::{
    self as pb,
    kyc_service_server::{KycService, KycServiceServer},
};
use colend_platform::idempotency::request_hash;
use colend_platform::{ApiError, Violations, caller, paging};
use tonic::{Request, Response, Status};

pub fn server(app: Kyc) -> KycServiceServer<KycGrpc> {
    // Requests are small: anything above 1 MiB is refused before decoding.
    KycServiceServer::new(KycGrpc { app })
        .max_decoding_message_size(colend_platform::grpc::MAX_REQUEST_BYTES)
        .max_encoding_message_size(colend_platform::grpc::MAX_RESPONSE_BYTES)
}

pub struct KycGrpc {
    app: Kyc,
}

#[tonic::async_trait]
impl KycService for KycGrpc {
    async fn check_borrower(
        &self,
        request: Request<pb::CheckBorrowerRequest>,
    ) -> Result<Response<pb::CheckBorrowerResponse>, Status> {
        let caller = caller::partner_id(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        if r.partner_id != caller {
            v.add("partner_id", "must be the calling partner");
        }
        v.text("person_name", &r.person_name, 64);
        v.text("resident_id", &r.resident_id, 32);
        v.text("mobile", &r.mobile, 32);
        v.text("business_name", &r.business_name, 128);
        v.text("credit_code", &r.credit_code, 32);
        v.into_result()?;
        let hash = request_hash(&r);
        let check = self
            .app
            .check(
                r.request_id,
                hash,
                CheckInput {
                    partner_id: r.partner_id,
                    person_name: r.person_name,
                    resident_id: r.resident_id,
                    mobile: r.mobile,
                    business_name: r.business_name,
                    credit_code: r.credit_code,
                },
            )
            .await?;
        Ok(Response::new(pb::CheckBorrowerResponse {
            check: Some(check),
        }))
    }

    async fn get_check(
        &self,
        request: Request<pb::GetCheckRequest>,
    ) -> Result<Response<pb::GetCheckResponse>, Status> {
        let caller = caller::partner_id(&request)?;
        let r = request.into_inner();
        if r.check_id.is_empty() || r.check_id.len() > 64 {
            return Err(ApiError::field("check_id", "must be 1 to 64 characters").into());
        }
        let check = self.app.get_check(&caller, &r.check_id).await?;
        Ok(Response::new(pb::GetCheckResponse { check: Some(check) }))
    }

    async fn add_watchlist_entry(
        &self,
        request: Request<pb::AddWatchlistEntryRequest>,
    ) -> Result<Response<pb::AddWatchlistEntryResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        v.request_id(&r.request_id);
        v.check(
            matches!(
                pb::WatchlistKind::try_from(r.kind),
                Ok(pb::WatchlistKind::Sanctions
                    | pb::WatchlistKind::BankBlacklist
                    | pb::WatchlistKind::Fraud)
            ),
            "kind",
            "must be SANCTIONS, BANK_BLACKLIST or FRAUD",
        );
        v.text("name", &r.name, 128);
        v.check(
            r.note.chars().count() <= 500,
            "note",
            "must be at most 500 characters",
        );
        v.into_result()?;
        let hash = request_hash(&r);
        let entry = self
            .app
            .add_watchlist_entry(
                r.request_id,
                hash,
                r.kind,
                r.name.trim().to_string(),
                r.note,
            )
            .await?;
        Ok(Response::new(pb::AddWatchlistEntryResponse {
            entry: Some(entry),
        }))
    }

    async fn list_watchlist_entries(
        &self,
        request: Request<pb::ListWatchlistEntriesRequest>,
    ) -> Result<Response<pb::ListWatchlistEntriesResponse>, Status> {
        let r = request.into_inner();
        let size = paging::page_size(r.page_size)?;
        let after = paging::decode_token(&r.page_token)?;
        let (entries, next) = self.app.list_watchlist(size, &after).await?;
        Ok(Response::new(pb::ListWatchlistEntriesResponse {
            entries,
            next_page_token: paging::encode_token(&next),
        }))
    }
}
