//! The contract between Ember's coordinator and its executors, which both depend on and which
//! depends on neither (as Ballista's `core` sits under its scheduler and executor):
//!
//! ```text
//!        coordinator                                   executor
//!  ClusterService (server) ◄── proto::ExecutorMessage ── session client
//!                          ──► proto::CoordinatorMessage ─►  task runner
//!                                 (launch, cancel, release;  TaskFailed with kind + SQLSTATE)
//!  (challenge, both sides prove the cluster secret: membership)
//!  FlightShuffleFetcher ── signed ShuffleTicket (do_get) ───► Flight service
//!  Flight SQL frontend ── credentials (signed tickets) ─────► result partitions for clients
//! ```
//!
//! - [`proto`]: the gRPC service and its messages (`proto/cluster.proto`);
//! - [`membership`]: the challenge–response by which executors join and the coordinator answers;
//! - [`tickets`]: the signed Flight ticket naming one shuffle block;
//! - [`tls`]: TLS between members, against the cluster's CA;
//! - [`fetcher`]: the Flight client that reads shuffle blocks and live result partitions;
//! - [`task_errors`]: task failures as they cross the wire, typed;
//! - [`credentials`] and [`flight_data`]: what a Flight SQL client presents to an executor and
//!   what it receives.

pub mod credentials;
pub mod fetcher;
pub mod flight_data;
pub mod membership;
pub mod proto;
pub mod task_errors;
pub mod tickets;
pub mod tls;

pub use fetcher::FlightShuffleFetcher;

/// The settings of this crate's property tests: `cases` cases, nothing written to disk.
#[cfg(test)]
pub(crate) fn fuzz_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
