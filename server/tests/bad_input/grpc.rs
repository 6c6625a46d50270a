//! The same over gRPC: hostile ModelInfer messages refused before decoding, compression only when the
//! request was compressed, unary requests however their bytes are framed, and the in-flight budget.

use super::*;
use keel_server::grpc::pb;
use keel_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::model_infer_request::InferInputTensor;
use tonic::transport::Channel;

async fn client(s: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", s.server.grpc_addr()))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

fn request(rows: usize) -> pb::ModelInferRequest {
    let x: Vec<u8> = breast_cancer_rows(1)
        .repeat(rows)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    pb::ModelInferRequest {
        model_name: "breast-cancer".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 30],
            ..Default::default()
        }],
        raw_input_contents: vec![x],
        ..Default::default()
    }
}

fn empty_bytes(datatype: &str, n: usize) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "breast-cancer".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape: vec![1, n as i64],
            contents: Some(pb::InferTensorContents {
                bytes_contents: vec![Vec::new(); n],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn assert_status(
    c: &mut GrpcInferenceServiceClient<Channel>,
    req: pb::ModelInferRequest,
    code: tonic::Code,
    needle: &str,
) {
    let err = c.model_infer(req).await.unwrap_err();
    assert_eq!(err.code(), code, "{needle}: {}", err.message());
    assert!(
        err.message().contains(needle),
        "{needle}: {}",
        err.message()
    );
    let ok = c.model_infer(request(1)).await.unwrap().into_inner();
    assert_eq!(ok.raw_output_contents.len(), 2);
}

#[tokio::test]
async fn hostile_messages_are_refused_before_decoding() {
    let s = TestServer::start(&example_models()).await;
    let mut c = client(&s).await;
    let invalid = tonic::Code::InvalidArgument;
    assert_status(
        &mut c,
        empty_bytes("BYTES", 3_000_000),
        invalid,
        "has datatype BYTES",
    )
    .await;
    let mut wrong = empty_bytes("FP32", 3_000_000);
    wrong.inputs[0].shape = vec![1, 30];
    assert_status(&mut c, wrong, invalid, "not bytes_contents").await;
    let mut inputs = request(1);
    inputs.inputs = vec![InferInputTensor::default(); 100_000];
    inputs.raw_input_contents.clear();
    assert_status(&mut c, inputs, invalid, "at most 4096").await;
    let mut raw = request(1);
    raw.raw_input_contents.extend(vec![Vec::new(); 1_000_000]);
    assert_status(
        &mut c,
        raw,
        invalid,
        "raw_input_contents has 1000001 entries",
    )
    .await;
    let mut rows = request(1);
    rows.inputs[0].shape = vec![2000, 30];
    rows.raw_input_contents[0] = vec![0; 2000 * 30 * 4];
    assert_status(&mut c, rows, invalid, "max_batch_size").await;
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn responses_are_compressed_only_when_their_request_was() {
    use tonic::codec::CompressionEncoding::{Deflate, Gzip};
    let s = TestServer::start(&example_models()).await;
    let coding = |r: &tonic::Response<pb::ModelInferResponse>| {
        r.metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_string())
    };
    // Accepting gzip, as every gRPC library says it does, but sending plain.
    let mut plain = client(&s).await.accept_compressed(Gzip);
    let reply = plain.model_infer(request(1)).await.unwrap();
    assert_eq!(coding(&reply), None);
    assert_eq!(reply.get_ref().raw_output_contents.len(), 2);
    for (encoding, name) in [(Gzip, "gzip"), (Deflate, "deflate")] {
        let mut compressed = client(&s)
            .await
            .send_compressed(encoding)
            .accept_compressed(Gzip)
            .accept_compressed(Deflate);
        let reply = compressed.model_infer(request(1)).await.unwrap();
        assert_eq!(coding(&reply).as_deref(), Some(name));
        assert_eq!(reply.get_ref().raw_output_contents.len(), 2);
    }
    s.server.shutdown().await.unwrap();
}

/// One ModelInfer call over a bare HTTP/2 stream, the request body sent in `pieces`; the answer's
/// `grpc-status` (from the trailers, or the headers of a trailers-only answer), its message, and the
/// response message if there is one.
async fn call_in_pieces(
    s: &TestServer,
    pieces: Vec<Vec<u8>>,
) -> (String, String, Option<pb::ModelInferResponse>) {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(s.server.grpc_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let call = axum::http::Request::post(format!(
        "http://{}/inference.GRPCInferenceService/ModelInfer",
        s.server.grpc_addr()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut body) = client.send_request(call, pieces.is_empty()).unwrap();
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.into_iter().enumerate() {
        body.send_data(piece.into(), i == last).unwrap();
        // Each piece its own DATA frame, read by the server before the next is sent.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let get = |headers: &axum::http::HeaderMap, name: &str| {
        headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    };
    if let Some(status) = get(response.headers(), "grpc-status") {
        let message = percent_decoded(&get(response.headers(), "grpc-message").unwrap_or_default());
        return (status, message, None);
    }
    let mut data = Vec::new();
    let stream = response.body_mut();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.unwrap();
        stream.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = stream.trailers().await.unwrap().unwrap_or_default();
    let status = get(&trailers, "grpc-status").unwrap_or_default();
    let message = percent_decoded(&get(&trailers, "grpc-message").unwrap_or_default());
    let reply = (data.len() >= 5).then(|| {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(data.len(), 5 + len, "one message");
        pb::ModelInferResponse::decode(&data[5..]).unwrap()
    });
    (status, message, reply)
}

/// `grpc-message` as sent: percent-encoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A unary request is one message however its bytes are cut into DATA frames (the header split
/// too). Bodies that are not one plain message are answered as tonic answers them: a compressed
/// flag without `grpc-encoding`, a body with no message, two messages.
#[tokio::test]
async fn unary_requests_are_read_whatever_their_framing() {
    use prost::Message;
    let s = TestServer::start(&example_models()).await;
    let message = request(3).encode_to_vec();
    let wire = framed(0, &message);
    let cuts: [&[usize]; 4] = [&[], &[2], &[1, 3, 4], &[5, 17, wire.len() - 1]];
    for cut in cuts {
        let mut pieces = Vec::new();
        let mut from = 0;
        for &to in cut.iter().chain([&wire.len()]) {
            pieces.push(wire[from..to].to_vec());
            from = to;
        }
        let (status, message, reply) = call_in_pieces(&s, pieces).await;
        assert_eq!(status, "0", "cut at {cut:?}: {message}");
        let reply = reply.expect("a response message");
        assert_eq!(reply.outputs[1].shape, vec![3, 2], "cut at {cut:?}");
        assert_eq!(reply.raw_output_contents.len(), 2);
        assert_eq!(reply.id.len(), 32, "a generated request id");
    }
    let (status, message, _) = call_in_pieces(&s, vec![framed(1, &message)]).await;
    assert_eq!(status, "13", "{message}");
    assert!(message.contains("compressed-flag"), "{message}");
    let (status, message, _) = call_in_pieces(&s, vec![]).await;
    assert_eq!(status, "13", "{message}");
    assert!(message.contains("Missing request message"), "{message}");
    let two = [framed(0, &message_of(1)), framed(0, &message_of(2))].concat();
    let (status, message, reply) = call_in_pieces(&s, vec![two]).await;
    assert_eq!(status, "0", "{message}");
    assert_eq!(
        reply.unwrap().outputs[1].shape,
        vec![1, 2],
        "the first is answered"
    );
    // A model that is not there, on the direct path: NOT_FOUND, as before.
    let mut missing = request(1);
    missing.model_name = "no-such-model".into();
    let (status, message, _) = call_in_pieces(&s, vec![framed(0, &missing.encode_to_vec())]).await;
    assert_eq!(status, "5", "{message}");
    s.server.shutdown().await.unwrap();
}

fn message_of(rows: usize) -> Vec<u8> {
    use prost::Message;
    request(rows).encode_to_vec()
}

#[tokio::test]
async fn inflight_budget_over_grpc() {
    let mut config = ServeConfig::local(example_models());
    config.limits.max_inflight_bytes = 64 * 1024;
    let s = TestServer::start_with(config).await;
    let mut c = client(&s).await;
    // 1024 rows: 120 KiB of raw input, more than the whole budget.
    assert_status(
        &mut c,
        request(1024),
        tonic::Code::ResourceExhausted,
        "--max-inflight-bytes",
    )
    .await;
    // In a stream, the refused request gets its error and the stream carries on.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(request(1024)).await.unwrap();
    let first = replies.message().await.unwrap().unwrap();
    assert!(
        first.error_message.contains("--max-inflight-bytes"),
        "{}",
        first.error_message
    );
    tx.send(request(2)).await.unwrap();
    let second = replies.message().await.unwrap().unwrap();
    assert_eq!(second.error_message, "");
    assert_eq!(second.infer_response.unwrap().outputs[1].shape, vec![2, 2]);
    tx.send(empty_bytes("BYTES", 10)).await.unwrap();
    let third = replies.message().await.unwrap().unwrap();
    assert!(
        third.error_message.contains("has datatype BYTES"),
        "{}",
        third.error_message
    );
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    s.server.shutdown().await.unwrap();
}
