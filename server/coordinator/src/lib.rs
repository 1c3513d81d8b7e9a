//! Ember's coordinator (Spark's driver) as a library: what turns SQL into distributed work and
//! answers, with no client protocol in it. Frontends (the `ember-pgwire` and `ember-flight-sql`
//! crates) translate their protocol into calls of its facade — [`QueryEngine`],
//! [`ClientSession`], [`ParsedStatement`], [`Output`], [`ResultHandle`], [`Error`] — and bring
//! their SQL flavour through a [`ClientDialect`].
//!
//! ```text
//!  frontend ──parse──► ParsedStatement ──plan──► LogicalPlan ──execute──► Output (rows | Outcome)
//!                           │ session command                 │ query
//!                           ▼                                 ▼
//!                    dialect / session          physical plan ─► StageGraph ─► Scheduler
//!                                                                  │ launch tasks (gRPC)
//!  ResultHandle ◄── result events, live partitions (Flight) ◄── executors (ClusterService)
//!  system.* tables ◄── scheduler snapshots        catalog.json ◄── DDL, write commits
//! ```
//!
//! The scheduler owns all query, stage and task state; everything else talks to it through
//! events. Planning primitives (stage cutting, shuffle operators, task encoding) live in
//! `ember-planner`; the wire contract with executors in `ember-protocol`.

pub mod access;
mod authorize;
mod catalog;
mod catalog_statements;
mod cluster;
pub mod cluster_manager;
pub mod comments;
pub mod coordinator;
mod cursors;
mod ddl;
pub mod declared;
mod delta_statements;
mod delta_target;
mod dml;
pub mod engine;
pub mod error;
mod explain_analyze;
mod history;
pub mod ingest;
mod join_fallback;
mod merge;
pub mod monitor;
pub mod output;
mod placeholders;
pub mod query;
pub mod results;
mod scheduler;
pub mod session;
mod standalone;
pub mod statement;
pub mod status;
mod system_tables;
mod temp;
pub mod users;
mod writes;

pub use cluster_manager::{
    AllocationEvent, AllocationEvents, AllocationPolicy, ClusterManager, ExecutorRequest,
};
pub use coordinator::{Coordinator, stopped};
pub use ember_planner::sqlstate::SqlState;
pub use engine::{QueryEngine, is_query, returns_rows};
pub use error::{Error, Result, TaskErrorKind};
pub use monitor::Monitor;
pub use output::{Command, Outcome, Output};
pub use placeholders::MAX_PARAMETERS;
pub use query::StartedQuery;
pub use results::{ResultEvent, ResultHandle, ResultPartitions};
pub use session::dialect;
pub use session::dialect::{ClientDialect, DataFusionDialect};
pub use session::{ClientSession, StatementGuard};
pub use statement::CursorStatement;
pub use statement::{Deallocate, ParsedStatement, SessionCommand, TransactionCommand};
