//! Catalog statements DataFusion does not plan: `ALTER TABLE ... RENAME TO` (from sqlparser's
//! tree) and `ALTER VIEW ... RENAME TO` (which sqlparser does not parse, read by its tokens).

use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, ObjectName, RenameTableNameKind, Statement as SqlStatement,
};
use datafusion::sql::sqlparser::keywords::Keyword;

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
        }
    }
}

/// The catalog statement `statement` is, if it is one.
pub(super) fn recognise(statement: &SqlStatement) -> Result<Option<CatalogStatement>> {
    let SqlStatement::AlterTable(alter) = statement else {
        return Ok(None);
    };
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
