//! A `ModelInferRequest` checked on its wire bytes, before prost decodes it.
//!
//! prost builds whatever a message declares: an empty entry of a repeated message or bytes field is two
//! bytes on the wire and a whole struct or `Vec` in memory (24 B for a `bytes_contents` entry, over 300 B for
//! an `inputs` entry), so 64 MiB of such entries would cost gigabytes before any check could run. This
//! module walks the wire form instead, allocating nothing that grows with the message: it counts every
//! repeated field, reads each input's name, datatype and shape, and checks them against the model's
//! signature, the shape's element count, the per-request BYTES cap and the protocol's small bounds
//! (dimensions, parameters, tensors), exactly as the converter would after decoding. What passes decodes to
//! about its own size; the module also says how much memory that is, for the in-flight budget.

use super::{check_typed_counts, pb};
use crate::error::{Error, Result};
use crate::http::codec::{MAX_PARAMETERS, MAX_TENSORS};
use crate::signature::{InputHeaders, Signature};
use crate::tensor::{
    DataType, MAX_DIMS, check_wire_len, count_bytes_elements, decoded_bytes, element_count,
    shape_from_wire_into,
};

/// What a request is checked against.
#[derive(Clone, Copy)]
pub struct WireLimits<'s> {
    /// The model version's signature; without one, only the request's own consistency and the
    /// protocol's bounds apply.
    pub signature: Option<&'s Signature>,
    /// Elements of all BYTES inputs of one request together (`--max-bytes-elements`).
    pub max_bytes_elements: usize,
}

/// Memory a checked request takes once decoded and converted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// The decoded `ModelInferRequest`.
    pub message_bytes: usize,
    /// The input tensors converted from it.
    pub tensor_bytes: usize,
}

/// The model a request names: `model_name` and `model_version`, read from the top level only.
pub fn model_of(bytes: &[u8]) -> Result<(&str, &str)> {
    let mut model = "";
    let mut version = "";
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf)? {
        match number {
            1 => model = string(value, "model_name")?,
            2 => version = string(value, "model_version")?,
            _ => {}
        }
    }
    Ok((model, version))
}

/// Checks a request's wire bytes; returns what it will take in memory.
pub fn check(bytes: &[u8], limits: WireLimits) -> Result<Estimate> {
    // Pass 1, the top level: counts of every repeated field, and the raw contents' sizes.
    let mut inputs = 0usize;
    let mut outputs = 0usize;
    let mut parameters = 0usize;
    let mut raw_entries = 0usize;
    let mut raw_total = 0usize;
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf)? {
        match number {
            1 => _ = string(value, "model_name")?,
            2 => _ = string(value, "model_version")?,
            3 => _ = string(value, "id")?,
            4 => {
                message(value, "parameters")?;
                parameters += 1;
            }
            5 => {
                message(value, "inputs")?;
                inputs += 1;
            }
            6 => {
                message(value, "outputs")?;
                outputs += 1;
            }
            7 => {
                let entry = bytes_field(value, "raw_input_contents")?;
                raw_entries += 1;
                raw_total = raw_total.saturating_add(entry.len());
            }
            _ => {}
        }
    }
    if parameters > MAX_PARAMETERS {
        return Err(Error::invalid(format!(
            "the request has {parameters} parameters; at most {MAX_PARAMETERS}"
        )));
    }
    if inputs > MAX_TENSORS || outputs > MAX_TENSORS {
        return Err(Error::invalid(format!(
            "the request has {inputs} inputs and {outputs} requested outputs; at most {MAX_TENSORS} of each"
        )));
    }
    let raw = RawSizes::Wire(bytes);
    let mut check = Check::new(limits, inputs, raw_entries, raw_total, raw)?;
    check.estimate.message_bytes = bytes.len();
    // Pass 2: each input and output, checked as soon as it is read.
    let mut buf = bytes;
    let mut dims = [0i64; MAX_DIMS];
    while let Some((number, value)) = next_field(&mut buf)? {
        match number {
            5 => check.input(scan_input(message(value, "inputs")?, &mut dims)?)?,
            6 => {
                let (name, parameters) = scan_output(message(value, "outputs")?)?;
                check.output(name, parameters)?;
            }
            _ => {}
        }
    }
    Ok(check.estimate)
}

/// The same checks on a message prost has already decoded (a path without the wire check).
pub fn check_decoded(req: &pb::ModelInferRequest, limits: WireLimits) -> Result<Estimate> {
    if req.parameters.len() > MAX_PARAMETERS {
        return Err(Error::invalid(format!(
            "the request has {} parameters; at most {MAX_PARAMETERS}",
            req.parameters.len()
        )));
    }
    // The same bounds as the wire check, so both paths refuse the same requests.
    let (inputs, outputs) = (req.inputs.len(), req.outputs.len());
    if inputs > MAX_TENSORS || outputs > MAX_TENSORS {
        return Err(Error::invalid(format!(
            "the request has {inputs} inputs and {outputs} requested outputs; at most {MAX_TENSORS} of each"
        )));
    }
    let raw_total = req.raw_input_contents.iter().map(Vec::len).sum();
    let raw = RawSizes::Decoded(req.raw_input_contents.iter());
    let mut check = Check::new(
        limits,
        req.inputs.len(),
        req.raw_input_contents.len(),
        raw_total,
        raw,
    )?;
    for input in &req.inputs {
        let mut facts = InputFacts {
            name: &input.name,
            datatype: &input.datatype,
            shape: &input.shape,
            parameters: input.parameters.len(),
            has_contents: input.contents.is_some(),
            counts: [0; 8],
            bytes_payload: 0,
        };
        if let Some(c) = &input.contents {
            facts.counts = super::content_counts(c);
            facts.bytes_payload = c.bytes_contents.iter().map(Vec::len).sum();
        }
        check.input(facts)?;
    }
    for output in &req.outputs {
        check.output(&output.name, output.parameters.len())?;
    }
    Ok(check.estimate)
}

/// One input as its header and element counts.
struct InputFacts<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: &'a [i64],
    parameters: usize,
    has_contents: bool,
    /// Elements of each typed contents field, in field order (bool ... bytes).
    counts: [usize; 8],
    /// Bytes in all `bytes_contents` entries.
    bytes_payload: usize,
}

/// Bytes per element of each typed contents field once prost has decoded it.
const DECODED_SIZE: [usize; 8] = [1, 4, 8, 4, 8, 4, 8, std::mem::size_of::<Vec<u8>>()];

/// Memory prost gives one decoded input tensor, parameter or output besides its contents.
const ENTRY_OVERHEAD: usize = 512;

/// The sizes of a request's raw contents, one per input in order (none when its inputs carry typed
/// contents), read as the inputs are checked: no list that grows with the request.
enum RawSizes<'a> {
    /// The message's wire bytes, from where the previous entry was found.
    Wire(&'a [u8]),
    Decoded(std::slice::Iter<'a, Vec<u8>>),
}

impl RawSizes<'_> {
    /// The next entry's size; `None` after the last. The wire bytes were walked whole before (pass
    /// 1), so they read without error here.
    fn next(&mut self) -> Option<usize> {
        match self {
            RawSizes::Wire(buf) => {
                while let Ok(Some((number, value))) = next_field(buf) {
                    if let (7, Value::Len(entry)) = (number, value) {
                        return Some(entry.len());
                    }
                }
                None
            }
            RawSizes::Decoded(entries) => entries.next().map(Vec::len),
        }
    }
}

struct Check<'a, 's> {
    limits: WireLimits<'s>,
    headers: Option<InputHeaders<'s>>,
    raw: RawSizes<'a>,
    /// Whether the inputs carry raw contents (one entry each).
    has_raw: bool,
    outputs: Vec<&'a str>,
    bytes_elements: usize,
    estimate: Estimate,
}

impl<'a, 's> Check<'a, 's> {
    fn new(
        limits: WireLimits<'s>,
        inputs: usize,
        raw_entries: usize,
        raw_total: usize,
        raw: RawSizes<'a>,
    ) -> Result<Self> {
        if raw_entries > 0 && raw_entries != inputs {
            return Err(Error::invalid(format!(
                "raw_input_contents has {raw_entries} entries for {inputs} inputs: with raw contents every input needs one"
            )));
        }
        Ok(Check {
            limits,
            headers: limits.signature.map(InputHeaders::new),
            raw,
            has_raw: raw_entries > 0,
            outputs: Vec::new(),
            bytes_elements: 0,
            estimate: Estimate {
                message_bytes: raw_total + raw_entries * ENTRY_OVERHEAD,
                tensor_bytes: 0,
            },
        })
    }

    fn input(&mut self, facts: InputFacts<'_>) -> Result<()> {
        let name = facts.name;
        let context = |e: Error| Error::invalid(format!("input '{name}': {e}"));
        let datatype = DataType::parse(facts.datatype).map_err(context)?;
        if facts.shape.len() > MAX_DIMS {
            return Err(Error::invalid(format!(
                "shape has more than {MAX_DIMS} dimensions"
            )));
        }
        let mut sizes = [0usize; MAX_DIMS];
        let shape = shape_from_wire_into(name, facts.shape, &mut sizes)?;
        if facts.parameters > MAX_PARAMETERS {
            return Err(Error::invalid(format!(
                "input '{name}' has {} parameters; at most {MAX_PARAMETERS}",
                facts.parameters
            )));
        }
        let declared = match self.headers.as_mut() {
            Some(headers) => Some(headers.check(name, datatype, shape)?.1),
            None => None,
        };
        // Entries and inputs are as many (`Check::new`): this input's entry.
        let raw = if self.has_raw { self.raw.next() } else { None };
        let (count, payload) = match (raw, facts.has_contents) {
            (Some(_), true) => {
                return Err(Error::invalid(format!(
                    "input '{name}' sets both contents and raw_input_contents"
                )));
            }
            (Some(len), false) => {
                let count = match declared {
                    Some(count) => count,
                    None => element_count(shape, len).map_err(context)?,
                };
                check_wire_len(datatype, count, len).map_err(context)?;
                (count, len)
            }
            (None, true) => {
                let count = check_typed_counts(datatype, shape, declared, &facts.counts)
                    .map_err(context)?;
                (count, facts.bytes_payload)
            }
            (None, false) => {
                return Err(Error::invalid(format!("input '{name}' has no data")));
            }
        };
        if datatype == DataType::Bytes {
            count_bytes_elements(
                &mut self.bytes_elements,
                count,
                self.limits.max_bytes_elements,
            )?;
        }
        let contents: usize = facts
            .counts
            .iter()
            .zip(DECODED_SIZE)
            .map(|(n, size)| n.saturating_mul(size))
            .fold(facts.bytes_payload, usize::saturating_add);
        let e = &mut self.estimate;
        e.message_bytes = e
            .message_bytes
            .saturating_add(contents)
            .saturating_add(ENTRY_OVERHEAD * (1 + facts.parameters));
        e.tensor_bytes = e
            .tensor_bytes
            .saturating_add(decoded_bytes(datatype, count, payload));
        Ok(())
    }

    fn output(&mut self, name: &'a str, parameters: usize) -> Result<()> {
        if let Some(signature) = self.limits.signature {
            if signature.output(name).is_none() {
                return Err(Error::invalid(format!("unknown output '{name}' requested")));
            }
            if self.outputs.contains(&name) {
                return Err(Error::invalid(format!(
                    "output '{name}' is requested more than once"
                )));
            }
            self.outputs.push(name);
        }
        if parameters > MAX_PARAMETERS {
            return Err(Error::invalid(format!(
                "output '{name}' has {parameters} parameters; at most {MAX_PARAMETERS}"
            )));
        }
        self.estimate.message_bytes = self
            .estimate
            .message_bytes
            .saturating_add(ENTRY_OVERHEAD * (1 + parameters));
        Ok(())
    }
}

/// An `InferInputTensor`'s header and counts; its shape is read into `dims`.
fn scan_input<'a>(bytes: &'a [u8], dims: &'a mut [i64; MAX_DIMS]) -> Result<InputFacts<'a>> {
    let mut facts = InputFacts {
        name: "",
        datatype: "",
        shape: &[],
        parameters: 0,
        has_contents: false,
        counts: [0; 8],
        bytes_payload: 0,
    };
    let mut rank = 0;
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf)? {
        match number {
            1 => facts.name = string(value, "name")?,
            2 => facts.datatype = string(value, "datatype")?,
            3 => match value {
                Value::Varint(d) => push_dim(dims, &mut rank, d as i64)?,
                Value::Len(packed) => {
                    let mut packed = packed;
                    while !packed.is_empty() {
                        push_dim(dims, &mut rank, read_varint(&mut packed)? as i64)?;
                    }
                }
                _ => return Err(malformed("shape has the wrong wire type")),
            },
            4 => {
                message(value, "parameters")?;
                facts.parameters += 1;
            }
            5 => {
                facts.has_contents = true;
                scan_contents(message(value, "contents")?, &mut facts)?;
            }
            _ => {}
        }
    }
    facts.shape = &dims[..rank];
    Ok(facts)
}

fn push_dim(dims: &mut [i64; MAX_DIMS], rank: &mut usize, d: i64) -> Result<()> {
    let Some(slot) = dims.get_mut(*rank) else {
        return Err(Error::invalid(format!(
            "shape has more than {MAX_DIMS} dimensions"
        )));
    };
    *slot = d;
    *rank += 1;
    Ok(())
}

/// Counts the elements of each field of an `InferTensorContents` (repeated occurrences merge, as prost
/// merges them).
fn scan_contents(bytes: &[u8], facts: &mut InputFacts) -> Result<()> {
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf)? {
        let Some(slot) = (number as usize).checked_sub(1).filter(|i| *i < 8) else {
            continue;
        };
        let n = match (number, value) {
            // bool, int32, int64, uint32, uint64: varints, packed or not.
            (1..=5, Value::Varint(_)) => 1,
            (1..=5, Value::Len(packed)) => {
                if packed.last().is_some_and(|b| b & 0x80 != 0) {
                    return Err(malformed("a packed varint is cut short"));
                }
                packed.iter().filter(|b| **b < 0x80).count()
            }
            (6, Value::Fixed32) => 1,
            (6, Value::Len(packed)) if packed.len().is_multiple_of(4) => packed.len() / 4,
            (7, Value::Fixed64) => 1,
            (7, Value::Len(packed)) if packed.len().is_multiple_of(8) => packed.len() / 8,
            (8, Value::Len(entry)) => {
                facts.bytes_payload += entry.len();
                1
            }
            _ => return Err(malformed("a contents field has the wrong wire type")),
        };
        facts.counts[slot] += n;
    }
    Ok(())
}

/// An `InferRequestedOutputTensor`'s name and parameter count.
fn scan_output(bytes: &[u8]) -> Result<(&str, usize)> {
    let mut name = "";
    let mut parameters = 0;
    let mut buf = bytes;
    while let Some((number, value)) = next_field(&mut buf)? {
        match number {
            1 => name = string(value, "name")?,
            2 => {
                message(value, "parameters")?;
                parameters += 1;
            }
            _ => {}
        }
    }
    Ok((name, parameters))
}

/// A field's payload, by wire type.
#[derive(Clone, Copy)]
pub(super) enum Value<'a> {
    Varint(u64),
    Fixed64,
    Len(&'a [u8]),
    Fixed32,
}

fn malformed(why: &str) -> Error {
    Error::invalid(format!("malformed ModelInferRequest: {why}"))
}

/// A varint; one byte (field keys, short lengths, small shapes: most of a request's) without a loop
/// or a call.
#[inline]
pub(super) fn read_varint(buf: &mut &[u8]) -> Result<u64> {
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
    read_long_varint(buf)
}

fn read_long_varint(buf: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(malformed("a varint is cut short"));
        };
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(malformed("a varint is longer than 10 bytes"))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if buf.len() < n {
        return Err(malformed("a field runs past the end of the message"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The next field of a message: its number and payload.
#[inline]
pub(super) fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Option<(u32, Value<'a>)>> {
    if buf.is_empty() {
        return Ok(None);
    }
    let key = read_varint(buf)?;
    let number = key >> 3;
    if number == 0 || number > u64::from(u32::MAX >> 3) {
        return Err(malformed("invalid field number"));
    }
    let value = match key & 7 {
        0 => Value::Varint(read_varint(buf)?),
        1 => {
            take(buf, 8)?;
            Value::Fixed64
        }
        2 => {
            let len = usize::try_from(read_varint(buf)?).unwrap_or(usize::MAX);
            Value::Len(take(buf, len)?)
        }
        5 => {
            take(buf, 4)?;
            Value::Fixed32
        }
        _ => {
            return Err(malformed(
                "unsupported wire type (groups are not used by this protocol)",
            ));
        }
    };
    Ok(Some((number as u32, value)))
}

fn message<'a>(value: Value<'a>, field: &str) -> Result<&'a [u8]> {
    match value {
        Value::Len(bytes) => Ok(bytes),
        _ => Err(malformed(&format!("{field} has the wrong wire type"))),
    }
}

fn bytes_field<'a>(value: Value<'a>, field: &str) -> Result<&'a [u8]> {
    message(value, field)
}

fn string<'a>(value: Value<'a>, field: &str) -> Result<&'a str> {
    std::str::from_utf8(message(value, field)?)
        .map_err(|_| malformed(&format!("{field} is not UTF-8")))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
