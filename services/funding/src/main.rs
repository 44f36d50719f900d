//! The funding service on its own (one Kubernetes deployment).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    colend_platform::runner::run_single("funding", colend_funding::register).await
}
