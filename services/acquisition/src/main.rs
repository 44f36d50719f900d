//! The acquisition service on its own (one Kubernetes deployment).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    colend_platform::runner::run_single("acquisition", colend_acquisition::register).await
}
