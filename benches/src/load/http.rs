//! The HTTP target: KServe V2 REST with JSON tensors or Triton's binary tensor extension, over one
//! pool of HTTP/1.1 keep-alive connections.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::args::{Args, Format};
use super::payload::{DISTINCT_PAYLOADS, features, le_bytes};
use super::target::error_chain;

const HEADER_LENGTH: &str = "inference-header-content-length";

/// One request body, encoded once up front and shared by every send.
struct Prepared {
    body: Bytes,
    /// Length of the JSON part when binary tensor data follows it.
    json_len: Option<HeaderValue>,
}

pub struct HttpTarget {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    payloads: Vec<Prepared>,
}

impl HttpTarget {
    pub fn new(args: &Args) -> anyhow::Result<Self> {
        let url = format!("{}/v2/models/{}/infer", args.url(), args.model);
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only plain http:// URLs are supported, got {url}");
        }
        let mut connector = HttpConnector::new();
        // Small requests must leave at once, not wait on Nagle's algorithm.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let payloads = (0..DISTINCT_PAYLOADS)
            .map(|seed| prepare(args, seed as u64))
            .collect();
        Ok(HttpTarget {
            client,
            uri,
            payloads,
        })
    }

    pub async fn send(&self, payload: usize) -> Result<(), String> {
        let p = &self.payloads[payload % self.payloads.len()];
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(
                CONTENT_TYPE,
                if p.json_len.is_some() {
                    "application/octet-stream"
                } else {
                    "application/json"
                },
            );
        if let Some(n) = &p.json_len {
            request = request.header(HEADER_LENGTH, n.clone());
        }
        let request = request
            .body(Full::new(p.body.clone()))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("HTTP request failed: {}", error_chain(&e)))?;
        let status = response.status();
        // Read the whole body even on success: the connection goes back to the pool only once drained.
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the response body: {}", error_chain(&e)))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
            return Err(format!("HTTP {status}: {text}"));
        }
        Ok(())
    }
}

fn prepare(args: &Args, seed: u64) -> Prepared {
    let (rows, cols) = (args.rows as usize, args.features as usize);
    let values = features(seed, rows, cols);
    let binary = args.format == Format::Binary;
    let outputs: Vec<Value> = args
        .outputs
        .iter()
        .filter(|name| !name.is_empty())
        .map(|name| match binary {
            true => json!({ "name": name, "parameters": { "binary_data": true } }),
            false => json!({ "name": name }),
        })
        .collect();
    let mut input = json!({
        "name": args.input,
        "shape": [rows, cols],
        "datatype": "FP32",
    });
    let mut request = json!({ "id": format!("keel-load-{seed}"), "inputs": [] });
    if binary {
        input["parameters"] = json!({ "binary_data_size": rows * cols * 4 });
        // With no outputs named, ask for every output in binary.
        request["parameters"] = json!({ "binary_data_output": true });
    } else {
        input["data"] = json!(values);
    }
    request["inputs"] = json!([input]);
    if !outputs.is_empty() {
        request["outputs"] = Value::Array(outputs);
    }
    let mut body = serde_json::to_vec(&request).expect("a JSON value always serializes");
    let json_len = binary.then(|| HeaderValue::from(body.len()));
    if binary {
        body.extend_from_slice(&le_bytes(&values));
    }
    Prepared {
        body: body.into(),
        json_len,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use keel_server::http::codec::decode_request;

    use super::*;

    /// Both formats must decode with Keel's own decoder into the tensor we meant to send.
    #[test]
    fn bodies_decode_with_keels_codec() {
        for format in ["json", "binary"] {
            let args = Args::parse_from(["keel-load", "--rows", "3", "--format", format]);
            let p = prepare(&args, 1);
            let json_len = p
                .json_len
                .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
            let decoded = decode_request(&p.body, json_len).unwrap();
            let input = &decoded.request.inputs[0];
            assert_eq!(input.name, "input");
            assert_eq!(input.shape, [3, 30]);
            assert_eq!(input.data.len(), 90);
            assert_eq!(
                decoded.request.outputs.as_deref(),
                Some(&["label".to_string(), "probabilities".to_string()][..])
            );
        }
    }
}
