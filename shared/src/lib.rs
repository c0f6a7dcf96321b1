//! Courier's library, in three layers:
//!
//! - the domain ([`domain`]: tasks, requests, retry policy, outcome
//!   classification): pure, no AWS types;
//! - the ports ([`ports`]: one trait per concern — tasks, the delivery
//!   ledger, the reconcile index, counts, replays, tenants, the queue, the
//!   scheduler) and their
//!   AWS adapters ([`dynamo`], [`sqs`], [`schedules`]; [`metrics`] writes EMF
//!   lines). `AttributeValue` mapping lives only in [`dynamo`], SQS calls only
//!   in [`sqs`];
//! - the use cases behind each Lambda function: [`api`] (the router),
//!   [`sender`] (the batch handler), [`reconciler`], [`counter`] and
//!   [`replays`]. They name ports, never adapters, and no Lambda runtime.
//!
//! The wiring is in each function's `main` (`functions/*/src/main.rs`): it
//! reads the [`Config`], builds the SDK clients and adapters once per cold
//! start and hands them to a use case inside the Lambda runtime's loop.
//! The workers read the time from a [`clock::Clock`] it passes in; unit tests
//! pass a hand-set one and the in-memory fakes of the ports (`testing`,
//! compiled for tests and behind the `test-support` feature).

pub mod api;
pub mod archive;
pub mod aws;
pub mod clock;
pub mod config;
pub mod counter;
pub mod domain;
pub mod dynamo;
pub mod events;
pub mod kms;
pub mod metrics;
pub mod ports;
pub mod reconciler;
pub mod replays;
pub mod resources;
pub mod schedules;
pub mod sender;
pub mod sqs;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use config::Config;
