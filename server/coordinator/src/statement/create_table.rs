//! What `CREATE TABLE` says in Spark SQL's words that DataFusion does not plan: `USING DELTA`
//! (Ember's tables are Delta tables, so it says nothing more) and `PARTITIONED BY (columns)`
//! naming columns of the table, as Delta on Spark reads it.

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    DataType as SqlDataType, HiveDistributionStyle, Ident, Statement as SqlStatement,
};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use crate::error::{Error, Result};

/// Drops `USING DELTA` from `CREATE TABLE` statements (Spark's `CREATE TABLE t (...) USING
/// DELTA PARTITIONED BY (...)`); another format there is refused with what to write instead.
/// Only words at the top level of the statement, before its `AS` (a query's `JOIN ...
/// USING (...)` is not a format).
pub(super) fn using_delta(tokens: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>> {
    let word = |token: &TokenWithSpan, text: &str| match &token.token {
        Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(text),
        _ => false,
    };
    let significant = |t: &TokenWithSpan| !matches!(t.token, Token::Whitespace(_));
    let mut out = Vec::with_capacity(tokens.len());
    // Within a `CREATE ... TABLE` statement, before a top-level `AS`.
    let (mut first, mut create, mut table, mut depth) = (true, false, false, 0usize);
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        match &token.token {
            Token::SemiColon => (first, create, table, depth) = (true, false, false, 0),
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Whitespace(_) => {}
            _ if first => {
                create = word(token, "CREATE");
                first = false;
            }
            _ if create && depth == 0 && word(token, "TABLE") => table = true,
            _ if create && depth == 0 && word(token, "AS") => create = false,
            _ if create && table && depth == 0 && word(token, "USING") => {
                let next = tokens[i + 1..]
                    .iter()
                    .position(significant)
                    .map(|n| i + 1 + n);
                if let Some(next) = next {
                    if word(&tokens[next], "DELTA") {
                        i = next + 1;
                        continue;
                    }
                    if let Token::Word(format) = &tokens[next].token {
                        return Err(Error::NotSupported(format!(
                            "CREATE TABLE ... USING {format}: Ember's tables are Delta tables \
                             (USING DELTA); for files in another format, use CREATE EXTERNAL \
                             TABLE ... STORED AS {} LOCATION '...'",
                            format.value.to_uppercase()
                        )));
                    }
                }
            }
            _ => {}
        }
        out.push(token.clone());
        i += 1;
    }
    Ok(out)
}

/// Takes `PARTITIONED BY (columns)` out of a `CREATE TABLE` (DataFusion refuses Hive's
/// distribution), leaving a statement it plans: the columns named, which must be the table's
/// own, without types (Hive's form, which declares partition columns apart from the others,
/// is refused).
pub(super) fn take_partitioned_by(statement: &mut DFStatement) -> Result<Vec<Ident>> {
    let DFStatement::Statement(statement) = statement else {
        return Ok(vec![]);
    };
    let SqlStatement::CreateTable(create) = statement.as_mut() else {
        return Ok(vec![]);
    };
    let HiveDistributionStyle::PARTITIONED { columns } =
        std::mem::replace(&mut create.hive_distribution, HiveDistributionStyle::NONE)
    else {
        return Ok(vec![]);
    };
    columns
        .into_iter()
        .map(|column| {
            if column.data_type != SqlDataType::Unspecified || !column.options.is_empty() {
                return Err(Error::NotSupported(format!(
                    "PARTITIONED BY names columns of the table ({}), as Delta does: declare \
                     the column and its type with the others",
                    column.name
                )));
            }
            Ok(column.name)
        })
        .collect()
}
