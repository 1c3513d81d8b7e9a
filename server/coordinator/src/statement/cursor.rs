//! Cursor statements (`DECLARE name CURSOR FOR query`, `FETCH`, `CLOSE`), recognised in the
//! syntax tree: DataFusion does not plan them; the session's cursors (`crate::cursors`) run them.

use datafusion::sql::sqlparser::ast::{
    CloseCursor, Declare, DeclareType, FetchDirection, Statement, Value,
};

use crate::error::{Error, Result};

/// A cursor statement, recognised before planning (DataFusion does not plan them).
#[derive(Debug, Clone)]
pub enum CursorStatement {
    /// `DECLARE name [NO SCROLL] CURSOR [WITH HOLD] FOR query`.
    Declare {
        /// The cursor's name.
        name: String,
        /// `WITH HOLD`: the cursor outlives its transaction block.
        hold: bool,
        /// The query it reads.
        query: Box<Statement>,
    },
    /// `FETCH [NEXT | FORWARD n | n | ALL] FROM name`.
    Fetch {
        /// The cursor's name.
        name: String,
        /// Rows to fetch; `None`: all that are left.
        count: Option<usize>,
    },
    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    Close {
        /// The cursor's name.
        name: Option<String>,
    },
}

impl CursorStatement {
    /// The cursor statement `statement` is, if it is one; unsupported forms are errors.
    pub(crate) fn recognise(statement: &Statement) -> Result<Option<Self>> {
        Ok(Some(match statement {
            Statement::Declare { stmts } => {
                let [
                    Declare {
                        names,
                        declare_type: Some(DeclareType::Cursor),
                        for_query: Some(query),
                        hold,
                        scroll,
                        ..
                    },
                ] = stmts.as_slice()
                else {
                    return Ok(None);
                };
                if *scroll == Some(true) {
                    return Err(Error::NotSupported(
                        "cursors are forward-only: SCROLL is not supported".into(),
                    ));
                }
                let [name] = names.as_slice() else {
                    return Ok(None);
                };
                CursorStatement::Declare {
                    name: name.value.clone(),
                    hold: *hold == Some(true),
                    query: Box::new(Statement::Query(query.clone())),
                }
            }
            Statement::Fetch {
                name, direction, ..
            } => {
                let count = match direction {
                    FetchDirection::Next => Some(1),
                    FetchDirection::Count { limit }
                    | FetchDirection::Forward { limit: Some(limit) } => Some(count(&limit.value)?),
                    FetchDirection::Forward { limit: None } => Some(1),
                    FetchDirection::All | FetchDirection::ForwardAll => None,
                    other => {
                        return Err(Error::NotSupported(format!(
                            "cursors are forward-only: FETCH {other} is not supported"
                        )));
                    }
                };
                CursorStatement::Fetch {
                    name: name.value.clone(),
                    count,
                }
            }
            Statement::Close { cursor } => CursorStatement::Close {
                name: match cursor {
                    CloseCursor::All => None,
                    CloseCursor::Specific { name } => Some(name.value.clone()),
                },
            },
            _ => return Ok(None),
        }))
    }
}

fn count(value: &Value) -> Result<usize> {
    match value {
        Value::Number(n, _) => n
            .parse()
            .map_err(|_| Error::Syntax(format!("invalid FETCH count {n}"))),
        other => Err(Error::Syntax(format!("invalid FETCH count {other}"))),
    }
}
