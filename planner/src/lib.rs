//! Ember's planner: turns DataFusion physical plans into distributed stage graphs and task
//! fragments. It owns the shuffle operators and the task encoding; it knows no network.
//!
//! ```text
//!  SQL ──DataFusion──► physical plan ──StageGraph::try_new──► stages (ShuffleWriterExec roots)
//!                                                               │
//!                           task_fragment(stage, partition) ◄───┘
//!                                  │ encode_plan (datafusion-proto + EmberCodec)
//!                                  ▼
//!                             bytes shipped to an executor ──decode_plan──► runnable fragment
//! ```
//!
//! What it does not own: where tasks run (the coordinator's scheduler), how shuffle blocks travel
//! between machines (the executor's Flight service, behind [`shuffle::ShuffleFetcher`]).

pub mod adaptive;
pub mod cache;
pub mod codec;
pub mod dynamic_filters;
pub mod error;
pub mod float_stats;
pub mod functions;
pub mod ids;
pub mod join_order;
pub mod joins;
pub mod memory;
pub mod paths;
pub mod row_group_splits;
pub mod runtime_filter;
pub mod session;
pub mod shuffle;
pub mod shuffle_partitions;
pub mod sqlstate;
pub mod stage;
pub mod storage;
pub mod subquery;
pub mod task;
pub mod tpch;
pub mod write;

pub use error::{Error, Result};
