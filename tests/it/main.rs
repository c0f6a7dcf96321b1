//! Courier's integration tests: one binary, a module per area, run against
//! the emulator at `AWS_ENDPOINT_URL` (`make test` starts one). Each test
//! creates its own uniquely named stack, so tests run in parallel.

mod archive;
mod audit;
mod bootstrap;
mod chaos;
mod cli;
mod console;
mod defects;
mod delivery;
mod engine;
mod events;
mod fields;
mod flow_store;
mod flows;
mod flows_api;
mod guard;
mod handover;
mod helpers;
mod http_api;
mod iam;
mod jwt;
mod ledger;
mod metrics;
mod runtime;
mod scheduler;
mod schedules;
mod signing;
mod stats;
mod task_api;
mod template;
mod tenants;
