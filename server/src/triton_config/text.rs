//! Triton's `config.pbtxt` as protobuf text format: parsed against `inference.ModelConfig` from the
//! descriptor set build.rs compiles from proto/model_config.proto. A malformed file is an error with its
//! line and column.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// Triton's schema, compiled from proto/model_config.proto by build.rs.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/model_config.bin")).as_ref())
        .expect("the descriptor set build.rs compiled decodes")
});

/// The descriptor of `inference.ModelConfig`.
pub(super) fn descriptor() -> MessageDescriptor {
    POOL.get_message_by_name("inference.ModelConfig")
        .expect("model_config.proto defines inference.ModelConfig")
}

/// Parses `text` as a Triton model configuration. The error says where: `line L, column C: what`.
pub fn parse(text: &str) -> Result<DynamicMessage, String> {
    let (spec, inserted) = list_colons(text);
    DynamicMessage::parse_text_format(descriptor(), &spec).map_err(|e| {
        use miette::Diagnostic;
        let offset = e
            .labels()
            .and_then(|mut labels| labels.next())
            .map_or(spec.len(), |label| label.offset());
        // Back to the file's own offsets: less the colons added before it.
        let offset = offset - inserted.iter().filter(|&&at| at < offset).count();
        let (line, column) = line_column(text, offset);
        format!("line {line}, column {column}: {e}")
    })
}

/// The text format lets a list of messages follow its field name without a colon (`input [ { ... } ]`,
/// the way every Triton configuration writes it), but prost-reflect's parser (0.16) only accepts the
/// colon-less form for a single message. This writes the colon in (`input: [ { ... } ]`): after a field
/// name (an identifier not preceded by `:`) that is followed by `[`, outside strings and comments. Returns
/// the new text and the offsets, in it, of the colons added. (A scalar list without its colon, which the
/// format does not allow, is accepted too.)
fn list_colons(text: &str) -> (String, Vec<usize>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Colon,
        /// An identifier, and whether a colon came just before it (then it is a value, not a field name).
        Ident {
            end: usize,
            after_colon: bool,
        },
        Other,
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut inserted = Vec::new();
    let (mut last, mut copied, mut i) = (Token::Other, 0, 0);
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' => {
                i += 1;
                while i < bytes.len() && bytes[i] != c && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                last = Token::Other;
            }
            b':' => {
                last = Token::Colon;
                i += 1;
            }
            b'[' => {
                if let Token::Ident {
                    end,
                    after_colon: false,
                } = last
                {
                    out.push_str(&text[copied..end]);
                    inserted.push(out.len());
                    out.push(':');
                    copied = end;
                }
                last = Token::Other;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                last = Token::Ident {
                    end: i,
                    after_colon: last == Token::Colon,
                };
            }
            c if c.is_ascii_digit() || c == b'.' => {
                // A number: digits, letters (hex, exponent, suffix), dots, and an exponent's sign.
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || bytes[i] == b'.'
                        || ((bytes[i] == b'+' || bytes[i] == b'-')
                            && matches!(bytes[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                last = Token::Other;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                last = Token::Other;
                i += 1;
            }
        }
    }
    out.push_str(&text[copied.min(text.len())..]);
    (out, inserted)
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> String {
        parse(text).expect_err(text)
    }

    #[test]
    fn triton_parse_errors_have_line_and_column() {
        let err = parse_error("max_batch_size: 8\ninput [ { name: \"x\" ");
        assert!(err.starts_with("line 2, column 21:"), "{err}");
        let err = parse_error("max_batch_size: eight\n");
        assert!(err.starts_with("line 1, column 17:"), "{err}");
        let err = parse_error("name: \"m\"\n  instance_group [ { kind: KIND_TPU } ]");
        assert!(
            err.starts_with("line 2, column 28:") && err.contains("KIND_TPU"),
            "{err}"
        );
        assert_eq!(line_column("ab\ncé\nx", 6), (2, 3));
        // Positions are the file's, not the colon-added text's.
        let err = parse_error("input [ { name: \"a\" } ]\noutput [ { name: \"b\" bogus: 1 } ]");
        assert!(err.starts_with("line 2, column 22:"), "{err}");
    }

    #[test]
    fn triton_message_lists_need_no_colon() {
        let (text, inserted) = list_colons(
            "input [ { dims: [ 1 ] } ]\n# output [ x ]\nname: \"a [\" output\n[ {} ] kind: K [",
        );
        assert_eq!(
            text,
            "input: [ { dims: [ 1 ] } ]\n# output [ x ]\nname: \"a [\" output:\n[ {} ] kind: K ["
        );
        assert_eq!(inserted, vec![5, 60]);
        let (same, none) = list_colons("input: [ { dims: [ 1e-5, 0x1F ] } ] s: 'it\\'s [' x: 1.5f");
        assert_eq!(
            same,
            "input: [ { dims: [ 1e-5, 0x1F ] } ] s: 'it\\'s [' x: 1.5f"
        );
        assert!(none.is_empty());
    }
}
