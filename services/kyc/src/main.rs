//! The KYC service on its own (one Kubernetes deployment).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    colend_platform::runner::run_single("kyc", colend_kyc::register).await
}
