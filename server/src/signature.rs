//! A model version's signature: its input and output tensors as clients see them, read from the ONNX
//! graph and adjusted by `model.toml`. Requests are validated against it before they reach a backend.

use tract_onnx::pb::{
    self, tensor_proto::DataType as OnnxType, tensor_shape_proto::dimension, type_proto,
};

use crate::error::{Error, Result};
use crate::model_toml::{ModelToml, TensorOverride};
use crate::tensor::{DataType, Tensor};

/// Batch limit when the graph has a dynamic leading dimension and `model.toml` sets none.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Full shape, batch dimension included; -1 is a variable dimension.
    pub shape: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// 0: no batch dimension. Otherwise dimension 0 of every tensor is the batch and may not exceed this.
    pub max_batch_size: u32,
}

impl Signature {
    pub fn from_onnx(model: &pb::ModelProto, config: &ModelToml) -> Result<Self, String> {
        let graph = model.graph.as_ref().ok_or("the ONNX file has no graph")?;
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        // Older exporters list initializers among the inputs; they are weights, not request tensors.
        let inputs = graph
            .input
            .iter()
            .filter(|vi| !initializers.contains(vi.name.as_str()))
            .map(|vi| tensor_spec(vi, config.inputs.get(&vi.name)))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = graph
            .output
            .iter()
            .map(|vi| tensor_spec(vi, config.outputs.get(&vi.name)))
            .collect::<Result<Vec<_>, _>>()?;
        for (kind, names, specs) in [
            ("inputs", config.inputs.keys(), &inputs),
            ("outputs", config.outputs.keys(), &outputs),
        ] {
            for name in names {
                if !specs.iter().any(|s| &s.name == name) {
                    return Err(format!(
                        "the configuration names {kind} '{name}', but the graph has no such tensor"
                    ));
                }
            }
        }
        if inputs.is_empty() {
            return Err("the graph has no inputs".into());
        }
        let batchable = inputs
            .iter()
            .chain(&outputs)
            .all(|t| t.shape.first() == Some(&-1));
        let max_batch_size = match config.max_batch_size {
            Some(0) => 0,
            Some(n) if batchable => n,
            Some(n) => {
                return Err(format!(
                    "max_batch_size = {n} needs a variable leading (batch) dimension on every input and output"
                ));
            }
            None if batchable => DEFAULT_MAX_BATCH_SIZE,
            None => 0,
        };
        Ok(Signature {
            inputs,
            outputs,
            max_batch_size,
        })
    }

    /// Rows in a validated request: its batch size, or 1 for models without a batch dimension.
    pub fn rows(&self, inputs: &[Tensor]) -> u64 {
        match (self.max_batch_size, inputs.first()) {
            (0, _) | (_, None) => 1,
            (_, Some(t)) => t.shape[0] as u64,
        }
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// The spec of input `name`, or the error a request naming an unknown input gets.
    pub fn input(&self, name: &str) -> Result<&TensorSpec> {
        self.input_index(name).map(|i| &self.inputs[i])
    }

    /// Where input `name` is in the signature, or the error a request naming an unknown input gets.
    fn input_index(&self, name: &str) -> Result<usize> {
        self.inputs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown input '{name}'; the model's inputs are {}",
                    names(&self.inputs)
                ))
            })
    }

    /// Checks request inputs against the signature and returns them in signature order.
    pub fn check_inputs(&self, mut given: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mut headers = InputHeaders::new(self);
        for t in &given {
            headers.check(&t.name, t.datatype(), &t.shape)?;
        }
        // Clients mostly send the inputs in the signature's order already (every single-input model).
        if given.len() == self.inputs.len()
            && given
                .iter()
                .zip(&self.inputs)
                .all(|(t, s)| t.name == s.name)
        {
            return Ok(given);
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let pos = given
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| Error::invalid(format!("missing input '{}'", spec.name)))?;
            ordered.push(given.swap_remove(pos));
        }
        Ok(ordered)
    }
}

/// Request inputs checked one header (name, datatype, shape) at a time, before any of their data is
/// decoded: unknown and repeated names, datatypes and shapes the model does not take, and more rows than
/// `max_batch_size` are refused from the header alone, so a lying request costs no allocation.
pub struct InputHeaders<'s> {
    signature: &'s Signature,
    /// The inputs checked so far, a bit per position in the signature: a `Vec` of names here cost two
    /// allocations per request (the header checks run at decode and again before scheduling).
    seen: Seen,
    batch: Option<usize>,
}

/// Positions in a signature's inputs: a bit each, or a vector for the rare model with more than 64.
enum Seen {
    Bits(u64),
    Many(Vec<bool>),
}

impl Seen {
    fn new(inputs: usize) -> Self {
        if inputs <= 64 {
            Seen::Bits(0)
        } else {
            Seen::Many(vec![false; inputs])
        }
    }

    /// Marks `index` seen; false when it was already.
    fn insert(&mut self, index: usize) -> bool {
        match self {
            Seen::Bits(bits) => {
                let bit = 1u64 << index;
                let new = *bits & bit == 0;
                *bits |= bit;
                new
            }
            Seen::Many(seen) => !std::mem::replace(&mut seen[index], true),
        }
    }
}

impl<'s> InputHeaders<'s> {
    pub fn new(signature: &'s Signature) -> Self {
        InputHeaders {
            signature,
            seen: Seen::new(signature.inputs.len()),
            batch: None,
        }
    }

    /// Checks one input's header; returns the spec and how many elements its data must hold.
    pub fn check(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[usize],
    ) -> Result<(&'s TensorSpec, usize)> {
        let index = self.signature.input_index(name)?;
        let spec = &self.signature.inputs[index];
        if !self.seen.insert(index) {
            return Err(Error::invalid(format!(
                "input '{name}' is given more than once"
            )));
        }
        spec.check_header(datatype, shape)?;
        let max_batch = self.signature.max_batch_size;
        if max_batch > 0 {
            let rows = shape[0];
            if rows as u64 > max_batch as u64 {
                return Err(Error::invalid(format!(
                    "input '{name}' has {rows} rows, more than the model's max_batch_size {max_batch}"
                )));
            }
            if *self.batch.get_or_insert(rows) != rows {
                return Err(Error::invalid(
                    "all inputs must have the same batch size (dimension 0)",
                ));
            }
        }
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "input '{name}': shape {shape:?} holds more elements than the request carries"
                ))
            })?;
        Ok((spec, count))
    }
}

impl TensorSpec {
    /// Triton's model-configuration `dims` (without the batch dimension when `max_batch_size > 0`) and
    /// `reshape`: a tensor that is only the batch dimension is written as dims [1] reshaped to [].
    pub fn config_dims(&self, max_batch_size: u32) -> (Vec<i64>, Option<Vec<i64>>) {
        let skip = usize::from(max_batch_size > 0).min(self.shape.len());
        let dims = self.shape[skip..].to_vec();
        if dims.is_empty() && skip == 1 {
            (vec![1], Some(Vec::new()))
        } else {
            (dims, None)
        }
    }

    /// A request tensor's datatype and shape against this spec.
    pub fn check_header(&self, datatype: DataType, shape: &[usize]) -> Result<()> {
        if datatype != self.datatype {
            return Err(Error::invalid(format!(
                "input '{}' has datatype {}, the model expects {}",
                self.name, datatype, self.datatype
            )));
        }
        let fits = shape.len() == self.shape.len()
            && shape
                .iter()
                .zip(&self.shape)
                .all(|(&got, &want)| want < 0 || got as i64 == want);
        if !fits {
            return Err(Error::invalid(format!(
                "input '{}' has shape {:?}, the model expects {:?} (-1 is any size)",
                self.name, shape, self.shape
            )));
        }
        Ok(())
    }
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("'{}'", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn tensor_spec(
    vi: &pb::ValueInfoProto,
    over: Option<&TensorOverride>,
) -> Result<TensorSpec, String> {
    let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => {
            return Err(format!(
                "tensor '{}' is not a plain tensor (sequence/map types are unsupported)",
                vi.name
            ));
        }
    };
    let elem = OnnxType::try_from(tensor.elem_type).unwrap_or(OnnxType::Undefined);
    let datatype = onnx_datatype(elem).ok_or_else(|| {
        format!(
            "tensor '{}' has ONNX element type {elem:?}, which Keel does not serve",
            vi.name
        )
    })?;
    let graph_shape: Option<Vec<i64>> = tensor.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(dimension::Value::DimValue(v)) if v > 0 => v,
                _ => -1,
            })
            .collect()
    });
    let shape = match (graph_shape, over.and_then(|o| o.shape.clone())) {
        (None, None) => {
            return Err(format!(
                "tensor '{}' has no shape in the graph; set [inputs/outputs.{}] shape in model.toml",
                vi.name, vi.name
            ));
        }
        (Some(graph), None) => graph,
        (None, Some(over)) => over,
        (Some(graph), Some(over)) => {
            let agrees =
                graph.len() == over.len() && graph.iter().zip(&over).all(|(g, o)| *g < 0 || g == o);
            if !agrees || over.iter().any(|d| *d < -1 || *d == 0) {
                return Err(format!(
                    "model.toml shape {over:?} for '{}' contradicts the graph's {graph:?}",
                    vi.name
                ));
            }
            over
        }
    };
    if let Some(expected) = over.and_then(|o| o.datatype.as_deref())
        && !expected.eq_ignore_ascii_case(datatype.name())
    {
        return Err(format!(
            "the configuration declares '{}' as {expected}, but the graph's tensor is {datatype}",
            vi.name
        ));
    }
    Ok(TensorSpec {
        name: vi.name.clone(),
        datatype,
        shape,
    })
}

fn onnx_datatype(t: OnnxType) -> Option<DataType> {
    Some(match t {
        OnnxType::Bool => DataType::Bool,
        OnnxType::Uint8 => DataType::Uint8,
        OnnxType::Uint16 => DataType::Uint16,
        OnnxType::Uint32 => DataType::Uint32,
        OnnxType::Uint64 => DataType::Uint64,
        OnnxType::Int8 => DataType::Int8,
        OnnxType::Int16 => DataType::Int16,
        OnnxType::Int32 => DataType::Int32,
        OnnxType::Int64 => DataType::Int64,
        OnnxType::Float16 => DataType::Fp16,
        OnnxType::Float => DataType::Fp32,
        OnnxType::Double => DataType::Fp64,
        OnnxType::String => DataType::Bytes,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn spec(name: &str) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 2],
        }
    }

    fn tensor(name: &str) -> Tensor {
        Tensor {
            name: name.into(),
            shape: vec![1, 2],
            data: TensorData::Fp32(vec![1.0, 2.0]),
        }
    }

    #[test]
    fn inputs_come_back_in_signature_order_and_missing_or_repeated_ones_are_refused() {
        let signature = Signature {
            inputs: vec![spec("a"), spec("b")],
            outputs: vec![spec("y")],
            max_batch_size: 8,
        };
        let names = |ts: &[Tensor]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        // In order already: the same list, as it came.
        let given = vec![tensor("a"), tensor("b")];
        let at = given.as_ptr();
        let checked = signature.check_inputs(given).unwrap();
        assert_eq!(names(&checked), ["a", "b"]);
        assert_eq!(checked.as_ptr(), at);
        // In another order: put in the signature's.
        let checked = signature
            .check_inputs(vec![tensor("b"), tensor("a")])
            .unwrap();
        assert_eq!(names(&checked), ["a", "b"]);
        let missing = signature.check_inputs(vec![tensor("b")]).unwrap_err();
        assert!(
            missing.to_string().contains("missing input 'a'"),
            "{missing}"
        );
        let twice = signature
            .check_inputs(vec![tensor("a"), tensor("a")])
            .unwrap_err();
        assert!(twice.to_string().contains("more than once"), "{twice}");
        let unknown = signature
            .check_inputs(vec![tensor("a"), tensor("c")])
            .unwrap_err();
        assert!(unknown.to_string().contains('c'), "{unknown}");
    }

    /// Repeats are found by position whether the signature's inputs fit in a bit each or not.
    #[test]
    fn repeated_inputs_are_found_past_64_inputs_too() {
        for inputs in [1, 64, 65, 130] {
            let mut seen = Seen::new(inputs);
            for i in (0..inputs).rev() {
                assert!(seen.insert(i), "{inputs} inputs: {i} new");
            }
            for i in 0..inputs {
                assert!(!seen.insert(i), "{inputs} inputs: {i} again");
            }
        }
    }
}
