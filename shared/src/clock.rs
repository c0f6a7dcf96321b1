//! The time the workers read. The sender and the replay step ask a [`Clock`]
//! instead of the system, so unit tests set the time and assert on what was
//! due, deferred or recorded without sleeping. The functions' `main` passes
//! [`SystemClock`].

use std::future::Future;
use std::pin::Pin;

use crate::domain::{EpochMillis, now_millis};

/// A source of the current time, in epoch milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> EpochMillis;

    /// Waits until `at` (returns at once if it has passed). A test clock
    /// moves itself there instead of sleeping.
    fn sleep_until(&self, at: EpochMillis) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let wait = (at - self.now()).max(0) as u64;
        Box::pin(async move {
            if wait > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
        })
    }
}

/// The system's wall clock: what every deployed function uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EpochMillis {
        now_millis()
    }
}
