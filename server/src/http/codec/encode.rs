//! A response body: JSON, with Triton's binary outputs after it when asked.
//!
//! Written by hand rather than through serde: the keys are fixed, so they go out as literal bytes, and
//! a name or id goes out as it is unless it holds a byte JSON escapes. Through serde each key and string
//! was escaped byte by byte, and the version number formatted into a `String` of its own: about 4,900
//! instructions per single-row HTTP request against about 2,000 now (`benches/instructions.py`,
//! docs/performance.md). The output is byte for byte serde_json's (`tests` holds it to that).

use super::BinaryOutputs;
use crate::infer::InferResponse;
use crate::tensor::{Tensor, TensorData};

/// An encoded response body; `json_len` is set when binary outputs follow the JSON.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

pub fn encode_response(response: &InferResponse, binary: &BinaryOutputs) -> EncodedResponse {
    let mut tail = Vec::new();
    let mut any_binary = false;
    let mut body = Vec::with_capacity(128 + response.outputs.iter().map(json_guess).sum::<usize>());
    body.extend_from_slice(b"{\"model_name\":");
    string(&mut body, &response.model_name);
    body.extend_from_slice(b",\"model_version\":\"");
    body.extend_from_slice(
        itoa::Buffer::new()
            .format(response.model_version)
            .as_bytes(),
    );
    body.push(b'"');
    if let Some(id) = &response.id {
        body.extend_from_slice(b",\"id\":");
        string(&mut body, id);
    }
    body.extend_from_slice(b",\"outputs\":[");
    for (i, t) in response.outputs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"name\":");
        string(&mut body, &t.name);
        body.extend_from_slice(b",\"datatype\":\"");
        body.extend_from_slice(t.datatype().name().as_bytes());
        body.extend_from_slice(b"\",\"shape\":");
        ints(&mut body, &t.shape);
        if binary.is_binary(&t.name) {
            any_binary = true;
            let before = tail.len();
            t.data.write_le_bytes(&mut tail);
            body.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            body.extend_from_slice(itoa::Buffer::new().format(tail.len() - before).as_bytes());
            body.push(b'}');
        } else {
            body.extend_from_slice(b",\"data\":");
            data(&mut body, &t.data);
        }
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    if !any_binary {
        return EncodedResponse {
            body,
            json_len: None,
        };
    }
    let json_len = body.len();
    body.extend_from_slice(&tail);
    EncodedResponse {
        body,
        json_len: Some(json_len),
    }
}

/// About how many bytes an output's JSON takes, for the body's first allocation.
fn json_guess(t: &Tensor) -> usize {
    64 + t.name.len() + 12 * t.data.len()
}

/// `s` as a JSON string: as it is when no byte needs escaping (the usual names and ids), else escaped
/// by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if !needs_escaping(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a `Vec` cannot fail, nor can serialising a `str`.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether `s` holds a byte JSON escapes in a string (a control character, `"` or `\`), eight bytes at
/// a time: a test per byte cost about ten instructions a byte.
fn needs_escaping(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    // Whether any byte of `x` is below `n` (exact for n <= 128); a zero byte is one below 1.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH != 0;
    let escaped = |x: u64| {
        below(x, 0x20)
            || below(x ^ (ONES * u64::from(b'"')), 1)
            || below(x ^ (ONES * u64::from(b'\\')), 1)
    };
    let mut chunks = s.chunks_exact(8);
    if chunks
        .by_ref()
        .any(|c| escaped(u64::from_ne_bytes(c.try_into().expect("8 bytes"))))
    {
        return true;
    }
    // The rest padded with a byte that needs none.
    let mut last = [b'a'; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    escaped(u64::from_ne_bytes(last))
}

/// A tensor's elements as a JSON array, each written as serde_json writes it (non-finite floats as
/// `null`, BYTES elements as strings, invalid UTF-8 replaced).
fn data(out: &mut Vec<u8>, data: &TensorData) {
    match data {
        TensorData::Bool(v) => list(out, v, |out, &b| {
            out.extend_from_slice(if b { b"true" } else { b"false" })
        }),
        TensorData::Uint8(v) => ints(out, v),
        TensorData::Uint16(v) => ints(out, v),
        TensorData::Uint32(v) => ints(out, v),
        TensorData::Uint64(v) => ints(out, v),
        TensorData::Int8(v) => ints(out, v),
        TensorData::Int16(v) => ints(out, v),
        TensorData::Int32(v) => ints(out, v),
        TensorData::Int64(v) => ints(out, v),
        TensorData::Fp16(v) => floats(out, v.iter().map(|x| x.to_f32()), f32::is_finite),
        TensorData::Fp32(v) => floats(out, v.iter().copied(), f32::is_finite),
        TensorData::Fp64(v) => floats(out, v.iter().copied(), f64::is_finite),
        TensorData::Bytes(v) => list(out, v, |out, b| string(out, &String::from_utf8_lossy(b))),
    }
}

fn ints<T: itoa::Integer + Copy>(out: &mut Vec<u8>, v: &[T]) {
    let mut buffer = itoa::Buffer::new();
    list(out, v, |out, &x| {
        out.extend_from_slice(buffer.format(x).as_bytes())
    });
}

fn floats<T: zmij::Float>(
    out: &mut Vec<u8>,
    v: impl IntoIterator<Item = T>,
    finite: impl Fn(T) -> bool,
) {
    let mut buffer = zmij::Buffer::new();
    list(out, v, |out, x| {
        if finite(x) {
            out.extend_from_slice(buffer.format_finite(x).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    });
}

/// `[a,b,...]`, each element written by `each`.
fn list<T>(
    out: &mut Vec<u8>,
    v: impl IntoIterator<Item = T>,
    mut each: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, x) in v.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, x);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Serialize, Serializer};

    /// The encoder this one replaced, through serde_json's derive: the reference, byte for byte.
    mod by_serde {
        use super::*;

        #[derive(Serialize)]
        struct ResponseJson<'a> {
            model_name: &'a str,
            model_version: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
            outputs: Vec<OutputOut<'a>>,
        }

        #[derive(Serialize)]
        struct OutputOut<'a> {
            name: &'a str,
            datatype: &'static str,
            shape: &'a [usize],
            #[serde(skip_serializing_if = "Option::is_none")]
            parameters: Option<BinarySize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<JsonData<'a>>,
        }

        #[derive(Serialize)]
        struct BinarySize {
            binary_data_size: usize,
        }

        struct JsonData<'a>(&'a TensorData);

        impl Serialize for JsonData<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                match self.0 {
                    TensorData::Bool(v) => s.collect_seq(v),
                    TensorData::Uint8(v) => s.collect_seq(v),
                    TensorData::Uint16(v) => s.collect_seq(v),
                    TensorData::Uint32(v) => s.collect_seq(v),
                    TensorData::Uint64(v) => s.collect_seq(v),
                    TensorData::Int8(v) => s.collect_seq(v),
                    TensorData::Int16(v) => s.collect_seq(v),
                    TensorData::Int32(v) => s.collect_seq(v),
                    TensorData::Int64(v) => s.collect_seq(v),
                    TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
                    TensorData::Fp32(v) => s.collect_seq(v),
                    TensorData::Fp64(v) => s.collect_seq(v),
                    TensorData::Bytes(v) => {
                        s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b)))
                    }
                }
            }
        }

        /// The JSON part of the response, `binary_sizes` giving each output's binary size or `None`.
        pub fn json(response: &InferResponse, binary_sizes: &[Option<usize>]) -> Vec<u8> {
            let outputs = response
                .outputs
                .iter()
                .zip(binary_sizes)
                .map(|(t, size)| OutputOut {
                    name: &t.name,
                    datatype: t.datatype().name(),
                    shape: &t.shape,
                    parameters: size.map(|binary_data_size| BinarySize { binary_data_size }),
                    data: size.is_none().then_some(JsonData(&t.data)),
                })
                .collect();
            serde_json::to_vec(&ResponseJson {
                model_name: &response.model_name,
                model_version: response.model_version.to_string(),
                id: response.id.as_deref(),
                outputs,
            })
            .unwrap()
        }
    }

    fn tensor(name: &str, shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            data,
        }
    }

    #[test]
    fn the_json_is_what_serde_json_writes() {
        let outputs = vec![
            tensor(
                "label",
                vec![2, 1],
                TensorData::Int64(vec![i64::MIN, i64::MAX]),
            ),
            tensor(
                "probabilities",
                vec![1, 7],
                TensorData::Fp32(vec![
                    0.1,
                    -2.5e-12,
                    f32::NAN,
                    f32::INFINITY,
                    f32::MAX,
                    0.0,
                    1e7,
                ]),
            ),
            tensor(
                "d",
                vec![3],
                TensorData::Fp64(vec![1e300, -0.0, f64::NEG_INFINITY]),
            ),
            tensor(
                "h",
                vec![2],
                TensorData::Fp16(vec![half::f16::from_f32(1.5), half::f16::NAN]),
            ),
            tensor("b", vec![2], TensorData::Bool(vec![true, false])),
            tensor("u", vec![2], TensorData::Uint64(vec![0, u64::MAX])),
            tensor("u8", vec![2], TensorData::Uint8(vec![0, 255])),
            tensor("u16", vec![1], TensorData::Uint16(vec![65535])),
            tensor("u32", vec![1], TensorData::Uint32(vec![u32::MAX])),
            tensor("i8", vec![2], TensorData::Int8(vec![-128, 127])),
            tensor("i16", vec![1], TensorData::Int16(vec![i16::MIN])),
            tensor("i32", vec![1], TensorData::Int32(vec![i32::MIN])),
            tensor(
                "s",
                vec![3],
                TensorData::Bytes(vec![
                    b"plain".to_vec(),
                    b"q\"u\\o\n\x01\x7f".to_vec(),
                    vec![0xff, b'a', 0xe2, 0x82, 0xac],
                ]),
            ),
            tensor("t\"ab\tname\u{e9}", vec![0], TensorData::Fp32(vec![])),
        ];
        for id in [
            None,
            Some("example"),
            Some("a\"b\\c\u{1}d\u{2028}é"),
            Some(""),
        ] {
            for model in ["breast-cancer", "m\"odel\u{7}"] {
                let response = InferResponse {
                    model_name: model.into(),
                    model_version: 18_446_744_073_709_551_615,
                    id: id.map(str::to_string),
                    outputs: outputs.clone(),
                };
                let encoded = encode_response(&response, &BinaryOutputs::default());
                assert_eq!(encoded.json_len, None);
                let wanted = by_serde::json(&response, &[None; 14]);
                assert_eq!(
                    String::from_utf8_lossy(&encoded.body),
                    String::from_utf8_lossy(&wanted)
                );
            }
        }
    }

    #[test]
    fn bytes_that_need_escaping_are_found_wherever_they_are() {
        for len in 0..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'x'; len];
                    s[at] = b;
                    let wanted = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escaping(&s), wanted, "{s:?}");
                }
            }
            assert!(!needs_escaping(&vec![0xff; len]));
        }
    }

    #[test]
    fn binary_outputs_follow_the_json_with_their_sizes() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: 3,
            id: Some("x".into()),
            outputs: vec![
                tensor("a", vec![2], TensorData::Fp32(vec![1.0, 2.0])),
                tensor("b", vec![1], TensorData::Int64(vec![7])),
                tensor(
                    "c",
                    vec![2],
                    TensorData::Bytes(vec![b"xy".to_vec(), vec![]]),
                ),
            ],
        };
        let binary = BinaryOutputs {
            default: false,
            overrides: [("a".to_string(), true), ("c".to_string(), true)].into(),
        };
        let encoded = encode_response(&response, &binary);
        let n = encoded.json_len.expect("binary outputs follow");
        assert_eq!(
            encoded.body[..n],
            by_serde::json(&response, &[Some(8), None, Some(10)])[..]
        );
        let mut tail = Vec::new();
        response.outputs[0].data.write_le_bytes(&mut tail);
        response.outputs[2].data.write_le_bytes(&mut tail);
        assert_eq!(&encoded.body[n..], &tail[..]);
    }
}
