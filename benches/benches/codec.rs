//! Decoding and encoding KServe V2 REST bodies (JSON and the binary tensor extension), for 1 and 256
//! rows of the breast-cancer model's request and response.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel_server::http::codec::{decode_request, encode_response};
use keel_server::infer::InferResponse;
use keel_server::tensor::{Tensor, TensorData};

const FEATURES: usize = 30;

fn rows(n: usize) -> Vec<f32> {
    (0..n * FEATURES)
        .map(|i| (i as f32 * 0.37).sin() * 100.0)
        .collect()
}

fn json_request(n: usize) -> Vec<u8> {
    let body = format!(
        r#"{{"id":"bench","inputs":[{{"name":"input","shape":[{n},{FEATURES}],"datatype":"FP32","data":{}}}],"outputs":[{{"name":"label"}},{{"name":"probabilities"}}]}}"#,
        serde_json::to_string(&rows(n)).unwrap()
    );
    body.into_bytes()
}

fn binary_request(n: usize) -> (Vec<u8>, usize) {
    let mut body = format!(
        r#"{{"id":"bench","inputs":[{{"name":"input","shape":[{n},{FEATURES}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"label","parameters":{{"binary_data":true}}}},{{"name":"probabilities","parameters":{{"binary_data":true}}}}]}}"#,
        n * FEATURES * 4
    )
    .into_bytes();
    let json_len = body.len();
    for v in rows(n) {
        body.extend_from_slice(&v.to_le_bytes());
    }
    (body, json_len)
}

fn response(n: usize) -> InferResponse {
    InferResponse {
        model_name: "breast-cancer".into(),
        model_version: 2,
        id: Some("bench".into()),
        outputs: vec![
            Tensor {
                name: "label".into(),
                shape: vec![n],
                data: TensorData::Int64((0..n as i64).map(|i| i % 2).collect()),
            },
            Tensor {
                name: "probabilities".into(),
                shape: vec![n, 2],
                data: TensorData::Fp32((0..n * 2).map(|i| (i as f32 * 0.013).fract()).collect()),
            },
        ],
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for n in [1usize, 256] {
        let json = json_request(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("json", n), &json, |b, body| {
            b.iter(|| decode_request(body, None).unwrap())
        });
        let (binary, json_len) = binary_request(n);
        group.bench_with_input(BenchmarkId::new("binary", n), &binary, |b, body| {
            b.iter(|| decode_request(body, Some(json_len)).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("encode");
    for n in [1usize, 256] {
        let resp = response(n);
        group.throughput(Throughput::Elements(n as u64));
        let (_, json_len) = binary_request(n);
        let (binary_req, _) = binary_request(n);
        let binary = decode_request(&binary_req, Some(json_len)).unwrap().binary;
        let json = decode_request(&json_request(n), None).unwrap().binary;
        group.bench_with_input(BenchmarkId::new("json", n), &resp, |b, r| {
            b.iter(|| encode_response(r, &json))
        });
        group.bench_with_input(BenchmarkId::new("binary", n), &resp, |b, r| {
            b.iter(|| encode_response(r, &binary))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
