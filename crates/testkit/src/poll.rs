//! Polling a condition with a deadline, instead of sleeping a guessed amount of time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `probe` every `every` until it returns `Some`, or `within` has passed.
///
/// # Errors
/// `Err(elapsed)` when the deadline passes first; the caller says what it was waiting for.
pub async fn wait_for<T, F, Fut>(within: Duration, every: Duration, mut probe: F) -> Result<T, Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if start.elapsed() >= within {
            return Err(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
}

/// The blocking twin of [`wait_for`], for start-up code that has no runtime.
pub fn wait_for_blocking(within: Duration, every: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if probe() {
            return true;
        }
        if start.elapsed() >= within {
            return false;
        }
        std::thread::sleep(every);
    }
}
