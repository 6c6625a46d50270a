//! One JSON number, checked against RFC 8259's grammar and read in the same pass: the common short
//! decimal eight digits at a time, any other as serde_json reads it.

use super::Element;

/// One JSON number, checked against the grammar and read in the same pass.
pub(in crate::http::json_data) struct Number {
    pub(super) negative: bool,
    /// The digits without the point, when there are at most 19 of them (so they fit a `u64`).
    pub(super) mantissa: u64,
    /// Decimal exponent of the mantissa's last digit.
    pub(super) exponent: i64,
    /// More than 19 digits: only the text has the value.
    pub(super) truncated: bool,
    /// No fraction and no exponent.
    pub(super) integer: bool,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// serde_json's messages for the same faults.
pub(super) const INVALID_NUMBER: &str = "invalid number";
pub(super) const EOF_IN_VALUE: &str = "EOF while parsing a value";

/// The most digits a `u64` mantissa takes whatever they are.
pub(super) const MAX_DIGITS: usize = 19;

impl Number {
    /// The common number, `-?[0-9]{1,7}(\.[0-9]+)?` in at most 15 bytes and not followed by an exponent,
    /// read faster than [`Number::lex`] reads any (`None` for anything else, which `lex` then reads).
    /// Its end, where the next element starts (the loop's critical path), is found first, in sixteen
    /// bytes at once; its digits are read off that path, eight at a time (at most 15 digits: the
    /// mantissa is exact in an f64).
    #[inline(always)]
    pub(super) fn lex_fast(b: &[u8], start: usize) -> Option<Number> {
        // One bounds check for every load below: their offsets are at most 15 (the masks tell the
        // compiler they stay within the window; they never change an offset).
        let w: &[u8; 24] = b.get(start..start + 24)?.try_into().ok()?;
        let at = |off: usize| {
            let off = off & 15;
            u64::from_le_bytes(w[off..off + 8].try_into().unwrap_or_default())
        };
        let (lo, hi) = (at(0), at(8));
        // The first delimiter of sixteen bytes, without a branch on which eight hold it (numbers
        // shorter and longer than eight bytes mix).
        let ends = u128::from(not_plain_number(hi)) << 64 | u128::from(not_plain_number(lo));
        let len = (ends.trailing_zeros() / 8) as usize;
        // Sixteen bytes without an end, or an exponent (`e` or `E`) next: `lex`'s to read.
        if len == 16 || w[len & 15] | 0x20 == b'e' {
            return None;
        }
        let negative = lo as u8 == b'-';
        let neg = negative as usize;
        let x = at(neg);
        let int = leading_digits(x);
        // One to seven digits, without a leading zero before another (see `lex`).
        if (int == 0) | (int == 8) | ((int > 1) & (x as u8 == b'0')) {
            return None;
        }
        let integer = neg + int == len;
        let (mantissa, exponent) = if integer {
            (digits_value(x, int), 0)
        } else {
            if w[(neg + int) & 15] != b'.' {
                return None;
            }
            // The digits without the point, to read them as one number: the integer digits, then the
            // bytes after the point (the next eight, moved down a byte).
            let keep = (1u64 << (8 * int)) - 1;
            let digits = (x & keep) | (at(neg + 1) & !keep);
            let n = leading_digits(digits);
            let frac = n - int;
            if frac == 0 {
                return None;
            }
            if neg + 1 + n == len {
                (digits_value(digits, n), -(frac as i64))
            } else if n == 8 {
                // The rest (fewer than eight: the number is at most 15 bytes).
                let more = at(neg + 9);
                let m = leading_digits(more);
                if neg + 9 + m != len {
                    return None;
                }
                let mantissa = digits_value(digits, 8) * POW10_U64[m] + digits_value(more, m);
                (mantissa, -((frac + m) as i64))
            } else {
                return None;
            }
        };
        Some(Number {
            negative,
            mantissa,
            exponent,
            truncated: false,
            integer,
            start,
            end: start + len,
        })
    }

    /// Reads the number at `b[start]`, which is `-` or a digit.
    #[inline(always)]
    pub(super) fn lex(b: &[u8], start: usize) -> Result<Number, &'static str> {
        let negative = b[start] == b'-';
        let int_start = start + negative as usize;
        let mut mantissa = 0u64;
        let mut digits = 0usize;
        let mut pos = digit_run(b, int_start, &mut mantissa, &mut digits);
        // No digit, or a leading zero before another (`01` is not a JSON number). Computed without
        // branches: how many digits there are and whether a sign came first vary from one number to the
        // next, and a mispredicted branch costs more than the whole number.
        let len = pos - int_start;
        if (len == 0) | ((len > 1) & (b.get(int_start) == Some(&b'0'))) {
            return Err(if len > 0 {
                INVALID_NUMBER
            } else if pos == b.len() {
                EOF_IN_VALUE
            } else if negative {
                INVALID_NUMBER
            } else {
                "expected value"
            });
        }
        let mut exponent = 0i64;
        let mut integer = true;
        if b.get(pos) == Some(&b'.') {
            integer = false;
            let first = pos + 1;
            let before = digits;
            pos = digit_run(b, first, &mut mantissa, &mut digits);
            if pos == first {
                return Err(if pos == b.len() {
                    EOF_IN_VALUE
                } else {
                    INVALID_NUMBER
                });
            }
            exponent = -((digits - before) as i64);
        }
        if let Some(b'e' | b'E') = b.get(pos) {
            integer = false;
            pos += 1;
            let negative_exp = b.get(pos) == Some(&b'-');
            if let Some(b'+' | b'-') = b.get(pos) {
                pos += 1;
            }
            let first = pos;
            let mut e = 0i64;
            while let Some(&c @ b'0'..=b'9') = b.get(pos) {
                // Saturates far beyond any finite value's exponent.
                if e < 1_000_000 {
                    e = e * 10 + i64::from(c - b'0');
                }
                pos += 1;
            }
            if pos == first {
                return Err(if pos == b.len() {
                    EOF_IN_VALUE
                } else {
                    INVALID_NUMBER
                });
            }
            exponent += if negative_exp { -e } else { e };
        }
        Ok(Number {
            negative,
            mantissa,
            exponent,
            truncated: digits > MAX_DIGITS,
            integer,
            start,
            end: pos,
        })
    }

    pub(super) fn text<'b>(&self, b: &'b [u8]) -> &'b str {
        // The token is ASCII (checked by `lex`).
        std::str::from_utf8(&b[self.start..self.end]).unwrap_or_default()
    }

    /// Whether [`Element::quick`] may be asked for the value.
    pub(super) fn quick_range(&self) -> bool {
        !self.truncated && (-22..=22).contains(&self.exponent)
    }

    /// The correctly rounded `f64` (what serde_json makes of a non-integer), or "number out of range"
    /// where that is infinite, as serde_json refuses it.
    pub(super) fn to_f64(&self, b: &[u8]) -> Result<f64, String> {
        if self.quick_range()
            && let Some(v) = f64::quick(self.negative, self.mantissa, self.exponent, self.integer)
        {
            return Ok(v);
        }
        // Rust's own parser is correctly rounded; JSON's number grammar is a subset of what it reads.
        let v: f64 = self.text(b).parse().map_err(|_| INVALID_NUMBER)?;
        if v.is_infinite() {
            return Err("number out of range".into());
        }
        Ok(v)
    }

    /// The value serde_json would hand a visitor.
    pub(super) fn classify(&self, b: &[u8]) -> Result<Parsed, String> {
        if self.integer {
            let magnitude = if self.truncated {
                // 20 digits still fit a u64 up to u64::MAX; serde_json keeps those integers.
                let digits = &self.text(b)[self.negative as usize..];
                digits.parse::<u64>().ok()
            } else {
                Some(self.mantissa)
            };
            match (self.negative, magnitude) {
                (false, Some(m)) => return Ok(Parsed::U64(m)),
                // `-0` and magnitudes beyond i64 become floats in serde_json.
                (true, Some(m)) if (1..=1 << 63).contains(&m) => {
                    return Ok(Parsed::I64(0i64.wrapping_sub_unsigned(m)));
                }
                _ => {}
            }
        }
        self.to_f64(b).map(Parsed::F64)
    }
}

/// A number as serde_json hands it to a visitor.
#[derive(Clone, Copy)]
pub(super) enum Parsed {
    U64(u64),
    I64(i64),
    F64(f64),
}

/// The digits from `pos` on, eight at a time where the text has eight more bytes: appends them to
/// `mantissa` while `digits` stays within [`MAX_DIGITS`] (beyond, only `digits` counts), and returns
/// where they end.
#[inline(always)]
fn digit_run(b: &[u8], mut pos: usize, mantissa: &mut u64, digits: &mut usize) -> usize {
    while let Some(chunk) = b.get(pos..pos + 8) {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let n = leading_digits(v);
        if n > 0 {
            if *digits + n <= MAX_DIGITS {
                *mantissa = *mantissa * POW10_U64[n] + digits_value(v, n);
            }
            *digits += n;
            pos += n;
        }
        if n < 8 {
            return pos;
        }
    }
    while let Some(&c @ b'0'..=b'9') = b.get(pos) {
        if *digits < MAX_DIGITS {
            *mantissa = *mantissa * 10 + u64::from(c - b'0');
        }
        *digits += 1;
        pos += 1;
    }
    pos
}

/// The bytes of `v` outside `-` to `9` (0x2d to 0x39: the bytes of a number without an exponent) have
/// their high bit set, exactly up to the first such byte (see [`outside`]).
#[inline(always)]
pub(super) fn not_plain_number(v: u64) -> u64 {
    outside::<0x2d, 0x39>(v)
}

/// The high bit of each byte of `v` outside `LOW..=HIGH` (ASCII bounds), exact for every byte up to
/// the first one outside: adding `0x80 - LOW` sets an ASCII byte's high bit when it is at least `LOW`,
/// adding `0x80 - HIGH - 1` when it is above `HIGH`. Only a non-ASCII byte (which is outside whatever
/// its sum) carries into the byte after it.
#[inline(always)]
fn outside<const LOW: u8, const HIGH: u8>(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let from = v.wrapping_add(ONES * u64::from(0x80 - LOW));
    let past = v.wrapping_add(ONES * u64::from(0x7f - HIGH));
    (!from | past) & (ONES * 0x80)
}

/// The value of the first `n` (0 to 8) digits of `v`.
#[inline(always)]
pub(super) fn digits_value(v: u64, n: usize) -> u64 {
    // The n digits to the top, zeros below them: a number of n digits read as eight. In two shifts, as
    // none digits is a shift by 64 (which one shift cannot do).
    let half = 4 * (8 - n);
    eight_digits((v.wrapping_sub(0x3030_3030_3030_3030) << half) << half)
}

/// How many of the eight bytes of `v` (first byte lowest) are ASCII digits before the first that is not.
#[inline(always)]
pub(super) fn leading_digits(v: u64) -> usize {
    (outside::<b'0', b'9'>(v).trailing_zeros() / 8) as usize
}

/// Eight digit values (0 to 9, first digit in the lowest byte) as one number, in three multiplications
/// (the classic SWAR reduction: pairs, then quads, then the eight).
#[inline(always)]
fn eight_digits(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00ff_0000_00ff;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let v1 = (v & MASK).wrapping_mul(MUL1);
    let v2 = ((v >> 16) & MASK).wrapping_mul(MUL2);
    u64::from(v1.wrapping_add(v2).wrapping_shr(32) as u32)
}

pub(super) const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

pub(super) const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `1 / 10^k` rounded to the nearest f64 (the compiler's correctly rounded literals).
pub(super) const INV_POW10: [f64; 23] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
    1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22,
];
