//! The decoder of JSON `data` before the single-pass scanner (server/src/http/json_data.rs at 41dfb5b),
//! kept as the reference: serde_json validated the text (capturing it as a `RawValue`), then a visitor
//! took each scalar as serde_json gave it (`u64`, `i64` or `f64`) into a typed vector.

use std::fmt;
use std::marker::PhantomData;

use half::f16;
use keel_server::tensor::{DataType, TensorData};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

pub fn decode(text: &str, datatype: DataType, count: usize) -> Result<TensorData, String> {
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| e.to_string())?;
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

fn flatten<T: JsonElement>(raw: &RawValue, count: usize) -> Result<Vec<T>, String> {
    let mut state = State {
        out: Vec::new(),
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
    .map_err(|e| e.to_string())?;
    if state.out.len() != count {
        return Err(format!(
            "data has {} elements, the shape needs {count}",
            state.out.len()
        ));
    }
    Ok(state.out)
}

struct State<T> {
    out: Vec<T>,
    dims: Vec<Option<usize>>,
    leaf_depth: Option<usize>,
    limit: usize,
}

struct Level<'s, T> {
    state: &'s mut State<T>,
    depth: usize,
    _t: PhantomData<T>,
}

impl<T: JsonElement> Level<'_, T> {
    fn leaf<E: de::Error>(self, value: Option<T>) -> Result<(), E> {
        let value = value.ok_or_else(|| E::custom("not a valid value"))?;
        match self.state.leaf_depth {
            None => self.state.leaf_depth = Some(self.depth),
            Some(d) if d != self.depth => return Err(E::custom("ragged")),
            Some(_) => {}
        }
        if self.state.out.len() == self.state.limit {
            return Err(E::custom("more elements"));
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
        f.write_str("values in flat or nested arrays")
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
            Some(expected) if expected != len => return Err(de::Error::custom("ragged")),
            Some(_) => {}
        }
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(T::from_bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(T::from_u64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(T::from_i64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(T::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(T::from_str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf(None)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom("an object"))
    }
}

trait JsonElement: Sized {
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
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

macro_rules! integer_element {
    ($($t:ty),*) => {$(
        impl JsonElement for $t {
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_f64(v: f64) -> Option<Self> {
                (v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64).then(|| v as $t)
            }
        }
    )*};
}
integer_element!(u8, u16, u32, u64, i8, i16, i32, i64);

macro_rules! float_element {
    ($($t:ty, $conv:expr),*) => {$(
        impl JsonElement for $t {
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
float_element!(f16, f16::from_f64, f32, |v: f64| v as f32, f64, |v: f64| v);

impl JsonElement for Vec<u8> {
    fn from_str(v: &str) -> Option<Self> {
        Some(v.as_bytes().to_vec())
    }
}
