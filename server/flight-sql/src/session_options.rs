//! Flight session options (`SetSessionOptions`, `GetSessionOptions`, `CloseSession`): ADBC
//! keeps a connection's current catalog and schema in the `catalog` and `schema` options.
//! Ember has one catalog, so only `schema` changes anything; other names are refused.
//!
//! arrow-flight 59 does not generate these messages (they came with Flight 15), so they are
//! declared here with their field numbers from `Flight.proto`.

use std::collections::HashMap;

use ember_planner::session::DEFAULT_CATALOG;

use ember_coordinator::ClientSession;

pub(crate) const SET_SESSION_OPTIONS: &str = "SetSessionOptions";
pub(crate) const GET_SESSION_OPTIONS: &str = "GetSessionOptions";
pub(crate) const CLOSE_SESSION: &str = "CloseSession";

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionOptionValue {
    #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
    pub(crate) option_value: Option<OptionValue>,
}

/// Named as in `Flight.proto`.
#[derive(Clone, PartialEq, prost::Oneof)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum OptionValue {
    #[prost(string, tag = "1")]
    StringValue(String),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(sfixed64, tag = "3")]
    Int64Value(i64),
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    #[prost(message, tag = "5")]
    StringListValue(StringListValue),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StringListValue {
    #[prost(string, repeated, tag = "1")]
    pub(crate) values: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SetSessionOptionsRequest {
    #[prost(map = "string, message", tag = "1")]
    pub(crate) session_options: HashMap<String, SessionOptionValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub(crate) errors: HashMap<String, SetSessionOptionsError>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SetSessionOptionsError {
    /// 1 invalid name, 2 invalid value, 3 error.
    #[prost(int32, tag = "1")]
    pub(crate) value: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub(crate) session_options: HashMap<String, SessionOptionValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CloseSessionResult {
    /// 1 closed.
    #[prost(int32, tag = "1")]
    pub(crate) status: i32,
}

const INVALID_NAME: i32 = 1;
const INVALID_VALUE: i32 = 2;
pub(crate) const CLOSED: i32 = 1;

fn text(value: &str) -> SessionOptionValue {
    SessionOptionValue {
        option_value: Some(OptionValue::StringValue(value.to_string())),
    }
}

/// The session's options: its catalog and current schema.
pub(crate) fn get(session: &ClientSession) -> GetSessionOptionsResult {
    let mut options = HashMap::new();
    options.insert("catalog".to_string(), text(DEFAULT_CATALOG));
    options.insert("schema".to_string(), text(&session.current_schema()));
    GetSessionOptionsResult {
        session_options: options,
    }
}

/// Applies what it can; the rest comes back as errors, per option.
pub(crate) fn set(
    session: &ClientSession,
    request: SetSessionOptionsRequest,
) -> SetSessionOptionsResult {
    let mut errors = HashMap::new();
    for (name, value) in request.session_options {
        let value = match value.option_value {
            Some(OptionValue::StringValue(value)) => value,
            _ => {
                errors.insert(
                    name,
                    SetSessionOptionsError {
                        value: INVALID_VALUE,
                    },
                );
                continue;
            }
        };
        let outcome = match name.as_str() {
            "catalog" if value == DEFAULT_CATALOG => Ok(()),
            "catalog" => Err(INVALID_VALUE),
            "schema" => set_schema(session, &value),
            _ => Err(INVALID_NAME),
        };
        if let Err(code) = outcome {
            errors.insert(name, SetSessionOptionsError { value: code });
        }
    }
    SetSessionOptionsResult { errors }
}

fn set_schema(session: &ClientSession, schema: &str) -> Result<(), i32> {
    let ctx = session.context();
    let exists = ctx
        .catalog(DEFAULT_CATALOG)
        .is_some_and(|c| c.schema_names().iter().any(|s| s == schema));
    if !exists {
        return Err(INVALID_VALUE);
    }
    session.set_current_schema(schema);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_keep_their_wire_format() {
        // SetSessionOptionsRequest{session_options: {"schema": string_value "tpch"}} as the
        // Go and C++ Flight libraries encode it.
        let mut options = HashMap::new();
        options.insert("schema".to_string(), text("tpch"));
        let bytes = SetSessionOptionsRequest {
            session_options: options,
        }
        .encode_to_vec();
        assert_eq!(bytes, b"\n\x10\n\x06schema\x12\x06\n\x04tpch".to_vec());
        let decoded = SetSessionOptionsRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.session_options["schema"], text("tpch"));
    }
}
