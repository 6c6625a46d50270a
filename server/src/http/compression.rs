//! HTTP content codings, as tritonclient uses them: a request body sent with `Content-Encoding: gzip` or
//! `deflate` (zlib, as HTTP defines it) is inflated before it is parsed (`request_compression_algorithm`),
//! and a successful response is compressed when the request's `Accept-Encoding` asks for it
//! (`response_compression_algorithm`). Any other coding gets 415 with the codings Keel takes.
//!
//! Inflating reads at most one byte past the body limit and stops there, so a zip bomb costs at most the
//! limit. Both directions run on the blocking pool (flate2, the codec tonic's gRPC compression uses too).

use std::io::{Read, Write};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::Compression;
use http_body_util::BodyExt;

use crate::error::{Error, Result};

/// What a deflate stream may inflate to per compressed byte (the format's limit, 1032:1): a compressed
/// body is held from the in-flight budget at this, capped at the body limit, while it is inflated.
pub const MAX_INFLATE_RATIO: usize = 1032;

/// Responses up to this size are compressed on the async worker; larger ones on the blocking pool.
const INLINE_COMPRESS_BYTES: usize = 64 * 1024;

/// The codings Keel takes, as a 415 answer's `Accept-Encoding` lists them.
const ACCEPTED: &str = "gzip, deflate";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's `deflate`: a zlib stream (RFC 1950), what tritonclient sends and gRPC's `deflate` is too.
    Deflate,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    fn parse(token: &str) -> Option<Coding> {
        match token {
            t if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") => {
                Some(Coding::Gzip)
            }
            t if t.eq_ignore_ascii_case("deflate") => Some(Coding::Deflate),
            _ => None,
        }
    }
}

/// The request body's coding from `Content-Encoding`: `None` for none or `identity`; `Err` with the
/// header's value for anything Keel cannot decode (a coding it does not know, or more than one).
pub fn request_coding(headers: &HeaderMap) -> Result<Option<Coding>, String> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| format!("{value:?}"))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("identity") {
                continue;
            }
            match (Coding::parse(token), found) {
                (Some(coding), None) => found = Some(coding),
                _ => return Err(text.to_string()),
            }
        }
    }
    Ok(found)
}

/// The coding a response should take from the request's `Accept-Encoding`, chosen as Triton chooses it:
/// of `identity`, `gzip` and `deflate`, the one with the highest q-value (1 when none is given), the first
/// listed on a tie; `None` for identity or when neither gzip nor deflate is accepted.
pub fn response_coding(headers: &HeaderMap) -> Option<Coding> {
    let mut best: Option<(f32, Option<Coding>)> = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or_default().trim();
            let coding = match token {
                t if t.eq_ignore_ascii_case("identity") => None,
                t => match Coding::parse(t) {
                    Some(coding) => Some(coding),
                    None => continue,
                },
            };
            let q = match parts.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())
            }) {
                None => 1.0,
                Some(Some(q)) => q,
                // A q-value that is not a number: the entry is ignored.
                Some(None) => continue,
            };
            if q > 0.0 && best.is_none_or(|(top, _)| q > top) {
                best = Some((q, coding));
            }
        }
    }
    best.and_then(|(_, coding)| coding)
}

/// Compresses a successful, non-empty response in `wanted`, the coding the client asked for
/// ([`response_coding`]). Error answers stay uncompressed JSON, as Triton sends them (tritonclient
/// reads an error body without looking at its coding).
pub async fn compress_response(mut response: Response, wanted: Option<Coding>) -> Response {
    let Some(coding) = wanted else {
        return response;
    };
    if !response.status().is_success() || response.headers().contains_key(header::CONTENT_ENCODING)
    {
        return response;
    }
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    let (mut parts, body) = response.into_parts();
    // Every body Keel answers with is already whole in memory: collecting it copies nothing.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Error::Internal(format!("reading the response to compress it: {e}"))
                .into_response();
        }
    };
    if body.is_empty() {
        return Response::from_parts(parts, Body::empty());
    }
    let plain = body.clone();
    let compressed = if body.len() <= INLINE_COMPRESS_BYTES {
        compress(coding, &body)
    } else {
        tokio::task::spawn_blocking(move || compress(coding, &body))
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("compression task failed: {e}"))))
    };
    match compressed {
        Ok(compressed) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.name()),
            );
            Response::from_parts(parts, Body::from(compressed))
        }
        // The answer is still good: it goes uncompressed, which every client takes.
        Err(e) => {
            tracing::warn!(error = %e, "response sent uncompressed");
            Response::from_parts(parts, Body::from(plain))
        }
    }
}

/// 415 with the codings Keel takes, as RFC 9110 §15.5.16 suggests.
pub fn unsupported(coding: &str) -> Response {
    let mut response = (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        axum::Json(serde_json::json!({
            "error": format!(
                "unsupported Content-Encoding '{coding}': Keel takes {ACCEPTED} or identity (one coding)"
            )
        })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, HeaderValue::from_static(ACCEPTED));
    response
}

/// Inflates a whole `coding` body into at most `limit` bytes: 413 as soon as it would pass the limit
/// (nothing beyond it is inflated), 400 for a body that is not valid `coding` data. Runs on the blocking
/// pool.
pub async fn inflate(coding: Coding, compressed: Bytes, limit: usize) -> Result<Bytes> {
    if compressed.is_empty() {
        return Ok(compressed);
    }
    tokio::task::spawn_blocking(move || inflate_now(coding, &compressed, limit))
        .await
        .map_err(|e| Error::Internal(format!("decompression task failed: {e}")))?
}

fn inflate_now(coding: Coding, compressed: &[u8], limit: usize) -> Result<Bytes> {
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::GzDecoder::new(compressed)),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(compressed)),
    };
    let mut inflated = Vec::new();
    // One byte past the limit tells "exactly the limit" from "more": reading stops there.
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| {
            Error::invalid(format!(
                "the request body is not valid {} data (Content-Encoding: {}): {e}",
                coding.name(),
                coding.name()
            ))
        })?;
    if inflated.len() > limit {
        return Err(Error::PayloadTooLarge(format!(
            "the {} request body inflates past the {limit}-byte limit",
            coding.name()
        )));
    }
    Ok(inflated.into())
}

/// Compresses a whole body with `coding`, at zlib's default level (as Triton's HTTP server does).
pub fn compress(coding: Coding, body: &[u8]) -> Result<Bytes> {
    let failed = |e: std::io::Error| Error::Internal(format!("compressing the response: {e}"));
    let out = match coding {
        Coding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(body).map_err(failed)?;
            encoder.finish().map_err(failed)?
        }
        Coding::Deflate => {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(body).map_err(failed)?;
            encoder.finish().map_err(failed)?
        }
    };
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn content_encodings() {
        let coding = |v: &str| request_coding(&headers(header::CONTENT_ENCODING, v));
        assert_eq!(coding("gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(coding("GZIP"), Ok(Some(Coding::Gzip)));
        assert_eq!(coding("x-gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(coding("deflate"), Ok(Some(Coding::Deflate)));
        assert_eq!(coding("identity"), Ok(None));
        assert_eq!(coding("identity, gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(coding("br"), Err("br".into()));
        assert_eq!(coding("gzip, gzip"), Err("gzip, gzip".into()));
        assert_eq!(request_coding(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn accept_encodings() {
        let coding = |v: &str| response_coding(&headers(header::ACCEPT_ENCODING, v));
        assert_eq!(coding("gzip"), Some(Coding::Gzip));
        assert_eq!(coding("deflate"), Some(Coding::Deflate));
        // What Python's requests sends by default: the first of equals.
        assert_eq!(coding("gzip, deflate"), Some(Coding::Gzip));
        assert_eq!(coding("deflate, gzip"), Some(Coding::Deflate));
        assert_eq!(coding("gzip;q=0.5, deflate"), Some(Coding::Deflate));
        assert_eq!(coding("br, deflate;q=0.1"), Some(Coding::Deflate));
        assert_eq!(coding("gzip;q=0, deflate;q=0"), None);
        assert_eq!(coding("gzip;q=x"), None);
        assert_eq!(coding("identity, gzip"), None);
        assert_eq!(coding("identity;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(coding("*"), None);
        assert_eq!(coding("br"), None);
        assert_eq!(response_coding(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn round_trip_both_codings() {
        let body = Bytes::from(b"{\"inputs\": []}".repeat(1000));
        for coding in [Coding::Gzip, Coding::Deflate] {
            let small = compress(coding, &body).unwrap();
            assert!(small.len() < body.len() / 10, "{coding:?}: {}", small.len());
            let back = inflate(coding, small.clone(), body.len()).await.unwrap();
            assert_eq!(back, body);
            // One byte short of the inflated size: refused, not inflated.
            let err = inflate(coding, small, body.len() - 1).await.unwrap_err();
            assert!(matches!(err, Error::PayloadTooLarge(_)), "{err}");
            let err = inflate(coding, Bytes::from_static(b"not compressed"), 1000)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }
        // gzip and zlib headers differ: one is not taken for the other.
        let gz = compress(Coding::Gzip, &body).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let zlib = compress(Coding::Deflate, &body).unwrap();
        assert_eq!(zlib[0] & 0x0f, 8, "zlib CM=8 (deflate)");
    }
}
