//! colend's platform: what every service shares and none of them owns.
//!
//! Configuration from the environment, telemetry, the gRPC server stack
//! (health, reflection, bounded graceful shutdown), outbound clients with
//! deadlines, the error model (`google.rpc.ErrorInfo` on every status),
//! storage on PostgreSQL or SQLite, a cache on Redis or in process,
//! idempotency by client request id, the outbox, and the tables all of these
//! share, defined once ([`schema`]).
pub mod audit;
pub mod auth;
pub mod cache;
pub mod caller;
pub mod config;
pub mod db;
pub mod deadline;
pub mod error;
pub mod fault;
pub mod grpc;
pub mod idempotency;
pub mod lifecycle;
pub mod mesh;
pub mod metrics;
pub mod outbox;
pub mod paging;
pub mod request_size;
pub mod rpc_trace;
pub mod runner;
pub mod schema;
pub mod sealing;
pub mod telemetry;
pub mod time;

pub use cache::Cache;
pub use db::Db;
pub use error::{Amount, ApiError, ApiResult, FieldViolation, Violations};
pub use mesh::{Endpoints, Mesh};
