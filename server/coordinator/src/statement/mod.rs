//! Statements as every part of Ember sees them: parsed once, in the session's SQL dialect, into a
//! typed value ([`ParsedStatement`]) that carries its syntax tree, its text and what later steps
//! ask of it (the session command, transaction command, cursor or `DEALLOCATE` it is, the
//! `varchar(n)` columns a `CREATE TABLE` declares). Nothing downstream reads SQL text again
//! (only a dialect's rewrite sees the text the statements came from: the Postgres frontend's
//! replacement of whole client catalog queries works on text).
//!
//! Ember's own syntax is parsed here too, token by token: `EXPLAIN DISTRIBUTED <statement>`
//! and PostgreSQL's `ABORT` (an alias of `ROLLBACK`).

use std::ops::ControlFlow;

use datafusion::common::config::SqlParserOptions;
use datafusion::common::{Diagnostic, Span};
use datafusion::error::DataFusionError;
use datafusion::sql::parser::{
    CopyToSource, DFParser, DFParserBuilder, ResetStatement, Statement as DFStatement,
};
use datafusion::sql::sqlparser::ast::{
    CharacterLength, DataType as SqlDataType, Expr as SqlExpr, Ident, ObjectName, Set,
    Statement as SqlStatement, Value, visit_expressions,
};
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

mod access;
mod catalog;
mod create_table;
mod cursor;
mod delta;
mod joined_dml;
mod time_travel;

use access::access_statement;
pub use catalog::{CatalogStatement, CommentOn, RelationKind};
pub use cursor::CursorStatement;
pub use delta::DeltaStatement;
use delta::delta_statement;

use crate::access::AccessStatement;
use crate::declared::DeclaredString;
use crate::error::{Error, Result};

/// A parsed statement.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    /// The syntax tree; none for a [`DeltaStatement`], which sqlparser has no tree for.
    statement: Option<DFStatement>,
    /// The Delta statement this is (`DESCRIBE HISTORY`, `VACUUM`, ...).
    delta: Option<DeltaStatement>,
    /// The statement as SQL (its syntax tree printed): what logs, `system.queries` and the
    /// catalog (views, external tables) keep.
    text: String,
    explain_distributed: bool,
    /// The cursor statement this is (recognised once; DataFusion does not plan cursors).
    cursor: Option<CursorStatement>,
    /// A `CREATE TABLE`'s columns declared `varchar`/`char`, by position.
    declared: Vec<Option<DeclaredString>>,
    /// The columns a `CREATE TABLE` is `PARTITIONED BY`.
    partitioned_by: Vec<Ident>,
    /// The role or privilege statement this is (recognised once; DataFusion plans none).
    access: Option<AccessStatement>,
    /// The catalog statement DataFusion does not plan that this is (`ALTER ... RENAME TO`).
    catalog: Option<CatalogStatement>,
    /// An `UPDATE ... FROM`, whose tree is a `MERGE`.
    update_from: bool,
}

/// A command that changes or reads the session rather than data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION | LOCAL] name {= | TO} value [, ...]`, `SET TIME ZONE value`.
    Set {
        /// The variable, lower case.
        name: String,
        /// Each value as written, string literals without their quotes.
        values: Vec<String>,
    },
    /// `SHOW name` (`SHOW TRANSACTION ISOLATION LEVEL` names `transaction isolation level`).
    Show {
        /// The variable, lower case, its words joined by spaces.
        name: String,
    },
    /// `RESET name`, or `RESET ALL` (`None`).
    Reset {
        /// The variable, lower case.
        name: Option<String>,
    },
    /// Transaction control.
    Transaction(TransactionCommand),
}

/// Transaction control statements. Ember has no multi-statement transactions: every statement
/// commits when it completes, as in autocommit mode; these are accepted so that clients which
/// wrap their work in transaction blocks run unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionCommand {
    /// `BEGIN [WORK | TRANSACTION]`.
    Begin,
    /// `START TRANSACTION [modes]`.
    StartTransaction,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`: closes the block (statements that completed in it stay done).
    Rollback,
    /// `ROLLBACK TO [SAVEPOINT] name`: the block stays open.
    RollbackToSavepoint,
    /// `SAVEPOINT name`.
    Savepoint,
    /// `RELEASE [SAVEPOINT] name`.
    ReleaseSavepoint,
}

impl TransactionCommand {
    /// Whether the client is in a transaction block after it (false: the block closed).
    pub fn in_block_after(self) -> bool {
        !matches!(
            self,
            TransactionCommand::Commit | TransactionCommand::Rollback
        )
    }
}

/// `DEALLOCATE [PREPARE] { name | ALL }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    /// One prepared statement.
    Named(String),
    /// Every SQL-level prepared statement of the session.
    All,
}

impl ParsedStatement {
    /// The statement `statement` is (with Ember's `EXPLAIN DISTRIBUTED` prefix or not).
    pub(crate) fn from_ast(mut statement: DFStatement, explain_distributed: bool) -> Result<Self> {
        // Logs and system tables show the statement as the client wrote it.
        let text = statement.to_string();
        let rewritten = joined_dml::rewrite(match &mut statement {
            DFStatement::Explain(explain) => &mut explain.statement,
            other => other,
        })?;
        let partitioned_by = create_table::take_partitioned_by(&mut statement)?;
        let cursor = match &statement {
            DFStatement::Statement(inner) => CursorStatement::recognise(inner)?,
            _ => None,
        };
        let access = match &statement {
            _ if explain_distributed => None,
            DFStatement::Statement(inner) => AccessStatement::recognise(inner)?,
            DFStatement::Reset(ResetStatement::Variable(name)) if object_name(name) == "role" => {
                Some(AccessStatement::SetRole(None))
            }
            _ => None,
        };
        let catalog = match &statement {
            DFStatement::Statement(inner) if !explain_distributed => catalog::recognise(inner)?,
            _ => None,
        };
        Ok(Self {
            text,
            declared: declared_strings(&statement),
            partitioned_by,
            statement: Some(statement),
            delta: None,
            explain_distributed,
            cursor,
            access,
            catalog,
            update_from: rewritten == Some(joined_dml::Rewritten::UpdateFrom),
        })
    }

    /// The catalog statement `statement` is (one sqlparser has no tree for).
    pub(crate) fn from_catalog(statement: CatalogStatement) -> Self {
        Self {
            text: statement.to_string(),
            declared: vec![],
            partitioned_by: vec![],
            statement: None,
            delta: None,
            explain_distributed: false,
            cursor: None,
            access: None,
            catalog: Some(statement),
            update_from: false,
        }
    }

    /// The Delta statement `statement` is.
    pub(crate) fn from_delta(statement: DeltaStatement) -> Self {
        Self {
            text: statement.to_string(),
            declared: vec![],
            partitioned_by: vec![],
            statement: None,
            delta: Some(statement),
            explain_distributed: false,
            cursor: None,
            access: None,
            catalog: None,
            update_from: false,
        }
    }

    /// The statement as SQL (for logs, system tables and the catalog).
    pub fn sql(&self) -> &str {
        &self.text
    }

    /// The syntax tree (none for a Delta statement).
    pub fn ast(&self) -> Option<&DFStatement> {
        self.statement.as_ref()
    }

    /// Whether this is an `UPDATE ... FROM` (run as a `MERGE`, answered as an `UPDATE`).
    pub fn is_update_from(&self) -> bool {
        self.update_from
    }

    /// The catalog statement DataFusion does not plan that this is, if it is one.
    pub fn catalog(&self) -> Option<&CatalogStatement> {
        self.catalog.as_ref()
    }

    /// The Delta statement this is, if it is one.
    pub fn delta(&self) -> Option<&DeltaStatement> {
        self.delta.as_ref()
    }

    /// Whether this is `EXPLAIN DISTRIBUTED <statement>`.
    pub fn is_explain_distributed(&self) -> bool {
        self.explain_distributed
    }

    /// The cursor statement this is, if it is one.
    pub fn cursor(&self) -> Option<&CursorStatement> {
        self.cursor.as_ref()
    }

    /// The string columns a `CREATE TABLE` declares `varchar`/`char`, by position (empty for
    /// other statements).
    pub fn declared_columns(&self) -> &[Option<DeclaredString>] {
        &self.declared
    }

    /// The columns a `CREATE TABLE` is `PARTITIONED BY` (as written: unquoted names fold as
    /// the session folds identifiers).
    pub fn partitioned_by(&self) -> &[Ident] {
        &self.partitioned_by
    }

    /// The role or privilege statement this is, if it is one.
    pub fn access(&self) -> Option<&AccessStatement> {
        self.access.as_ref()
    }

    /// The session command this is, if it is one.
    pub fn session_command(&self) -> Option<SessionCommand> {
        if self.explain_distributed || self.access.is_some() {
            return None;
        }
        let statement = match self.statement.as_ref()? {
            DFStatement::Reset(ResetStatement::Variable(name)) => {
                let name = object_name(name);
                return Some(SessionCommand::Reset {
                    name: (name != "all").then_some(name),
                });
            }
            DFStatement::Statement(statement) => statement.as_ref(),
            _ => return None,
        };
        Some(match statement {
            SqlStatement::Set(Set::SingleAssignment {
                variable, values, ..
            }) => SessionCommand::Set {
                name: object_name(variable),
                values: values.iter().map(value_text).collect(),
            },
            SqlStatement::Set(Set::SetTimeZone { value, .. }) => SessionCommand::Set {
                name: "timezone".into(),
                values: vec![value_text(value)],
            },
            SqlStatement::ShowVariable { variable } => {
                let words: Vec<String> = variable.iter().map(ident_text).collect();
                // `SHOW ember.adaptive` comes as two identifiers; multi-word Postgres names
                // (`SHOW TRANSACTION ISOLATION LEVEL`) keep their spaces.
                let separator = match words.first() {
                    Some(first) if words.len() == 2 && first.eq_ignore_ascii_case("ember") => ".",
                    _ => " ",
                };
                SessionCommand::Show {
                    name: words.join(separator),
                }
            }
            other => SessionCommand::Transaction(transaction_command(other)?),
        })
    }

    /// The transaction command this is, if it is one.
    pub fn transaction(&self) -> Option<TransactionCommand> {
        match self.session_command()? {
            SessionCommand::Transaction(command) => Some(command),
            _ => None,
        }
    }

    /// What a `DEALLOCATE` statement deallocates.
    pub fn deallocate(&self) -> Option<Deallocate> {
        let Some(DFStatement::Statement(statement)) = &self.statement else {
            return None;
        };
        let SqlStatement::Deallocate { name, .. } = statement.as_ref() else {
            return None;
        };
        // `DEALLOCATE ALL`; a statement named "all" is written quoted.
        Some(
            if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                Deallocate::All
            } else {
                Deallocate::Named(name.value.clone())
            },
        )
    }
}

/// Splits `sql` into statements with DataFusion's parser in the dialect `options` name
/// (`datafusion.sql_parser.dialect`): their syntax trees, each with whether it was prefixed by
/// `EXPLAIN DISTRIBUTED`. Ember's own `EXPLAIN DISTRIBUTED` and PostgreSQL's `ABORT` are
/// recognised by their tokens, and Spark SQL's time-travel clauses (`t VERSION AS OF 3`) are
/// folded into the versioned table names the catalog resolves.
pub(crate) fn parse_statements(sql: &str, options: &SqlParserOptions) -> Result<Vec<Parsed>> {
    let dialect = dialect_from_str(options.dialect)
        .ok_or_else(|| Error::NotSupported(format!("unknown SQL dialect {}", options.dialect)))?;
    let tokens = Tokenizer::new(dialect.as_ref(), sql)
        .tokenize_with_location()
        .map_err(|e| Error::DataFusion(ParserError::from(e).into()))?;
    let tokens = time_travel::fold_time_travel(tokens, options.enable_ident_normalization)?;
    let tokens = catalog::dollar_quoted_comments(tokens);
    let tokens = create_table::using_delta(tokens)?;
    let mut parser = DFParserBuilder::new(tokens)
        .with_dialect(dialect.as_ref())
        .with_recursion_limit(options.recursion_limit.get())
        .build()?;
    let mut statements = vec![];
    let mut expecting_delimiter = false;
    loop {
        while parser.parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        let next = parser.parser.peek_token();
        if next.token == Token::EOF {
            break;
        }
        if expecting_delimiter {
            return Err(expected("end of statement", &next));
        }
        let explain_distributed =
            is_word(&parser, 0, "EXPLAIN") && is_word(&parser, 1, "DISTRIBUTED");
        if explain_distributed {
            parser.parser.next_token();
            parser.parser.next_token();
        }
        if let Some(statement) = delta_statement(&mut parser)? {
            if explain_distributed {
                return Err(Error::NotSupported(format!(
                    "EXPLAIN DISTRIBUTED explains queries, not {statement}"
                )));
            }
            statements.push(Parsed::Delta(statement));
            expecting_delimiter = true;
            continue;
        }
        if !explain_distributed && let Some(statement) = catalog::alter_view_rename(&mut parser)? {
            statements.push(Parsed::Catalog(statement));
            expecting_delimiter = true;
            continue;
        }
        let statement = if let Some(statement) = access_statement(sql, &mut parser)? {
            statement
        } else if is_word(&parser, 0, "ABORT") {
            parser.parser.next_token();
            // `ABORT [WORK | TRANSACTION]` is PostgreSQL's ROLLBACK.
            let _ = parser
                .parser
                .parse_one_of_keywords(&[Keyword::WORK, Keyword::TRANSACTION]);
            DFStatement::Statement(Box::new(SqlStatement::Rollback {
                chain: false,
                savepoint: None,
            }))
        } else {
            parser.parse_statement()?
        };
        if let DFStatement::Statement(inner) = &statement
            && let Some(delta) = delta::set_properties(inner)?
            && !explain_distributed
        {
            statements.push(Parsed::Delta(delta));
            expecting_delimiter = true;
            continue;
        }
        statements.push(Parsed::Sql {
            statement,
            explain_distributed,
        });
        expecting_delimiter = true;
    }
    Ok(statements)
}

/// A statement as the parser found it.
pub(crate) enum Parsed {
    /// A statement DataFusion's parser knows (and dialects may rewrite).
    Sql {
        /// Its syntax tree.
        statement: DFStatement,
        /// Whether `EXPLAIN DISTRIBUTED` prefixed it.
        explain_distributed: bool,
    },
    /// A Delta statement.
    Delta(DeltaStatement),
    /// A catalog statement sqlparser has no tree for.
    Catalog(CatalogStatement),
}

/// Whether the `n`th next token is the unquoted word `word`.
fn is_word(parser: &DFParser<'_>, n: usize, word: &str) -> bool {
    match parser.parser.peek_nth_token_ref(n).token {
        Token::Word(ref w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word),
        _ => false,
    }
}

/// DataFusion's error for an unexpected token, with its words and its diagnostic.
fn expected(what: &str, found: &TokenWithSpan) -> Error {
    let message = format!("Expected: {what}, found: {found}{}", found.span.start);
    let diagnostic =
        Diagnostic::new_error(message.clone(), Span::try_from_sqlparser_span(found.span));
    Error::DataFusion(
        DataFusionError::from(ParserError::ParserError(message)).with_diagnostic(diagnostic),
    )
}

fn transaction_command(statement: &SqlStatement) -> Option<TransactionCommand> {
    Some(match statement {
        SqlStatement::StartTransaction { begin: true, .. } => TransactionCommand::Begin,
        SqlStatement::StartTransaction { begin: false, .. } => TransactionCommand::StartTransaction,
        SqlStatement::Commit { .. } => TransactionCommand::Commit,
        SqlStatement::Rollback {
            savepoint: Some(_), ..
        } => TransactionCommand::RollbackToSavepoint,
        SqlStatement::Rollback {
            savepoint: None, ..
        } => TransactionCommand::Rollback,
        SqlStatement::Savepoint { .. } => TransactionCommand::Savepoint,
        SqlStatement::ReleaseSavepoint { .. } => TransactionCommand::ReleaseSavepoint,
        _ => return None,
    })
}

/// An identifier as a setting name: setting names are case-insensitive, quoted or not (as in
/// PostgreSQL, and as DataFusion applies them).
fn ident_text(ident: &Ident) -> String {
    ident.value.to_ascii_lowercase()
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => ident_text(ident),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A `SET` value as the client meant it: string literals without their quotes, identifiers by
/// name, anything else as written.
fn value_text(value: &SqlExpr) -> String {
    match value {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::DoubleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            other => other.to_string(),
        },
        SqlExpr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

/// The names of the functions `statement` calls (lower case unless quoted, without their
/// schema), for telling an unknown function from other planning errors.
pub(crate) fn functions_called(statement: &DFStatement) -> Vec<String> {
    let mut names = vec![];
    let mut visit = |expr: &SqlExpr| {
        if let SqlExpr::Function(function) = expr
            && let Some(ident) = function.name.0.last().and_then(|part| part.as_ident())
        {
            names.push(match ident.quote_style {
                Some(_) => ident.value.clone(),
                None => ident.value.to_ascii_lowercase(),
            });
        }
        ControlFlow::<()>::Continue(())
    };
    match statement {
        DFStatement::Statement(inner) => {
            let _ = visit_expressions(inner.as_ref(), &mut visit);
        }
        DFStatement::CopyTo(copy) => {
            if let CopyToSource::Query(query) = &copy.source {
                let _ = visit_expressions(query.as_ref(), &mut visit);
            }
        }
        DFStatement::Explain(explain) => return functions_called(&explain.statement),
        _ => {}
    }
    names
}

/// The column types a `CREATE TABLE` statement declares as `varchar`/`char`, by position (none
/// for other statements, or other columns). Arrow keeps such columns as text; the table's field
/// metadata keeps the declaration, so clients see `character varying(20)`.
fn declared_strings(statement: &DFStatement) -> Vec<Option<DeclaredString>> {
    let DFStatement::Statement(statement) = statement else {
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

#[cfg(test)]
mod tests {
    use datafusion::config::Dialect;

    use super::*;

    fn parse(sql: &str, options: &SqlParserOptions) -> Result<Vec<ParsedStatement>> {
        parse_statements(sql, options)?
            .into_iter()
            .map(|parsed| match parsed {
                Parsed::Sql {
                    statement,
                    explain_distributed,
                } => ParsedStatement::from_ast(statement, explain_distributed),
                Parsed::Delta(statement) => Ok(ParsedStatement::from_delta(statement)),
                Parsed::Catalog(statement) => Ok(ParsedStatement::from_catalog(statement)),
            })
            .collect()
    }

    fn options(dialect: Dialect) -> SqlParserOptions {
        SqlParserOptions {
            dialect,
            ..Default::default()
        }
    }

    fn one(sql: &str) -> ParsedStatement {
        let mut statements = parse(sql, &options(Dialect::PostgreSQL)).expect("parses");
        assert_eq!(statements.len(), 1, "{sql}");
        statements.remove(0)
    }

    #[test]
    fn catalog_statements_are_typed() {
        let CatalogStatement::Comment { on, name, text } =
            one("COMMENT ON COLUMN s.t.c IS $doc$it's $1$doc$")
                .catalog()
                .cloned()
                .expect("a comment")
        else {
            panic!("a comment")
        };
        assert_eq!(
            (on, name.to_string(), text.as_deref()),
            (CommentOn::Column, "s.t.c".into(), Some("it's $1"))
        );
        // Dollar quotes elsewhere stay what they are.
        assert!(one("SELECT $a$x$a$").catalog().is_none());
        let CatalogStatement::Rename {
            kind, if_exists, ..
        } = one("ALTER VIEW IF EXISTS s.v RENAME TO w")
            .catalog()
            .cloned()
            .expect("a rename")
        else {
            panic!("a rename")
        };
        assert_eq!((kind, if_exists), (RelationKind::View, true));
        // Other ALTER VIEWs are sqlparser's.
        assert!(one("ALTER VIEW v AS SELECT 1").catalog().is_none());
        assert!(matches!(
            one("ALTER TABLE t RENAME TO u").catalog(),
            Some(CatalogStatement::Rename {
                kind: RelationKind::Table,
                ..
            })
        ));
    }

    #[test]
    fn explain_distributed_is_recognised_by_its_tokens() {
        let statements = parse(
            "explain distributed select 1; select 2; EXPLAIN DISTRIBUTED select 3",
            &options(Dialect::Generic),
        )
        .expect("parses");
        let flags: Vec<bool> = statements
            .iter()
            .map(|s| s.is_explain_distributed())
            .collect();
        assert_eq!(flags, [true, false, true]);
        assert_eq!(statements[0].sql(), "SELECT 1");
        // A plain EXPLAIN is DataFusion's.
        assert!(!one("explain select 1").is_explain_distributed());
        assert!(parse("select 1 select 2", &options(Dialect::Generic)).is_err());
    }

    #[test]
    fn access_statements_parse_in_postgres_grammar_whatever_the_dialect() {
        use crate::access::AccessStatement;
        use crate::access::statement::{GrantTarget, RoleOptions};
        let access = |sql: &str| {
            let statements = parse(sql, &options(Dialect::Generic)).expect(sql);
            assert_eq!(statements.len(), 1, "{sql}");
            statements[0].access().cloned().expect(sql)
        };
        assert_eq!(
            access("CREATE ROLE Alice WITH LOGIN PASSWORD 'it''s; secret' CREATEROLE"),
            AccessStatement::CreateRole {
                name: "alice".into(),
                if_not_exists: false,
                options: RoleOptions {
                    superuser: None,
                    login: Some(true),
                    create_role: Some(true),
                    password: Some(Some("it's; secret".into())),
                },
                member_of: vec![],
                members: vec![],
            }
        );
        // CREATE USER implies LOGIN unless it says otherwise.
        let AccessStatement::CreateRole { options: role, .. } =
            access("create user \"Bob\" nologin")
        else {
            panic!("CREATE USER is CREATE ROLE")
        };
        assert_eq!(role.login, Some(false));
        let AccessStatement::CreateRole {
            name,
            options: role,
            ..
        } = access("create user bob")
        else {
            panic!("CREATE USER is CREATE ROLE")
        };
        assert_eq!((name.as_str(), role.login), ("bob", Some(true)));
        assert!(matches!(
            access("alter user bob with superuser"),
            AccessStatement::AlterRole {
                options: RoleOptions {
                    superuser: Some(true),
                    ..
                },
                ..
            }
        ));
        assert_eq!(
            access("grant analysts, auditors to alice, bob with admin option"),
            AccessStatement::GrantRole {
                roles: vec!["analysts".into(), "auditors".into()],
                members: vec!["alice".into(), "bob".into()],
            }
        );
        assert_eq!(
            access("revoke analysts from alice"),
            AccessStatement::RevokeRole {
                roles: vec!["analysts".into()],
                members: vec!["alice".into()],
            }
        );
        assert!(matches!(
            access("grant select, insert on all tables in schema s to public"),
            AccessStatement::Grant {
                objects: GrantTarget::AllTablesInSchema(_),
                ref grantees,
                ..
            } if grantees == &vec![String::new()]
        ));
        assert_eq!(
            access("set role alice"),
            AccessStatement::SetRole(Some("alice".into()))
        );
        assert_eq!(access("reset role"), AccessStatement::SetRole(None));
        assert_eq!(access("set role none"), AccessStatement::SetRole(None));
        // Two statements, the second after the first's end.
        let two = parse("create role a; select 1", &options(Dialect::Generic)).expect("parses");
        assert!(two[0].access().is_some() && two[1].access().is_none());
        // What is not supported says so.
        for sql in [
            "grant select on t to alice with grant option",
            "create role x connection limit 3",
            "grant select (a) on t to alice",
            "alter role x rename to y",
        ] {
            assert!(parse(sql, &options(Dialect::Generic)).is_err(), "{sql}");
        }
        assert!(parse("grant to alice", &options(Dialect::Generic)).is_err());
        assert!(parse("grant a b to alice", &options(Dialect::Generic)).is_err());
    }

    #[test]
    fn byte_offsets_count_characters() {
        use datafusion::sql::sqlparser::tokenizer::Location;
        let text = "select 'é'\n  grant x";
        assert_eq!(
            access::byte_offset(text, Location::new(2, 3)),
            text.find("grant").unwrap()
        );
        assert_eq!(
            access::byte_offset(text, Location::new(1, 10)),
            text.find('\'').unwrap() + 3
        );
        assert_eq!(access::byte_offset(text, Location::new(9, 1)), text.len());
    }

    #[test]
    fn session_commands_are_typed() {
        assert_eq!(
            one("SET search_path TO tpch, public").session_command(),
            Some(SessionCommand::Set {
                name: "search_path".into(),
                values: vec!["tpch".into(), "public".into()],
            })
        );
        assert_eq!(
            one("set session application_name = 'psql'").session_command(),
            Some(SessionCommand::Set {
                name: "application_name".into(),
                values: vec!["psql".into()],
            })
        );
        assert_eq!(
            one("SET datafusion.execution.batch_size = 100").session_command(),
            Some(SessionCommand::Set {
                name: "datafusion.execution.batch_size".into(),
                values: vec!["100".into()],
            })
        );
        assert_eq!(
            one("SHOW TRANSACTION ISOLATION LEVEL").session_command(),
            Some(SessionCommand::Show {
                name: "transaction isolation level".into()
            })
        );
        assert_eq!(
            one("reset ALL").session_command(),
            Some(SessionCommand::Reset { name: None })
        );
        assert_eq!(
            one("RESET statement_timeout").session_command(),
            Some(SessionCommand::Reset {
                name: Some("statement_timeout".into())
            })
        );
        assert_eq!(one("select 1").session_command(), None);
        // A string that looks like a command is data.
        assert_eq!(one("select 'set x = 1'").session_command(), None);
        // Setting names are case-insensitive, quoted or not.
        assert_eq!(
            one("SET \"DATAFUSION\".runtime.\"MEMORY_LIMIT\" = '1G'").session_command(),
            Some(SessionCommand::Set {
                name: "datafusion.runtime.memory_limit".into(),
                values: vec!["1G".into()],
            })
        );
    }

    #[test]
    fn transaction_commands_are_typed() {
        let command = |sql: &str| one(sql).transaction();
        assert_eq!(command("BEGIN"), Some(TransactionCommand::Begin));
        assert_eq!(
            command("start transaction read only"),
            Some(TransactionCommand::StartTransaction)
        );
        assert_eq!(command("commit"), Some(TransactionCommand::Commit));
        assert_eq!(command("END"), Some(TransactionCommand::Commit));
        assert_eq!(command("ABORT"), Some(TransactionCommand::Rollback));
        assert_eq!(command("rollback"), Some(TransactionCommand::Rollback));
        assert_eq!(
            command("ROLLBACK TO SAVEPOINT a"),
            Some(TransactionCommand::RollbackToSavepoint)
        );
        assert_eq!(command("savepoint a"), Some(TransactionCommand::Savepoint));
        assert_eq!(
            command("release a"),
            Some(TransactionCommand::ReleaseSavepoint)
        );
        assert!(!TransactionCommand::Rollback.in_block_after());
        assert!(TransactionCommand::RollbackToSavepoint.in_block_after());
    }

    #[test]
    fn deallocate_all_is_told_from_a_statement_named_all() {
        assert_eq!(one("DEALLOCATE ALL").deallocate(), Some(Deallocate::All));
        assert_eq!(
            one("deallocate prepare \"all\"").deallocate(),
            Some(Deallocate::Named("all".into()))
        );
        assert_eq!(
            one("DEALLOCATE p1").deallocate(),
            Some(Deallocate::Named("p1".into()))
        );
    }

    #[test]
    fn create_table_declares_its_string_columns() {
        let parsed = one("create table t (a varchar(5), b int, c char, d character varying)");
        assert_eq!(
            parsed.declared_columns(),
            [
                Some(DeclaredString::Varchar(Some(5))),
                None,
                Some(DeclaredString::Char(1)),
                Some(DeclaredString::Varchar(None)),
            ]
        );
        assert!(one("select 1").declared_columns().is_empty());
    }

    #[test]
    fn create_table_in_spark_words_names_its_partition_columns() {
        let names = |sql: &str| {
            one(sql)
                .partitioned_by()
                .iter()
                .map(|i| i.value.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("create table t (a int, B text) using delta partitioned by (\"B\", a)"),
            ["B", "a"]
        );
        assert_eq!(
            names("CREATE TABLE t USING DELTA PARTITIONED BY (k) AS SELECT 1 AS k, 2 AS v"),
            ["k"]
        );
        // The statement left is one DataFusion plans.
        let parsed = one("create table t (a int, b int) using delta partitioned by (b)");
        assert_eq!(
            parsed.ast().map(|s| s.to_string()).as_deref(),
            Some("CREATE TABLE t (a INT, b INT)")
        );
        // A query's USING is a join's.
        let parsed = one("create table t as select * from a join b using (x)");
        assert!(parsed.partitioned_by().is_empty());
        assert!(
            parsed
                .ast()
                .is_some_and(|s| s.to_string().contains("USING(x)"))
        );
        let options = options(Dialect::PostgreSQL);
        let error = parse("create table t (a int) using csv", &options).expect_err("a format");
        assert!(error.to_string().contains("STORED AS CSV"), "{error}");
        let error = parse("create table t (a int) partitioned by (a int)", &options)
            .expect_err("Hive's partition columns");
        assert!(
            error.to_string().contains("PARTITIONED BY names columns"),
            "{error}"
        );
    }
}
