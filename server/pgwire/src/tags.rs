//! Command tags: how a Postgres server words what a command did (`INSERT 0 5`, `CREATE TABLE`),
//! and whether it opened or closed a transaction block, from the engine's typed outcomes.

use ember_coordinator::{Command, Outcome, TransactionCommand};
use pgwire::api::results::{Response, Tag};

/// The response that reports `outcome`.
pub(crate) fn response(outcome: &Outcome) -> Response {
    let tag = Tag::new(&tag(outcome));
    match outcome.command {
        Command::Transaction(command) if command.in_block_after() => {
            Response::TransactionStart(tag)
        }
        Command::Transaction(_) => Response::TransactionEnd(tag),
        _ => Response::Execution(tag),
    }
}

/// PostgreSQL's command tag for `outcome`.
pub(crate) fn tag(outcome: &Outcome) -> String {
    let rows = outcome.rows.unwrap_or(0);
    match outcome.command {
        // The 0 is the oid PostgreSQL once reported for single-row inserts.
        Command::Insert => format!("INSERT 0 {rows}"),
        Command::Copy => format!("COPY {rows}"),
        Command::Update => format!("UPDATE {rows}"),
        Command::Delete => format!("DELETE {rows}"),
        Command::Truncate => "TRUNCATE TABLE".into(),
        Command::Merge => format!("MERGE {rows}"),
        Command::CreateTableAs => format!("SELECT {rows}"),
        Command::CreateTable => "CREATE TABLE".into(),
        Command::CreateView => "CREATE VIEW".into(),
        Command::CreateSchema => "CREATE SCHEMA".into(),
        Command::CreateIndex => "CREATE INDEX".into(),
        Command::CreateFunction => "CREATE FUNCTION".into(),
        Command::DropTable => "DROP TABLE".into(),
        Command::DropView => "DROP VIEW".into(),
        Command::DropSchema => "DROP SCHEMA".into(),
        Command::DropFunction => "DROP FUNCTION".into(),
        Command::AlterTable => "ALTER TABLE".into(),
        Command::AlterView => "ALTER VIEW".into(),
        Command::Comment => "COMMENT".into(),
        Command::CreateRole => "CREATE ROLE".into(),
        Command::AlterRole => "ALTER ROLE".into(),
        Command::DropRole => "DROP ROLE".into(),
        Command::Grant => "GRANT".into(),
        Command::Revoke => "REVOKE".into(),
        Command::Set => "SET".into(),
        Command::Reset => "RESET".into(),
        Command::Prepare => "PREPARE".into(),
        Command::Execute => "EXECUTE".into(),
        Command::Deallocate => "DEALLOCATE".into(),
        Command::DeallocateAll => "DEALLOCATE ALL".into(),
        Command::DeclareCursor => "DECLARE CURSOR".into(),
        Command::CloseCursor => "CLOSE CURSOR".into(),
        Command::Transaction(command) => match command {
            TransactionCommand::Begin => "BEGIN",
            TransactionCommand::StartTransaction => "START TRANSACTION",
            TransactionCommand::Commit => "COMMIT",
            TransactionCommand::Rollback | TransactionCommand::RollbackToSavepoint => "ROLLBACK",
            TransactionCommand::Savepoint => "SAVEPOINT",
            TransactionCommand::ReleaseSavepoint => "RELEASE",
        }
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_word_outcomes_as_postgres_does() {
        let outcome = |command, rows| Outcome { command, rows };
        assert_eq!(tag(&outcome(Command::Insert, Some(5))), "INSERT 0 5");
        assert_eq!(tag(&outcome(Command::CreateTableAs, Some(7))), "SELECT 7");
        assert_eq!(tag(&outcome(Command::Copy, Some(0))), "COPY 0");
        assert_eq!(tag(&outcome(Command::Update, Some(42))), "UPDATE 42");
        assert_eq!(tag(&outcome(Command::Delete, Some(3))), "DELETE 3");
        assert_eq!(tag(&outcome(Command::Truncate, None)), "TRUNCATE TABLE");
        assert_eq!(tag(&outcome(Command::CreateTable, None)), "CREATE TABLE");
        assert_eq!(
            tag(&outcome(
                Command::Transaction(TransactionCommand::RollbackToSavepoint),
                None
            )),
            "ROLLBACK"
        );
        assert!(matches!(
            response(&outcome(
                Command::Transaction(TransactionCommand::Begin),
                None
            )),
            Response::TransactionStart(_)
        ));
        assert!(matches!(
            response(&outcome(
                Command::Transaction(TransactionCommand::Commit),
                None
            )),
            Response::TransactionEnd(_)
        ));
        assert!(matches!(
            response(&outcome(Command::Set, None)),
            Response::Execution(_)
        ));
    }
}
