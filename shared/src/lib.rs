//! Courier's library: the domain (tasks, requests, retry policy, outcome
//! classification), the ports it needs (one per concern: tasks, the delivery
//! ledger, the reconcile index, counts, replays, tenants, the queue, the
//! scheduler), their AWS adapters (DynamoDB, SQS, Scheduler) and the logic
//! behind each Lambda entrypoint.
//!
//! The domain module holds no AWS types; `AttributeValue` mapping lives only
//! in [`dynamo`], SQS calls only in [`sqs`].

pub mod api;
pub mod aws;
pub mod config;
pub mod counter;
pub mod domain;
pub mod dynamo;
pub mod metrics;
pub mod ports;
pub mod reconciler;
pub mod replays;
pub mod resources;
pub mod schedules;
pub mod sender;
pub mod sqs;
pub mod telemetry;

pub use config::Config;
