//! Core domain types shared by every colend service. Pure: no I/O, no gRPC.
pub mod identifiers;
pub mod money;
pub mod pii;
pub mod request_id;

pub use identifiers::{CreditCode, IdentifierError, Mobile, ResidentId};
pub use money::{Currency, MoneyError};
pub use pii::{BlindIndexKey, PersonName};
