//! Tests of the numeric and BOOL data scanner: the number grammar, each type's rules, the errors.

use super::number::{digits_value, leading_digits, not_plain_number};
use super::*;

fn ok<T: Element + std::fmt::Debug + PartialEq>(text: &str) -> Vec<T> {
    let n = scan::<T>(text, usize::MAX)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .len();
    scan::<T>(text, n).unwrap()
}

fn err<T: Element + std::fmt::Debug>(text: &str, limit: usize) -> String {
    match scan::<T>(text, limit) {
        Ok(v) => panic!("{text} accepted as {v:?}"),
        Err(e) => e,
    }
}

/// Long enough arrays that the fast path reads the elements (it needs 24 bytes of text ahead).
fn padded(element: &str) -> String {
    format!("[{element}, {}]", ["0"; 24].join(","))
}

#[test]
fn the_json_number_grammar() {
    for text in [
        "0", "-0", "7", "-7", "10", "0.5", "-0.5", "1e5", "1E5", "1e+5", "1e-5", "0e0",
    ] {
        ok::<f64>(&format!("[{text}]"));
        ok::<f64>(&padded(text));
    }
    for (text, why) in [
        ("01", "invalid number"),
        ("-01", "invalid number"),
        ("00", "invalid number"),
        ("1.", "invalid number"),
        ("1.e5", "invalid number"),
        ("1e", "invalid number"),
        ("1e+", "invalid number"),
        ("-", "invalid number"),
        ("-.5", "invalid number"),
        ("-a", "invalid number"),
        (".5", "expected value"),
        ("+1", "expected value"),
        ("NaN", "expected value"),
        ("Infinity", "expected value"),
        ("-Infinity", "invalid number"),
        ("0x10", "expected `,` or `]`"),
        ("1_0", "expected `,` or `]`"),
        ("1.2.3", "expected `,` or `]`"),
        ("1-2", "expected `,` or `]`"),
        ("1/2", "expected `,` or `]`"),
        ("1 2", "expected `,` or `]`"),
        ("1e5e5", "expected `,` or `]`"),
    ] {
        for json in [format!("[{text}]"), padded(text)] {
            let e = err::<f64>(&json, 100);
            assert!(e.contains(why), "{json}: {e}");
        }
    }
    // At the end of the text.
    for (text, why) in [
        ("[1.", "EOF while parsing a value"),
        ("[1e", "EOF while parsing a value"),
        ("[-", "EOF while parsing a value"),
        ("[1", "EOF while parsing a list"),
        ("[1,", "EOF while parsing a value"),
        ("[", "EOF while parsing a value"),
        ("", "EOF while parsing a value"),
        ("[tr", "EOF while parsing a value"),
    ] {
        let e = err::<f64>(text, 100);
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn structure() {
    assert_eq!(
        ok::<f32>(" [ [1 , 2 ] ,\n\t[3,4]\r] "),
        [1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(ok::<f32>("[[[1],[2]],[[3],[4]]]"), [1.0, 2.0, 3.0, 4.0]);
    // A rank-0 tensor is its one bare value.
    assert_eq!(ok::<i32>(" 7 "), [7]);
    assert_eq!(ok::<f32>("[]"), Vec::<f32>::new());
    assert_eq!(ok::<f32>("[[], []]"), Vec::<f32>::new());
    assert_eq!(ok::<f32>("[[[]]]"), Vec::<f32>::new());
    for (text, why) in [
        (
            "[[1, 2], [3]]",
            "ragged nested arrays (lengths 2 and 1 at depth 1)",
        ),
        (
            "[[], [1]]",
            "ragged nested arrays (lengths 0 and 1 at depth 1)",
        ),
        ("[[1, 2], 3]", "values at different depths"),
        ("[1, [2]]", "values at different depths"),
        ("[[1], [[2]]]", "values at different depths"),
        ("[1,]", "trailing comma"),
        ("[,1]", "expected value"),
        ("[1]]", "trailing characters"),
        ("[1] x", "trailing characters"),
        ("1 2", "trailing characters"),
        ("[1}", "expected `,` or `]`"),
        ("]", "expected value"),
        ("[{}]", "an object is not a valid FP32 value"),
        ("[null]", "null is not a valid FP32 value"),
        ("[true]", "boolean true is not a valid FP32 value"),
        (
            r#"[1, "a\"b"]"#,
            r#"string "a\"b" is not a valid FP32 value"#,
        ),
        (r#"[1, "ab"#, "EOF while parsing a string"),
        ("[1, tru]", "expected ident"),
    ] {
        let e = err::<f32>(text, 100);
        assert!(e.contains(why), "{text}: {e}");
    }
    // A bad value is reported before its depth.
    let e = err::<f32>("[[1], [x]]", 100);
    assert!(e.contains("expected value"), "{e}");
    let deep = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert_eq!(ok::<f32>(&deep), [1.0]);
    let deeper = format!("[{deep}]");
    assert!(err::<f32>(&deeper, 1).contains("recursion limit"));
}

#[test]
fn the_shape_caps_the_count() {
    for text in ["[1, 2, 3]", "[[1], [2], [3]]", &padded("1")] {
        let n = ok::<u8>(text).len();
        let e = err::<u8>(text, n - 1);
        assert_eq!(
            e,
            format!("more elements than the shape's {}", n - 1),
            "{text}"
        );
    }
    assert!(err::<u8>("5", 0).contains("more elements than the shape's 0"));
    // The buffer is sized by the text, not the claim.
    assert_eq!(scan::<f64>("[1, 2]", usize::MAX).unwrap(), [1.0, 2.0]);
}

#[test]
fn integers() {
    assert_eq!(
        ok::<i8>("[-128, 127, 0, -0, 1.0, 1e2, -1.0e1, 5E0]"),
        [-128, 127, 0, 0, 1, 100, -10, 5]
    );
    assert_eq!(ok::<u8>("[0, 255, -0, -0.0, 2.50e1]"), [0, 255, 0, 0, 25]);
    assert_eq!(ok::<u8>(&padded("255"))[..2], [255, 0]);
    assert_eq!(
        ok::<i64>("[-9223372036854775808, 9223372036854775807, 12345678901234567]"),
        [i64::MIN, i64::MAX, 12345678901234567]
    );
    assert_eq!(
        ok::<u64>("[18446744073709551615, 10000000000000000000]"),
        [u64::MAX, 10_000_000_000_000_000_000]
    );
    // Beyond u64, serde_json made a float; integral floats in range are taken (as `as` rounds them).
    assert_eq!(ok::<u64>("[18446744073709551616]"), [u64::MAX]);
    assert_eq!(ok::<i64>("[-9223372036854775809]"), [i64::MIN]);
    for (text, kind) in [
        ("[128]", "INT8"),
        ("[-129]", "INT8"),
        ("[256]", "UINT8"),
        ("[-1]", "UINT8"),
        ("[65536]", "UINT16"),
        ("[-32769]", "INT16"),
        ("[4294967296]", "UINT32"),
        ("[2147483648]", "INT32"),
        ("[9223372036854775808]", "INT64"),
        ("[1.5]", "INT32"),
        ("[1e-1]", "INT32"),
        ("[1e20]", "UINT64"),
        ("[true]", "INT32"),
    ] {
        let e = match kind {
            "INT8" => err::<i8>(text, 9),
            "UINT8" => err::<u8>(text, 9),
            "UINT16" => err::<u16>(text, 9),
            "INT16" => err::<i16>(text, 9),
            "UINT32" => err::<u32>(text, 9),
            "INT32" => err::<i32>(text, 9),
            "INT64" => err::<i64>(text, 9),
            _ => err::<u64>(text, 9),
        };
        assert!(
            e.contains(&format!("is not a valid {kind} value")),
            "{text}: {e}"
        );
    }
    assert_eq!(
        err::<u8>("[256]", 1),
        "number 256 is not a valid UINT8 value"
    );
    assert!(err::<i32>("[1e400]", 1).contains("number out of range"));
}

#[test]
fn floats() {
    let v = ok::<f32>("[-0, -0.0, 0, 1e39, -1e39, 3.4028235e38, 1e-50, 1e-400, 0.1, 1E+2]");
    assert_eq!(v[0].to_bits(), (-0.0f32).to_bits());
    assert_eq!(v[1].to_bits(), (-0.0f32).to_bits());
    assert_eq!(v[2].to_bits(), 0);
    assert_eq!(v[3..6], [f32::INFINITY, f32::NEG_INFINITY, f32::MAX]);
    assert_eq!(v[6..], [0.0, 0.0, 0.1, 100.0]);
    assert_eq!(ok::<f64>("[1e308, 5e-324, -0]"), [1e308, 5e-324, -0.0]);
    assert_eq!(ok::<f64>("[-0]")[0].to_bits(), (-0.0f64).to_bits());
    for text in ["[1e400]", "[-1e400]", "[1.8e308]", &padded("1e309")] {
        assert!(
            err::<f64>(text, 99).contains("number out of range"),
            "{text}"
        );
        assert!(
            err::<f32>(text, 99).contains("number out of range"),
            "{text}"
        );
        assert!(
            err::<f16>(text, 99).contains("number out of range"),
            "{text}"
        );
    }
    assert_eq!(
        ok::<f16>("[65504, 65520, 1e-8, 0.1]"),
        [
            f16::MAX,
            f16::INFINITY,
            f16::from_f64(1e-8),
            f16::from_f64(0.1)
        ]
    );
    assert_eq!(
        ok::<f64>("[123456789012345678901234567890]"),
        [1.2345678901234568e29]
    );
    assert!(err::<bool>("[1]", 1).contains("number 1 is not a valid BOOL value"));
    assert_eq!(
        ok::<bool>("[true, false, [true]]".replace(", [true]", "").as_str()),
        [true, false]
    );
}

#[test]
fn fp32_is_rounded_once() {
    // Halfway between 1 and the next f32 is 1 + 2^-24 = 1.000000059604644775390625; text just above
    // it rounds up. Through f64 first (as before), it rounded to that halfway point, then to even: 1.
    let up = "1.0000000596046447753906250001";
    assert_eq!(ok::<f32>(&format!("[{up}]")), [1.0000001]);
    assert_eq!(ok::<f32>(&format!("[{up}]")), [up.parse::<f32>().unwrap()]);
    assert_eq!((up.parse::<f64>().unwrap() as f32), 1.0);
    // Within the fast path's reach (16 digits) but near that halfway point: the exact parse decides.
    // Exactly eight fraction digits, then the delimiter (nothing in the second eight).
    assert_eq!(ok::<f32>(&padded("0.36161327"))[0], 0.36161327);
    assert_eq!(ok::<f64>(&padded("-5.12345678"))[0], -5.12345678);
    assert_eq!(
        ok::<f64>(&padded("1.1234567812345678"))[0],
        1.1234567812345678
    );
    for near in [
        "1.000000059604645",
        "1.000000059604644",
        "1.0000000596046448",
        "1.000000059604644775",
    ] {
        assert_eq!(
            ok::<f32>(&padded(near))[0],
            near.parse::<f32>().unwrap(),
            "{near}"
        );
    }
}

#[test]
fn fp32_matches_rusts_parser() {
    // Rust's `str::parse::<f32>` is correctly rounded: every way of writing a value must agree.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut texts = Vec::new();
    for _ in 0..20_000 {
        let x = f32::from_bits(rng.u32(..));
        if !x.is_finite() {
            continue;
        }
        texts.push(format!("{x}"));
        texts.push(format!("{x:e}"));
        texts.push(format!("{:.9}", x as f64 * 0.999_999_9));
        let digits: String = (0..rng.usize(1..=18))
            .map(|_| char::from(b'0' + rng.u8(0..10)))
            .collect();
        let digits = digits.trim_start_matches('0');
        let digits = if digits.is_empty() { "0" } else { digits };
        let point = rng.usize(0..=digits.len());
        let (int, frac) = digits.split_at(point);
        let int = if int.is_empty() { "0" } else { int };
        texts.push(if frac.is_empty() {
            int.to_string()
        } else {
            format!("{int}.{frac}")
        });
        texts.push(format!("-{int}.{frac}0e{}", rng.i32(-40..=40)));
    }
    let json = format!("[{}]", texts.join(","));
    let got = ok::<f32>(&json);
    for (text, got) in texts.iter().zip(got) {
        let want: f32 = text.parse().unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "{text}");
    }
    let got = ok::<f64>(&json);
    for (text, got) in texts.iter().zip(got) {
        let want: f64 = text.parse().unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "{text}");
    }
}

#[test]
fn every_length_the_fast_path_splits() {
    // Integer and fraction lengths on both sides of each eight-byte boundary, with and without a
    // sign, followed by each delimiter: what Rust's parser reads.
    let digits = "98765432109876543210987654321";
    let mut texts = Vec::new();
    for int in 1..=9 {
        for frac in 0..=17 {
            for sign in ["", "-"] {
                let mut t = format!("{sign}{}", &digits[..int]);
                if frac > 0 {
                    t = format!("{t}.{}", &digits[int..int + frac]);
                }
                texts.push(t);
            }
        }
    }
    for sep in [",", " ,", ",\n"] {
        let json = format!("[{}]", texts.join(sep));
        for (t, got) in texts.iter().zip(ok::<f64>(&json)) {
            assert_eq!(got, t.parse::<f64>().unwrap(), "{t}");
        }
        for (t, got) in texts.iter().zip(ok::<f32>(&json)) {
            assert_eq!(got, t.parse::<f32>().unwrap(), "{t}");
        }
        let ints: Vec<&String> = texts.iter().filter(|t| !t.contains('.')).collect();
        let json = format!(
            "[{}]",
            ints.iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(sep)
        );
        for (t, got) in ints.iter().zip(ok::<i64>(&json)) {
            assert_eq!(got, t.parse::<i64>().unwrap(), "{t}");
        }
    }
}

#[test]
fn swar_helpers() {
    let word = |s: &[u8]| {
        let mut w = [b' '; 8];
        w[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(w)
    };
    assert_eq!(leading_digits(word(b"12345678")), 8);
    assert_eq!(leading_digits(word(b"123.5")), 3);
    assert_eq!(leading_digits(word(b"/09:")), 0);
    assert_eq!(leading_digits(word(b"9\xff")), 1);
    assert_eq!(leading_digits(word(b"\xb0\xc0")), 0);
    assert_eq!(digits_value(word(b"12345678"), 8), 12_345_678);
    assert_eq!(digits_value(word(b"907,"), 3), 907);
    assert_eq!(digits_value(word(b"0"), 1), 0);
    assert_eq!(digits_value(word(b"1234"), 0), 0);
    let first_end = |s: &[u8]| not_plain_number(word(s)).trailing_zeros() / 8;
    assert_eq!(first_end(b"-12.5,"), 5);
    assert_eq!(first_end(b"12]"), 2);
    assert_eq!(first_end(b"1e5"), 1);
    assert_eq!(first_end(b"1\xaa2"), 1);
    assert_eq!(first_end(b"\xff"), 0);
    assert_eq!(first_end(b"1+"), 1);
    // Every byte value, in every position, against the plain definition.
    for byte in 0..=255u8 {
        for at in 0..8 {
            let mut w = *b"01234567";
            w[at] = byte;
            let v = u64::from_le_bytes(w);
            let digits = w.iter().take_while(|c| c.is_ascii_digit()).count();
            assert_eq!(leading_digits(v), digits, "{byte:#x} at {at}");
            let plain = w.iter().take_while(|c| (b'-'..=b'9').contains(c)).count();
            assert_eq!(
                (not_plain_number(v).trailing_zeros() / 8) as usize,
                plain,
                "{byte:#x} at {at}"
            );
        }
    }
}
