//! One delivery attempt: a signed POST, and what its answer means for the event.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Client, StatusCode, Url};

use super::Secret;
use super::signing::signature;
use super::store::StoredEvent;
use crate::backoff::{Backoff, jittered};

/// What an attempt means for its event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done.
    Delivered,
    /// 410: the receiver wants no more of these; stop.
    Gone,
    /// Another 4xx (not 408/429): retrying the same request cannot help.
    Failed(StatusCode),
    /// 5xx, 408, 429, 3xx (redirects are not followed), a connection error or a timeout.
    /// `after` is the receiver's `Retry-After`, in its seconds form.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
}

/// POSTs `event` to `url`, signed for this attempt's timestamp. The per-attempt timeout is the
/// client's.
pub async fn attempt(client: &Client, url: &Url, secret: &Secret, event: &StoredEvent) -> Outcome {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = signature(secret, &event.id, timestamp, event.body.as_bytes());
    let request = client
        .post(url.clone())
        .header(CONTENT_TYPE, "application/cloudevents+json")
        .header("webhook-id", &event.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(event.body.clone());
    match request.send().await {
        Ok(response) => classify(response.status(), response.headers()),
        Err(error) => Outcome::Retry {
            after: None,
            reason: describe(error),
        },
    }
}

/// The error and its causes (a TLS failure is a cause: "invalid peer certificate: UnknownIssuer"),
/// without the URL: the worker knows it, and logs never carry it.
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The outcome of an answer with `status` and `headers`.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status == StatusCode::GONE {
        Outcome::Gone
    } else if status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Failed(status)
    } else {
        let after = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Outcome::Retry {
            after,
            reason: format!("HTTP {status}"),
        }
    }
}

/// How far a webhook retry's wait strays from the backoff, either way, so that many senders do not
/// retry in step.
const JITTER: f64 = 0.25;

/// The wait before retry number `attempts` (1 after the first failure): the one [`Backoff`], `initial`
/// doubling up to `max`, times a random factor in [0.75, 1.25) ([`JITTER`]).
pub fn backoff(attempts: u32, initial: Duration, max: Duration) -> Duration {
    jittered(Backoff::new(initial, max).delay(attempts), JITTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn classifies_statuses() {
        let none = HeaderMap::new();
        let code = |c: u16| StatusCode::from_u16(c).unwrap();
        assert_eq!(classify(code(200), &none), Outcome::Delivered);
        assert_eq!(classify(code(204), &none), Outcome::Delivered);
        assert_eq!(classify(code(410), &none), Outcome::Gone);
        assert_eq!(classify(code(400), &none), Outcome::Failed(code(400)));
        assert_eq!(classify(code(404), &none), Outcome::Failed(code(404)));
        for retried in [408, 429, 500, 502, 503, 301] {
            assert!(
                matches!(
                    classify(code(retried), &none),
                    Outcome::Retry { after: None, .. }
                ),
                "{retried}"
            );
        }
        let after = |h: &HeaderMap| match classify(code(503), h) {
            Outcome::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(&with_retry_after("7")), Some(Duration::from_secs(7)));
        assert_eq!(after(&with_retry_after(" 0 ")), Some(Duration::ZERO));
        assert_eq!(
            after(&with_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(after(&with_retry_after("-1")), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let (initial, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        for _ in 0..100 {
            let first = backoff(1, initial, max);
            assert!(
                first >= Duration::from_millis(3750) && first < Duration::from_millis(6250),
                "{first:?}"
            );
            let third = backoff(3, initial, max);
            assert!(
                third >= Duration::from_secs(15) && third < Duration::from_secs(25),
                "{third:?}"
            );
            let late = backoff(u32::MAX, initial, max);
            assert!(
                late >= Duration::from_secs(2700) && late < Duration::from_secs(4500),
                "{late:?}"
            );
        }
    }
}
