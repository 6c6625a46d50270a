//! Request ids: the client's (the request's `id`, else its `x-request-id` header or metadata), or a random
//! 128-bit one. Returned in the response's `id` and an `x-request-id` header, so feedback can be joined to
//! a prediction without client changes, and cannot be guessed by another client.

/// The header (HTTP) and metadata key (gRPC) that carries the id both ways.
pub const HEADER: &str = "x-request-id";

/// [`HEADER`] as an HTTP header name, made once: a `&str` name is parsed and checked at every lookup.
pub const HTTP_HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static(HEADER);

/// Longest id taken from a client; longer ones are refused rather than logged.
pub const MAX_LEN: usize = 256;

/// Bytes of the operating system's CSPRNG fetched at once per thread: one `getrandom` call per 256 ids
/// instead of one per request (the call was a visible share of a request's system time).
const POOL: usize = 4096;

thread_local! {
    static RANDOM: std::cell::RefCell<(Box<[u8; POOL]>, usize)> =
        std::cell::RefCell::new((Box::new([0; POOL]), POOL));
}

/// 16 bytes of the operating system's CSPRNG, each handed out once.
fn random_bytes() -> Result<[u8; 16], getrandom::Error> {
    RANDOM.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, used) = &mut *pool;
        if *used + 16 > POOL {
            getrandom::fill(&mut bytes[..])?;
            *used = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&bytes[*used..*used + 16]);
        // Handed out: no other id can be made from these bytes.
        bytes[*used..*used + 16].fill(0);
        *used += 16;
        Ok(out)
    })
}

/// 32 hex digits from the operating system's CSPRNG.
pub fn random() -> String {
    let bytes = random_bytes().unwrap_or_else(|_| {
        // The OS has no entropy to give (never seen on Linux): still unique, though not secret.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        (nanos ^ u128::from(fastrand::u64(..))).to_le_bytes()
    });
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The id a request is served under: the body's, else the header's, else a new one.
pub fn resolve(body: Option<String>, header: Option<&str>) -> Result<String, crate::error::Error> {
    let id = body
        .filter(|id| !id.is_empty())
        .or_else(|| {
            header
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(random);
    if id.len() > MAX_LEN {
        return Err(crate::error::Error::invalid(format!(
            "request id is longer than {MAX_LEN} bytes"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let a = random();
        let b = random();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(resolve(Some("mine".into()), Some("hdr")).unwrap(), "mine");
        assert_eq!(resolve(Some(String::new()), Some(" hdr ")).unwrap(), "hdr");
        assert_eq!(resolve(None, None).unwrap().len(), 32);
        assert!(resolve(Some("x".repeat(MAX_LEN + 1)), None).is_err());
        // Past one pool of random bytes, and on another thread: still all distinct.
        let mut seen: std::collections::HashSet<String> = (0..1000).map(|_| random()).collect();
        let other = std::thread::spawn(|| (0..1000).map(|_| random()).collect::<Vec<_>>());
        seen.extend(other.join().unwrap());
        assert_eq!(seen.len(), 2000);
    }
}
