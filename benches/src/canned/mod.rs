//! `keel-canned`: a server on Keel's own HTTP and gRPC stacks that decodes each inference request
//! with Keel's codecs and answers with a fixed response, skipping the model. Its throughput is the
//! practical ceiling of this machine for the protocol: what Keel would reach with a free model.

pub mod grpc;
pub mod http;
pub mod response;
