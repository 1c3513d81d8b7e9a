//! A statement as the engine receives it from a frontend: parsed, with what the frontends ask of
//! it before it runs (its text, its PostgreSQL column names, the cursor or `DEALLOCATE` it is).

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::cursors::CursorStatement;

/// A parsed statement, with Ember's own `EXPLAIN DISTRIBUTED` prefix noted.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    pub(crate) statement: DFStatement,
    pub(crate) explain_distributed: bool,
}

impl ParsedStatement {
    /// The statement as SQL text (for logs, system tables and command tags).
    pub fn sql(&self) -> String {
        self.statement.to_string()
    }

    /// The names PostgreSQL gives the result columns the statement leaves unnamed (see
    /// `pgwire::column_names`).
    pub(crate) fn postgres_column_names(&self) -> Option<Vec<Option<String>>> {
        crate::pgwire::column_names::postgres_column_names(&self.statement)
    }

    /// The name a `DEALLOCATE name` statement names.
    pub(crate) fn deallocated_name(&self) -> Option<String> {
        match &self.statement {
            DFStatement::Statement(inner) => match inner.as_ref() {
                SqlStatement::Deallocate { name, .. } => Some(name.value.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The statement as parsed.
    pub(crate) fn statement(&self) -> &DFStatement {
        &self.statement
    }

    /// The cursor statement this is, if it is one.
    pub(crate) fn cursor_statement(&self) -> Option<CursorStatement> {
        match &self.statement {
            DFStatement::Statement(inner) => CursorStatement::recognise(inner).ok().flatten(),
            _ => None,
        }
    }
}
