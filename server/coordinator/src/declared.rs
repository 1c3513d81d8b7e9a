//! String columns a `CREATE TABLE` declares `varchar(n)` or `char(n)`: Arrow keeps them as text,
//! the table's field metadata ([`TYPE_METADATA`]) keeps the declaration, so frontends can send
//! and describe them with their declared type, and every write checks the declared length (an
//! engine rule, whichever frontend the write came from).

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, ScalarUDF, lit};
use ember_planner::functions::{CheckLength, CheckNotNull};

use crate::error::Result;

/// Field metadata naming the SQL type a column was declared as where its Arrow type alone says
/// less (`varchar(20)`, `bpchar(1)`). Kept by the catalog with the table's schema.
pub const TYPE_METADATA: &str = "ember.pg_type";

/// A string column declared `varchar`, `varchar(n)` or `char(n)`; Arrow keeps it as text, the
/// declaration lives in the field's [`TYPE_METADATA`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredString {
    /// `varchar` or `varchar(n)`.
    Varchar(Option<u32>),
    /// `char(n)` (`char` alone is `char(1)`).
    Char(u32),
}

impl DeclaredString {
    /// The metadata value that records the declaration.
    pub fn metadata(self) -> String {
        match self {
            Self::Varchar(None) => "varchar".into(),
            Self::Varchar(Some(n)) => format!("varchar({n})"),
            Self::Char(n) => format!("bpchar({n})"),
        }
    }

    /// The declaration a metadata value records.
    pub fn parse(value: &str) -> Option<Self> {
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
    pub fn type_name(self) -> String {
        match self {
            Self::Varchar(None) => "character varying".into(),
            Self::Varchar(Some(n)) => format!("character varying({n})"),
            Self::Char(n) => format!("character({n})"),
        }
    }

    /// At most this many characters fit.
    pub fn max_length(self) -> Option<u32> {
        match self {
            Self::Varchar(n) => n,
            Self::Char(n) => Some(n),
        }
    }
}

/// `input` with every value bound for a column of `table` checked as PostgreSQL checks writes:
/// values of `varchar(n)`/`char(n)` columns against the declared length (SQLSTATE 22001), and
/// values of NOT NULL columns for NULLs (23502). The checks run wherever the write's tasks
/// run and fail typed. Columns match by position: DataFusion plans writes with the table's
/// columns in order.
pub(crate) fn check_column_constraints(
    input: Arc<LogicalPlan>,
    table: &Schema,
) -> Result<Arc<LogicalPlan>> {
    let input_fields = input.schema().fields().clone();
    if input_fields.len() != table.fields().len() {
        return Ok(input);
    }
    let lengths: Vec<Option<DeclaredString>> = table
        .fields()
        .iter()
        .map(|field| {
            let declared = DeclaredString::parse(field.metadata().get(TYPE_METADATA)?)?;
            declared.max_length().map(|_| declared)
        })
        .collect();
    let not_null: Vec<bool> = table
        .fields()
        .iter()
        .zip(input_fields.iter())
        .map(|(column, value)| !column.is_nullable() && value.is_nullable())
        .collect();
    if lengths.iter().all(Option::is_none) && !not_null.contains(&true) {
        return Ok(input);
    }
    let check_length = Arc::new(ScalarUDF::from(CheckLength::new()));
    let check_not_null = Arc::new(ScalarUDF::from(CheckNotNull::new()));
    let exprs = input
        .schema()
        .columns()
        .into_iter()
        .zip(table.fields())
        .enumerate()
        .map(|(i, (column, field))| {
            let name = column.name.clone();
            let mut value = Expr::Column(column);
            if let Some(declared) = lengths[i]
                && let Some(max) = declared.max_length()
            {
                value = Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(&check_length),
                    vec![value, lit(i64::from(max)), lit(declared.type_name())],
                ));
            }
            if not_null[i] {
                value = Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(&check_not_null),
                    vec![value, lit(field.name().clone())],
                ));
            }
            value.alias(name)
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(LogicalPlan::Projection(Projection::try_new(
        exprs, input,
    )?)))
}
