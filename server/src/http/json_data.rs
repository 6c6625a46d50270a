//! The `data` field of a JSON input: flat or nested arrays, decoded straight into a typed vector without
//! an intermediate `serde_json::Value` tree. Nested arrays must be rectangular; the element count is
//! capped by the declared shape, so a lying request cannot make us allocate more than its body holds.

use std::fmt;
use std::marker::PhantomData;

use half::f16;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::tensor::{DataType, TensorData};

/// Decodes `raw` as `count` elements of `datatype`.
pub fn decode(raw: &RawValue, datatype: DataType, count: usize) -> Result<TensorData> {
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(flatten(raw, count)?),
        DataType::Uint8 => TensorData::Uint8(flatten(raw, count)?),
        DataType::Uint16 => TensorData::Uint16(flatten(raw, count)?),
        DataType::Uint32 => TensorData::Uint32(flatten(raw, count)?),
        DataType::Uint64 => TensorData::Uint64(flatten(raw, count)?),
        DataType::Int8 => TensorData::Int8(flatten(raw, count)?),
        DataType::Int16 => TensorData::Int16(flatten(raw, count)?),
        DataType::Int32 => TensorData::Int32(flatten(raw, count)?),
        DataType::Int64 => TensorData::Int64(flatten(raw, count)?),
        DataType::Fp16 => TensorData::Fp16(flatten(raw, count)?),
        DataType::Fp32 => TensorData::Fp32(flatten(raw, count)?),
        DataType::Fp64 => TensorData::Fp64(flatten(raw, count)?),
        DataType::Bytes => TensorData::Bytes(flatten(raw, count)?),
    })
}

fn flatten<T: JsonElement>(raw: &RawValue, count: usize) -> Result<Vec<T>> {
    // The declared count is only a claim: reserve no more than the text can hold, at the fewest bytes an
    // element takes ("0," for numbers, "\"\"," for strings), so a body that lies about its count costs
    // what its own size bounds.
    let fits = raw.get().len() / T::MIN_JSON_BYTES + 1;
    let mut state = State {
        out: Vec::with_capacity(count.min(fits)),
        dims: Vec::new(),
        leaf_depth: None,
        limit: count,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Level {
        state: &mut state,
        depth: 0,
        _t: PhantomData,
    }
    .deserialize(&mut de)
    .map_err(|e| {
        Error::invalid(format!(
            "{} data: {}",
            T::KIND,
            strip_position(&e.to_string())
        ))
    })?;
    if state.out.len() != count {
        return Err(Error::invalid(format!(
            "data has {} elements, the shape needs {count}",
            state.out.len()
        )));
    }
    Ok(state.out)
}

/// serde_json appends "at line 1 column N" with positions inside the `data` value; they would mislead.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

struct State<T> {
    out: Vec<T>,
    /// Length of the arrays seen at each depth: every array at one depth must have the same length.
    dims: Vec<Option<usize>>,
    /// Depth of the first scalar: every scalar must sit at the same depth.
    leaf_depth: Option<usize>,
    limit: usize,
}

struct Level<'s, T> {
    state: &'s mut State<T>,
    depth: usize,
    _t: PhantomData<T>,
}

impl<T: JsonElement> Level<'_, T> {
    fn leaf<E: de::Error>(self, value: Option<T>, got: fmt::Arguments) -> Result<(), E> {
        let value = value
            .ok_or_else(|| E::custom(format_args!("{got} is not a valid {} value", T::KIND)))?;
        match self.state.leaf_depth {
            None => self.state.leaf_depth = Some(self.depth),
            Some(d) if d != self.depth => {
                return Err(E::custom(
                    "ragged nested arrays (values at different depths)",
                ));
            }
            Some(_) => {}
        }
        if self.state.out.len() == self.state.limit {
            return Err(E::custom(format_args!(
                "more elements than the shape's {}",
                self.state.limit
            )));
        }
        self.state.out.push(value);
        Ok(())
    }
}

impl<'de, T: JsonElement> DeserializeSeed<'de> for Level<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: JsonElement> Visitor<'de> for Level<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} values in flat or nested arrays", T::KIND)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut len = 0usize;
        while seq
            .next_element_seed(Level {
                state: &mut *self.state,
                depth: self.depth + 1,
                _t: PhantomData,
            })?
            .is_some()
        {
            len += 1;
        }
        let dims = &mut self.state.dims;
        if dims.len() <= self.depth {
            dims.resize(self.depth + 1, None);
        }
        match dims[self.depth] {
            None => dims[self.depth] = Some(len),
            Some(expected) if expected != len => {
                return Err(de::Error::custom(format_args!(
                    "ragged nested arrays (lengths {expected} and {len} at depth {})",
                    self.depth
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(T::from_bool(v), format_args!("boolean {v}"))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(T::from_u64(v), format_args!("number {v}"))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(T::from_i64(v), format_args!("number {v}"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(T::from_f64(v), format_args!("number {v}"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let shown: String = v.chars().take(32).collect();
        self.leaf(T::from_str(v), format_args!("string {shown:?}"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf(None, format_args!("null"))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(format_args!(
            "an object is not a valid {} value",
            T::KIND
        )))
    }
}

/// How one JSON scalar becomes an element; `None` rejects it.
trait JsonElement: Sized {
    const KIND: &'static str;
    /// The fewest bytes of JSON one element takes, its separator included.
    const MIN_JSON_BYTES: usize = 2;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl JsonElement for bool {
    const KIND: &'static str = "BOOL";
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

macro_rules! integer_element {
    ($($t:ty => $kind:literal),*) => {$(
        impl JsonElement for $t {
            const KIND: &'static str = $kind;
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            /// Integral floats such as `3.0` are accepted; `3.5` is not.
            fn from_f64(v: f64) -> Option<Self> {
                (v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64).then(|| v as $t)
            }
        }
    )*};
}
integer_element!(u8 => "UINT8", u16 => "UINT16", u32 => "UINT32", u64 => "UINT64",
                 i8 => "INT8", i16 => "INT16", i32 => "INT32", i64 => "INT64");

macro_rules! float_element {
    ($($t:ty => $kind:literal, $conv:expr),*) => {$(
        impl JsonElement for $t {
            const KIND: &'static str = $kind;
            fn from_u64(v: u64) -> Option<Self> {
                Some($conv(v as f64))
            }
            fn from_i64(v: i64) -> Option<Self> {
                Some($conv(v as f64))
            }
            fn from_f64(v: f64) -> Option<Self> {
                Some($conv(v))
            }
        }
    )*};
}
float_element!(f16 => "FP16", f16::from_f64, f32 => "FP32", |v: f64| v as f32, f64 => "FP64", |v: f64| v);

impl JsonElement for Vec<u8> {
    const MIN_JSON_BYTES: usize = 3;
    const KIND: &'static str = "BYTES";
    fn from_str(v: &str) -> Option<Self> {
        Some(v.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn flat_and_nested_decode_alike() {
        let flat = decode(&raw("[1, 2.5, 3, 4]"), DataType::Fp32, 4).unwrap();
        let nested = decode(&raw("[[1, 2.5], [3, 4]]"), DataType::Fp32, 4).unwrap();
        assert_eq!(flat, TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(flat, nested);
        assert_eq!(
            decode(&raw("[true,false]"), DataType::Bool, 2).unwrap(),
            TensorData::Bool(vec![true, false])
        );
        assert_eq!(
            decode(&raw(r#"["a","bc"]"#), DataType::Bytes, 2).unwrap(),
            TensorData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()])
        );
        assert_eq!(
            decode(&raw("[-1, 2.0]"), DataType::Int64, 2).unwrap(),
            TensorData::Int64(vec![-1, 2])
        );
    }

    #[test]
    fn bad_data_is_rejected_with_a_reason() {
        let cases = [
            ("[[1, 2], [3]]", DataType::Fp32, 3, "ragged"),
            ("[[1, 2], 3, 4]", DataType::Fp32, 4, "ragged"),
            (r#"[1, "x"]"#, DataType::Fp32, 2, "string"),
            ("[1, 2, 3]", DataType::Fp32, 2, "more elements"),
            ("[1]", DataType::Fp32, 2, "needs 2"),
            ("[256]", DataType::Uint8, 1, "not a valid UINT8"),
            ("[-1]", DataType::Uint32, 1, "not a valid UINT32"),
            ("[1.5]", DataType::Int32, 1, "not a valid INT32"),
            ("[null]", DataType::Fp64, 1, "null"),
            ("[{}]", DataType::Fp64, 1, "object"),
            ("[1]", DataType::Bool, 1, "not a valid BOOL"),
        ];
        for (json, dt, count, needle) in cases {
            let err = decode(&raw(json), dt, count).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let bomb = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        // serde_json's recursion limit stops the walk at depth 128, long before the stack is at risk.
        let err = decode(&raw(&bomb), DataType::Fp32, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("recursion"), "{err}");
        let shallow = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(decode(&raw(&shallow), DataType::Fp32, 1).is_ok());
    }
}
