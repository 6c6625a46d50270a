//! HTTP: requests built valid (and their JSON form), and structural edits of that JSON.

use keel_server::tensor::{Tensor, TensorData};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Number, Value, json};

use crate::generators::{PARAM_KEYS, datatype_name, dim, json_any, name, valid_tensor, wire};

#[derive(Clone, Debug)]
pub(crate) enum Encoding {
    JsonFlat,
    JsonNested,
    Binary,
}

#[derive(Clone, Debug)]
pub(crate) struct ValidRequest {
    pub(crate) id: Option<String>,
    pub(crate) inputs: Vec<(Tensor, Encoding)>,
    pub(crate) outputs: Option<Vec<(String, Option<bool>)>>,
    binary_data_output: Option<bool>,
    pub(crate) timeout: Option<u64>,
}

pub(crate) fn valid_request(binary: bool) -> impl Strategy<Value = ValidRequest> + Clone {
    let encoding = if binary {
        prop_oneof![
            1 => Just(Encoding::JsonFlat),
            1 => Just(Encoding::JsonNested),
            2 => Just(Encoding::Binary)
        ]
        .boxed()
    } else {
        prop_oneof![Just(Encoding::JsonFlat), Just(Encoding::JsonNested)].boxed()
    };
    (
        proptest::option::of(name()),
        vec((valid_tensor(), encoding), 0..4),
        proptest::option::of(vec((name(), proptest::option::of(any::<bool>())), 0..3)),
        proptest::option::of(any::<bool>()),
        proptest::option::of(0u64..1_000_000),
    )
        .prop_map(
            |(id, inputs, outputs, binary_data_output, timeout)| ValidRequest {
                id,
                inputs,
                outputs,
                binary_data_output,
                timeout,
            },
        )
}

/// The JSON form of one element, or `None` when JSON cannot carry it (NaN, infinity, non-UTF-8 bytes).
fn json_elements(data: &TensorData) -> Option<Vec<Value>> {
    fn float(f: f64) -> Option<Value> {
        Number::from_f64(f).map(Value::Number)
    }
    Some(match data {
        TensorData::Bool(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Uint8(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Uint16(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Uint32(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Uint64(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Int8(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Int16(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Int32(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Int64(v) => v.iter().map(|&x| json!(x)).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| float(x.to_f64())).collect::<Option<_>>()?,
        TensorData::Fp32(v) => v.iter().map(|&x| float(x.into())).collect::<Option<_>>()?,
        TensorData::Fp64(v) => v.iter().map(|&x| float(x)).collect::<Option<_>>()?,
        TensorData::Bytes(v) => v
            .iter()
            .map(|b| String::from_utf8(b.clone()).ok().map(Value::String))
            .collect::<Option<_>>()?,
    })
}

/// Row-major elements nested by `shape` (a rank-0 tensor is its one bare value).
pub(crate) fn nest(elements: &[Value], shape: &[usize]) -> Value {
    match shape {
        [] => elements.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(elements.to_vec()),
        [first, rest @ ..] => {
            let inner: usize = rest.iter().product();
            Value::Array(
                (0..*first)
                    .map(|i| nest(&elements[i * inner..(i + 1) * inner], rest))
                    .collect(),
            )
        }
    }
}

/// The request's JSON document and binary tail; inputs JSON cannot carry go binary when `binary`, else
/// are dropped from `req` (so `req` stays what was sent).
pub(crate) fn to_json(req: &mut ValidRequest, binary: bool) -> (Value, Vec<u8>) {
    let mut tail = Vec::new();
    let mut inputs = Vec::new();
    req.inputs.retain_mut(|(t, enc)| {
        let elements = match enc {
            Encoding::Binary => None,
            _ => json_elements(&t.data),
        };
        let mut input =
            json!({ "name": t.name, "shape": t.shape, "datatype": t.datatype().name() });
        match (elements, &enc) {
            (Some(el), Encoding::JsonNested) => input["data"] = nest(&el, &t.shape),
            (Some(el), _) => input["data"] = Value::Array(el),
            (None, _) if binary => {
                let bytes = wire(&t.data);
                input["parameters"] = json!({ "binary_data_size": bytes.len() });
                tail.extend_from_slice(&bytes);
                *enc = Encoding::Binary;
            }
            (None, _) => return false,
        }
        inputs.push(input);
        true
    });
    let mut doc = json!({ "inputs": inputs });
    if let Some(id) = &req.id {
        doc["id"] = json!(id);
    }
    let mut params = serde_json::Map::new();
    if let Some(b) = req.binary_data_output {
        params.insert("binary_data_output".into(), json!(b));
    }
    if let Some(t) = req.timeout {
        params.insert("timeout".into(), json!(t));
    }
    if !params.is_empty() {
        doc["parameters"] = Value::Object(params);
    }
    if let Some(outputs) = &req.outputs {
        doc["outputs"] = outputs
            .iter()
            .map(|(name, b)| match b {
                Some(b) => json!({ "name": name, "parameters": { "binary_data": b } }),
                None => json!({ "name": name }),
            })
            .collect();
    }
    (doc, tail)
}

/// A change to a valid request's JSON document: a hostile value in one place.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    InputField(usize, &'static str, Value),
    RemoveInputField(usize, &'static str),
    Shape(usize, Vec<i64>),
    Datatype(usize, String),
    Param(Option<usize>, String, Value),
    OutputParam(usize, String, Value),
    Top(&'static str, Value),
}

pub(crate) fn edit() -> impl Strategy<Value = Edit> + Clone {
    let field = select(vec![
        "name",
        "shape",
        "datatype",
        "data",
        "parameters",
        "extra",
    ]);
    let key = prop_oneof![3 => select(PARAM_KEYS.to_vec()).prop_map(String::from), 1 => name()];
    prop_oneof![
        1 => (any::<usize>(), field.clone(), json_any()).prop_map(|(i, f, v)| Edit::InputField(i, f, v)),
        1 => (any::<usize>(), field).prop_map(|(i, f)| Edit::RemoveInputField(i, f)),
        1 => (any::<usize>(), vec(dim(), 0..5)).prop_map(|(i, d)| Edit::Shape(i, d)),
        1 => (any::<usize>(), datatype_name()).prop_map(|(i, d)| Edit::Datatype(i, d)),
        2 => (proptest::option::of(any::<usize>()), key.clone(), json_any())
            .prop_map(|(i, k, v)| Edit::Param(i, k, v)),
        1 => (any::<usize>(), key, json_any()).prop_map(|(i, k, v)| Edit::OutputParam(i, k, v)),
        1 => (
            select(vec!["id", "parameters", "inputs", "outputs", "model_name"]),
            json_any()
        )
            .prop_map(|(f, v)| Edit::Top(f, v)),
    ]
}

pub(crate) fn apply_edit(doc: &mut Value, edit: &Edit) {
    fn nth<'a>(list: &'a mut Value, key: &str, i: usize) -> Option<&'a mut Value> {
        let list = list.get_mut(key)?.as_array_mut()?;
        let len = list.len();
        (len > 0).then(|| &mut list[i % len])
    }
    fn params(v: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
        let obj = v.as_object_mut()?;
        let p = obj.entry("parameters").or_insert_with(|| json!({}));
        if !p.is_object() {
            *p = json!({});
        }
        p.as_object_mut()
    }
    match edit {
        Edit::InputField(i, f, v) => {
            if let Some(input) = nth(doc, "inputs", *i).and_then(Value::as_object_mut) {
                input.insert((*f).into(), v.clone());
            }
        }
        Edit::RemoveInputField(i, f) => {
            if let Some(input) = nth(doc, "inputs", *i).and_then(Value::as_object_mut) {
                input.remove(*f);
            }
        }
        Edit::Shape(i, d) => {
            if let Some(input) = nth(doc, "inputs", *i).and_then(Value::as_object_mut) {
                input.insert("shape".into(), json!(d));
            }
        }
        Edit::Datatype(i, d) => {
            if let Some(input) = nth(doc, "inputs", *i).and_then(Value::as_object_mut) {
                input.insert("datatype".into(), json!(d));
            }
        }
        Edit::Param(None, k, v) => {
            if let Some(p) = params(doc) {
                p.insert(k.clone(), v.clone());
            }
        }
        Edit::Param(Some(i), k, v) => {
            if let Some(p) = nth(doc, "inputs", *i).and_then(params) {
                p.insert(k.clone(), v.clone());
            }
        }
        Edit::OutputParam(i, k, v) => {
            if let Some(p) = nth(doc, "outputs", *i).and_then(params) {
                p.insert(k.clone(), v.clone());
            }
        }
        Edit::Top(f, v) => {
            if let Some(obj) = doc.as_object_mut() {
                obj.insert((*f).into(), v.clone());
            }
        }
    }
}
