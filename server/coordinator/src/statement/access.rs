//! Role and privilege statements, parsed in PostgreSQL's grammar whatever the session's
//! dialect, and the forms sqlparser does not know (`CREATE USER`, `ALTER USER`, `GRANT role TO
//! role`). What they mean is `crate::access::AccessStatement`'s business.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, Statement as SqlStatement};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use super::{expected, is_word};
use crate::error::{Error, Result};

/// A role or privilege statement at the parser's position, parsed in PostgreSQL's grammar
/// whatever the session's dialect (others lack `CREATE ROLE`'s options, `ALTER ROLE`), with
/// the forms sqlparser does not know: `CREATE USER` and `ALTER USER` (PostgreSQL's aliases of
/// `CREATE ROLE ... LOGIN` and `ALTER ROLE`), and `GRANT role TO role` and `REVOKE role FROM
/// role` (membership). `None` for other statements; the parser is left after the statement.
pub(super) fn access_statement(
    sql: &str,
    parser: &mut DFParser<'_>,
) -> Result<Option<DFStatement>> {
    let first = ["CREATE", "ALTER", "DROP"]
        .into_iter()
        .find(|w| is_word(parser, 0, w));
    let role_kind = first.filter(|_| is_word(parser, 1, "ROLE") || is_word(parser, 1, "USER"));
    let grant = is_word(parser, 0, "GRANT") || is_word(parser, 0, "REVOKE");
    if role_kind.is_none() && !grant {
        return Ok(None);
    }
    // The statement's tokens, to the next `;` (a `;` in a string is inside its token).
    let start = parser.parser.peek_token().span.start;
    let mut tokens = vec![];
    loop {
        let next = parser.parser.peek_token();
        if matches!(next.token, Token::SemiColon | Token::EOF) {
            break;
        }
        tokens.push(parser.parser.next_token());
    }
    let end = tokens.last().map(|t| t.span.end).unwrap_or(start);
    let text = &sql[byte_offset(sql, start)..byte_offset(sql, end)];
    let is = |token: &TokenWithSpan, word: &str| match &token.token {
        Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word),
        _ => false,
    };
    let postgres = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let parse = |text: &str| -> Result<SqlStatement> {
        let mut parser = datafusion::sql::sqlparser::parser::Parser::new(&postgres)
            .try_with_sql(text)
            .map_err(|e| Error::DataFusion(DataFusionError::from(e)))?;
        let statement = parser
            .parse_statement()
            .map_err(|e| Error::DataFusion(DataFusionError::from(e)))?;
        let rest = parser.peek_token();
        if rest.token != Token::EOF {
            return Err(expected("end of statement", &rest));
        }
        Ok(statement)
    };
    let statement = if grant && !tokens.iter().any(|t| is(t, "ON")) {
        membership(&tokens, &is)?
    } else if role_kind.is_some() && is(&tokens[1], "USER") && !is(&tokens[0], "DROP") {
        // `CREATE USER` is `CREATE ROLE` with LOGIN unless it says NOLOGIN.
        let rest = &text[byte_offset(text, relative(tokens[1].span.end, start))..];
        let mut statement = parse(&format!("{} ROLE{rest}", tokens[0]))?;
        if let SqlStatement::CreateRole(create) = &mut statement {
            create.login.get_or_insert(true);
        }
        statement
    } else {
        parse(text)?
    };
    Ok(Some(DFStatement::Statement(Box::new(statement))))
}

/// `GRANT role, ... TO role, ...` or `REVOKE role, ... FROM role, ...`, as the `ROLE` actions
/// sqlparser uses for role grants.
fn membership(
    tokens: &[TokenWithSpan],
    is: &dyn Fn(&TokenWithSpan, &str) -> bool,
) -> Result<SqlStatement> {
    use datafusion::sql::sqlparser::ast::{
        Action, Grant, Grantee, GranteeName, GranteesType, Privileges, Revoke,
    };
    let grant = is(&tokens[0], "GRANT");
    let names = |tokens: &[TokenWithSpan]| -> Result<Vec<Ident>> {
        let mut names = vec![];
        for (i, token) in tokens.iter().enumerate() {
            match (&token.token, i % 2) {
                (Token::Word(word), 0) => names.push(Ident {
                    value: word.value.clone(),
                    quote_style: word.quote_style,
                    span: token.span,
                }),
                (Token::Comma, 1) => {}
                _ => return Err(expected("a role name", token)),
            }
        }
        if names.is_empty() {
            return Err(Error::Syntax("a role name is missing".into()));
        }
        Ok(names)
    };
    let separator = if grant { "TO" } else { "FROM" };
    let split = tokens
        .iter()
        .position(|t| is(t, separator))
        .ok_or_else(|| Error::Syntax(format!("{separator} is missing")))?;
    let mut members_end = tokens.len();
    // `WITH ADMIN OPTION`, `WITH INHERIT TRUE`, `GRANTED BY role` are accepted and ignored:
    // membership always inherits, and only role managers grant it.
    if let Some(with) = tokens[split..]
        .iter()
        .position(|t| is(t, "WITH") || is(t, "GRANTED"))
    {
        members_end = split + with;
    }
    let roles = names(&tokens[1..split])?;
    let members = names(&tokens[split + 1..members_end])?;
    let privileges = Privileges::Actions(
        roles
            .into_iter()
            .map(|role| Action::Role {
                role: ObjectName::from(vec![role]),
            })
            .collect(),
    );
    let grantees = members
        .into_iter()
        .map(|member| Grantee {
            grantee_type: GranteesType::None,
            name: Some(GranteeName::ObjectName(ObjectName::from(vec![member]))),
        })
        .collect();
    Ok(if grant {
        SqlStatement::Grant(Grant {
            privileges,
            objects: None,
            grantees,
            with_grant_option: false,
            as_grantor: None,
            granted_by: None,
            current_grants: None,
        })
    } else {
        SqlStatement::Revoke(Revoke {
            privileges,
            objects: None,
            grantees,
            granted_by: None,
            cascade: None,
        })
    })
}

/// `location` (1-based line and column, in characters) relative to `origin`, for a text that
/// starts at `origin`.
fn relative(location: Location, origin: Location) -> Location {
    if location.line == origin.line {
        Location::new(1, location.column - origin.column + 1)
    } else {
        Location::new(location.line - origin.line + 1, location.column)
    }
}

/// The byte offset in `text` of a token location (1-based line and column, in characters).
pub(super) fn byte_offset(text: &str, location: Location) -> usize {
    let mut line = 1;
    let mut column = 1;
    for (offset, c) in text.char_indices() {
        if line == location.line && column == location.column {
            return offset;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    text.len()
}
