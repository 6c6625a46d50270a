//! Shared generators: names, datatypes, dims, JSON values, valid tensors (and their comparison), byte
//! mutations of a valid seed, and the sizes and repeated fragments of bulk cases.

use half::f16;
use keel_server::tensor::{DataType, Tensor, TensorData};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Number, Value};

pub(crate) const PARAM_KEYS: &[&str] = &[
    "binary_data_size",
    "binary_data_output",
    "binary_data",
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
    "classification",
    "timeout",
    "priority",
    "sequence_id",
    "x",
];

pub(crate) fn name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => select(vec!["input", "label", "probabilities", "", "x y", "é", "\"", "a\u{0}b", "INPUT"])
            .prop_map(String::from),
        2 => "[a-z_]{1,8}",
        1 => any::<String>(),
    ]
}

pub(crate) fn datatype_name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        8 => select(DataType::ALL.to_vec()).prop_map(|d| d.name().to_string()),
        1 => select(vec!["", "fp32", "FP8", "BF16", "STRING", "FP32 ", "INT128", "TYPE_FP32"])
            .prop_map(String::from),
        1 => any::<String>(),
    ]
}

pub(crate) fn dim() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![
        6 => 0i64..5,
        1 => Just(30i64),
        2 => select(vec![
            -1,
            -2,
            i64::MIN,
            i64::MAX,
            1 << 31,
            1 << 32,
            (1 << 32) + 1,
            1 << 62,
            u32::MAX as i64,
            1 << 20,
        ]),
        1 => any::<i64>(),
    ]
}

pub(crate) fn interesting_f64() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        select(vec![
            0.5,
            -0.0,
            1e308,
            -1e308,
            5e-324,
            3.4028235e38,
            3.5e38,
            65504.0,
            65520.0,
            1e39,
            f64::EPSILON,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            9007199254740993.0,
            1.8446744073709552e19,
        ]),
        any::<f64>(),
    ]
}

fn json_scalar() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        select(vec![0i64, 1, -1, 2, 4, 120, 1 << 32]).prop_map(Value::from),
        interesting_f64().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        name().prop_map(Value::String),
    ]
}

pub(crate) fn json_any() -> impl Strategy<Value = Value> + Clone {
    json_scalar().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(
                prop_oneof![select(PARAM_KEYS.to_vec()).prop_map(String::from), name()],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A tensor whose data matches its shape and datatype.
pub(crate) fn valid_tensor() -> impl Strategy<Value = Tensor> + Clone {
    (name(), select(DataType::ALL.to_vec()), vec(0usize..4, 0..4)).prop_flat_map(
        |(name, dt, shape)| {
            let n = shape.iter().product::<usize>();
            tensor_data(dt, n).prop_map(move |data| Tensor {
                name: name.clone(),
                shape: shape.clone(),
                data,
            })
        },
    )
}

fn tensor_data(dt: DataType, n: usize) -> BoxedStrategy<TensorData> {
    match dt {
        DataType::Bool => vec(any::<bool>(), n).prop_map(TensorData::Bool).boxed(),
        DataType::Uint8 => vec(any::<u8>(), n).prop_map(TensorData::Uint8).boxed(),
        DataType::Uint16 => vec(any::<u16>(), n).prop_map(TensorData::Uint16).boxed(),
        DataType::Uint32 => vec(any::<u32>(), n).prop_map(TensorData::Uint32).boxed(),
        DataType::Uint64 => vec(any::<u64>(), n).prop_map(TensorData::Uint64).boxed(),
        DataType::Int8 => vec(any::<i8>(), n).prop_map(TensorData::Int8).boxed(),
        DataType::Int16 => vec(any::<i16>(), n).prop_map(TensorData::Int16).boxed(),
        DataType::Int32 => vec(any::<i32>(), n).prop_map(TensorData::Int32).boxed(),
        DataType::Int64 => vec(any::<i64>(), n).prop_map(TensorData::Int64).boxed(),
        DataType::Fp16 => vec(any::<u16>(), n)
            .prop_map(|v| TensorData::Fp16(v.into_iter().map(f16::from_bits).collect()))
            .boxed(),
        DataType::Fp32 => vec(any::<f32>(), n).prop_map(TensorData::Fp32).boxed(),
        DataType::Fp64 => vec(any::<f64>(), n).prop_map(TensorData::Fp64).boxed(),
        DataType::Bytes => vec(
            prop_oneof![
                "\\PC{0,4}".prop_map(String::into_bytes),
                vec(any::<u8>(), 0..6)
            ],
            n,
        )
        .prop_map(TensorData::Bytes)
        .boxed(),
    }
}

/// The bytes of each tensor's data, for comparisons that hold for NaN too.
pub(crate) fn wire(data: &TensorData) -> Vec<u8> {
    let mut out = Vec::new();
    data.write_le_bytes(&mut out);
    out
}

pub(crate) fn same_tensors(got: &[Tensor], want: &[Tensor]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        prop_assert_eq!(&g.name, &w.name);
        prop_assert_eq!(&g.shape, &w.shape);
        prop_assert_eq!(g.datatype(), w.datatype());
        prop_assert!(
            wire(&g.data) == wire(&w.data),
            "data of '{}' differs",
            w.name
        );
    }
    Ok(())
}

/// Every accepted tensor holds exactly the elements its shape needs.
pub(crate) fn consistent(inputs: &[Tensor]) -> Result<(), TestCaseError> {
    for t in inputs {
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        prop_assert_eq!(
            n,
            Some(t.data.len()),
            "tensor '{}' shape {:?}",
            t.name,
            t.shape
        );
    }
    Ok(())
}

/// Raw byte mutations of a valid seed.
#[derive(Clone, Debug)]
pub(crate) enum ByteOp {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b",",
    b":",
    b"\\",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\\ud800",
    b"\\u0000",
    b"\xff",
    b"\xc3",
    b"[[[[[[[[",
    b"nan",
    b"inf",
    b"=",
    b"\n[a]\n",
    b"\x00",
];

pub(crate) fn byte_ops() -> impl Strategy<Value = Vec<ByteOp>> + Clone {
    let op = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteOp::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                select(TOKENS.to_vec()).prop_map(<[u8]>::to_vec),
                vec(any::<u8>(), 1..4)
            ]
        )
            .prop_map(|(i, b)| ByteOp::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| ByteOp::Delete(i, n)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| ByteOp::Duplicate(i, n)),
        any::<usize>().prop_map(ByteOp::Truncate),
    ];
    vec(op, 1..6)
}

pub(crate) fn mutate(bytes: &mut Vec<u8>, ops: &[ByteOp]) {
    for op in ops {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match op {
            ByteOp::Flip(i, b) if len > 0 => bytes[i % len] ^= b | 1,
            ByteOp::Flip(..) => {}
            ByteOp::Insert(i, b) => {
                let i = at(*i);
                bytes.splice(i..i, b.iter().copied());
            }
            ByteOp::Delete(i, n) => {
                let i = at(*i);
                let end = (i + n).min(len);
                bytes.drain(i..end);
            }
            ByteOp::Duplicate(i, n) => {
                let i = at(*i);
                let end = (i + n).min(len);
                let copy = bytes[i..end].to_vec();
                bytes.splice(end..end, copy);
            }
            ByteOp::Truncate(i) => bytes.truncate(at(*i)),
        }
    }
}

/// How big the bulk cases are: large enough that `SLACK` does not hide an amplification.
pub(crate) fn bulk_count() -> impl Strategy<Value = usize> + Clone {
    select(vec![2_000usize, 20_000, 100_000])
}

pub(crate) fn repeat(token: &str, n: usize) -> String {
    let mut s = String::with_capacity((token.len() + 1) * n + 2);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(token);
    }
    s.push(']');
    s
}
