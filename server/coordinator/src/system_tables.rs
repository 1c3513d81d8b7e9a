//! The `system` schema: Spark UI's tabs as SQL tables, read live from the scheduler, and the
//! roles and privileges of access control. A role that is not a superuser sees its own
//! session user's queries (and their stages and tasks) only.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, BooleanBuilder, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::access::{AccessControl, Securable};
use crate::cluster_manager::Allocations;
use crate::scheduler::{SchedulerHandle, Snapshot, SnapshotRequest};
use crate::session::Identity;
use crate::status::tables;
use crate::status::tables as schemas;

/// The schema's name.
pub(crate) const SYSTEM_SCHEMA: &str = "system";

#[derive(Debug, Clone, Copy)]
enum SystemTable {
    Executors,
    Queries,
    Stages,
    Tasks,
    Roles,
    TablePrivileges,
    TableAcl,
}

impl SystemTable {
    const ALL: [(&'static str, SystemTable); 7] = [
        ("executors", SystemTable::Executors),
        ("queries", SystemTable::Queries),
        ("stages", SystemTable::Stages),
        ("tasks", SystemTable::Tasks),
        ("roles", SystemTable::Roles),
        ("table_privileges", SystemTable::TablePrivileges),
        ("table_acl", SystemTable::TableAcl),
    ];

    fn schema(self) -> SchemaRef {
        match self {
            SystemTable::Executors => schemas::executors_schema(),
            SystemTable::Queries => schemas::queries_schema(),
            SystemTable::Stages => schemas::stages_schema(),
            SystemTable::Tasks => schemas::tasks_schema(),
            SystemTable::Roles => roles_schema(),
            SystemTable::TablePrivileges => table_privileges_schema(),
            SystemTable::TableAcl => table_acl_schema(),
        }
    }
}

fn roles_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("role_name", DataType::Utf8, false),
        Field::new("superuser", DataType::Boolean, false),
        Field::new("login", DataType::Boolean, false),
        Field::new("create_role", DataType::Boolean, false),
        Field::new("configured", DataType::Boolean, false),
        Field::new(
            "member_of",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
    ]))
}

/// Each table and view with its owner and its ACL in PostgreSQL's text form (`role=r/owner`,
/// one per line), as psql's `\dp` shows them.
fn table_acl_schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("table_schema"),
        text("table_name"),
        text("table_type"),
        text("owner"),
        text("acl"),
    ]))
}

fn table_acl_batch(access: &AccessControl) -> Result<RecordBatch> {
    let published = access.published();
    let mut tables: Vec<_> = published.tables.iter().collect();
    tables.sort();
    let mut columns: [StringBuilder; 5] = Default::default();
    for (schema, name) in tables {
        let object = Securable::table(schema, name);
        let kind = if published
            .views
            .contains_key(&(schema.clone(), name.clone()))
        {
            "view"
        } else {
            "table"
        };
        let owner = access.acl(&object).owner;
        let acl = access.acl_text(&object);
        for (builder, value) in columns.iter_mut().zip([
            schema.as_str(),
            name.as_str(),
            kind,
            owner.as_str(),
            acl.as_str(),
        ]) {
            builder.append_value(value);
        }
    }
    let columns: Vec<Arc<dyn Array>> = columns
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as Arc<dyn Array>)
        .collect();
    Ok(RecordBatch::try_new(table_acl_schema(), columns)?)
}

/// The columns of SQL's `information_schema.table_privileges`.
fn table_privileges_schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("grantor"),
        text("grantee"),
        text("table_catalog"),
        text("table_schema"),
        text("table_name"),
        text("privilege_type"),
        text("is_grantable"),
        text("with_hierarchy"),
    ]))
}

fn roles_batch(access: &AccessControl) -> Result<RecordBatch> {
    let roles = access.roles();
    let mut names = StringBuilder::new();
    let mut flags: [BooleanBuilder; 4] = Default::default();
    let mut member_of = ListBuilder::new(StringBuilder::new());
    for role in roles {
        names.append_value(&role.name);
        for (builder, value) in flags.iter_mut().zip([
            role.superuser,
            role.login,
            role.create_role,
            role.configured,
        ]) {
            builder.append_value(value);
        }
        member_of.append_value(role.member_of.iter().map(Some));
    }
    let [superuser, login, create_role, configured] = flags;
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(names.finish()),
        Arc::new({ superuser }.finish()),
        Arc::new({ login }.finish()),
        Arc::new({ create_role }.finish()),
        Arc::new({ configured }.finish()),
        Arc::new(member_of.finish()),
    ];
    Ok(RecordBatch::try_new(roles_schema(), columns)?)
}

/// Each privilege held on each table or view, as `information_schema.table_privileges` lists
/// them: the owner's implicit ones and every grant. A role that is not a superuser sees the
/// rows it (or a role it belongs to, or PUBLIC) grants or is granted.
fn table_privileges_batch(access: &AccessControl, viewer: Option<&str>) -> Result<RecordBatch> {
    let published = access.published();
    let visible: Option<BTreeSet<String>> = viewer
        .filter(|role| !access.is_superuser(role))
        .map(|role| access.memberships(role));
    let mut tables: Vec<_> = published.tables.iter().collect();
    tables.sort();
    let mut columns: [StringBuilder; 8] = Default::default();
    for (schema, name) in tables {
        let object = Securable::table(schema, name);
        for (grantor, grantee, privileges) in access.grants_of(&object) {
            if let Some(roles) = &visible
                && !(grantee == "PUBLIC" || roles.contains(&grantee) || roles.contains(&grantor))
            {
                continue;
            }
            for privilege in privileges.names() {
                let row = [
                    grantor.as_str(),
                    grantee.as_str(),
                    ember_planner::session::DEFAULT_CATALOG,
                    schema.as_str(),
                    name.as_str(),
                    privilege,
                    if grantee == grantor { "YES" } else { "NO" },
                    if privilege == "SELECT" { "YES" } else { "NO" },
                ];
                for (builder, value) in columns.iter_mut().zip(row) {
                    builder.append_value(value);
                }
            }
        }
    }
    let columns: Vec<Arc<dyn Array>> = columns
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as Arc<dyn Array>)
        .collect();
    Ok(RecordBatch::try_new(table_privileges_schema(), columns)?)
}

/// `system.executors` with the cluster manager's allocations that have no registered executor
/// (requested, starting, gone) after the executors.
fn with_allocations(executors: RecordBatch, allocations: &Allocations) -> Result<RecordBatch> {
    // An executor that registered since the allocator last looked is listed once, as itself.
    let registered: HashSet<String> = executors
        .column_by_name("allocation_id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .map(|ids| ids.iter().flatten().map(str::to_string).collect())
        .unwrap_or_default();
    let pending: Vec<_> = allocations
        .unregistered()
        .into_iter()
        .filter(|(id, _)| !registered.contains(id))
        .collect();
    if pending.is_empty() {
        return Ok(executors);
    }
    let schema = executors.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> Result<Arc<dyn Array>> {
            let n = pending.len();
            Ok(match field.name().as_str() {
                "status" => Arc::new(StringArray::from_iter_values(
                    pending.iter().map(|(_, a)| a.state.as_str()),
                )),
                "allocation_id" => Arc::new(StringArray::from_iter_values(
                    pending.iter().map(|(id, _)| id.as_str()),
                )),
                "slots" => Arc::new(datafusion::arrow::array::UInt32Array::from_iter(
                    pending
                        .iter()
                        .map(|(_, a)| (a.request.slots > 0).then_some(a.request.slots as u32)),
                )),
                "memory_bytes" => Arc::new(datafusion::arrow::array::UInt64Array::from_iter(
                    pending
                        .iter()
                        .map(|(_, a)| (a.request.memory > 0).then_some(a.request.memory)),
                )),
                _ => datafusion::arrow::array::new_null_array(field.data_type(), n),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pending = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok(datafusion::arrow::compute::concat_batches(
        &schema,
        &[executors, pending],
    )?)
}

/// What `viewer`'s session may see of the scheduler: everything for a superuser, else its own
/// queries.
fn scheduler_rows(
    table: SystemTable,
    snapshot: Snapshot,
    identity: Option<&Identity>,
    access: &AccessControl,
) -> RecordBatch {
    if let SystemTable::Executors = table {
        return tables::executors_batch(&snapshot.executors);
    }
    let restricted = identity.filter(|i| !access.is_superuser(&i.current_role()));
    let queries: Vec<_> = snapshot
        .queries
        .iter()
        .filter(|q| restricted.is_none_or(|i| q.summary.user == i.session_user()))
        .collect();
    match table {
        SystemTable::Queries => tables::queries_batch(&queries),
        SystemTable::Stages => tables::stages_batch(&queries),
        _ => tables::tasks_batch(&queries),
    }
}

/// Lists the system tables.
#[derive(Debug)]
pub(crate) struct SystemSchema {
    scheduler: SchedulerHandle,
    access: Arc<AccessControl>,
    allocations: Arc<Allocations>,
}

impl SystemSchema {
    pub(crate) fn new(
        scheduler: SchedulerHandle,
        access: Arc<AccessControl>,
        allocations: Arc<Allocations>,
    ) -> Self {
        Self {
            scheduler,
            access,
            allocations,
        }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SystemTable::ALL
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(SystemTable::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, table)| {
                Arc::new(SystemTableProvider {
                    table: *table,
                    scheduler: self.scheduler.clone(),
                    access: Arc::clone(&self.access),
                    allocations: Arc::clone(&self.allocations),
                }) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        SystemTable::ALL.iter().any(|(n, _)| *n == name)
    }
}

#[derive(Debug)]
struct SystemTableProvider {
    table: SystemTable,
    scheduler: SchedulerHandle,
    access: Arc<AccessControl>,
    allocations: Arc<Allocations>,
}

#[async_trait]
impl TableProvider for SystemTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let identity = state.config().get_extension::<Identity>();
        let rows = match self.table {
            SystemTable::Roles => roles_batch(&self.access)?,
            SystemTable::TableAcl => table_acl_batch(&self.access)?,
            SystemTable::TablePrivileges => table_privileges_batch(
                &self.access,
                identity.as_ref().map(|i| i.current_role()).as_deref(),
            )?,
            table => {
                let snapshot = self
                    .scheduler
                    .snapshot(match table {
                        SystemTable::Executors => SnapshotRequest::executors(),
                        SystemTable::Queries => SnapshotRequest::summaries(),
                        _ => SnapshotRequest::tables(),
                    })
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let rows = scheduler_rows(table, snapshot, identity.as_deref(), &self.access);
                match table {
                    SystemTable::Executors => with_allocations(rows, &self.allocations)?,
                    _ => rows,
                }
            }
        };
        let table = MemTable::try_new(self.schema(), vec![vec![rows]])?;
        table.scan(state, projection, filters, limit).await
    }
}
