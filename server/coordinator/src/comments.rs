//! Comments on tables, views and their columns (`COMMENT ON`), kept in the catalog file with
//! the objects they describe and published for the frontends' catalogs (PostgreSQL's
//! `pg_description`, which dbt's `docs generate` and psql read).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// One comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// The schema of the table or view.
    pub schema: String,
    /// The table or view.
    pub table: String,
    /// The column, for a comment on a column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The comment.
    pub text: String,
}

/// The comments as of the catalog's last commit.
#[derive(Debug, Default)]
pub struct Comments {
    // A std RwLock: only touched briefly, never across an await.
    current: RwLock<Arc<Vec<Comment>>>,
}

impl Comments {
    /// Every comment.
    pub fn all(&self) -> Arc<Vec<Comment>> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn publish(&self, comments: Vec<Comment>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(comments);
    }
}

/// Sets (or with `None` removes) the comment on `table` or its `column`.
pub(crate) fn set(
    comments: &mut Vec<Comment>,
    schema: &str,
    table: &str,
    column: Option<&str>,
    text: Option<&str>,
) {
    comments.retain(|c| !(c.schema == schema && c.table == table && c.column.as_deref() == column));
    if let Some(text) = text {
        comments.push(Comment {
            schema: schema.to_string(),
            table: table.to_string(),
            column: column.map(str::to_string),
            text: text.to_string(),
        });
    }
}

/// The comments of a renamed table or view follow it.
pub(crate) fn renamed(comments: &mut [Comment], schema: &str, from: &str, to: &str) {
    for comment in comments {
        if comment.schema == schema && comment.table == from {
            comment.table = to.to_string();
        }
    }
}

/// The comments of a dropped table or view go with it (`table` none: a dropped schema's).
pub(crate) fn dropped(comments: &mut Vec<Comment>, schema: &str, table: Option<&str>) {
    comments.retain(|c| !(c.schema == schema && table.is_none_or(|t| c.table == t)));
}
