//! Spark SQL's time-travel clauses, `t VERSION AS OF 3` and `t TIMESTAMP AS OF '...'`, in
//! every dialect: the tokens of a clause after a table's name become the versioned name Delta on
//! Spark also accepts (`"t@v3"`), which the catalog resolves to that version of the table.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Word};
use ember_delta::TimeTravel;

use crate::error::{Error, Result};

/// `tokens` with each time-travel clause folded into the table name before it. A name is
/// lower-cased first unless quoted, when `normalize` says identifiers are. Only a clause that
/// follows a table's name where a relation is read (after `FROM`, `JOIN`, a comma or `(`) is
/// one; other tokens stay for the parser to judge.
pub(super) fn fold_time_travel(
    tokens: Vec<TokenWithSpan>,
    normalize: bool,
) -> Result<Vec<TokenWithSpan>> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let name = table_name_at_end(&out);
        let clause = match name {
            Some(_) => clause_at(&tokens, i)?,
            None => None,
        };
        let (Some((at, next)), Some(name)) = (clause, name) else {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        };
        let Token::Word(word) = &mut out[name].token else {
            unreachable!("table_name_at_end finds words")
        };
        let table = match word.quote_style {
            None if normalize => word.value.to_lowercase(),
            _ => word.value.clone(),
        };
        *word = Word {
            value: at.name(&table),
            quote_style: Some('"'),
            keyword: Keyword::NoKeyword,
        };
        i = next;
    }
    Ok(out)
}

/// The index of the last part of a table name that `tokens` end with, if they end with a
/// (possibly qualified) name read as a relation.
fn table_name_at_end(tokens: &[TokenWithSpan]) -> Option<usize> {
    let mut meaningful = tokens
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)));
    let is_name = |t: &TokenWithSpan| matches!(&t.token, Token::Word(w) if w.quote_style.is_some() || w.keyword == Keyword::NoKeyword);
    let (last, token) = meaningful.next()?;
    if !is_name(token) {
        return None;
    }
    // Back over `schema.` and `catalog.` to what comes before the name.
    loop {
        match meaningful.next() {
            Some((
                _,
                TokenWithSpan {
                    token: Token::Period,
                    ..
                },
            )) => {
                let (_, part) = meaningful.next()?;
                if !is_name(part) {
                    return None;
                }
            }
            Some((
                _,
                TokenWithSpan {
                    token: Token::Comma | Token::LParen,
                    ..
                },
            )) => {
                return Some(last);
            }
            Some((
                _,
                TokenWithSpan {
                    token: Token::Word(w),
                    ..
                },
            )) if w.quote_style.is_none() && matches!(w.keyword, Keyword::FROM | Keyword::JOIN) => {
                return Some(last);
            }
            _ => return None,
        }
    }
}

/// The time-travel clause starting at `tokens[i]`, if one does, and the index after it.
fn clause_at(tokens: &[TokenWithSpan], i: usize) -> Result<Option<(TimeTravel, usize)>> {
    let Token::Word(first) = &tokens[i].token else {
        return Ok(None);
    };
    if first.quote_style.is_some()
        || !matches!(first.keyword, Keyword::VERSION | Keyword::TIMESTAMP)
    {
        return Ok(None);
    }
    // The next tokens that are not whitespace.
    let mut rest = tokens
        .iter()
        .enumerate()
        .skip(i + 1)
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)));
    let mut keyword = |expected: Keyword| {
        matches!(rest.next(), Some((_, TokenWithSpan { token: Token::Word(w), .. }))
            if w.quote_style.is_none() && w.keyword == expected)
    };
    if !(keyword(Keyword::AS) && keyword(Keyword::OF)) {
        return Ok(None);
    }
    let Some((last, value)) = rest.next() else {
        return Ok(None);
    };
    let at = match (first.keyword, &value.token) {
        (Keyword::VERSION, Token::Number(n, _)) => {
            TimeTravel::Version(n.parse().map_err(|_| {
                Error::Syntax(format!("VERSION AS OF needs a version number, not {n}"))
            })?)
        }
        (Keyword::TIMESTAMP, Token::SingleQuotedString(text)) => {
            TimeTravel::timestamp(text).map_err(|e| Error::Syntax(e.to_string()))?
        }
        (Keyword::VERSION, other) => {
            return Err(Error::Syntax(format!(
                "VERSION AS OF needs a version number, not {other}"
            )));
        }
        (_, other) => {
            return Err(Error::Syntax(format!(
                "TIMESTAMP AS OF needs a timestamp string such as '2026-12-07 10:00:00', not {other}"
            )));
        }
    };
    Ok(Some((at, last + 1)))
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    use super::*;

    fn fold(sql: &str) -> Result<String> {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize_with_location()
            .expect("tokenizes");
        let text: String = fold_time_travel(tokens, true)?
            .iter()
            .map(|t| t.token.to_string())
            .collect();
        // The clause's tokens go; the whitespace around them stays.
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    #[test]
    fn clauses_become_versioned_names() {
        assert_eq!(
            fold("select * from S.Orders VERSION AS OF 3 o join x on true").unwrap(),
            "select * from S.\"orders@v3\" o join x on true"
        );
        assert_eq!(
            fold("select 1 from \"Big T\" timestamp as of '2026-12-07 10:15:30.250'").unwrap(),
            "select 1 from \"Big T@20261207101530250\""
        );
        // Columns named like the keywords stay columns, aliases stay aliases.
        for sql in [
            "select version, timestamp as of from t",
            "select a version as of from t",
            "select * from t as x version as of 3",
            "select cast(x as timestamp) as of from t",
            "select 'version as of 3' from t",
        ] {
            assert_eq!(fold(sql).unwrap(), sql);
        }
        assert_eq!(
            fold("select * from a, s.b version as of 1, (c version as of 2)").unwrap(),
            "select * from a, s.\"b@v1\" , (\"c@v2\" )"
        );
        assert!(fold("select * from t version as of 'x'").is_err());
        assert!(fold("select * from t timestamp as of 'never'").is_err());
        assert!(fold("select * from t version as of 99999999999999999999").is_err());
    }
}
