//! Reading a request body: within the body limit and the in-flight bytes budget, as it arrives, and
//! inflated when it was sent compressed (the limit applies to the inflated size too).

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;

use super::compression;
use crate::budget::{Budget, Permit};
use crate::error::{Error, Result};

/// Reads a whole request body, refusing anything over `limit` (413) and holding its bytes from `budget`
/// (429 when spent): a declared Content-Length is checked against both before a byte is read; the bytes
/// are held as they arrive (so a client that declares much and sends slowly holds only what it sent), and
/// the body is cut off as soon as it passes either.
///
/// A body sent with `Content-Encoding: gzip` or `deflate` is then inflated, and `limit` bounds the
/// inflated size too: inflating stops as soon as it would pass it (413), so a zip bomb costs at most the
/// limit. While it inflates, the body is held from the budget at what it may inflate to (1032 bytes per
/// compressed byte, capped at the limit), then at its inflated size.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &Budget,
) -> Result<(bytes::Bytes, Permit)> {
    read_coded_body(coding(headers)?, headers, body, limit, budget).await
}

/// The body's coding from `Content-Encoding`. The edge answers 415 before a handler runs; a caller
/// without it gets a 400.
pub fn coding(headers: &HeaderMap) -> Result<Option<compression::Coding>> {
    compression::request_coding(headers).map_err(|coding| {
        Error::invalid(format!(
            "unsupported Content-Encoding '{coding}' (gzip, deflate or identity)"
        ))
    })
}

/// [`read_body`] of a body whose coding the caller has read from `headers` already (the edge does, to
/// answer 415).
pub async fn read_coded_body(
    coding: Option<compression::Coding>,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &Budget,
) -> Result<(bytes::Bytes, Permit)> {
    let (body, mut permit) = read_encoded_body(headers, body, limit, budget).await?;
    let Some(coding) = coding else {
        return Ok((body, permit));
    };
    permit.grow(
        body.len()
            .saturating_mul(compression::MAX_INFLATE_RATIO)
            .min(limit),
    )?;
    let inflated = compression::inflate(coding, body, limit).await?;
    permit.resize(inflated.len())?;
    Ok((inflated, permit))
}

/// The body as it came over the wire (compressed, if it was).
async fn read_encoded_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &Budget,
) -> Result<(bytes::Bytes, Permit)> {
    let too_large =
        || Error::PayloadTooLarge(format!("request body exceeds the {limit}-byte limit"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut permit = budget.empty();
    let mut body = body;
    if let Some(declared) = declared {
        budget.check(declared as usize)?;
        // One buffer of the declared size (memory only as it is written), each chunk copied in and let
        // go as it arrives.
        let mut buf = Vec::with_capacity(declared as usize);
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Error::invalid(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                permit.grow(data.len())?;
                buf.extend_from_slice(&data);
            }
        }
        return Ok((buf.into(), permit));
    }
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Error::invalid(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(too_large());
        }
        permit.grow_to(total)?;
        if !data.is_empty() {
            chunks.push(data);
        }
    }
    let body = match chunks.len() {
        0 => bytes::Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            // One contiguous copy for the parser; the chunks go once it is made.
            permit.grow(total)?;
            let mut joined = Vec::with_capacity(total);
            for chunk in chunks.drain(..) {
                joined.extend_from_slice(&chunk);
            }
            drop(chunks);
            permit.shrink_to(total);
            joined.into()
        }
    };
    permit.shrink_to(body.len());
    Ok((body, permit))
}
