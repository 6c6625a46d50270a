//! The gRPC target: `ModelInfer` with the input in `raw_input_contents`, spread over a few channels.

use anyhow::Context;
use keel_server::grpc::pb::ModelInferRequest;
use keel_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use keel_server::grpc::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tonic::transport::{Channel, Endpoint};

use super::args::Args;
use super::payload::{DISTINCT_PAYLOADS, features, le_bytes};

/// Far above any benchmark payload; tonic's 4 MiB default would fail large `--rows`.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

pub struct GrpcTarget {
    /// One HTTP/2 connection each: a single connection is driven by one task, and so by one core.
    clients: Vec<GrpcInferenceServiceClient<Channel>>,
    requests: Vec<ModelInferRequest>,
}

impl GrpcTarget {
    /// Connects every channel up front, so an unreachable server fails at once, not as errors.
    pub async fn connect(args: &Args) -> anyhow::Result<Self> {
        let url = args.url().to_string();
        let endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("bad URL {url}"))?
            .tcp_nodelay(true);
        let mut clients = Vec::new();
        for _ in 0..args.grpc_channels() {
            // Each `connect` opens its own connection; clones of one channel would share it.
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            clients.push(
                GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        let requests = (0..DISTINCT_PAYLOADS)
            .map(|seed| request(args, seed as u64))
            .collect();
        Ok(GrpcTarget { clients, requests })
    }

    /// `slot` picks the channel: a closed-loop worker always uses the same one.
    pub async fn send(&self, slot: usize, payload: usize) -> Result<(), String> {
        let mut client = self.clients[slot % self.clients.len()].clone();
        let request = self.requests[payload % self.requests.len()].clone();
        match client.model_infer(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(format!("gRPC {:?}: {}", status.code(), status.message())),
        }
    }
}

fn request(args: &Args, seed: u64) -> ModelInferRequest {
    let (rows, cols) = (args.rows as usize, args.features as usize);
    ModelInferRequest {
        model_name: args.model.clone(),
        id: format!("keel-load-{seed}"),
        inputs: vec![InferInputTensor {
            name: args.input.clone(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, cols as i64],
            ..Default::default()
        }],
        outputs: args
            .outputs
            .iter()
            .filter(|name| !name.is_empty())
            .map(|name| InferRequestedOutputTensor {
                name: name.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: vec![le_bytes(&features(seed, rows, cols))],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use keel_server::grpc::convert::infer_request;

    use super::*;

    #[test]
    fn request_decodes_with_keels_conversion() {
        let args = Args::parse_from(["keel-load", "--protocol", "grpc", "--rows", "2"]);
        let decoded = infer_request(request(&args, 0)).unwrap();
        assert_eq!(decoded.inputs[0].shape, [2, 30]);
        assert_eq!(decoded.inputs[0].data.len(), 60);
    }
}
