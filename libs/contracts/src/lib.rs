//! colend's protobuf contracts, generated at build time from `proto/`.
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Encoded `FileDescriptorSet` of every colend contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/colend_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("colend.common.v1");
    }
}
pub mod acquisition {
    pub mod v1 {
        tonic::include_proto!("colend.acquisition.v1");
    }
}
pub mod kyc {
    pub mod v1 {
        tonic::include_proto!("colend.kyc.v1");
    }
}
pub mod credit {
    pub mod v1 {
        tonic::include_proto!("colend.credit.v1");
    }
}
pub mod funding {
    pub mod v1 {
        tonic::include_proto!("colend.funding.v1");
    }
}
pub mod reconciliation {
    pub mod v1 {
        tonic::include_proto!("colend.reconciliation.v1");
    }
}
