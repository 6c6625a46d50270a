//! One pass over the `data` text of a numeric or BOOL input: brackets, commas, whitespace and scalars,
//! straight into the typed vector. It accepts what the serde path did (and so what JSON allows): the
//! number grammar of RFC 8259, every value a number is taken as by serde_json (`u64`, `i64` or a
//! correctly rounded `f64`, "number out of range" when that is infinite), then the same per-type rules.
//! The one difference is FP32, now rounded once from the decimal text instead of through `f64`.

use half::f16;

/// Arrays nested deeper than this are refused (serde_json's recursion limit, which the serde path had).
pub(super) const MAX_DEPTH: usize = 128;

/// Decodes `text` as at most `limit` elements; the error is the reason alone (the caller adds the type).
pub(super) fn scan<T: Element>(text: &str, limit: usize) -> Result<Vec<T>, String> {
    let b = text.as_bytes();
    let mut out = Out::new(limit, b.len());
    // Elements so far of each open array, and the length every array at each depth must have.
    let mut open: Vec<usize> = Vec::new();
    let mut dims: Vec<Option<usize>> = Vec::new();
    let mut leaf_depth: Option<usize> = None;
    let mut pos = skip_ws(b, 0);
    loop {
        // A value starts at `pos`.
        match b.get(pos) {
            Some(b'[') => {
                if open.len() == MAX_DEPTH {
                    return Err(format!(
                        "recursion limit exceeded (arrays nested deeper than {MAX_DEPTH})"
                    ));
                }
                open.push(0);
                pos = skip_ws(b, pos + 1);
                if b.get(pos) != Some(&b']') {
                    continue;
                }
                // An empty array: closed below.
            }
            Some(b']') if !open.is_empty() => return Err("trailing comma".into()),
            _ => {
                let (end, n) = run(b, pos, open.len(), &mut leaf_depth, &mut out)?;
                if let Some(len) = open.last_mut() {
                    *len += n;
                }
                pos = end;
            }
        }
        // After a value: close arrays until a comma (another value follows) or the end.
        loop {
            match (b.get(pos), open.last()) {
                (Some(b']'), Some(&len)) => {
                    open.pop();
                    let depth = open.len();
                    if dims.len() <= depth {
                        dims.resize(depth + 1, None);
                    }
                    match dims[depth] {
                        None => dims[depth] = Some(len),
                        Some(expected) if expected != len => {
                            return Err(format!(
                                "ragged nested arrays (lengths {expected} and {len} at depth {depth})"
                            ));
                        }
                        Some(_) => {}
                    }
                    if let Some(parent) = open.last_mut() {
                        *parent += 1;
                    }
                    pos = skip_ws(b, pos + 1);
                }
                (Some(b','), Some(_)) => {
                    pos = skip_ws(b, pos + 1);
                    break;
                }
                (None, None) => return Ok(out.done()),
                (Some(_), None) => return Err("trailing characters".into()),
                (None, Some(_)) => return Err("EOF while parsing a list".into()),
                (Some(_), Some(_)) => return Err("expected `,` or `]`".into()),
            }
        }
    }
}

/// The elements read so far.
struct Out<T> {
    /// Sized once, to the most elements the text can hold and the shape takes; `len` are read. Writing
    /// into it costs one bounds check, which is also the limit's (a growing `Vec` checks its capacity).
    buf: Vec<T>,
    len: usize,
    limit: usize,
}

impl<T: Copy + Default> Out<T> {
    fn new(limit: usize, text_len: usize) -> Self {
        // The declared count is only a claim: no more than the text can hold is allocated. An element
        // takes at least two bytes (a digit and a `,` or `]`), so the text holds at most `len / 2 + 1`.
        Out {
            buf: vec![T::default(); limit.min(text_len / 2 + 1)],
            len: 0,
            limit,
        }
    }

    fn done(mut self) -> Vec<T> {
        self.buf.truncate(self.len);
        self.buf
    }
}

/// Scalars from `pos` on while they are separated by commas only (the inside of one innermost array, the
/// hot loop; at depth 0, the one top-level scalar): returns where the run stopped (whitespace skipped)
/// and how many it took. Not inlined: in a function of its own the loop keeps its state in registers.
#[inline(never)]
fn run<T: Element>(
    b: &[u8],
    mut pos: usize,
    depth: usize,
    leaf_depth: &mut Option<usize>,
    out: &mut Out<T>,
) -> Result<(usize, usize), String> {
    // Every scalar at the same depth: checked once, before the loop, but reported after the first
    // scalar is read (a bad value before a ragged depth, as the serde path did).
    let ragged = match *leaf_depth {
        None => {
            *leaf_depth = Some(depth);
            false
        }
        Some(d) => d != depth,
    };
    if ragged {
        T::parse(b, pos)?;
        return Err("ragged nested arrays (values at different depths)".into());
    }
    let limit = out.limit;
    let full = || format!("more elements than the shape's {limit}");
    if depth == 0 {
        let (value, end) = T::parse(b, pos)?;
        *out.buf.get_mut(out.len).ok_or_else(full)? = value;
        out.len += 1;
        return Ok((skip_ws(b, end), 1));
    }
    // Locals, so that the loop keeps them in registers.
    let (buf, first) = (&mut out.buf[..], out.len);
    let mut len = first;
    loop {
        let quick = T::NUMBER
            .then(|| Number::lex_fast(b, pos))
            .flatten()
            .and_then(|n| {
                let v = T::quick(n.negative, n.mantissa, n.exponent, n.integer)?;
                Some((v, n.end))
            });
        // Not inlined, and given `pos` by value: a `&mut pos` would keep it in memory for the whole loop.
        let (value, end) = match quick {
            Some(read) => read,
            None => T::parse(b, pos)?,
        };
        pos = end;
        *buf.get_mut(len).ok_or_else(full)? = value;
        len += 1;
        // A comma and the next number right after it: the common case, checked first.
        if b.get(pos) == Some(&b',')
            && let Some(&c) = b.get(pos + 1)
            && c.wrapping_sub(b'-') <= b'9' - b'-'
        {
            pos += 1;
            continue;
        }
        pos = skip_ws(b, pos);
        if b.get(pos) != Some(&b',') {
            break;
        }
        let next = skip_ws(b, pos + 1);
        // `,[` and `,]` (and the end) are the structure loop's to handle.
        if matches!(b.get(next), None | Some(b'[' | b']')) {
            break;
        }
        pos = next;
    }
    out.len = len;
    Ok((pos, len - first))
}

#[inline]
fn skip_ws(b: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(pos) {
        pos += 1;
    }
    pos
}

/// One JSON number, checked against the grammar and read in the same pass.
pub(super) struct Number {
    negative: bool,
    /// The digits without the point, when there are at most 19 of them (so they fit a `u64`).
    mantissa: u64,
    /// Decimal exponent of the mantissa's last digit.
    exponent: i64,
    /// More than 19 digits: only the text has the value.
    truncated: bool,
    /// No fraction and no exponent.
    integer: bool,
    start: usize,
    end: usize,
}

/// serde_json's messages for the same faults.
const INVALID_NUMBER: &str = "invalid number";
const EOF_IN_VALUE: &str = "EOF while parsing a value";

/// The most digits a `u64` mantissa takes whatever they are.
const MAX_DIGITS: usize = 19;

impl Number {
    /// The common number, `-?[0-9]{1,7}(\.[0-9]+)?` in at most 15 bytes and not followed by an exponent,
    /// read faster than [`Number::lex`] reads any (`None` for anything else, which `lex` then reads).
    /// Its end, where the next element starts (the loop's critical path), is found first, in sixteen
    /// bytes at once; its digits are read off that path, eight at a time (at most 15 digits: the
    /// mantissa is exact in an f64).
    #[inline(always)]
    fn lex_fast(b: &[u8], start: usize) -> Option<Number> {
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
    fn lex(b: &[u8], start: usize) -> Result<Number, &'static str> {
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

    fn text<'b>(&self, b: &'b [u8]) -> &'b str {
        // The token is ASCII (checked by `lex`).
        std::str::from_utf8(&b[self.start..self.end]).unwrap_or_default()
    }

    /// Whether [`Element::quick`] may be asked for the value.
    fn quick_range(&self) -> bool {
        !self.truncated && (-22..=22).contains(&self.exponent)
    }

    /// The correctly rounded `f64` (what serde_json makes of a non-integer), or "number out of range"
    /// where that is infinite, as serde_json refuses it.
    fn to_f64(&self, b: &[u8]) -> Result<f64, String> {
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
    fn classify(&self, b: &[u8]) -> Result<Parsed, String> {
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
enum Parsed {
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
fn not_plain_number(v: u64) -> u64 {
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
fn digits_value(v: u64, n: usize) -> u64 {
    // The n digits to the top, zeros below them: a number of n digits read as eight. In two shifts, as
    // none digits is a shift by 64 (which one shift cannot do).
    let half = 4 * (8 - n);
    eight_digits((v.wrapping_sub(0x3030_3030_3030_3030) << half) << half)
}

/// How many of the eight bytes of `v` (first byte lowest) are ASCII digits before the first that is not.
#[inline(always)]
fn leading_digits(v: u64) -> usize {
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

const POW10_U64: [u64; 9] = [
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

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `1 / 10^k` rounded to the nearest f64 (the compiler's correctly rounded literals).
const INV_POW10: [f64; 23] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
    1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22,
];

/// How a JSON scalar becomes an element.
pub(super) trait Element: Sized + Copy + Default {
    const KIND: &'static str;
    /// Numbers are its elements (so worth trying [`Number::lex_fast`] on).
    const NUMBER: bool = true;

    /// A number (already read) as this type.
    fn from_number(n: &Number, b: &[u8]) -> Result<Self, String>;

    /// The value of `mantissa` (at most 19 digits) times ten to `exponent` (-22 to 22), when it is quick
    /// to get exactly right; `None` leaves the number to `from_number`'s slower ways.
    #[inline(always)]
    fn quick(_negative: bool, _mantissa: u64, _exponent: i64, _integer: bool) -> Option<Self> {
        None
    }

    fn from_bool(v: bool) -> Result<Self, String> {
        Err(format!("boolean {v} is not a valid {} value", Self::KIND))
    }

    /// Reads the scalar at `b[pos]`: the value and where it ends.
    #[inline(never)]
    fn parse(b: &[u8], pos: usize) -> Result<(Self, usize), String> {
        match b.get(pos) {
            // `-` to `9` in one comparison (`.` and `/` are refused by `lex`).
            Some(c) if c.wrapping_sub(b'-') <= b'9' - b'-' => {
                let n = Number::lex(b, pos)?;
                Ok((Self::from_number(&n, b)?, n.end))
            }
            Some(b't') => {
                let end = literal(b, pos, b"true")?;
                Ok((Self::from_bool(true)?, end))
            }
            Some(b'f') => {
                let end = literal(b, pos, b"false")?;
                Ok((Self::from_bool(false)?, end))
            }
            Some(b'n') => {
                literal(b, pos, b"null")?;
                Err(format!("null is not a valid {} value", Self::KIND))
            }
            Some(b'"') => Err(match string(b, pos) {
                Ok(s) => {
                    let shown: String = s.chars().take(32).collect();
                    format!("string {shown:?} is not a valid {} value", Self::KIND)
                }
                Err(e) => e,
            }),
            Some(b'{') => Err(format!("an object is not a valid {} value", Self::KIND)),
            Some(_) => Err("expected value".into()),
            None => Err(EOF_IN_VALUE.into()),
        }
    }
}

/// `true`, `false` or `null` at `b[pos]`: where it ends.
fn literal(b: &[u8], pos: usize, word: &[u8]) -> Result<usize, String> {
    let end = pos + word.len();
    match b.get(pos..end) {
        Some(w) if w == word => Ok(end),
        Some(_) => Err("expected ident".into()),
        None if word.starts_with(&b[pos..]) => Err(EOF_IN_VALUE.into()),
        None => Err("expected ident".into()),
    }
}

/// The JSON string starting at `b[pos]`, unescaped (for the error only: strings are never elements here).
fn string(b: &[u8], pos: usize) -> Result<String, String> {
    let mut end = pos + 1;
    loop {
        match b.get(end) {
            Some(b'"') => break,
            Some(b'\\') => end += 2,
            Some(_) => end += 1,
            None => return Err("EOF while parsing a string".into()),
        }
    }
    let text = b.get(pos..=end).ok_or("EOF while parsing a string")?;
    serde_json::from_slice(text).map_err(|e| super::strip_position(&e.to_string()).to_string())
}

impl Element for bool {
    const KIND: &'static str = "BOOL";
    const NUMBER: bool = false;

    fn from_number(n: &Number, b: &[u8]) -> Result<Self, String> {
        // Out of range is what serde_json said first.
        n.classify(b)?;
        Err(format!(
            "number {} is not a valid BOOL value",
            shown(n.text(b))
        ))
    }

    fn from_bool(v: bool) -> Result<Self, String> {
        Ok(v)
    }
}

/// A number's text as shown in a message, cut when long.
fn shown(text: &str) -> String {
    match text.char_indices().nth(32) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

macro_rules! integer_element {
    ($($t:ty => $kind:literal),*) => {$(
        impl Element for $t {
            const KIND: &'static str = $kind;

            /// A short integer; anything else takes serde_json's way (`from_number`).
            #[inline(always)]
            fn quick(negative: bool, mantissa: u64, _: i64, integer: bool) -> Option<Self> {
                if !integer {
                    None
                } else if !negative {
                    <$t>::try_from(mantissa).ok()
                } else if mantissa != 0 {
                    i64::try_from(mantissa).ok().and_then(|m| <$t>::try_from(-m).ok())
                } else {
                    // `-0`: a float `-0.0` in serde_json, which is 0 here.
                    Some(0)
                }
            }

            fn from_number(n: &Number, b: &[u8]) -> Result<Self, String> {
                if n.quick_range() && let Some(v) = Self::quick(n.negative, n.mantissa, n.exponent, n.integer) {
                    return Ok(v);
                }
                let v = match n.classify(b)? {
                    Parsed::U64(v) => <$t>::try_from(v).ok(),
                    Parsed::I64(v) => <$t>::try_from(v).ok(),
                    // Integral floats such as `3.0` are taken; `3.5` is not.
                    Parsed::F64(v) => (v.fract() == 0.0
                        && v >= <$t>::MIN as f64
                        && v <= <$t>::MAX as f64)
                        .then(|| v as $t),
                };
                v.ok_or_else(|| format!("number {} is not a valid {} value", shown(n.text(b)), $kind))
            }
        }
    )*};
}
integer_element!(u8 => "UINT8", u16 => "UINT16", u32 => "UINT32", u64 => "UINT64",
                 i8 => "INT8", i16 => "INT16", i32 => "INT32", i64 => "INT64");

impl Element for f64 {
    const KIND: &'static str = "FP64";

    /// Clinger's fast path: a mantissa an `f64` holds exactly, times or divided by a power of ten it
    /// holds exactly, is one correctly rounded operation.
    #[inline(always)]
    fn quick(negative: bool, mantissa: u64, exponent: i64, _: bool) -> Option<Self> {
        if mantissa > 1 << 53 {
            return None;
        }
        let m = mantissa as f64;
        let p = POW10[exponent.unsigned_abs() as usize];
        let v = if exponent >= 0 { m * p } else { m / p };
        // The sign bit set without a branch (see `lex`); `v` is not negative.
        Some(f64::from_bits(v.to_bits() | (u64::from(negative) << 63)))
    }

    fn from_number(n: &Number, b: &[u8]) -> Result<Self, String> {
        n.to_f64(b)
    }
}

impl Element for f16 {
    const KIND: &'static str = "FP16";

    #[inline(always)]
    fn quick(negative: bool, mantissa: u64, exponent: i64, integer: bool) -> Option<Self> {
        f64::quick(negative, mantissa, exponent, integer).map(f16::from_f64)
    }

    fn from_number(n: &Number, b: &[u8]) -> Result<Self, String> {
        n.to_f64(b).map(f16::from_f64)
    }
}

impl Element for f32 {
    const KIND: &'static str = "FP32";

    #[inline(always)]
    fn quick(negative: bool, mantissa: u64, exponent: i64, _: bool) -> Option<Self> {
        if mantissa <= 1 << 53 {
            // An f64 near the exact value, then rounded to f32: right unless the f64 is so close to a
            // point halfway between two f32s that its error could put it on the wrong side. A negative
            // exponent multiplies by the reciprocal (cheaper than dividing): the mantissa is exact, the
            // reciprocal and the product each within half an ulp, so the result is within 2 ulps of
            // the exact value. These values are normal f32s (1e-22 to 1e38), whose halfway points have
            // the low 29 of the 52 f64 mantissa bits at 1000...0; an f64 within 8 ulps of one goes to
            // the exact parse.
            let m = mantissa as f64;
            let e = exponent.unsigned_abs() as usize;
            let v = if exponent >= 0 {
                m * POW10[e]
            } else {
                m * INV_POW10[e]
            };
            if v.to_bits().wrapping_sub(0x1000_0000 - 8) & 0x1fff_ffff > 16 {
                let v = v as f32;
                return Some(f32::from_bits(v.to_bits() | (u32::from(negative) << 31)));
            }
        }
        None
    }

    fn from_number(n: &Number, b: &[u8]) -> Result<Self, String> {
        if n.quick_range()
            && let Some(v) = Self::quick(n.negative, n.mantissa, n.exponent, n.integer)
        {
            return Ok(v);
        }
        slow_f32(n, b)
    }
}

fn slow_f32(n: &Number, b: &[u8]) -> Result<f32, String> {
    let v: f32 = n.text(b).parse().map_err(|_| INVALID_NUMBER)?;
    // Beyond f32 but within f64 is infinity, as `v as f32` made it; beyond f64 is refused.
    if v.is_infinite() {
        n.to_f64(b)?;
    }
    Ok(v)
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
