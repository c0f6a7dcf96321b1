//! Courier's local stack: dev tooling that stands in for what AWS does for a
//! deployed Courier, so the real function binaries run on a laptop against a
//! local emulator. Never deployed.
//!
//! - [`bootstrap`] creates the table, queues and schedule group that
//!   `template.yaml` declares, from the same constants.
//! - [`runtime`] hosts a function binary behind the Lambda Runtime API.
//! - [`front`] turns plain HTTP into API Gateway HTTP API (v2) events.
//! - [`event_source`] is the SQS event-source mapping: long-poll, invoke the
//!   sender with a real `SqsEvent`, delete all but `batchItemFailures`.
//! - [`scheduler`] fires due EventBridge Scheduler schedules.
//! - [`streams`] is the DynamoDB Streams mapping feeding the status counter.
//! - [`proxy`] forwards a caller's AWS calls to the emulator and shows each
//!   exchange to an observer; [`iam`] records what IAM authorizes for each
//!   call of a function and checks it against `template.yaml`.
//! - [`echo`] is a target that answers and logs what it receives.
//! - [`fault_proxy`] fails a chosen share of AWS calls, the ways AWS does.
//! - [`chaos`] runs tasks through faults and sender kills and checks none is lost.
//! - [`stack`] starts all of it together.

pub mod arrivals;
pub mod bootstrap;
pub mod chaos;
pub mod echo;
pub mod event_source;
pub mod fault_proxy;
pub mod front;
pub mod iam;
pub mod jwt;
pub mod proxy;
pub mod runtime;
pub mod scheduler;
pub mod stack;
pub mod streams;
pub mod ttl;
