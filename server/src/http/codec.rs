//! KServe V2 REST inference bodies: JSON, and Triton's binary tensor extension in both directions.
//!
//! A request is checked before any tensor data is decoded: the JSON is parsed with every input's `data`
//! left as raw text, each input's header (name, datatype, shape) is checked against the model's signature
//! as soon as it is read, element counts against the declared shape and the bytes that carry them
//! (`binary_data_size` against shape x element size), BYTES elements against the per-request cap, and the
//! decoded size against the in-flight budget. `parameters` hold scalars only, refused at the first `[` or
//! `{`, so a request cannot make the server build more than its own bytes.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{data_spans, json_data};
use crate::budget::Permit;
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::signature::{InputHeaders, Signature};
use crate::tensor::{
    DataType, MAX_DIMS, Tensor, TensorData, check_wire_len, count_bytes_elements, decoded_bytes,
    element_count, shape_from_wire,
};

/// The header that splits a binary-extension body into its JSON part and its tensor bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

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
    let Some(value) = headers.get(HEADER_LENGTH) else {
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
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
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

/// The request's top level, read field by field so that each input is checked as soon as it is read.
struct RequestSeed<'c, 'a, 's> {
    checks: &'c mut Checks<'a, 's>,
}

/// What the top level holds besides the inputs and outputs (which go to [`Checks`]).
struct RequestHead {
    id: Option<String>,
    parameters: Option<Parameters>,
    /// Whether `outputs` was given (not null).
    outputs: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

impl<'de, 's> DeserializeSeed<'de> for RequestSeed<'_, 'de, 's> {
    type Value = RequestHead;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RequestHead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 's> Visitor<'de> for RequestSeed<'_, 'de, 's> {
    type Value = RequestHead;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestHead, A::Error> {
        let mut id: Option<Option<String>> = None;
        let mut parameters: Option<Option<Parameters>> = None;
        let mut inputs = false;
        let mut outputs: Option<bool> = None;
        let duplicate = |name| de::Error::custom(format_args!("duplicate field `{name}`"));
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Id if id.is_some() => return Err(duplicate("id")),
                Field::Id => id = Some(map.next_value()?),
                Field::Parameters if parameters.is_some() => return Err(duplicate("parameters")),
                Field::Parameters => {
                    parameters = Some(map.next_value_seed(OptionalParameters)?);
                }
                Field::Inputs if inputs => return Err(duplicate("inputs")),
                Field::Inputs => {
                    map.next_value_seed(InputsSeed {
                        checks: &mut *self.checks,
                    })?;
                    inputs = true;
                }
                Field::Outputs if outputs.is_some() => return Err(duplicate("outputs")),
                Field::Outputs => {
                    outputs = Some(map.next_value_seed(OutputsSeed {
                        checks: &mut *self.checks,
                    })?);
                }
                Field::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        if !inputs {
            return Err(de::Error::missing_field("inputs"));
        }
        Ok(RequestHead {
            id: id.flatten(),
            parameters: parameters.flatten(),
            outputs: outputs.unwrap_or(false),
        })
    }
}

/// Stops the parse with `refusal` as the request's answer.
fn refuse<E: de::Error>(checks: &mut Checks, refusal: Error) -> E {
    let shown = refusal.to_string();
    checks.refusal = Some(refusal);
    E::custom(shown)
}

struct InputsSeed<'c, 'a, 's> {
    checks: &'c mut Checks<'a, 's>,
}

impl<'de, 's> DeserializeSeed<'de> for InputsSeed<'_, 'de, 's> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 's> Visitor<'de> for InputsSeed<'_, 'de, 's> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of input tensors")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(input) = seq.next_element::<InputJson<'de>>()? {
            let data = match input.data {
                None => None,
                // Not an index where one was put: the request is read again whole (this cannot happen
                // unless the walk and serde_json disagree on the document).
                Some(raw) => Some(
                    self.checks
                        .data
                        .text(raw)
                        .ok_or_else(|| de::Error::custom("data not found"))?,
                ),
            };
            if let Err(e) = self.checks.input(input, data) {
                return Err(refuse(self.checks, e));
            }
        }
        Ok(())
    }
}

struct OutputsSeed<'c, 'a, 's> {
    checks: &'c mut Checks<'a, 's>,
}

impl<'de, 's> DeserializeSeed<'de> for OutputsSeed<'_, 'de, 's> {
    /// False for `null`.
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, 's> Visitor<'de> for OutputsSeed<'_, 'de, 's> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of requested outputs")
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while let Some(output) = seq.next_element::<OutputJson>()? {
            if let Err(e) = self.checks.output(output) {
                return Err(refuse(self.checks, e));
            }
        }
        Ok(true)
    }
}

/// A shape: at most [`MAX_DIMS`] integers, refused at the next one without growing further.
fn bounded_shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    struct Shape;
    impl<'de> Visitor<'de> for Shape {
        type Value = Vec<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a shape: an array of at most {MAX_DIMS} integers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<i64>, A::Error> {
            let mut dims = Vec::new();
            while let Some(d) = seq.next_element::<i64>()? {
                if dims.len() == MAX_DIMS {
                    return Err(de::Error::custom(format_args!(
                        "shape has more than {MAX_DIMS} dimensions"
                    )));
                }
                dims.push(d);
            }
            Ok(dims)
        }
    }
    d.deserialize_seq(Shape)
}

/// `"parameters": {...}` or `null`, with scalar values only.
struct OptionalParameters;

impl<'de> DeserializeSeed<'de> for OptionalParameters {
    type Value = Option<Parameters>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        scalar_parameters(d)
    }
}

/// A `parameters` object: at most [`MAX_PARAMETERS`] entries, each a bool, number or string. An array or
/// object value is refused at its first `[` or `{`, before anything of it is built.
pub fn scalar_parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Parameters>, D::Error> {
    struct Params;
    impl<'de> Visitor<'de> for Params {
        type Value = Option<Parameters>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a parameters object")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut params = Parameters::new();
            while let Some(key) = map.next_key::<String>()? {
                if params.len() == MAX_PARAMETERS && !params.contains_key(&key) {
                    return Err(de::Error::custom(format_args!(
                        "more than {MAX_PARAMETERS} parameters"
                    )));
                }
                let value = map.next_value_seed(Scalar { key: &key })?;
                params.insert(key, value);
            }
            Ok(Some(params))
        }
    }
    d.deserialize_option(Params)
}

/// One parameter value: bool, number or string.
pub struct Scalar<'k> {
    /// The parameter's name, for the error.
    pub key: &'k str,
}

impl Scalar<'_> {
    fn refuse<E: de::Error>(&self, what: &str) -> E {
        E::custom(format_args!(
            "parameter '{}' must be a boolean, number or string, not {what}",
            self.key
        ))
    }
}

impl<'de> DeserializeSeed<'de> for Scalar<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean, number or string")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| self.refuse("a non-finite number"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Err(self.refuse("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.refuse("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.refuse("an object"))
    }
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputOut<'a>>,
}

#[derive(Serialize)]
struct OutputOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    // Omitted entirely when absent: Triton's C++ client fails on `"parameters": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

struct JsonData<'a>(&'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::Bool(v) => s.collect_seq(v),
            TensorData::Uint8(v) => s.collect_seq(v),
            TensorData::Uint16(v) => s.collect_seq(v),
            TensorData::Uint32(v) => s.collect_seq(v),
            TensorData::Uint64(v) => s.collect_seq(v),
            TensorData::Int8(v) => s.collect_seq(v),
            TensorData::Int16(v) => s.collect_seq(v),
            TensorData::Int32(v) => s.collect_seq(v),
            TensorData::Int64(v) => s.collect_seq(v),
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Fp32(v) => s.collect_seq(v),
            TensorData::Fp64(v) => s.collect_seq(v),
            TensorData::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

/// An encoded response body; `json_len` is set when binary outputs follow the JSON.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

pub fn encode_response(
    response: &InferResponse,
    binary: &BinaryOutputs,
) -> Result<EncodedResponse> {
    let mut tail = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|t| {
            if binary.is_binary(&t.name) {
                let before = tail.len();
                t.data.write_le_bytes(&mut tail);
                OutputOut {
                    name: &t.name,
                    datatype: t.datatype().name(),
                    shape: &t.shape,
                    parameters: Some(BinarySize {
                        binary_data_size: tail.len() - before,
                    }),
                    data: None,
                }
            } else {
                OutputOut {
                    name: &t.name,
                    datatype: t.datatype().name(),
                    shape: &t.shape,
                    parameters: None,
                    data: Some(JsonData(&t.data)),
                }
            }
        })
        .collect();
    let json = ResponseJson {
        model_name: &response.model_name,
        model_version: response.model_version.to_string(),
        id: response.id.as_deref(),
        outputs,
    };
    let mut body = serde_json::to_vec(&json)
        .map_err(|e| Error::Internal(format!("encoding the response: {e}")))?;
    if tail.is_empty() && !response.outputs.iter().any(|t| binary.is_binary(&t.name)) {
        return Ok(EncodedResponse {
            body,
            json_len: None,
        });
    }
    let json_len = body.len();
    body.extend_from_slice(&tail);
    Ok(EncodedResponse {
        body,
        json_len: Some(json_len),
    })
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
