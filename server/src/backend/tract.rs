//! Pure-Rust inference with tract. The graph is optimized once at load with a symbolic batch dimension;
//! each request only binds that symbol.

use std::path::Path;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::ops::unimpl::UnimplementedOp;

use super::Backend;
use crate::error::{Error, Result};
use crate::signature::{Signature, TensorSpec};
use crate::stats::Phases;
use crate::tensor::{DataType, Tensor as KeelTensor, TensorData};

/// ONNX domains whose operators tract parses but whose results Keel has not verified against ONNX
/// Runtime: refusing them at load is better than serving wrong answers.
const REFUSED_DOMAINS: &[&str] = &["ai.onnx.ml"];

const ENABLE_ORT: &str = "set backend = \"onnxruntime\" in the model's model.toml and make ONNX Runtime \
                          available (--ort-library PATH, ORT_DYLIB_PATH, or `make serve`'s .venv)";

pub struct TractBackend {
    state: TypedSimpleState,
    outputs: Vec<TensorSpec>,
}

impl TractBackend {
    pub fn load(path: &Path, signature: &Signature) -> Result<Self, String> {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_path(path)
            .map_err(|e| format!("tract cannot parse the model: {e:#}"))?;
        let nodes = proto.graph.iter().flat_map(|g| &g.node);
        if let Some(node) = nodes
            .into_iter()
            .find(|n| REFUSED_DOMAINS.contains(&n.domain.as_str()))
        {
            return Err(format!(
                "tract cannot run operator {}:{} (node '{}'); {ENABLE_ORT}",
                node.domain, node.op_type, node.name
            ));
        }
        let mut model = onnx
            .parse(&proto, path.parent().and_then(|p| p.to_str()))
            .map_err(|e| format!("tract cannot read the model: {e:#}"))?
            .model;
        if let Some(node) = model
            .nodes()
            .iter()
            .find(|n| n.op_as::<UnimplementedOp>().is_some())
        {
            return Err(format!(
                "tract does not implement operator {} (node '{}'); {ENABLE_ORT}",
                node.op.name(),
                node.name
            ));
        }
        // Pin each input to the signature's datatype and shape, with one symbol for every variable dimension
        // so the plan is optimized once for any batch size.
        let batch = model.symbols.sym("N");
        for (ix, spec) in signature.inputs.iter().enumerate() {
            let dims: TVec<TDim> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(d, &n)| match n {
                    n if n >= 0 => TDim::from(n),
                    _ if d == 0 => batch.to_dim(),
                    _ => model.symbols.new_with_prefix("d").to_dim(),
                })
                .collect();
            let fact = InferenceFact::dt_shape(tract_datum_type(spec.datatype), dims);
            model
                .set_input_fact(ix, fact)
                .map_err(|e| format!("tract input '{}': {e:#}", spec.name))?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("tract cannot optimize the model: {e:#}; {ENABLE_ORT}"))?;
        let state = plan.spawn().map_err(|e| format!("tract: {e:#}"))?;
        Ok(TractBackend {
            state,
            outputs: signature.outputs.clone(),
        })
    }
}

impl Backend for TractBackend {
    fn infer(&mut self, inputs: &[KeelTensor]) -> Result<(Vec<KeelTensor>, Phases)> {
        let start = Instant::now();
        let values = inputs
            .iter()
            .map(to_tract)
            .collect::<Result<TVec<TValue>>>()?;
        let converted = Instant::now();
        let results = self
            .state
            .run(values)
            .map_err(|e| Error::Internal(format!("tract run failed: {e:#}")))?;
        let ran = Instant::now();
        let outputs = self
            .outputs
            .iter()
            .zip(results)
            .map(|(spec, value)| from_tract(spec, &value))
            .collect::<Result<Vec<_>>>()?;
        let phases = Phases {
            input: converted - start,
            infer: ran - converted,
            output: ran.elapsed(),
        };
        Ok((outputs, phases))
    }
}

fn tract_datum_type(dt: DataType) -> DatumType {
    match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
    }
}

/// tract owns its tensors: the request's elements are copied (ONNX Runtime reads them in place).
fn array<T: Datum + Clone>(shape: &[usize], data: &[T]) -> Result<TValue> {
    owned(shape, data.to_vec())
}

fn owned<T: Datum>(shape: &[usize], data: Vec<T>) -> Result<TValue> {
    tract_ndarray::ArrayD::from_shape_vec(shape, data)
        .map(|a| a.into_tvalue())
        .map_err(|e| Error::Internal(format!("tensor layout: {e}")))
}

fn to_tract(t: &KeelTensor) -> Result<TValue> {
    let shape = &t.shape;
    match &t.data {
        TensorData::Bool(v) => array(shape, v),
        TensorData::Uint8(v) => array(shape, v),
        TensorData::Uint16(v) => array(shape, v),
        TensorData::Uint32(v) => array(shape, v),
        TensorData::Uint64(v) => array(shape, v),
        TensorData::Int8(v) => array(shape, v),
        TensorData::Int16(v) => array(shape, v),
        TensorData::Int32(v) => array(shape, v),
        TensorData::Int64(v) => array(shape, v),
        TensorData::Fp16(v) => array(shape, v),
        TensorData::Fp32(v) => array(shape, v),
        TensorData::Fp64(v) => array(shape, v),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    std::str::from_utf8(item)
                        .map(str::to_string)
                        .map_err(|e| not_utf8(&t.name, index, e))
                })
                .collect::<Result<Vec<_>>>()?;
            owned(shape, strings)
        }
    }
}

/// Whether tract can take element `index` of BYTES input `input`: its string tensors are Rust `String`s,
/// so any UTF-8, NUL included, but nothing else. Refused elements are the client's error (400 /
/// INVALID_ARGUMENT), named by index.
pub fn check_element(input: &str, index: usize, item: &[u8]) -> Result<()> {
    std::str::from_utf8(item)
        .map(drop)
        .map_err(|e| not_utf8(input, index, e))
}

fn not_utf8(input: &str, index: usize, e: std::str::Utf8Error) -> Error {
    Error::invalid(format!(
        "input '{input}': BYTES element {index} is not UTF-8 ({e}); tract holds strings as UTF-8 only"
    ))
}

/// [`check_element`] for every BYTES element of `inputs`: what a request can be checked against before
/// it is batched with others (a refused element in a batch fails the whole batch).
pub fn check_strings(inputs: &[KeelTensor]) -> Result<()> {
    for t in inputs {
        if let TensorData::Bytes(items) = &t.data {
            for (index, item) in items.iter().enumerate() {
                check_element(&t.name, index, item)?;
            }
        }
    }
    Ok(())
}

fn slice<T: Datum + Clone>(value: &TValue) -> Result<Vec<T>> {
    value
        .to_plain_array_view::<T>()
        .map(|view| view.iter().cloned().collect())
        .map_err(|e| Error::Internal(format!("tract output: {e:#}")))
}

fn from_tract(spec: &TensorSpec, value: &TValue) -> Result<KeelTensor> {
    let data = match spec.datatype {
        DataType::Bool => TensorData::Bool(slice(value)?),
        DataType::Uint8 => TensorData::Uint8(slice(value)?),
        DataType::Uint16 => TensorData::Uint16(slice(value)?),
        DataType::Uint32 => TensorData::Uint32(slice(value)?),
        DataType::Uint64 => TensorData::Uint64(slice(value)?),
        DataType::Int8 => TensorData::Int8(slice(value)?),
        DataType::Int16 => TensorData::Int16(slice(value)?),
        DataType::Int32 => TensorData::Int32(slice(value)?),
        DataType::Int64 => TensorData::Int64(slice(value)?),
        DataType::Fp16 => TensorData::Fp16(slice(value)?),
        DataType::Fp32 => TensorData::Fp32(slice(value)?),
        DataType::Fp64 => TensorData::Fp64(slice(value)?),
        DataType::Bytes => TensorData::Bytes(
            slice::<String>(value)?
                .into_iter()
                .map(String::into_bytes)
                .collect(),
        ),
    };
    Ok(KeelTensor {
        name: spec.name.clone(),
        shape: value.shape().to_vec(),
        data,
    })
}
