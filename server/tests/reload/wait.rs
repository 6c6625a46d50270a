//! Waiting: until a condition holds, or for a future with a deadline.

use std::time::Duration;

/// Polls `check` until it holds or 10 s pass.
pub(crate) async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// `what` must finish within `seconds`.
pub(crate) async fn within<T>(
    seconds: u64,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {seconds} s"))
}
