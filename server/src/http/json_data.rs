//! The `data` field of a JSON input: flat or nested arrays, decoded straight into a typed vector without
//! an intermediate `serde_json::Value` tree. Nested arrays must be rectangular, every scalar at the same
//! depth; the element count is capped by the declared shape, so a lying request cannot make us allocate
//! more than its body holds. Numbers and booleans go through a hand-written single-pass scanner
//! ([`scan`]); BYTES (strings, with their escapes) through serde_json.

mod scan;

use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};

use crate::error::{Error, Result};
use crate::tensor::{DataType, TensorData};

/// Decodes `text`, one JSON value (not checked before: this is what checks it), as `count` elements of
/// `datatype`.
pub fn decode(text: &str, datatype: DataType, count: usize) -> Result<TensorData> {
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(scalars(text, count)?),
        DataType::Uint8 => TensorData::Uint8(scalars(text, count)?),
        DataType::Uint16 => TensorData::Uint16(scalars(text, count)?),
        DataType::Uint32 => TensorData::Uint32(scalars(text, count)?),
        DataType::Uint64 => TensorData::Uint64(scalars(text, count)?),
        DataType::Int8 => TensorData::Int8(scalars(text, count)?),
        DataType::Int16 => TensorData::Int16(scalars(text, count)?),
        DataType::Int32 => TensorData::Int32(scalars(text, count)?),
        DataType::Int64 => TensorData::Int64(scalars(text, count)?),
        DataType::Fp16 => TensorData::Fp16(scalars(text, count)?),
        DataType::Fp32 => TensorData::Fp32(scalars(text, count)?),
        DataType::Fp64 => TensorData::Fp64(scalars(text, count)?),
        DataType::Bytes => TensorData::Bytes(strings(text, count)?),
    })
}

fn scalars<T: scan::Element>(text: &str, count: usize) -> Result<Vec<T>> {
    let out = scan::scan::<T>(text, count)
        .map_err(|e| Error::invalid(format!("{} data: {e}", T::KIND)))?;
    check_count(out.len(), count)?;
    Ok(out)
}

fn check_count(got: usize, count: usize) -> Result<()> {
    if got != count {
        return Err(Error::invalid(format!(
            "data has {got} elements, the shape needs {count}"
        )));
    }
    Ok(())
}

/// BYTES: serde_json reads the strings (and their escapes).
fn strings(text: &str, count: usize) -> Result<Vec<Vec<u8>>> {
    // The declared count is only a claim: reserve no more than the text can hold, at the fewest bytes an
    // element takes (`"",`), so a body that lies about its count costs what its own size bounds.
    let fits = text.len() / 3 + 1;
    let mut state = State {
        out: Vec::with_capacity(count.min(fits)),
        dims: Vec::new(),
        leaf_depth: None,
        limit: count,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    Level {
        state: &mut state,
        depth: 0,
    }
    .deserialize(&mut de)
    // Nothing checked the text before: bytes after the value are refused here.
    .and_then(|()| de.end())
    .map_err(|e| Error::invalid(format!("BYTES data: {}", strip_position(&e.to_string()))))?;
    check_count(state.out.len(), count)?;
    Ok(state.out)
}

/// serde_json appends "at line 1 column N" with positions inside the `data` value; they would mislead.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

struct State {
    out: Vec<Vec<u8>>,
    /// Length of the arrays seen at each depth: every array at one depth must have the same length.
    dims: Vec<Option<usize>>,
    /// Depth of the first scalar: every scalar must sit at the same depth.
    leaf_depth: Option<usize>,
    limit: usize,
}

struct Level<'s> {
    state: &'s mut State,
    depth: usize,
}

impl Level<'_> {
    fn leaf<E: de::Error>(self, value: Option<Vec<u8>>, got: fmt::Arguments) -> Result<(), E> {
        let value =
            value.ok_or_else(|| E::custom(format_args!("{got} is not a valid BYTES value")))?;
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

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BYTES values in flat or nested arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut len = 0usize;
        while seq
            .next_element_seed(Level {
                state: &mut *self.state,
                depth: self.depth + 1,
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
        self.leaf(None, format_args!("boolean {v}"))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(None, format_args!("number {v}"))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(None, format_args!("number {v}"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(None, format_args!("number {v}"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(Some(v.as_bytes().to_vec()), format_args!(""))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf(None, format_args!("null"))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom("an object is not a valid BYTES value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested_decode_alike() {
        let flat = decode("[1, 2.5, 3, 4]", DataType::Fp32, 4).unwrap();
        let nested = decode("[[1, 2.5], [3, 4]]", DataType::Fp32, 4).unwrap();
        assert_eq!(flat, TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(flat, nested);
        assert_eq!(
            decode("[true,false]", DataType::Bool, 2).unwrap(),
            TensorData::Bool(vec![true, false])
        );
        assert_eq!(
            decode(r#"["a","bc"]"#, DataType::Bytes, 2).unwrap(),
            TensorData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()])
        );
        assert_eq!(
            decode("[-1, 2.0]", DataType::Int64, 2).unwrap(),
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
            let err = decode(json, dt, count).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        // The scanner keeps its depth in a vector and stops at 128; serde_json (BYTES) has the same
        // recursion limit, long before the stack is at risk.
        for (element, dt) in [("1", DataType::Fp32), (r#""a""#, DataType::Bytes)] {
            let bomb = format!("{}{element}{}", "[".repeat(100_000), "]".repeat(100_000));
            let err = decode(&bomb, dt, 1).unwrap_err().to_string();
            assert!(err.contains("recursion"), "{err}");
            let shallow = format!("{}{element}{}", "[".repeat(100), "]".repeat(100));
            assert!(decode(&shallow, dt, 1).is_ok());
        }
    }

    #[test]
    fn messages_name_the_type_and_the_reason() {
        let err = |json: &str, dt, count| decode(json, dt, count).unwrap_err().to_string();
        assert_eq!(
            err("[1, 2 3]", DataType::Fp32, 3),
            "FP32 data: expected `,` or `]`"
        );
        assert_eq!(
            err("[1, 2]", DataType::Int8, 3),
            "data has 2 elements, the shape needs 3"
        );
        assert_eq!(
            err(r#"["a"] x"#, DataType::Bytes, 1),
            "BYTES data: trailing characters"
        );
        assert_eq!(
            err("[300]", DataType::Uint8, 1),
            "UINT8 data: number 300 is not a valid UINT8 value"
        );
    }
}
