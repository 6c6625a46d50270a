//! HTTP: bulk bodies, a large body built from one repeated fragment, with the shape it declares.

use keel_server::tensor::DataType;
use proptest::prelude::*;
use proptest::sample::select;

use crate::generators::{bulk_count, repeat};

/// Large bodies built from one repeated fragment: what a 64 MiB attack looks like, scaled down.
#[derive(Clone, Debug)]
pub(crate) enum Bulk {
    /// `data` of `n` copies of `token`, the shape declaring `declared` (or `n`) elements.
    Data {
        datatype: &'static str,
        token: &'static str,
        n: usize,
        declared: Declared,
    },
    /// A `parameters` value (request, input or output) holding an `n`-element array or object.
    Params {
        scope: u8,
        token: &'static str,
        n: usize,
        object: bool,
    },
    /// A shape of `n` dimensions.
    Rank {
        n: usize,
        dim: &'static str,
    },
    /// `n` inputs or `n` outputs.
    Inputs {
        n: usize,
    },
    Outputs {
        n: usize,
    },
    /// An `n`-character id or input name.
    LongString {
        n: usize,
        field: &'static str,
    },
    /// Binary BYTES: `n` empty elements (4 bytes each) behind the JSON.
    BinaryBytes {
        n: usize,
        declared: Declared,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Declared {
    Truthful,
    /// As many elements as the data has bytes: the most `element_count` lets through.
    BodyBytes,
    Huge,
}

pub(crate) fn bulk() -> impl Strategy<Value = Bulk> + Clone {
    let declared = select(vec![
        Declared::Truthful,
        Declared::BodyBytes,
        Declared::Huge,
    ]);
    let token = select(vec![
        "0", "\"\"", "\"a\"", "[]", "[0]", "true", "1e308", "-0.0", "{}", "null", "[[]]",
    ]);
    prop_oneof![
        3 => (
            select(DataType::ALL.map(DataType::name).to_vec()),
            token.clone(),
            bulk_count(),
            declared.clone()
        )
            .prop_map(|(datatype, token, n, declared)| Bulk::Data {
                datatype,
                token,
                n,
                declared
            }),
        2 => (0u8..3, token, bulk_count(), any::<bool>()).prop_map(|(scope, token, n, object)| {
            Bulk::Params {
                scope,
                token,
                n,
                object,
            }
        }),
        1 => (bulk_count(), select(vec!["1", "0", "-1", "4294967296"]))
            .prop_map(|(n, dim)| Bulk::Rank { n, dim }),
        1 => bulk_count().prop_map(|n| Bulk::Inputs { n: n / 20 }),
        1 => bulk_count().prop_map(|n| Bulk::Outputs { n: n / 4 }),
        1 => (bulk_count(), select(vec!["id", "name"]))
            .prop_map(|(n, field)| Bulk::LongString { n, field }),
        1 => (bulk_count(), declared).prop_map(|(n, declared)| Bulk::BinaryBytes { n, declared }),
    ]
}

fn declared_dim(declared: Declared, n: usize, body_bytes: usize) -> u64 {
    match declared {
        Declared::Truthful => n as u64,
        Declared::BodyBytes => body_bytes as u64,
        Declared::Huge => 1 << 40,
    }
}

/// The body and `Inference-Header-Content-Length` of a bulk case.
pub(crate) fn bulk_body(b: &Bulk) -> (Vec<u8>, Option<usize>) {
    let input = |shape: String, datatype: &str, rest: &str| {
        format!(r#"{{"name":"input","shape":{shape},"datatype":"{datatype}"{rest}}}"#)
    };
    let json = match b {
        Bulk::Data {
            datatype,
            token,
            n,
            declared,
        } => {
            let data = repeat(token, *n);
            let dim = declared_dim(*declared, *n, data.len());
            format!(
                r#"{{"inputs":[{}]}}"#,
                input(format!("[{dim}]"), datatype, &format!(r#","data":{data}"#))
            )
        }
        Bulk::Params {
            scope,
            token,
            n,
            object,
        } => {
            let value = if *object {
                let mut s = String::from("{");
                for i in 0..*n {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&format!(r#""k{i}":{token}"#));
                }
                s.push('}');
                s
            } else {
                repeat(token, *n)
            };
            let params = format!(r#","parameters":{{"p":{value}}}"#);
            let data = r#","data":[1.0]"#;
            match scope {
                0 => format!(
                    r#"{{"inputs":[{}]{params}}}"#,
                    input("[1]".into(), "FP32", data)
                ),
                1 => format!(
                    r#"{{"inputs":[{}]}}"#,
                    input("[1]".into(), "FP32", &format!("{data}{params}"))
                ),
                _ => format!(
                    r#"{{"inputs":[{}],"outputs":[{{"name":"label"{params}}}]}}"#,
                    input("[1]".into(), "FP32", data)
                ),
            }
        }
        Bulk::Rank { n, dim } => format!(
            r#"{{"inputs":[{}]}}"#,
            input(repeat(dim, *n), "FP32", r#","data":[1.0]"#)
        ),
        Bulk::Inputs { n } => {
            let one = input("[1]".into(), "FP32", r#","data":[1.0]"#);
            format!(r#"{{"inputs":{}}}"#, repeat(&one, *n))
        }
        Bulk::Outputs { n } => format!(
            r#"{{"inputs":[{}],"outputs":{}}}"#,
            input("[1]".into(), "FP32", r#","data":[1.0]"#),
            repeat(r#"{"name":"label"}"#, *n)
        ),
        Bulk::LongString { n, field } => {
            let long = "x".repeat(*n);
            if *field == "id" {
                format!(
                    r#"{{"id":"{long}","inputs":[{}]}}"#,
                    input("[1]".into(), "FP32", r#","data":[1.0]"#)
                )
            } else {
                format!(
                    r#"{{"inputs":[{{"name":"{long}","shape":[1],"datatype":"FP32","data":[1.0]}}]}}"#
                )
            }
        }
        Bulk::BinaryBytes { n, declared } => {
            let dim = declared_dim(*declared, *n, 4 * n);
            let json = format!(
                r#"{{"inputs":[{}]}}"#,
                input(
                    format!("[{dim}]"),
                    "BYTES",
                    &format!(r#","parameters":{{"binary_data_size":{}}}"#, 4 * n)
                )
            );
            let len = json.len();
            let mut body = json.into_bytes();
            body.resize(len + 4 * n, 0);
            return (body, Some(len));
        }
    };
    (json.into_bytes(), None)
}
