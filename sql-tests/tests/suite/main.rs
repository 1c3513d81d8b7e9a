//! The sqllogictest suites, in one test binary: Ember's own `.slt` files on an in-process
//! cluster, and DataFusion's corpus compared record by record with single-node DataFusion.

mod corpus;
mod slt;
