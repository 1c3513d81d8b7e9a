//! Ember's executor: runs task fragments in slots, keeps their shuffle output on local disk and
//! serves it to peers through Arrow Flight.
//!
//! ```text
//!             coordinator (ClusterService.Connect stream)
//!               ▲ register / heartbeat / task status        │ launch / cancel / release
//!               │                                           ▼
//!   ┌───────────┴────────────── Executor (IO runtime) ──────────────────────────┐
//!   │ slots (semaphore) ─► CPU runtime: decode fragment ─► ShuffleWriterExec    │
//!   │                                  ShuffleReaderExec ◄─ local file | Flight │
//!   │ ShuffleFlightService.do_get ◄── peers' readers, the coordinator's results  │
//!   └──────────────────────────── work dir: shuffle/<query>/stage-S/map-M.A/ ───┘
//! ```
//!
//! The executor owns no query state beyond its running tasks: the coordinator decides what runs
//! where and when files may go. What it exchanges with the coordinator and its peers (the
//! cluster protocol, shuffle tickets, the Flight shuffle client, typed task errors) is
//! `ember-protocol`'s.

mod client_results;
pub mod cpu_runtime;
pub mod error;
pub mod executor;
pub mod flight;
mod task_runner;

pub use error::{Error, Result};
pub use executor::{Executor, ExecutorOptions};
