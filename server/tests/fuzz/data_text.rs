//! JSON `data`: the generators of `data` texts for the `json_data` target.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// One scalar of a `data` array as text: what clients send, each integer type's edges, and what JSON
/// refuses.
fn scalar_text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => select(vec![
            "0", "-0", "1", "-1", "7", "0.5", "-0.0", "1.0", "1.5", "2.5e1", "1e5", "1E-5", "1e+5",
            "0e0", "1e400", "-1e400", "1e-400", "1e39", "-1e39", "3.4028235e38", "3.4028236e38",
            "5e-324", "1.8e308", "65504", "65520", "127", "128", "-128", "-129", "255", "256",
            "32767", "32768", "-32768", "-32769", "65535", "65536", "2147483647", "2147483648",
            "-2147483648", "-2147483649", "4294967295", "4294967296", "9007199254740993",
            "9223372036854775807", "9223372036854775808", "-9223372036854775808",
            "-9223372036854775809", "18446744073709551615", "18446744073709551616",
            "18446744073709551615.0", "123456789012345678901234567890", "0.1234567812345678",
            "true", "false", "null", "\"x\"", "\"a,]\"", "{}", "{\"a\":[1]}",
            "01", "-01", "1.", ".5", "+1", "-", "1e", "1e+", "1.e5", "NaN", "Infinity",
            "-Infinity", "0x10", "1_0", "tru", "nul", "1/2", "1-2", "1.2.3",
        ])
        .prop_map(String::from),
        2 => any::<f32>().prop_map(|x| format!("{x}")),
        1 => any::<f32>().prop_map(|x| format!("{x:e}")),
        1 => any::<f32>().prop_map(|x| serde_json::to_string(&x).unwrap_or_default()),
        1 => any::<f64>().prop_map(|x| format!("{x}")),
        1 => any::<i64>().prop_map(|x| x.to_string()),
        1 => any::<u64>().prop_map(|x| x.to_string()),
        1 => any::<i16>().prop_map(|x| x.to_string()),
        2 => "-?[0-9]{1,20}(\\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?",
        1 => "[-+.eE0-9]{1,12}",
    ]
}

/// Scalars of one kind, so that a case is often valid for some datatype: small integers, FP32 values as
/// clients print them, booleans, or anything (`scalar_text`).
fn scalars(n: usize) -> impl Strategy<Value = Vec<String>> + Clone {
    prop_oneof![
        2 => vec((0u16..300).prop_map(|v| v.to_string()), n),
        2 => vec(any::<i8>().prop_map(|v| v.to_string()), n),
        3 => vec(
            prop_oneof![
                any::<f32>().prop_map(|x| format!("{x}")),
                (-1000.0f32..1000.0).prop_map(|x| format!("{x}")),
                (-1.0f32..1.0).prop_map(|x| format!("{x}")),
                (-1.0f64..1.0).prop_map(|x| format!("{x:.9}")),
            ],
            n
        ),
        1 => vec(any::<bool>().prop_map(|v| v.to_string()), n),
        3 => vec(scalar_text(), n),
    ]
}

/// A `data` text and the count its shape declares: nested arrays of `dims` (flat when asked; one row cut
/// short when asked), separated compactly or as pretty printers do, sometimes with a character inserted,
/// removed or replaced.
pub(crate) fn data_text() -> impl Strategy<Value = (String, usize)> + Clone {
    let separator = select(vec![",", ", ", " ,", ",\n  ", " , "]);
    let edit = proptest::option::weighted(
        0.2,
        (
            any::<usize>(),
            select(vec![
                "", "[", "]", ",", " ", "\"", "{", "-", ".", "e", "0", "x",
            ]),
            any::<bool>(),
        ),
    );
    (vec(0usize..5, 0..4), 0usize..9)
        .prop_flat_map(move |(mut dims, rows)| {
            dims.insert(0, rows);
            let n = dims.iter().product::<usize>().min(200);
            (
                Just(dims),
                scalars(n),
                separator.clone(),
                any::<bool>(),
                select(vec![0u8, 0, 0, 1, 2]),
                edit.clone(),
            )
        })
        .prop_map(|(dims, scalars, sep, flat, odd, edit)| {
            fn nest(scalars: &[String], dims: &[usize], sep: &str) -> String {
                match dims {
                    [] => scalars.first().cloned().unwrap_or_default(),
                    [_] => format!("[{}]", scalars.join(sep)),
                    [_, rest @ ..] => {
                        let inner: usize = rest.iter().product();
                        let rows: Vec<String> = (0..dims[0])
                            .map(|i| {
                                let end = ((i + 1) * inner).min(scalars.len());
                                nest(&scalars[(i * inner).min(end)..end], rest, sep)
                            })
                            .collect();
                        format!("[{}]", rows.join(sep))
                    }
                }
            }
            let mut scalars = scalars;
            let count = scalars.len();
            if odd == 1 {
                // One element short: ragged when nested.
                scalars.pop();
            }
            let mut text = if odd == 2 && count > 0 {
                // A rank-0 tensor: the bare scalar.
                scalars[0].clone()
            } else if flat || dims.len() == 1 {
                format!("[{}]", scalars.join(sep))
            } else {
                nest(&scalars, &dims, sep)
            };
            if let Some((at, with, replace)) = edit {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let end = if replace {
                    text[at..].chars().next().map_or(at, |c| at + c.len_utf8())
                } else {
                    at
                };
                text.replace_range(at..end, with);
            }
            (text, if odd == 2 { 1 } else { count })
        })
}
