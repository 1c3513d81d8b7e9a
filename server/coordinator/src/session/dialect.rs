//! The seam between the engine and a frontend's SQL flavour. A frontend's clients (Postgres
//! tools, say) expect more of a session than DataFusion's SQL: catalog tables, functions,
//! variables, rewrites of their catalog queries. A [`ClientDialect`] brings those; the engine
//! calls it at fixed points and knows nothing of any protocol:
//!
//! ```text
//!  new session ──► session_state() + init_session()
//!  SQL text ─parse─► rewrite(text, statements) ──► session command? ─claims()─► session_command()
//!                                                        │ no
//!                                                        ▼
//!                                  before_planning(statement) ──► DataFusion plan ──► run
//! ```
//!
//! [`DataFusionDialect`] is Ember's own: DataFusion's SQL, no extras (Flight SQL, `ember sql`).

use std::fmt;

use async_trait::async_trait;
use datafusion::execution::session_state::SessionState;
use datafusion::sql::parser::Statement as DFStatement;

use super::ClientSession;
use crate::error::Result;
use crate::output::Output;
use crate::statement::SessionCommand;

/// How the clients of one frontend speak SQL.
#[async_trait]
pub trait ClientDialect: Send + Sync + fmt::Debug + 'static {
    /// A short name, for logs.
    fn name(&self) -> &str;

    /// The state every session of this dialect starts from: its functions, catalog tables and
    /// parser settings. Sessions share the server's catalog through it.
    fn session_state(&self) -> SessionState;

    /// Prepares a new session (per-session functions, state kept in its config extensions).
    fn init_session(&self, _session: &ClientSession) {}

    /// Rewrites what a client sent, parsed, before anything else looks at it. `sql` is the text
    /// the statements were parsed from. Must return as many statements as it was given.
    fn rewrite(&self, _sql: &str, statements: Vec<DFStatement>) -> Vec<DFStatement> {
        statements
    }

    /// Whether this dialect answers `command` itself (its own variables, say).
    fn claims(&self, _command: &SessionCommand) -> bool {
        false
    }

    /// Answers a session command [`Self::claims`] claimed.
    fn session_command(
        &self,
        _session: &ClientSession,
        command: &SessionCommand,
    ) -> Result<Output> {
        Err(crate::Error::NotSupported(format!(
            "{command:?} is not a command of the {} dialect",
            self.name()
        )))
    }

    /// Runs just before `statement` is planned in `session`: may rewrite it, and prepare what
    /// its planning needs.
    async fn before_planning(
        &self,
        _session: &ClientSession,
        _statement: &mut DFStatement,
    ) -> Result<()> {
        Ok(())
    }
}

/// DataFusion's SQL as it is: the dialect of Flight SQL clients and `ember sql`.
#[derive(Debug)]
pub struct DataFusionDialect {
    state: SessionState,
}

impl DataFusionDialect {
    /// Sessions start from `state` (the engine's base state).
    pub fn new(state: SessionState) -> Self {
        Self { state }
    }
}

impl ClientDialect for DataFusionDialect {
    fn name(&self) -> &str {
        "datafusion"
    }

    fn session_state(&self) -> SessionState {
        self.state.clone()
    }
}
