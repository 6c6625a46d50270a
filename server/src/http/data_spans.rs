//! Where each input's `data` value is in a request's JSON, found by a structural walk that does not
//! validate the tensor data, so that serde_json reads the rest of the request without scanning the data
//! too: capturing `data` as a `RawValue` costs serde_json a full validating pass over it, as long as the
//! typed decode that follows, and the data is nearly all of a JSON request.
//!
//! The walk follows the request's top-level object, its `inputs` array and each input object; every
//! other value, and each `data` value, is skipped by matching brackets and strings only. serde_json then
//! parses the request with each `data` value replaced by its index in [`DataSpans::spans`], and each
//! span is decoded (and so validated) by `json_data::decode`. A span that is a valid JSON value in a
//! document that is valid with the index in its place makes the original a valid document with the same
//! meaning; anything else is refused by one of them. Whenever the walk does not find what it expects
//! (not an object, a key with an escape, a value that does not end), it gives up and the request is
//! parsed whole, as before, so serde_json reports what is wrong.

use std::ops::Range;

use memchr::{memchr2, memchr3};

pub(super) struct DataSpans {
    /// The request with each input's `data` value replaced by its index in `spans`.
    pub json: String,
    /// Each `data` value (its first to its last byte) in the original request.
    pub spans: Vec<Range<usize>>,
}

/// Built once: `memmem::find` builds its searcher on every call.
static DATA_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"data\""));

/// The request's `data` values and the request without them; `None` when the walk gives up, or finds no
/// `data` to take out.
pub(super) fn find(json: &str) -> Option<DataSpans> {
    // Requests with binary data only have no `data` to take out: not worth a walk.
    DATA_KEY.find(json.as_bytes())?;
    let mut walk = Walk {
        b: json.as_bytes(),
        pos: 0,
        spans: Vec::new(),
    };
    walk.request()?;
    if walk.spans.is_empty() {
        return None;
    }
    let taken: usize = walk.spans.iter().map(|s| s.len()).sum();
    let mut out = String::with_capacity(json.len() - taken + 8 * walk.spans.len());
    let mut last = 0;
    for (i, span) in walk.spans.iter().enumerate() {
        out.push_str(json.get(last..span.start)?);
        out.push_str(itoa(i as u64, &mut [0; 20]));
        last = span.end;
    }
    out.push_str(json.get(last..)?);
    Some(DataSpans {
        json: out,
        spans: walk.spans,
    })
}

/// `n` in decimal, written into `buf` (no allocation; the gRPC answer's version uses it too).
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

struct Walk<'b> {
    b: &'b [u8],
    pos: usize,
    spans: Vec<Range<usize>>,
}

impl<'b> Walk<'b> {
    fn request(&mut self) -> Option<()> {
        self.object(|w, key| match key {
            b"inputs" if w.peek() == Some(b'[') => w.array(|w| match w.peek() {
                Some(b'{') => w.object(|w, key| match key {
                    b"data" => w.data(),
                    _ => w.skip(),
                }),
                _ => w.skip(),
            }),
            _ => w.skip(),
        })
    }

    /// A `data` value: its span is taken out, unless it is `null` (which serde reads as no data).
    fn data(&mut self) -> Option<()> {
        let start = self.pos;
        self.skip()?;
        if &self.b[start..self.pos] != b"null" {
            self.spans.push(start..self.pos);
        }
        Some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// An object, calling `member` at each value (whitespace skipped) with its key.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'b [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.key()?;
            self.eat(b':')?;
            self.ws();
            member(self, key)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, calling `element` at each element (whitespace skipped).
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            element(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A key without escapes (one with an escape might spell `data`: the walk gives up).
    fn key(&mut self) -> Option<&'b [u8]> {
        self.eat(b'"')?;
        let rest = &self.b[self.pos..];
        let end = memchr2(b'"', b'\\', rest)?;
        if rest[end] == b'\\' {
            return None;
        }
        self.pos += end + 1;
        Some(&rest[..end])
    }

    /// Past the value at `pos`, without checking it: a string to its closing quote, an array or object
    /// to its closing bracket (counting only its own kind of bracket, and skipping strings: in valid
    /// JSON the other kind balances inside), anything else up to the next delimiter.
    fn skip(&mut self) -> Option<()> {
        match *self.b.get(self.pos)? {
            b'"' => {
                self.pos += 1;
                self.string_rest()
            }
            open @ (b'[' | b'{') => {
                let close = open + 2; // `]` and `}` follow `[` and `{` two code points on.
                let mut depth = 0usize;
                loop {
                    let at = self.pos + memchr3(open, close, b'"', &self.b[self.pos..])?;
                    self.pos = at + 1;
                    match self.b[at] {
                        b'"' => self.string_rest()?,
                        c if c == open => depth += 1,
                        _ => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                    }
                }
            }
            _ => {
                let start = self.pos;
                while let Some(&c) = self.b.get(self.pos) {
                    if matches!(c, b',' | b']' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.pos += 1;
                }
                (self.pos > start).then_some(())
            }
        }
    }

    /// Past the closing quote of the string whose opening quote is just before `pos`.
    fn string_rest(&mut self) -> Option<()> {
        loop {
            let at = self.pos + memchr2(b'"', b'\\', &self.b[self.pos..])?;
            if self.b[at] == b'"' {
                self.pos = at + 1;
                return Some(());
            }
            // An escape: the next byte is escaped, whatever it is.
            self.pos = at + 2;
            if self.pos > self.b.len() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(json: &str) -> Option<(String, Vec<&str>)> {
        find(json).map(|d| {
            let texts = d.spans.iter().map(|s| &json[s.clone()]).collect();
            (d.json, texts)
        })
    }

    #[test]
    fn data_values_are_taken_out() {
        let json = r#"{"id": "data", "parameters": {"data": [1]},
            "inputs": [{"name": "a", "data": [[1, 2], [3, "]\"["]], "shape": [2, 2]},
                       {"data" : 7 , "parameters": {"data": {"x": [1]}}},
                       {"data": null}, {"data": "s\"}"}, {"data": {"a": [1, {"b": "}"}]}}],
            "outputs": [{"name": "data", "data": [5]}]}"#;
        let (envelope, data) = spans(json).unwrap();
        assert_eq!(
            data,
            [
                r#"[[1, 2], [3, "]\"["]]"#,
                "7",
                r#""s\"}""#,
                r#"{"a": [1, {"b": "}"}]}"#
            ]
        );
        assert!(envelope.contains(r#"{"name": "a", "data": 0, "shape": [2, 2]}"#));
        assert!(envelope.contains(r#"{"data" : 1 , "parameters": {"data": {"x": [1]}}}"#));
        assert!(envelope.contains(r#"{"data": null}, {"data": 2}, {"data": 3}]"#));
        assert!(envelope.contains(r#"{"name": "data", "data": [5]}"#));
        // The rest is the request as it was, trailing bytes included.
        let json = r#" {"inputs": [{"data": [1]}]} xyz"#;
        assert_eq!(spans(json).unwrap().0, r#" {"inputs": [{"data": 0}]} xyz"#);
    }

    #[test]
    fn the_walk_gives_up_on_what_it_does_not_expect() {
        for json in [
            "",
            "[]",
            r#"{"inputs": []}"#,
            r#"{"inputs": [{"name": "x"}]}"#,
            r#"{"inputs": [{"d\u0061ta": [1]}]}"#,
            r#"{"inputs": [{"data": [1, 2}]}"#,
            r#"{"inputs": [{"data": [1, "2]}]}"#,
            r#"{"inputs": [{"data": "\"#,
            r#"{"inputs": [{"data": }]}"#,
            r#"{"inputs": [{"data" [1]}]}"#,
            r#"{"inputs": [{"data": [1]} {"data": [2]}]}"#,
            r#"{"inputs": [{"data": [1]}"#,
            r#"{"inputs": [{"data": [1]},"#,
            r#"{"inputs": [{"data": [[[[[[1"#,
        ] {
            assert!(find(json).is_none(), "{json}");
        }
    }
}
