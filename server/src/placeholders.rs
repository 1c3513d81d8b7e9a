//! Positional `?` parameters, as ADBC, ODBC and JDBC-style applications write them, numbered
//! `$1`, `$2`, ... in the order they appear, which is how DataFusion binds parameters.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr, Value, VisitMut, VisitorMut};

use crate::error::{Error, Result};

/// Numbers the `?` parameters of `statement`. Mixing `?` with `$n` is refused: which value
/// would bind where is unclear.
pub(crate) fn number_question_marks(statement: &mut DFStatement) -> Result<()> {
    match statement {
        DFStatement::Statement(inner) => {
            let mut numbering = Numbering::default();
            let _ = inner.visit(&mut numbering);
            if numbering.question_marks > 0 && numbering.numbered {
                return Err(Error::NotSupported(
                    "a statement uses either `?` or `$n` parameters, not both".into(),
                ));
            }
            Ok(())
        }
        DFStatement::Explain(explain) => number_question_marks(&mut explain.statement),
        _ => Ok(()),
    }
}

#[derive(Default)]
struct Numbering {
    question_marks: usize,
    numbered: bool,
}

impl VisitorMut for Numbering {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &mut value.value
        {
            if name == "?" {
                self.question_marks += 1;
                *name = format!("${}", self.question_marks);
            } else if name.starts_with('$') {
                self.numbered = true;
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
    }
}
