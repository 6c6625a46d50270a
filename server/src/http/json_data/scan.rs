//! One pass over the `data` text of a numeric or BOOL input: brackets, commas, whitespace and scalars,
//! straight into the typed vector. It accepts what the serde path did (and so what JSON allows): the
//! number grammar of RFC 8259, every value a number is taken as by serde_json (`u64`, `i64` or a
//! correctly rounded `f64`, "number out of range" when that is infinite), then the same per-type rules.
//! The one difference is FP32, now rounded once from the decimal text instead of through `f64`.

use half::f16;

mod number;
use number::{EOF_IN_VALUE, INV_POW10, INVALID_NUMBER, Number, POW10, Parsed};

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
