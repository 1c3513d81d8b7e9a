//! Catalog statements DataFusion does not plan: `ALTER TABLE ... RENAME TO` and `COMMENT ON`
//! (from sqlparser's tree), and `ALTER VIEW ... RENAME TO` (which sqlparser does not parse,
//! read by its tokens).

use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, ColumnDef, CommentObject, ObjectName, RenameTableNameKind,
    Statement as SqlStatement,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::is_word;
use crate::error::{Error, Result};

/// What kind of relation a statement names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// `ALTER TABLE`: a table, or (as in PostgreSQL) a view.
    Table,
    /// `ALTER VIEW`: only a view.
    View,
}

/// A change to the catalog that DataFusion has no plan for.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogStatement {
    /// `ALTER {TABLE | VIEW} [IF EXISTS] name RENAME TO new_name`: the object keeps its schema,
    /// data, owner and privileges under the new name.
    Rename {
        /// The statement's keyword.
        kind: RelationKind,
        /// `IF EXISTS`: a missing object is no error.
        if_exists: bool,
        /// The object renamed.
        name: ObjectName,
        /// Its new name, in the same schema.
        new_name: ObjectName,
    },
    /// `ALTER TABLE name ADD [COLUMN] [IF NOT EXISTS] column type, ...`: new nullable
    /// columns after the table's own.
    AddColumns {
        /// The table.
        table: ObjectName,
        /// The columns, as written.
        columns: Vec<ColumnDef>,
        /// The columns added `IF NOT EXISTS` (by position).
        if_not_exists: Vec<bool>,
    },
    /// `COMMENT ON {TABLE | VIEW | COLUMN} name IS {'text' | NULL}`.
    Comment {
        /// What the comment is on.
        on: CommentOn,
        /// The table or view, or the column as `table.column`.
        name: ObjectName,
        /// The comment; none removes it.
        text: Option<String>,
    },
}

/// What a comment describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentOn {
    /// A table (or, as in PostgreSQL, a view named by `TABLE`).
    Table,
    /// A view.
    View,
    /// A column of a table or view.
    Column,
}

impl std::fmt::Display for CatalogStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogStatement::Rename {
                kind,
                if_exists,
                name,
                new_name,
            } => {
                let keyword = match kind {
                    RelationKind::Table => "TABLE",
                    RelationKind::View => "VIEW",
                };
                let if_exists = if *if_exists { "IF EXISTS " } else { "" };
                write!(f, "ALTER {keyword} {if_exists}{name} RENAME TO {new_name}")
            }
            CatalogStatement::AddColumns {
                table,
                columns,
                if_not_exists,
            } => {
                let columns: Vec<String> = columns
                    .iter()
                    .zip(if_not_exists)
                    .map(|(column, if_not_exists)| match if_not_exists {
                        true => format!("ADD COLUMN IF NOT EXISTS {column}"),
                        false => format!("ADD COLUMN {column}"),
                    })
                    .collect();
                write!(f, "ALTER TABLE {table} {}", columns.join(", "))
            }
            CatalogStatement::Comment { on, name, text } => {
                let on = match on {
                    CommentOn::Table => "TABLE",
                    CommentOn::View => "VIEW",
                    CommentOn::Column => "COLUMN",
                };
                match text {
                    Some(text) => write!(
                        f,
                        "COMMENT ON {on} {name} IS '{}'",
                        text.replace('\'', "''")
                    ),
                    None => write!(f, "COMMENT ON {on} {name} IS NULL"),
                }
            }
        }
    }
}

/// The catalog statement `statement` is, if it is one.
pub(super) fn recognise(statement: &SqlStatement) -> Result<Option<CatalogStatement>> {
    if let SqlStatement::Comment {
        object_type,
        object_name,
        comment,
        ..
    } = statement
    {
        let on = match object_type {
            CommentObject::Table => CommentOn::Table,
            CommentObject::View => CommentOn::View,
            CommentObject::Column => CommentOn::Column,
            other => {
                return Err(Error::NotSupported(format!(
                    "COMMENT ON {other} is not supported: only on tables, views and columns"
                )));
            }
        };
        return Ok(Some(CatalogStatement::Comment {
            on,
            name: object_name.clone(),
            text: comment.clone(),
        }));
    }
    let SqlStatement::AlterTable(alter) = statement else {
        return Ok(None);
    };
    let adds: Vec<(ColumnDef, bool)> = alter
        .operations
        .iter()
        .filter_map(|op| match op {
            AlterTableOperation::AddColumn {
                column_def,
                if_not_exists,
                column_position: None,
                ..
            } => Some((column_def.clone(), *if_not_exists)),
            _ => None,
        })
        .collect();
    if !adds.is_empty() {
        if adds.len() != alter.operations.len() {
            return Err(Error::NotSupported(
                "ALTER TABLE ... ADD COLUMN cannot be combined with other changes".into(),
            ));
        }
        let (columns, if_not_exists) = adds.into_iter().unzip();
        return Ok(Some(CatalogStatement::AddColumns {
            table: alter.name.clone(),
            columns,
            if_not_exists,
        }));
    }
    for op in &alter.operations {
        match op {
            AlterTableOperation::RenameColumn { .. } | AlterTableOperation::DropColumn { .. } => {
                return Err(Error::NotSupported(format!(
                    "ALTER TABLE ... {op} is not supported: Delta tables rename and drop columns \
                     through column mapping, which the Delta library Ember uses cannot write"
                )));
            }
            AlterTableOperation::AddColumn { .. } => {
                return Err(Error::NotSupported(
                    "ALTER TABLE ... ADD COLUMN ... FIRST/AFTER is not supported: columns are added last".into(),
                ));
            }
            _ => {}
        }
    }
    let renames: Vec<&RenameTableNameKind> = alter
        .operations
        .iter()
        .filter_map(|op| match op {
            AlterTableOperation::RenameTable { table_name } => Some(table_name),
            _ => None,
        })
        .collect();
    match (renames.as_slice(), alter.operations.len()) {
        ([], _) => Ok(None),
        ([RenameTableNameKind::To(new_name) | RenameTableNameKind::As(new_name)], 1) => {
            Ok(Some(CatalogStatement::Rename {
                kind: RelationKind::Table,
                if_exists: alter.if_exists,
                name: alter.name.clone(),
                new_name: new_name.clone(),
            }))
        }
        _ => Err(Error::NotSupported(
            "ALTER TABLE ... RENAME TO cannot be combined with other changes".into(),
        )),
    }
}

/// `ALTER VIEW [IF EXISTS] name RENAME TO new_name` at the parser's position, if it is there;
/// the parser is left after it. Other `ALTER VIEW` statements are left to sqlparser.
pub(super) fn alter_view_rename(parser: &mut DFParser<'_>) -> Result<Option<CatalogStatement>> {
    if !(is_word(parser, 0, "ALTER") && is_word(parser, 1, "VIEW")) {
        return Ok(None);
    }
    // Look ahead for RENAME TO after the name, without consuming anything.
    let mut lookahead = 2;
    if is_word(parser, 2, "IF") && is_word(parser, 3, "EXISTS") {
        lookahead = 4;
    }
    // A name is at most catalog.schema.name: five tokens.
    let renames = (lookahead + 1..=lookahead + 5)
        .any(|n| is_word(parser, n, "RENAME") && is_word(parser, n + 1, "TO"));
    if !renames {
        return Ok(None);
    }
    let p = &mut parser.parser;
    p.next_token();
    p.next_token();
    let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = p.parse_object_name(false)?;
    p.expect_keywords(&[Keyword::RENAME, Keyword::TO])?;
    let new_name = p.parse_object_name(false)?;
    Ok(Some(CatalogStatement::Rename {
        kind: RelationKind::View,
        if_exists,
        name,
        new_name,
    }))
}

/// `COMMENT ON ... IS $tag$text$tag$`: sqlparser reads only a quoted string there, so dollar
/// quotes (dbt's `persist_docs` writes them) become single quotes, the text unchanged.
pub(super) fn dollar_quoted_comments(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut statement_start = true;
    let mut in_comment = false;
    for token in &mut tokens {
        match &token.token {
            Token::SemiColon => {
                statement_start = true;
                in_comment = false;
                continue;
            }
            Token::Whitespace(_) => continue,
            Token::Word(word) if statement_start => {
                in_comment =
                    word.quote_style.is_none() && word.value.eq_ignore_ascii_case("COMMENT");
            }
            Token::DollarQuotedString(text) if in_comment => {
                token.token = Token::SingleQuotedString(text.value.clone());
            }
            _ => {}
        }
        statement_start = false;
    }
    tokens
}
