//! String columns a `CREATE TABLE` declares `varchar(n)` or `char(n)`: Arrow keeps them as text,
//! the table's field metadata ([`PG_TYPE_METADATA`]) keeps the declaration, so they go out and
//! reflect with their PostgreSQL type, and writes check the declared length.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, ScalarUDF, lit};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    CharacterLength, DataType as SqlDataType, Statement as SqlStatement,
};
use ember_planner::functions::CheckLength;
use pgwire::api::Type;

use crate::engine::QueryEngine;
use crate::error::Result;
use crate::pgwire::encode::PG_TYPE_METADATA;
use crate::session::ClientSession;

/// A string column declared `varchar`, `varchar(n)` or `char(n)`; Arrow keeps it as text, the
/// declaration lives in the field's [`PG_TYPE_METADATA`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclaredString {
    Varchar(Option<u32>),
    Char(u32),
}

impl DeclaredString {
    /// The metadata value that records the declaration.
    pub(crate) fn metadata(self) -> String {
        match self {
            Self::Varchar(None) => "varchar".into(),
            Self::Varchar(Some(n)) => format!("varchar({n})"),
            Self::Char(n) => format!("bpchar({n})"),
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        if value == "varchar" {
            return Some(Self::Varchar(None));
        }
        let length = |prefix: &str| {
            value
                .strip_prefix(prefix)?
                .strip_suffix(')')?
                .parse::<u32>()
                .ok()
        };
        length("varchar(")
            .map(|n| Self::Varchar(Some(n)))
            .or_else(|| length("bpchar(").map(Self::Char))
    }

    /// PostgreSQL's name of the type, as its errors give it.
    pub(crate) fn type_name(self) -> String {
        match self {
            Self::Varchar(None) => "character varying".into(),
            Self::Varchar(Some(n)) => format!("character varying({n})"),
            Self::Char(n) => format!("character({n})"),
        }
    }

    /// At most this many characters fit.
    pub(crate) fn max_length(self) -> Option<u32> {
        match self {
            Self::Varchar(n) => n,
            Self::Char(n) => Some(n),
        }
    }

    pub(crate) fn pg_type(self) -> (Type, i32) {
        let typmod = |n: u32| i32::try_from(n).map_or(-1, |n| n.saturating_add(4));
        match self {
            Self::Varchar(None) => (Type::VARCHAR, -1),
            Self::Varchar(Some(n)) => (Type::VARCHAR, typmod(n)),
            Self::Char(n) => (Type::BPCHAR, typmod(n)),
        }
    }
}

impl QueryEngine {
    /// The column types a `CREATE TABLE` statement declares as `varchar`/`char`, by position
    /// (none for other statements, or other columns). Arrow keeps such columns as text; the
    /// table's field metadata keeps the declaration, so clients see `character varying(20)`.
    pub(crate) fn declared_strings(
        &self,
        session: &ClientSession,
        text: &str,
    ) -> Vec<Option<DeclaredString>> {
        let Ok(statements) = self.parse(session, text) else {
            return vec![];
        };
        let [parsed] = statements.as_slice() else {
            return vec![];
        };
        let DFStatement::Statement(statement) = parsed.statement() else {
            return vec![];
        };
        let SqlStatement::CreateTable(create) = statement.as_ref() else {
            return vec![];
        };
        let length = |length: &Option<CharacterLength>| match length {
            Some(CharacterLength::IntegerLength { length, .. }) => u32::try_from(*length).ok(),
            _ => None,
        };
        create
            .columns
            .iter()
            .map(|column| match &column.data_type {
                SqlDataType::Varchar(n)
                | SqlDataType::CharacterVarying(n)
                | SqlDataType::CharVarying(n) => Some(DeclaredString::Varchar(length(n))),
                // PostgreSQL's `char` without a length is char(1).
                SqlDataType::Char(n) | SqlDataType::Character(n) => {
                    Some(DeclaredString::Char(if n.is_none() {
                        1
                    } else {
                        length(n)?
                    }))
                }
                _ => None,
            })
            .collect()
    }
}

/// `input` with every value bound for a `varchar(n)` or `char(n)` column of `table` checked
/// against the declared length, as PostgreSQL checks it (SQLSTATE 22001 when it does not fit).
/// Columns match by position: DataFusion plans inserts with the table's columns in order.
pub(crate) fn check_declared_lengths(
    input: Arc<LogicalPlan>,
    table: &Schema,
) -> Result<Arc<LogicalPlan>> {
    let checks: Vec<Option<DeclaredString>> = table
        .fields()
        .iter()
        .map(|field| {
            let declared = DeclaredString::parse(field.metadata().get(PG_TYPE_METADATA)?)?;
            declared.max_length().map(|_| declared)
        })
        .collect();
    if checks.iter().all(Option::is_none) || input.schema().fields().len() != checks.len() {
        return Ok(input);
    }
    let check = Arc::new(ScalarUDF::from(CheckLength::new()));
    let exprs = input
        .schema()
        .columns()
        .into_iter()
        .zip(checks)
        .map(|(column, declared)| {
            let name = column.name.clone();
            let value = Expr::Column(column);
            match declared.and_then(|d| Some((d.max_length()?, d.type_name()))) {
                Some((max, type_name)) => Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(&check),
                    vec![value, lit(i64::from(max)), lit(type_name)],
                ))
                .alias(name),
                None => value,
            }
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(LogicalPlan::Projection(Projection::try_new(
        exprs, input,
    )?)))
}
