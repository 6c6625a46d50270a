//! W3C Trace Context (https://www.w3.org/TR/trace-context/): the caller's span, from the `traceparent`
//! an HTTP header or gRPC metadata carries, and the ids of the spans Keel starts. A header that does not
//! parse is ignored (the request starts a new trace), never an error: tracing must not refuse traffic.

/// The header (HTTP) and metadata key (gRPC) naming the caller's span.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor-specific trace state that travels with `traceparent`; kept on the request span as given.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` kept (the specification's 32 members of at most 256 bytes; in practice a
/// few dozen bytes); a longer one is left out rather than cut.
const MAX_TRACESTATE: usize = 8192;

/// The caller's span, as its `traceparent` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller recorded its span (flag bit 0): Keel records its own.
    pub sampled: bool,
}

/// `version "-" trace-id "-" parent-id "-" flags` (55 characters for version 00). A later version may
/// append fields after a `-`; its first four fields are read as version 00's. Version `ff`, upper-case
/// hex, all-zero ids and wrong lengths are invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex::<1>(&value[0..2])?[0];
    match version {
        0xff => return None,
        0 if value.len() != 55 => return None,
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = hex::<16>(&value[3..35])?;
    let span_id = hex::<8>(&value[36..52])?;
    let flags = hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// `tracestate` as given, if it is printable ASCII of a sane length (the collector stores it as a
/// string; its members are the caller's business).
pub fn parse_tracestate(value: &[u8]) -> Option<String> {
    let value = value.trim_ascii();
    let printable = value.iter().all(|b| (0x20..0x7f).contains(b));
    (!value.is_empty() && value.len() <= MAX_TRACESTATE && printable)
        .then(|| String::from_utf8_lossy(value).into_owned())
}

/// `N` bytes from `2 * N` lower-case hex digits, as the specification requires.
fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A new trace id: random (W3C level 2's "random" trace ids), never all zero. Not secret, so the fast
/// generator: a collector sees the ids, clients never do.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new span id: random, never all zero.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn header(version: &str, trace: &str, span: &str, flags: &str) -> String {
        format!("{version}-{trace}-{span}-{flags}")
    }

    #[test]
    fn a_valid_traceparent_names_the_callers_span() {
        let parent = parse_traceparent(header("00", TRACE, SPAN, "01").as_bytes()).unwrap();
        assert_eq!(
            parent.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            parent.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(parent.sampled);
        // Surrounding whitespace is allowed (optional whitespace of a header value).
        let padded = format!(" {} ", header("00", TRACE, SPAN, "01"));
        assert_eq!(parse_traceparent(padded.as_bytes()), Some(parent));
    }

    #[test]
    fn flags_other_than_sampled_are_ignored() {
        for (flags, sampled) in [
            ("00", false),
            ("01", true),
            ("02", false),
            ("03", true),
            ("ff", true),
        ] {
            let parent = parse_traceparent(header("00", TRACE, SPAN, flags).as_bytes()).unwrap();
            assert_eq!(parent.sampled, sampled, "flags {flags}");
        }
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let parent = parse_traceparent(header("01", TRACE, SPAN, "01").as_bytes()).unwrap();
        assert!(parent.sampled);
        let extended = format!("{}-what-comes-next", header("cc", TRACE, SPAN, "00"));
        assert!(!parse_traceparent(extended.as_bytes()).unwrap().sampled);
        // Version 00 has exactly four fields; a later one's fifth must follow a dash.
        let longer = format!("{}-x", header("00", TRACE, SPAN, "01"));
        assert_eq!(parse_traceparent(longer.as_bytes()), None);
        let glued = format!("{}x", header("01", TRACE, SPAN, "01"));
        assert_eq!(parse_traceparent(glued.as_bytes()), None);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let zeros_trace = "0".repeat(32);
        let zeros_span = "0".repeat(16);
        let bad = [
            header("ff", TRACE, SPAN, "01"),
            header("0g", TRACE, SPAN, "01"),
            header("00", &zeros_trace, SPAN, "01"),
            header("00", TRACE, &zeros_span, "01"),
            header("00", &TRACE.to_uppercase(), SPAN, "01"),
            header("00", TRACE, SPAN, "0x"),
            header("00", &TRACE[1..], SPAN, "01"),
            header("00", TRACE, &format!("{SPAN}0"), "01"),
            header("00", TRACE, SPAN, "1"),
            format!("00_{TRACE}-{SPAN}-01"),
            String::new(),
            "00".into(),
            "garbage".repeat(10),
        ];
        for value in bad {
            assert_eq!(parse_traceparent(value.as_bytes()), None, "{value:?}");
        }
        // Not even UTF-8: still just ignored.
        assert_eq!(parse_traceparent(&[0xff; 55]), None);
    }

    #[test]
    fn tracestate_is_kept_when_printable() {
        assert_eq!(
            parse_tracestate(b" congo=t61rcWkgMzE,rojo=00f067aa0ba902b7 ").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(parse_tracestate(b""), None);
        assert_eq!(parse_tracestate(b"a=\x01"), None);
        assert_eq!(parse_tracestate(&vec![b'a'; MAX_TRACESTATE + 1]), None);
    }

    #[test]
    fn new_ids_are_not_zero_and_differ() {
        assert_ne!(new_trace_id(), [0; 16]);
        assert_ne!(new_span_id(), [0; 8]);
        assert_ne!(new_trace_id(), new_trace_id());
    }
}
