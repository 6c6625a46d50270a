//! KServe V2 REST inference bodies: JSON, and Triton's binary tensor extension in both directions.
//!
//! A request is checked before any tensor data is decoded: the JSON is parsed with every input's `data`
//! left as raw text, each input's header (name, datatype, shape) is checked against the model's signature
//! as soon as it is read, element counts against the declared shape and the bytes that carry them
//! (`binary_data_size` against shape x element size), BYTES elements against the per-request cap, and the
//! decoded size against the in-flight budget. `parameters` hold scalars only, refused at the first `[` or
//! `{`, so a request cannot make the server build more than its own bytes.

use std::collections::HashMap;
use std::ops::Range;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde::Deserialize;
use serde::de::DeserializeSeed;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

mod encode;
mod parameters;
mod seeds;

pub use encode::{EncodedResponse, encode_response};
pub use parameters::{Scalar, scalar_parameters};
use seeds::{RequestHead, RequestSeed, bounded_shape};

use super::{data_spans, json_data};
use crate::budget::Permit;
use crate::error::{Error, Result};
use crate::infer::InferRequest;
use crate::signature::{InputHeaders, Signature};
use crate::tensor::{
    DataType, Tensor, TensorData, check_wire_len, count_bytes_elements, decoded_bytes,
    element_count, shape_from_wire,
};

/// The header that splits a binary-extension body into its JSON part and its tensor bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// [`HEADER_LENGTH`] as a header name, made once (a `&str` name is parsed at every lookup).
const HEADER_LENGTH_NAME: axum::http::HeaderName =
    axum::http::HeaderName::from_static(HEADER_LENGTH);

/// Entries one `parameters` object may hold; the protocol's parameters are a handful.
pub const MAX_PARAMETERS: usize = 256;

/// Inputs (and requested outputs) a request may name when no model signature bounds them.
pub const MAX_TENSORS: usize = 4096;

/// Default of `--max-bytes-elements`.
pub const DEFAULT_MAX_BYTES_ELEMENTS: usize = 1 << 20;

/// `parameters` values: bool, number or string, as the protocol defines them.
type Parameters = Map<String, Value>;

/// The JSON length from `Inference-Header-Content-Length`, if the request carries binary tensors.
pub fn json_length(headers: &HeaderMap) -> Result<Option<usize>> {
    let Some(value) = headers.get(&HEADER_LENGTH_NAME) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| Error::invalid(format!("{HEADER_LENGTH} must be a non-negative integer")))
}

/// Makes every error answer JSON `{"error": "..."}`: responses of 400 and above that are not JSON already
/// (axum's own rejections, such as a path segment that is not UTF-8, are plain text) get their text, or
/// the status's reason, wrapped. Bodies of errors are short; one longer than 64 KiB is cut. For
/// `axum::middleware::map_response` on the router.
pub async fn json_error_body(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    // The status first: a successful answer's headers are not looked at.
    if status.as_u16() < 400
        || response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let json = serde_json::to_vec(&serde_json::json!({ "error": text }))
        .unwrap_or_else(|_| b"{\"error\":\"error\"}".to_vec());
    parts.headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, Body::from(json))
}

/// What a request is checked against while it is decoded.
#[derive(Clone, Copy)]
pub struct DecodeLimits<'s> {
    /// The model version's signature: inputs are checked against it before their data is decoded.
    /// Without one, only the request's own consistency bounds what is decoded.
    pub signature: Option<&'s Signature>,
    /// Elements of all BYTES inputs of one request together (`--max-bytes-elements`).
    pub max_bytes_elements: usize,
}

impl Default for DecodeLimits<'_> {
    fn default() -> Self {
        DecodeLimits {
            signature: None,
            max_bytes_elements: DEFAULT_MAX_BYTES_ELEMENTS,
        }
    }
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    #[serde(deserialize_with = "bounded_shape")]
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, deserialize_with = "scalar_parameters")]
    parameters: Option<Parameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default, deserialize_with = "scalar_parameters")]
    parameters: Option<Parameters>,
}

/// A decoded request plus how each output should travel back.
pub struct DecodedRequest {
    pub request: InferRequest,
    pub binary: BinaryOutputs,
    /// Memory the decoded input tensors hold (what the request keeps once its body is gone).
    pub tensor_bytes: usize,
}

/// Which outputs go back as raw bytes after the JSON: Triton's `binary_data_output` sets the default,
/// a requested output's `binary_data` overrides it.
#[derive(Default)]
pub struct BinaryOutputs {
    default: bool,
    overrides: HashMap<String, bool>,
}

impl BinaryOutputs {
    /// Every output in binary (a raw binary request's answer).
    pub(super) fn all() -> Self {
        BinaryOutputs {
            default: true,
            overrides: HashMap::new(),
        }
    }

    fn is_binary(&self, name: &str) -> bool {
        self.overrides.get(name).copied().unwrap_or(self.default)
    }
}

fn bool_param(params: Option<&Parameters>, key: &str) -> Result<Option<bool>> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::invalid(format!(
            "parameter '{key}' must be a boolean, got {other}"
        ))),
    }
}

/// Triton's schedule-policy `timeout` parameter, in microseconds; 0 means none.
fn timeout_param(params: Option<&Parameters>) -> Result<Option<std::time::Duration>> {
    match params.and_then(|p| p.get("timeout")) {
        None => Ok(None),
        Some(v) => {
            let us = v.as_u64().ok_or_else(|| {
                Error::invalid(format!(
                    "parameter 'timeout' must be a non-negative integer (µs), got {v}"
                ))
            })?;
            Ok((us > 0).then(|| std::time::Duration::from_micros(us)))
        }
    }
}

fn reject_shared_memory(params: Option<&Parameters>, what: &str) -> Result<()> {
    if params.is_some_and(|p| p.contains_key("shared_memory_region")) {
        return Err(Error::Unsupported(format!(
            "{what}: shared memory is not supported by Keel"
        )));
    }
    Ok(())
}

/// Decodes a request body without a model's signature (each input bounded by the bytes that carry it).
/// `json_len` is the `Inference-Header-Content-Length` value when present: the first `json_len` bytes are
/// JSON, the rest are the binary inputs in input order.
pub fn decode_request(body: &[u8], json_len: Option<usize>) -> Result<DecodedRequest> {
    decode_request_with(body, json_len, DecodeLimits::default(), None)
}

/// Decodes a request body, checking every input against `limits` before its data is decoded, and
/// growing `permit` by the decoded tensors' size before they are built (429 when the budget is spent).
/// `json_len` 0 makes the body a raw binary request (see [`super::raw::decode_raw_request`]).
pub fn decode_request_with(
    body: &[u8],
    json_len: Option<usize>,
    limits: DecodeLimits,
    permit: Option<&mut Permit>,
) -> Result<DecodedRequest> {
    if json_len == Some(0) {
        return super::raw::decode_raw_request(body, limits, permit);
    }
    let (json, binary) = match json_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(Error::invalid(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )));
        }
    };
    let hint = if json_len.is_none() {
        " (binary tensor data needs the Inference-Header-Content-Length header)"
    } else {
        ""
    };
    let json = std::str::from_utf8(json)
        .map_err(|e| Error::invalid(format!("request JSON is not UTF-8: {e}{hint}")))?;

    // The data values taken out first (see `data_spans`), so that serde_json does not scan them; a
    // request it finds malformed that way is read again whole, for the message (and position) the request
    // itself earns.
    let spans = data_spans::find(json);
    let from_spans = spans.as_ref().map(|s| {
        let data = DataText::Spans {
            json,
            spans: &s.spans,
        };
        read_head(&s.json, data, limits, binary.len())
    });
    let (head, mut checks) = match from_spans {
        Some(Ok(read)) => read,
        Some(Err(Head::Refused(refusal))) => return Err(refusal),
        Some(Err(Head::Malformed(_))) | None => {
            match read_head(json, DataText::Raw, limits, binary.len()) {
                Ok(read) => read,
                Err(Head::Refused(refusal)) => return Err(refusal),
                Err(Head::Malformed(e)) => {
                    // Bytes after the JSON: most likely binary data sent without the header.
                    let hint = if e.to_string().starts_with("trailing characters") {
                        hint
                    } else {
                        ""
                    };
                    return Err(Error::invalid(format!(
                        "malformed inference request: {e}{hint}"
                    )));
                }
            }
        }
    };
    if checks.binary_used != binary.len() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the inputs that no input claims",
            binary.len() - checks.binary_used
        )));
    }
    reject_shared_memory(head.parameters.as_ref(), "request")?;
    let mut binary_outputs = BinaryOutputs {
        default: bool_param(head.parameters.as_ref(), "binary_data_output")?.unwrap_or(false),
        overrides: HashMap::new(),
    };
    let outputs = match head.outputs {
        false => None,
        true => {
            let mut names = Vec::with_capacity(checks.outputs.len());
            for out in std::mem::take(&mut checks.outputs) {
                let params = out.parameters.as_ref();
                reject_shared_memory(params, &format!("output '{}'", out.name))?;
                if params.is_some_and(|p| p.contains_key("classification")) {
                    return Err(Error::Unsupported(format!(
                        "output '{}': the classification extension is not supported by Keel",
                        out.name
                    )));
                }
                if let Some(b) = bool_param(params, "binary_data")? {
                    binary_outputs.overrides.insert(out.name.clone(), b);
                }
                names.push(out.name);
            }
            Some(names)
        }
    };
    let timeout = timeout_param(head.parameters.as_ref())?;

    // Everything is checked: only now is memory taken for the tensors, and only then are they built.
    if let Some(permit) = permit {
        permit.grow(checks.tensor_bytes)?;
    }
    let mut inputs = Vec::with_capacity(checks.inputs.len());
    for input in checks.inputs {
        let context = |e: Error| Error::invalid(format!("input '{}': {e}", input.name));
        let data = match input.source {
            Source::Binary(range) => {
                TensorData::from_le_bytes(input.datatype, &binary[range], input.count)
                    .map_err(context)?
            }
            Source::Json(text) => {
                json_data::decode(text, input.datatype, input.count).map_err(context)?
            }
        };
        inputs.push(Tensor {
            name: input.name,
            shape: input.shape,
            data,
        });
    }
    Ok(DecodedRequest {
        request: InferRequest {
            id: head.id,
            inputs,
            outputs,
            timeout,
        },
        binary: binary_outputs,
        tensor_bytes: checks.tensor_bytes,
    })
}

/// Why the request's JSON was not read.
enum Head {
    /// A check refused it: the answer.
    Refused(Error),
    /// serde_json could not parse it.
    Malformed(serde_json::Error),
}

/// Parses the request JSON `text` (everything but the tensor data), checking each input as it is read.
fn read_head<'a, 's>(
    text: &'a str,
    data: DataText<'a>,
    limits: DecodeLimits<'s>,
    binary_len: usize,
) -> std::result::Result<(RequestHead, Checks<'a, 's>), Head> {
    let mut checks = Checks {
        limits,
        headers: limits.signature.map(InputHeaders::new),
        data,
        binary_len,
        binary_used: 0,
        bytes_elements: 0,
        tensor_bytes: 0,
        inputs: Vec::new(),
        outputs: Vec::new(),
        refusal: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = RequestSeed {
        checks: &mut checks,
    }
    .deserialize(&mut de)
    .and_then(|head| de.end().map(|()| head));
    match (parsed, checks.refusal.take()) {
        (_, Some(refusal)) => Err(Head::Refused(refusal)),
        (Err(e), None) => Err(Head::Malformed(e)),
        (Ok(head), None) => Ok((head, checks)),
    }
}

/// Where the text of each input's `data` is.
#[derive(Clone, Copy)]
enum DataText<'a> {
    /// In the JSON serde_json parses.
    Raw,
    /// Taken out of it: serde_json reads each value's index in `spans`, ranges of `json`.
    Spans {
        json: &'a str,
        spans: &'a [Range<usize>],
    },
}

impl<'a> DataText<'a> {
    fn text(self, raw: &'a RawValue) -> Option<&'a str> {
        match self {
            DataText::Raw => Some(raw.get()),
            DataText::Spans { json, spans } => {
                let span = spans.get(raw.get().parse::<usize>().ok()?)?;
                json.get(span.clone())
            }
        }
    }
}

/// An input whose header passed every check; its data is decoded last.
struct PendingInput<'a> {
    name: String,
    datatype: DataType,
    shape: Vec<usize>,
    count: usize,
    source: Source<'a>,
}

enum Source<'a> {
    /// A range of the binary part of the body.
    Binary(Range<usize>),
    /// The text of JSON `data`, not parsed yet.
    Json(&'a str),
}

/// The checks made while the JSON is parsed, and what they let through.
struct Checks<'a, 's> {
    limits: DecodeLimits<'s>,
    headers: Option<InputHeaders<'s>>,
    data: DataText<'a>,
    binary_len: usize,
    binary_used: usize,
    bytes_elements: usize,
    tensor_bytes: usize,
    inputs: Vec<PendingInput<'a>>,
    outputs: Vec<OutputJson>,
    /// Why the request is refused, when a check (not the JSON syntax) refused it.
    refusal: Option<Error>,
}

impl<'a> Checks<'a, '_> {
    /// Checks an input; `data` is the text of its `data`.
    fn input(&mut self, input: InputJson<'a>, data: Option<&'a str>) -> Result<()> {
        let name = input.name;
        let context = |e: Error| Error::invalid(format!("input '{name}': {e}"));
        let datatype = DataType::parse(&input.datatype).map_err(context)?;
        let shape = shape_from_wire(&name, &input.shape)?;
        reject_shared_memory(input.parameters.as_ref(), &format!("input '{name}'"))?;
        let declared = match self.headers.as_mut() {
            Some(headers) => Some(headers.check(&name, datatype, &shape)?.1),
            None => {
                if self.inputs.len() == MAX_TENSORS {
                    return Err(Error::invalid(format!("more than {MAX_TENSORS} inputs")));
                }
                None
            }
        };
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "input '{name}': binary_data_size must be a non-negative integer"
                        ))
                    })?,
            ),
        };
        let (source, count, payload) = match (binary_size, data) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "input '{name}' has both JSON data and binary_data_size"
                )));
            }
            (None, None) => {
                return Err(Error::invalid(format!("input '{name}' has no data")));
            }
            (Some(size), None) => {
                let left = self.binary_len - self.binary_used;
                if size > left {
                    return Err(Error::invalid(format!(
                        "input '{name}': binary_data_size {size} exceeds the {left} binary bytes left in the body"
                    )));
                }
                let count = match declared {
                    Some(count) => count,
                    None => element_count(&shape, size).map_err(context)?,
                };
                check_wire_len(datatype, count, size).map_err(context)?;
                let start = self.binary_used;
                self.binary_used += size;
                (Source::Binary(start..start + size), count, size)
            }
            (None, Some(text)) => {
                // Each element takes at least one character and a separator.
                let most = text.len() / 2 + 1;
                let count = match declared {
                    Some(count) if count > most => {
                        return Err(context(Error::invalid(format!(
                            "shape {shape:?} holds more elements than the request carries"
                        ))));
                    }
                    Some(count) => count,
                    None => element_count(&shape, most).map_err(context)?,
                };
                (Source::Json(text), count, text.len())
            }
        };
        if datatype == DataType::Bytes {
            count_bytes_elements(
                &mut self.bytes_elements,
                count,
                self.limits.max_bytes_elements,
            )?;
        }
        self.tensor_bytes = self
            .tensor_bytes
            .saturating_add(decoded_bytes(datatype, count, payload));
        self.inputs.push(PendingInput {
            name,
            datatype,
            shape,
            count,
            source,
        });
        Ok(())
    }

    fn output(&mut self, output: OutputJson) -> Result<()> {
        match self.limits.signature {
            Some(signature) => {
                if signature.output(&output.name).is_none() {
                    return Err(Error::invalid(format!(
                        "unknown output '{}' requested",
                        output.name
                    )));
                }
                if self.outputs.iter().any(|o| o.name == output.name) {
                    return Err(Error::invalid(format!(
                        "output '{}' is requested more than once",
                        output.name
                    )));
                }
            }
            None if self.outputs.len() == MAX_TENSORS => {
                return Err(Error::invalid(format!(
                    "more than {MAX_TENSORS} outputs requested"
                )));
            }
            None => {}
        }
        self.outputs.push(output);
        Ok(())
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
