//! What `pg_get_indexdef` and `pg_get_constraintdef` answer for the indexes and constraints
//! of keys.

use std::collections::HashMap;

use super::KeyedTable;
use crate::pg_compat::format::quote_ident;

/// What `pg_get_indexdef` and `pg_get_constraintdef` say of the indexes and constraints of
/// keys, by oid: recorded whenever pg_catalog lists keys, so a query that reads an oid from
/// pg_index or pg_constraint finds it here.
#[derive(Debug, Default)]
pub(crate) struct KeyDefinitions {
    // A std Mutex: held for one map update or lookup, never across an await.
    by_oid: std::sync::Mutex<HashMap<i32, KeyDefinition>>,
}

#[derive(Debug, Clone)]
pub(crate) struct KeyDefinition {
    /// The index (rather than the constraint) of the key.
    index: bool,
    primary: bool,
    name: String,
    schema: String,
    table: String,
    columns: Vec<String>,
}

impl KeyDefinitions {
    pub(super) fn record(&self, tables: &[KeyedTable]) {
        let mut by_oid = self.by_oid.lock().unwrap_or_else(|e| e.into_inner());
        for table in tables {
            for (index_oid, constraint_oid, key) in table.keys() {
                let definition = KeyDefinition {
                    index: true,
                    primary: key.primary,
                    name: table.key_name(key),
                    schema: table.schema.clone(),
                    table: table.name.clone(),
                    columns: key
                        .columns
                        .iter()
                        .filter_map(|c| table.columns.get(*c).cloned())
                        .collect(),
                };
                by_oid.insert(
                    constraint_oid,
                    KeyDefinition {
                        index: false,
                        ..definition.clone()
                    },
                );
                by_oid.insert(index_oid, definition);
            }
        }
    }

    pub(crate) fn get(&self, oid: i32) -> Option<KeyDefinition> {
        let by_oid = self.by_oid.lock().unwrap_or_else(|e| e.into_inner());
        by_oid.get(&oid).cloned()
    }
}

impl KeyDefinition {
    /// `pg_get_indexdef(oid)`: `CREATE UNIQUE INDEX t_pkey ON s.t USING btree (a, b)`.
    pub(crate) fn index_definition(&self) -> Option<String> {
        self.index.then(|| {
            format!(
                "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
                quote_ident(&self.name),
                quote_ident(&self.schema),
                quote_ident(&self.table),
                self.column_list()
            )
        })
    }

    /// `pg_get_indexdef(oid, n, pretty)`: the `n`-th column of the index, from 1.
    pub(crate) fn index_column(&self, n: i64) -> Option<String> {
        let position = usize::try_from(n.checked_sub(1)?).ok()?;
        self.index
            .then(|| self.columns.get(position).map(|c| quote_ident(c)))
            .flatten()
    }

    /// `pg_get_constraintdef(oid)`: `PRIMARY KEY (a, b)` or `UNIQUE (a)`.
    pub(crate) fn constraint_definition(&self) -> Option<String> {
        let kind = if self.primary {
            "PRIMARY KEY"
        } else {
            "UNIQUE"
        };
        (!self.index).then(|| format!("{kind} ({})", self.column_list()))
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
