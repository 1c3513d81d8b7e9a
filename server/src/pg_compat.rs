//! What Postgres clients expect of the server beyond SQL: `pg_catalog` built live from Ember's
//! catalog (psql's `\d` family, pgJDBC's DatabaseMetaData, SQLAlchemy's inspector, BI tools),
//! the Postgres system functions they call, and the rewrites that let their catalog queries run
//! on DataFusion. The tables and most functions come from the datafusion-pg-catalog crate.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::setup_pg_catalog;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use ember_planner::session::DEFAULT_CATALOG;

use crate::error::{Error, Result};

/// The PostgreSQL version Ember speaks for (catalog layout, protocol, functions).
pub(crate) const PG_SERVER_VERSION: &str = "16.6";

/// `state` with `pg_catalog` and the Postgres functions: what every Postgres-wire session
/// starts from.
pub(crate) fn postgres_state(state: &SessionState) -> Result<SessionState> {
    let ctx = SessionContext::new_with_state(state.clone());
    setup_pg_catalog(&ctx, DEFAULT_CATALOG, EmptyContextProvider)
        .map_err(|e| Error::DataFusion(*e))?;
    ctx.register_udf(ScalarUDF::from(PgVersion::new()));
    Ok(ctx.state())
}

/// The rewrites of Postgres-specific SQL (qualified function names such as
/// `pg_catalog.version()`, `::regclass` casts, `ANY (array)`, psql's catalog queries) into SQL
/// DataFusion plans.
pub(crate) struct Compatibility {
    parser: PostgresCompatibilityParser,
}

impl Compatibility {
    pub(crate) fn new() -> Self {
        Self {
            parser: PostgresCompatibilityParser::new(),
        }
    }

    /// Parses `sql` with the known client catalog queries replaced, if the Postgres parser
    /// takes all of it.
    pub(crate) fn parse(&self, sql: &str) -> Option<Vec<Statement>> {
        self.parser.parse(sql).ok()
    }

    pub(crate) fn rewrite(&self, statement: Statement) -> Statement {
        self.parser.rewrite(statement)
    }
}

/// `version()` as Postgres clients parse it (`PostgreSQL 16.6 ...`): SQLAlchemy and others read
/// the server version from it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgVersion {
    signature: Signature,
}

impl PgVersion {
    fn new() -> Self {
        Self {
            signature: Signature::nullary(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for PgVersion {
    fn name(&self) -> &str {
        "version"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(format!(
            "PostgreSQL {PG_SERVER_VERSION} (Ember {}, Apache DataFusion {}) on {}-{}",
            env!("CARGO_PKG_VERSION"),
            datafusion::DATAFUSION_VERSION,
            std::env::consts::ARCH,
            std::env::consts::OS,
        )))))
    }
}

/// Shared by every Postgres session.
pub(crate) fn compatibility() -> &'static Compatibility {
    static COMPATIBILITY: std::sync::OnceLock<Compatibility> = std::sync::OnceLock::new();
    COMPATIBILITY.get_or_init(Compatibility::new)
}
