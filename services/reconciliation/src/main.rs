//! The reconciliation service on its own (one Kubernetes deployment).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    colend_platform::runner::run_single("reconciliation", colend_reconciliation::register).await
}
