//! Ember's server: the coordinator (Spark's driver), its built-in cluster manager, the client
//! frontends and the `ember` binary's roles.
//!
//! ```text
//!  psql / JDBC ──pgwire──► QueryEngine ── DataFusion plan ──► StageGraph ──► Scheduler
//!                              ▲                                              │ launch tasks
//!                              │ result batches (Flight)                      ▼
//!                         result relay ◄──────────────── executors (ClusterService sessions)
//!  system.* tables ◄── scheduler snapshots
//! ```
//! The server owns query state and client sessions; planning primitives live in `ember-planner`
//! and task execution in `ember-executor`.

pub mod bench;
mod catalog;
pub mod cli;
mod cluster;
pub mod coordinator;
mod cursors;
mod ddl;
mod declared;
pub mod engine;
pub mod error;
pub mod flight_sql;
mod join_fallback;
pub mod local;
mod pg_compat;
mod pgwire;
mod placeholders;
mod results;
mod scheduler;
pub mod session;
pub mod shell;
mod statement;
mod system_tables;
mod writes;

pub use coordinator::Coordinator;
pub use error::{Error, Result};
pub use local::LocalCluster;
