//! Positional `?` parameters, as ADBC, ODBC and JDBC-style applications write them, numbered
//! `$1`, `$2`, ... in the order they appear, which is how DataFusion binds parameters. Parameter
//! numbers are bounded as PostgreSQL bounds them (65,535): frontends size their parameter lists
//! by the highest number a statement names.

use std::ops::ControlFlow;

use datafusion::sql::parser::{CopyToSource, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{Expr, Value, VisitMut, VisitorMut};

use crate::error::{Error, Result};

/// Numbers the `?` parameters of `statement`. Mixing `?` with `$n` is refused: which value
/// would bind where is unclear.
pub(crate) fn number_question_marks(statement: &mut DFStatement) -> Result<()> {
    let mut numbering = Numbering::default();
    let visited = match statement {
        DFStatement::Statement(inner) => inner.visit(&mut numbering),
        DFStatement::CopyTo(copy) => match &mut copy.source {
            CopyToSource::Query(query) => query.visit(&mut numbering),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        DFStatement::Explain(explain) => return number_question_marks(&mut explain.statement),
        // No expressions that could hold a parameter.
        DFStatement::CreateExternalTable(_) | DFStatement::Reset(_) => ControlFlow::Continue(()),
    };
    if let ControlFlow::Break(number) = visited {
        return Err(Error::Syntax(format!(
            "there is no parameter {number}: parameters are numbered $1 to ${MAX_PARAMETERS}"
        )));
    }
    if numbering.question_marks > 0 && numbering.numbered {
        return Err(Error::NotSupported(
            "a statement uses either `?` or `$n` parameters, not both".into(),
        ));
    }
    Ok(())
}

/// The most parameters a statement may have (PostgreSQL's limit, a 16-bit count on the wire).
pub const MAX_PARAMETERS: usize = 65_535;

#[derive(Default)]
struct Numbering {
    question_marks: usize,
    numbered: bool,
}

impl VisitorMut for Numbering {
    /// A parameter out of range, as written.
    type Break = String;

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<String> {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &mut value.value
        {
            if name == "?" {
                self.question_marks += 1;
                if self.question_marks > MAX_PARAMETERS {
                    return ControlFlow::Break(format!("${}", self.question_marks));
                }
                *name = format!("${}", self.question_marks);
            } else if let Some(number) = name.strip_prefix('$') {
                self.numbered = true;
                // `$0` and named placeholders (`$name`) are DataFusion's to refuse or bind.
                let too_large = number
                    .parse::<u64>()
                    .map_or(true, |n| n > MAX_PARAMETERS as u64);
                if too_large && number.bytes().all(|b| b.is_ascii_digit()) {
                    return ControlFlow::Break(name.clone());
                }
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn numbered(sql: &str) -> Result<String> {
        let mut statement = DFParser::parse_sql(sql)?.pop_front().unwrap();
        number_question_marks(&mut statement)?;
        Ok(statement.to_string())
    }

    #[test]
    fn question_marks_are_numbered_in_order() {
        assert_eq!(
            numbered("SELECT ? + 1 FROM t WHERE a = ? AND b IN (?, ?)").unwrap(),
            "SELECT $1 + 1 FROM t WHERE a = $2 AND b IN ($3, $4)"
        );
        assert_eq!(
            numbered("EXPLAIN SELECT * FROM t WHERE a = ?").unwrap(),
            "EXPLAIN SELECT * FROM t WHERE a = $1"
        );
        assert_eq!(
            numbered("SELECT $2, $1, '?' FROM t").unwrap(),
            "SELECT $2, $1, '?' FROM t"
        );
        assert!(numbered("SELECT $1 FROM t WHERE a = ?").is_err());
        // Parameter numbers are bounded before anyone sizes a list by them.
        assert!(numbered("SELECT $65535").is_ok());
        let error = numbered("SELECT $4294967296").expect_err("out of range");
        assert!(error.to_string().contains("$4294967296"), "{error}");
        // DataFusion refuses `$0` in its own words.
        assert!(numbered("SELECT $0").is_ok());
        assert!(numbered("SELECT $99999999999999999999999").is_err());
        // Wherever the statement holds its expressions.
        assert!(numbered("COPY (SELECT $4294967296) TO '/tmp/x.csv'").is_err());
        assert!(numbered("EXPLAIN SELECT $70000").is_err());
    }
}
