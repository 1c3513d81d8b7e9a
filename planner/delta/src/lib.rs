//! Delta Lake tables for Ember (the table format Spark's users know): a table's snapshot at a
//! version, its files with their statistics and partition values, and commits of files that
//! executors wrote.

pub use deltalake_core;

mod commit;
mod external;
mod scan;
mod time_travel;

pub use commit::{
    ARROW_TYPE_METADATA, CommitError, WrittenFile, add_actions, commit, create_table, delta_schema,
    has_delta_type, reads_predicate,
};
pub use external::{DeltaTableFactory, ExternalDeltaTable, open_table, table_store, table_url};
pub use scan::{DeltaScanTable, SnapshotFile, object_store_url};
pub use time_travel::TimeTravel;

use datafusion::error::DataFusionError;

/// A library error as DataFusion's.
pub(crate) fn library_error(
    error: impl std::error::Error + Send + Sync + 'static,
) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}
