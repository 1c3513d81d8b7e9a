//! Who a session is: the user its frontend authenticated (`session_user`) and the role whose
//! privileges count (`current_user`, changed by `SET ROLE`), and the SQL functions that ask
//! about them: `session_user`, `current_user`, `current_role`, `has_table_privilege` and
//! `has_schema_privilege`.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, BooleanBuilder, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, TableReference};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use ember_planner::session::DEFAULT_CATALOG;

use crate::access::{AccessControl, Privileges, Securable};
use crate::error::Error;

/// The session's user and current role; kept in the session's DataFusion config too, where
/// the system tables read it.
#[derive(Debug, Default)]
pub struct Identity {
    user: Mutex<String>,
    role: Mutex<Option<String>>,
}

impl Identity {
    pub(crate) fn new(user: &str) -> Self {
        Self {
            user: Mutex::new(user.to_string()),
            role: Mutex::default(),
        }
    }

    /// The user the session logged in as.
    pub fn session_user(&self) -> String {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The role whose privileges count: the one `SET ROLE` chose, else the session user.
    pub fn current_role(&self) -> String {
        self.role
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| self.session_user())
    }

    pub(crate) fn set_user(&self, user: &str) {
        *self.user.lock().unwrap_or_else(|e| e.into_inner()) = user.to_string();
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn set_role(&self, role: Option<String>) {
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = role;
    }
}

/// The functions of [`Identity`], for one session.
pub(crate) fn functions(identity: &Arc<Identity>, access: &Arc<AccessControl>) -> Vec<ScalarUDF> {
    let mut functions = vec![];
    for (name, current) in [
        ("session_user", false),
        ("current_user", true),
        ("current_role", true),
    ] {
        functions.push(ScalarUDF::from(WhoAmI {
            name,
            current,
            identity: Arc::clone(identity),
            signature: Signature::exact(vec![], Volatility::Stable),
        }));
    }
    for (name, schema) in [
        ("has_table_privilege", false),
        ("has_schema_privilege", true),
    ] {
        let text = || DataType::Utf8;
        functions.push(ScalarUDF::from(HasPrivilege {
            name,
            schema,
            identity: Arc::clone(identity),
            access: Arc::clone(access),
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![text(), text()]),
                    TypeSignature::Exact(vec![text(), text(), text()]),
                ],
                Volatility::Stable,
            ),
        }));
    }
    functions
}

#[derive(Debug)]
struct WhoAmI {
    name: &'static str,
    current: bool,
    identity: Arc<Identity>,
    signature: Signature,
}

impl PartialEq for WhoAmI {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.identity, &other.identity)
    }
}

impl Eq for WhoAmI {}

impl std::hash::Hash for WhoAmI {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for WhoAmI {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let name = if self.current {
            self.identity.current_role()
        } else {
            self.identity.session_user()
        };
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// `has_table_privilege([role,] table, privileges)` and `has_schema_privilege([role,] schema,
/// privileges)`: whether the role (the current one unless named) holds any of the
/// comma-separated privileges, as PostgreSQL answers.
#[derive(Debug)]
struct HasPrivilege {
    name: &'static str,
    schema: bool,
    identity: Arc<Identity>,
    access: Arc<AccessControl>,
    signature: Signature,
}

impl PartialEq for HasPrivilege {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.identity, &other.identity)
    }
}

impl Eq for HasPrivilege {}

impl std::hash::Hash for HasPrivilege {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl HasPrivilege {
    fn answer(
        &self,
        role: &str,
        object: &str,
        privileges: &str,
        default_schema: &str,
    ) -> DFResult<bool> {
        let mut wanted = vec![];
        for name in privileges.split(',') {
            let name = name.trim();
            let name = name
                .strip_suffix("WITH GRANT OPTION")
                .or_else(|| name.strip_suffix("with grant option"))
                .unwrap_or(name)
                .trim();
            let privilege = Privileges::named(name).ok_or_else(|| {
                external(Error::InvalidParameter(format!(
                    "unrecognized privilege type: \"{name}\""
                )))
            })?;
            wanted.push(privilege);
        }
        if self.access.role(role).is_none() {
            return Err(external(Error::UndefinedObject(format!(
                "role \"{role}\" does not exist"
            ))));
        }
        let published = self.access.published();
        let user_schemas = published.user_schemas();
        let held = if self.schema {
            if !user_schemas.contains(object) {
                // Ember's own schemas: anyone may use them; nobody creates in them.
                Privileges::USAGE
            } else {
                self.access.privileges(role, &Securable::schema(object))
            }
        } else {
            let table = TableReference::parse_str(object).resolve(DEFAULT_CATALOG, default_schema);
            let (schema, name) = (table.schema.to_string(), table.table.to_string());
            if !user_schemas.contains(&schema) {
                // Ember's own tables are readable by every role and written by none.
                Privileges::SELECT
            } else if !published.tables.contains(&(schema.clone(), name.clone())) {
                return Err(external(Error::UndefinedTable(format!(
                    "relation \"{object}\" does not exist"
                ))));
            } else {
                let usage = self
                    .access
                    .privileges(role, &Securable::schema(&schema))
                    .contains(Privileges::USAGE);
                if usage {
                    self.access
                        .privileges(role, &Securable::table(&schema, &name))
                } else {
                    Privileges::NONE
                }
            }
        };
        Ok(wanted.iter().any(|w| !w.is_empty() && held.contains(*w)))
    }
}

fn external(error: Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

impl ScalarUDFImpl for HasPrivilege {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let rows = args.number_rows;
        let default_schema = args.config_options.catalog.default_schema.clone();
        let columns: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|arg| {
                let array = arg.to_array(rows)?;
                Ok(cast(&array, &DataType::Utf8)?)
            })
            .collect::<DFResult<_>>()?;
        let text = |i: usize| -> DFResult<&StringArray> {
            columns[i]
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Internal(format!("{}: text expected", self.name)))
        };
        let current = self.identity.current_role();
        let (roles, objects, privileges) = match columns.len() {
            2 => (None, text(0)?, text(1)?),
            _ => (Some(text(0)?), text(1)?, text(2)?),
        };
        let mut answers = BooleanBuilder::with_capacity(rows);
        for row in 0..rows {
            let role = match roles {
                Some(roles) if roles.is_null(row) => None,
                Some(roles) => Some(roles.value(row)),
                None => Some(current.as_str()),
            };
            match (role, objects.is_null(row), privileges.is_null(row)) {
                // An oid names no table here (the Postgres catalog's oids are its own): NULL, as
                // PostgreSQL answers for an oid it does not know.
                (Some(_), false, false) if objects.value(row).parse::<u32>().is_ok() => {
                    answers.append_null()
                }
                (Some(role), false, false) => answers.append_value(self.answer(
                    role,
                    objects.value(row),
                    privileges.value(row),
                    &default_schema,
                )?),
                _ => answers.append_null(),
            }
        }
        let array: ArrayRef = Arc::new(answers.finish());
        Ok(
            if args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)))
            {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            } else {
                ColumnarValue::Array(array)
            },
        )
    }
}
