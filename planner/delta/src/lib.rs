//! Delta Lake tables for Ember (the table format Spark's users know): a table's snapshot at a
//! version, its files with their statistics and partition values, and commits of files that
//! executors wrote.

pub use deltalake_core;

mod commit;
mod external;
mod scan;
mod snapshots;
mod time_travel;
mod write;

pub use commit::{
    ARROW_TYPE_METADATA, CommitError, Operation, WrittenFile, add_actions, add_columns, commit,
    create_table, delta_schema, has_delta_type, reads_predicate, write_operation,
};
pub use external::{DeltaTableFactory, ExternalDeltaTable, open_table, table_store, table_url};
pub use scan::{DeltaScanTable, SnapshotFile, object_store_url};
pub use snapshots::SnapshotCache;
pub use time_travel::TimeTravel;
pub use write::{
    NULL_PARTITION, check_partition_columns, file_schema, is_partition_type, write_files,
};

use datafusion::error::DataFusionError;

/// Makes the library's default log store serve `s3://` tables too: Ember hands it the
/// bucket's object store (`object_store`'s S3 client, whose conditional put writes a log
/// version only if absent, so concurrent writers never overwrite each other's commits).
pub(crate) fn register_log_stores() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        if let Ok(scheme) = url::Url::parse("s3://") {
            deltalake_core::logstore::logstore_factories()
                .insert(scheme, std::sync::Arc::new(ConditionalPutLogStores));
        }
    });
}

/// Log stores over a given object store that commits with put-if-absent.
struct ConditionalPutLogStores;

impl deltalake_core::logstore::LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: deltalake_core::logstore::ObjectStoreRef,
        root_store: deltalake_core::logstore::ObjectStoreRef,
        location: &url::Url,
        options: &deltalake_core::logstore::StorageConfig,
    ) -> deltalake_core::DeltaResult<std::sync::Arc<dyn deltalake_core::logstore::LogStore>> {
        Ok(deltalake_core::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// A library error as DataFusion's.
pub(crate) fn library_error(
    error: impl std::error::Error + Send + Sync + 'static,
) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}
