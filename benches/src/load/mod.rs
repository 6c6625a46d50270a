//! `keel-load`: a closed- or open-loop load generator for KServe V2 servers over HTTP or gRPC.

pub mod args;
pub mod closed;
pub mod grpc;
pub mod http;
pub mod open;
pub mod payload;
pub mod report;
pub mod stats;
pub mod target;

pub use args::Args;
