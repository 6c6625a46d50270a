//! Typed tensors: the one in-memory form every protocol decodes into and every backend reads from.

use std::fmt;

use half::f16;

use crate::error::{Error, Result};

/// KServe V2 datatypes that Keel serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol name: "FP32", "BYTES", ...
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Triton's model-configuration name: "TYPE_FP32", "TYPE_STRING", ...
    pub fn config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        DataType::ALL
            .into_iter()
            .find(|dt| dt.name() == name)
            .ok_or_else(|| Error::invalid(format!("unknown datatype '{name}'")))
    }

    /// Bytes per element on the wire; `None` for BYTES, whose elements are length-prefixed.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Row-major tensor elements, one variant per datatype.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of any variant.
#[macro_export]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::tensor::TensorData::Bool($v) => $body,
            $crate::tensor::TensorData::Uint8($v) => $body,
            $crate::tensor::TensorData::Uint16($v) => $body,
            $crate::tensor::TensorData::Uint32($v) => $body,
            $crate::tensor::TensorData::Uint64($v) => $body,
            $crate::tensor::TensorData::Int8($v) => $body,
            $crate::tensor::TensorData::Int16($v) => $body,
            $crate::tensor::TensorData::Int32($v) => $body,
            $crate::tensor::TensorData::Int64($v) => $body,
            $crate::tensor::TensorData::Fp16($v) => $body,
            $crate::tensor::TensorData::Fp32($v) => $body,
            $crate::tensor::TensorData::Fp64($v) => $body,
            $crate::tensor::TensorData::Bytes($v) => $body,
        }
    };
}

/// Fixed-size element types and their little-endian wire form.
pub trait Element: Copy + Sized {
    const SIZE: usize;
    fn read_le(bytes: &[u8]) -> Self;
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! impl_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read_le(bytes: &[u8]) -> Self {
                let mut buf = [0u8; std::mem::size_of::<$t>()];
                buf.copy_from_slice(bytes);
                <$t>::from_le_bytes(buf)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
impl_element!(u8, u16, u32, u64, i8, i16, i32, i64, f16, f32, f64);

impl Element for bool {
    const SIZE: usize = 1;
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
}

fn read_fixed<T: Element>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(T::SIZE).map(T::read_le).collect()
}

fn write_fixed<T: Element>(values: &[T], out: &mut Vec<u8>) {
    out.reserve(values.len() * T::SIZE);
    for v in values {
        v.write_le(out);
    }
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reserve(&mut self, additional: usize) {
        with_tensor_data!(self, v => v.reserve(additional))
    }

    /// Copies `other`'s elements to the end of `self`; both must have the same datatype.
    pub fn extend_from(&mut self, other: &TensorData) {
        macro_rules! join {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend_from_slice(b),)*
                    (a, b) => panic!("appending {} to {}", b.datatype(), a.datatype()),
                }
            };
        }
        join!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        )
    }

    /// A copy of the elements in `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> TensorData {
        macro_rules! cut {
            ($($variant:ident),*) => {
                match self {
                    $(TensorData::$variant(v) => TensorData::$variant(v[range].to_vec()),)*
                }
            };
        }
        cut!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        )
    }

    /// Decodes the binary wire form of `count` elements. The caller has bounded `count` by the bytes it
    /// holds, so this never allocates more than the input justifies.
    pub fn from_le_bytes(datatype: DataType, bytes: &[u8], count: usize) -> Result<Self> {
        check_wire_len(datatype, count, bytes.len())?;
        Ok(match datatype {
            DataType::Bool => TensorData::Bool(read_fixed(bytes)),
            DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
            DataType::Uint16 => TensorData::Uint16(read_fixed(bytes)),
            DataType::Uint32 => TensorData::Uint32(read_fixed(bytes)),
            DataType::Uint64 => TensorData::Uint64(read_fixed(bytes)),
            DataType::Int8 => TensorData::Int8(read_fixed(bytes)),
            DataType::Int16 => TensorData::Int16(read_fixed(bytes)),
            DataType::Int32 => TensorData::Int32(read_fixed(bytes)),
            DataType::Int64 => TensorData::Int64(read_fixed(bytes)),
            DataType::Fp16 => TensorData::Fp16(read_fixed(bytes)),
            DataType::Fp32 => TensorData::Fp32(read_fixed(bytes)),
            DataType::Fp64 => TensorData::Fp64(read_fixed(bytes)),
            DataType::Bytes => TensorData::Bytes(read_bytes_elements(bytes, count)?),
        })
    }

    /// Appends the binary wire form (little-endian; BYTES as 4-byte length + content per element).
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        match self {
            TensorData::Bytes(items) => {
                for item in items {
                    out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    out.extend_from_slice(item);
                }
            }
            TensorData::Bool(v) => write_fixed(v, out),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Uint16(v) => write_fixed(v, out),
            TensorData::Uint32(v) => write_fixed(v, out),
            TensorData::Uint64(v) => write_fixed(v, out),
            TensorData::Int8(v) => write_fixed(v, out),
            TensorData::Int16(v) => write_fixed(v, out),
            TensorData::Int32(v) => write_fixed(v, out),
            TensorData::Int64(v) => write_fixed(v, out),
            TensorData::Fp16(v) => write_fixed(v, out),
            TensorData::Fp32(v) => write_fixed(v, out),
            TensorData::Fp64(v) => write_fixed(v, out),
        }
    }

    /// Bytes this tensor holds in memory: its elements, and for BYTES each element's `Vec` too.
    pub fn heap_bytes(&self) -> usize {
        match self {
            TensorData::Bytes(items) => {
                items.len() * BYTES_ELEMENT_OVERHEAD + items.iter().map(Vec::len).sum::<usize>()
            }
            other => other.len() * other.datatype().size().unwrap_or(0),
        }
    }

    /// Size of the binary wire form.
    pub fn byte_len(&self) -> usize {
        match (self, self.datatype().size()) {
            (TensorData::Bytes(items), _) => items.iter().map(|i| 4 + i.len()).sum(),
            (_, Some(size)) => self.len() * size,
            (_, None) => unreachable!("only BYTES has no fixed size"),
        }
    }
}

fn read_bytes_elements(mut bytes: &[u8], count: usize) -> Result<Vec<Vec<u8>>> {
    // Each element takes at least its 4-byte length, which bounds the allocation by the input size.
    let mut items = Vec::with_capacity(count.min(bytes.len() / 4));
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err(Error::invalid(
                "BYTES tensor ends inside an element's 4-byte length",
            ));
        }
        if items.len() == count {
            return Err(Error::invalid(format!(
                "BYTES tensor has more elements than the shape's {count}"
            )));
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let rest = &bytes[4..];
        if rest.len() < len {
            return Err(Error::invalid(format!(
                "BYTES element {} declares {len} bytes but only {} remain",
                items.len(),
                rest.len()
            )));
        }
        items.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    if items.len() != count {
        return Err(Error::invalid(format!(
            "BYTES tensor has {} elements, shape needs {count}",
            items.len()
        )));
    }
    Ok(items)
}

/// A named tensor with a concrete shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// Most dimensions a request tensor may have: far above any model's rank, and a bound on what a shape
/// costs to read.
pub const MAX_DIMS: usize = 64;

/// Memory a decoded BYTES element takes besides its content (its `Vec`).
pub const BYTES_ELEMENT_OVERHEAD: usize = std::mem::size_of::<Vec<u8>>();

/// Memory `count` decoded elements of `datatype` take; `payload` bounds the content of BYTES elements.
pub fn decoded_bytes(datatype: DataType, count: usize, payload: usize) -> usize {
    match datatype.size() {
        Some(size) => count.saturating_mul(size),
        None => count
            .saturating_mul(BYTES_ELEMENT_OVERHEAD)
            .saturating_add(payload),
    }
}

/// Whether `len` bytes of binary wire form can hold `count` elements of `datatype`: exactly
/// `count x size` for fixed-size types, at least a 4-byte length per element for BYTES. Checked before
/// anything is decoded.
pub fn check_wire_len(datatype: DataType, count: usize, len: usize) -> Result<()> {
    match datatype.size() {
        Some(size) => {
            if count.checked_mul(size) != Some(len) {
                return Err(Error::invalid(format!(
                    "{datatype} tensor of {count} elements needs {} bytes, got {len}",
                    count.saturating_mul(size)
                )));
            }
        }
        None => {
            if count.checked_mul(4).is_none_or(|least| least > len) {
                return Err(Error::invalid(format!(
                    "BYTES tensor of {count} elements needs at least {} bytes (a 4-byte length each), got {len}",
                    count.saturating_mul(4)
                )));
            }
        }
    }
    Ok(())
}

/// A shape as the protocols carry it (signed dimensions) checked into sizes.
pub fn shape_from_wire(input: &str, dims: &[i64]) -> Result<Vec<usize>> {
    dims.iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| negative_dimension(input, dims))
}

/// [`shape_from_wire`] into `sizes`, allocating nothing (the wire check's path); a shape of more
/// than [`MAX_DIMS`] dimensions, refused before, is cut to that.
pub fn shape_from_wire_into<'s>(
    input: &str,
    dims: &[i64],
    sizes: &'s mut [usize; MAX_DIMS],
) -> Result<&'s [usize]> {
    let sizes = &mut sizes[..dims.len().min(MAX_DIMS)];
    for (size, &d) in sizes.iter_mut().zip(dims) {
        *size = usize::try_from(d).map_err(|_| negative_dimension(input, dims))?;
    }
    Ok(sizes)
}

fn negative_dimension(input: &str, dims: &[i64]) -> Error {
    Error::invalid(format!(
        "input '{input}': negative dimension in shape {dims:?}"
    ))
}

/// Number of elements a shape holds, or an error when it overflows or exceeds `limit` (the most the
/// request could possibly carry): checked before anything is allocated for it.
pub fn element_count(shape: &[usize], limit: usize) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|n| *n <= limit)
        .ok_or_else(|| {
            Error::invalid(format!(
                "shape {shape:?} holds more elements than the request carries"
            ))
        })
}

/// Adds one input's BYTES elements to the request's running total, refusing the request once the total
/// passes `--max-bytes-elements`. Shared by the HTTP and gRPC decoders so both refuse alike.
pub fn count_bytes_elements(
    total: &mut usize,
    count: usize,
    cap: usize,
) -> crate::error::Result<()> {
    *total = total.saturating_add(count);
    if *total > cap {
        return Err(crate::error::Error::PayloadTooLarge(format!(
            "the request's BYTES inputs hold more than {cap} elements together (--max-bytes-elements)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_from_the_wire_read_alike_into_a_vector_or_an_array() {
        let mut sizes = [0; MAX_DIMS];
        for dims in [&[][..], &[1, 30], &[0, 4, 5], &[2, -1], &[-3]] {
            let into = shape_from_wire_into("x", dims, &mut sizes).map(<[usize]>::to_vec);
            match (shape_from_wire("x", dims), into) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{dims:?}: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn binary_round_trip_every_datatype() {
        let samples = vec![
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Uint16(vec![1, u16::MAX]),
            TensorData::Uint32(vec![2, u32::MAX]),
            TensorData::Uint64(vec![3, u64::MAX]),
            TensorData::Int8(vec![-128, 127]),
            TensorData::Int16(vec![i16::MIN, 5]),
            TensorData::Int32(vec![i32::MIN, 6]),
            TensorData::Int64(vec![i64::MIN, 7]),
            TensorData::Fp16(vec![f16::from_f32(1.5), f16::from_f32(-2.0)]),
            TensorData::Fp32(vec![1.25, -3.5]),
            TensorData::Fp64(vec![1e300, -0.0]),
            TensorData::Bytes(vec![b"ab".to_vec(), Vec::new()]),
        ];
        for data in samples {
            let mut wire = Vec::new();
            data.write_le_bytes(&mut wire);
            assert_eq!(wire.len(), data.byte_len());
            let back = TensorData::from_le_bytes(data.datatype(), &wire, 2).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn wrong_byte_counts_are_rejected() {
        assert!(TensorData::from_le_bytes(DataType::Fp32, &[0; 7], 2).is_err());
        assert!(TensorData::from_le_bytes(DataType::Bytes, &[5, 0, 0, 0, 1], 1).is_err());
        assert!(TensorData::from_le_bytes(DataType::Bytes, &[0, 0], 1).is_err());
        assert!(TensorData::from_le_bytes(DataType::Bytes, &[0, 0, 0, 0], 2).is_err());
    }

    #[test]
    fn wire_lengths_are_checked_against_counts() {
        assert!(check_wire_len(DataType::Fp32, 30, 120).is_ok());
        let err = check_wire_len(DataType::Fp32, 30, 118).unwrap_err();
        assert!(
            err.to_string().contains("needs 120 bytes, got 118"),
            "{err}"
        );
        assert!(check_wire_len(DataType::Fp64, usize::MAX, 8).is_err());
        assert!(check_wire_len(DataType::Bytes, 2, 8).is_ok());
        assert!(check_wire_len(DataType::Bytes, 3, 8).is_err());
        assert!(check_wire_len(DataType::Bytes, usize::MAX, 8).is_err());
        assert_eq!(decoded_bytes(DataType::Fp32, 30, 0), 120);
        assert_eq!(decoded_bytes(DataType::Bytes, 2, 10), 2 * 24 + 10);
        assert_eq!(decoded_bytes(DataType::Fp64, usize::MAX, 0), usize::MAX);
        let data = TensorData::Bytes(vec![b"ab".to_vec(), Vec::new()]);
        assert_eq!(data.heap_bytes(), 2 * 24 + 2);
        assert_eq!(TensorData::Fp32(vec![0.0; 3]).heap_bytes(), 12);
    }

    #[test]
    fn absurd_shapes_fail_before_allocation() {
        assert!(element_count(&[4_294_967_296, 30], 1 << 20).is_err());
        assert!(element_count(&[usize::MAX, 2], usize::MAX).is_err());
        assert_eq!(element_count(&[2, 30], 60).unwrap(), 60);
        assert_eq!(element_count(&[0, 30], 0).unwrap(), 0);
    }
}
