//! The time the workers read. The sender and the replay step ask a [`Clock`]
//! instead of the system, so unit tests set the time and assert on what was
//! due, deferred or recorded without sleeping. The functions' `main` passes
//! [`SystemClock`].

use crate::domain::{EpochMillis, now_millis};

/// A source of the current time, in epoch milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> EpochMillis;
}

/// The system's wall clock: what every deployed function uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EpochMillis {
        now_millis()
    }
}
