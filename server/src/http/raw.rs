//! Triton's raw binary requests: `Inference-Header-Content-Length: 0`, and a body that is only the bytes of
//! the model's one input. Everything is checked from the body's length before anything is allocated.

use super::codec::{BinaryOutputs, DecodeLimits, DecodedRequest};
use crate::budget::Permit;
use crate::error::{Error, Result};
use crate::infer::InferRequest;
use crate::signature::InputHeaders;
use crate::tensor::{
    DataType, Tensor, TensorData, check_wire_len, count_bytes_elements, decoded_bytes,
};

/// Triton's raw binary request: `Inference-Header-Content-Length: 0` and a body that is nothing but the
/// data of the model's one input, whose datatype and shape come from the model's configuration. As
/// Triton's `InferenceRequest::Normalize` does it:
///
/// - the model must have exactly one input;
/// - a batching model (`max_batch_size` > 0) gets a batch of one;
/// - a fixed-size datatype may have at most one variable dimension besides the batch, sized from the
///   body's length, which must be a whole number of rows (without one, exactly shape x element size);
/// - a BYTES input must hold exactly one element (shape [1]), and the whole body is that element:
///   Triton prepends its 4-byte length itself, so the body carries none;
/// - every output comes back, in binary form.
///
/// All of it is checked from the body's length before anything is allocated; the tensor's size is then
/// taken from `permit`, as for any request.
pub fn decode_raw_request(
    body: &[u8],
    limits: DecodeLimits,
    permit: Option<&mut Permit>,
) -> Result<DecodedRequest> {
    const RAW: &str = "raw binary request (Inference-Header-Content-Length: 0)";
    let signature = limits.signature.ok_or_else(|| {
        Error::invalid(format!(
            "a {RAW} needs the model's configuration to say what the body holds"
        ))
    })?;
    let spec = match signature.inputs.as_slice() {
        [spec] => spec,
        inputs => {
            let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::invalid(format!(
                "a {RAW} needs a model with exactly one input; this model has {} ({})",
                inputs.len(),
                names.join(", ")
            )));
        }
    };
    let name = &spec.name;
    let datatype = spec.datatype;
    let batched = signature.max_batch_size > 0;
    let dims = &spec.shape[usize::from(batched).min(spec.shape.len())..];
    let mut shape: Vec<usize> = Vec::with_capacity(spec.shape.len());
    if batched {
        shape.push(1);
    }
    // Positions of the variable dimensions in `shape`.
    let mut variable = Vec::new();
    let mut fixed = 1usize;
    for &d in dims {
        match usize::try_from(d) {
            Ok(d) => {
                fixed = fixed.saturating_mul(d);
                shape.push(d);
            }
            Err(_) => {
                variable.push(shape.len());
                shape.push(0);
            }
        }
    }
    let count = match (datatype.size(), variable.as_slice()) {
        (None, []) if fixed == 1 => 1,
        (None, _) => {
            return Err(Error::invalid(format!(
                "a {RAW} carries one BYTES element, but input '{name}' has shape {dims:?} (not [1])"
            )));
        }
        (Some(_), [_, _, ..]) => {
            return Err(Error::invalid(format!(
                "a {RAW} cannot size input '{name}': its shape {dims:?} has more than one variable dimension"
            )));
        }
        (Some(_), []) => {
            check_wire_len(datatype, fixed, body.len()).map_err(|e| {
                Error::invalid(format!("{RAW}: input '{name}' shape {shape:?}: {e}"))
            })?;
            fixed
        }
        (Some(size), &[axis]) => {
            let row = fixed.saturating_mul(size);
            let rows = match (row, body.len()) {
                (0, 0) => 0,
                (0, _) => {
                    return Err(Error::invalid(format!(
                        "{RAW}: input '{name}' shape {dims:?} holds no elements, but the body has {} bytes",
                        body.len()
                    )));
                }
                (row, len) if len % row != 0 => {
                    return Err(Error::invalid(format!(
                        "{RAW}: input '{name}' takes {datatype} rows of {row} bytes (shape {dims:?}); {len} bytes is not a whole number of them"
                    )));
                }
                (row, len) => len / row,
            };
            shape[axis] = rows;
            rows.saturating_mul(fixed)
        }
    };
    // The shape against the signature as any request's is (batch size, max_batch_size).
    InputHeaders::new(signature).check(name, datatype, &shape)?;
    if datatype == DataType::Bytes {
        count_bytes_elements(&mut 0, count, limits.max_bytes_elements)?;
    }
    let tensor_bytes = decoded_bytes(datatype, count, body.len());
    if let Some(permit) = permit {
        permit.grow(tensor_bytes)?;
    }
    let data = match datatype {
        DataType::Bytes => TensorData::Bytes(vec![body.to_vec()]),
        _ => TensorData::from_le_bytes(datatype, body, count)
            .map_err(|e| Error::invalid(format!("input '{name}': {e}")))?,
    };
    Ok(DecodedRequest {
        request: InferRequest {
            id: None,
            inputs: vec![Tensor {
                name: name.clone(),
                shape,
                data,
            }],
            outputs: None,
            timeout: None,
        },
        binary: BinaryOutputs::all(),
        tensor_bytes,
    })
}
