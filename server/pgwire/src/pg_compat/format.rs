//! PostgreSQL's `format(formatstr, args...)`: `%s` (text), `%I` (identifier, quoted when
//! needed), `%L` (literal), `%%`, with optional `n$` positions, `-` flag and width, as in
//! PostgreSQL (`%*` widths taken from arguments are refused).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// Keywords PostgreSQL does not accept as bare identifiers (every category but unreserved):
/// `quote_ident` and `%I` quote them.
const NON_UNRESERVED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// `name` as PostgreSQL's `quote_ident` writes it: bare when it reads back as itself.
pub(crate) fn quote_ident(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && NON_UNRESERVED_KEYWORDS.binary_search(&name).is_err();
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `value` as PostgreSQL's `quote_literal` writes it (`E'...'` when it has backslashes).
fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Format {
    signature: Signature,
}

impl Format {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Format {
    fn name(&self) -> &str {
        "format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.is_empty() {
            return plan_err!("format() takes a format string");
        }
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let columns = args
            .args
            .iter()
            .map(|a| text_column(a, rows))
            .collect::<Result<Vec<_>>>()?;
        let mut out = StringBuilder::new();
        let mut values: Vec<Option<&str>> = Vec::with_capacity(columns.len() - 1);
        for row in 0..rows {
            let Some(pattern) = cell(&columns[0], row) else {
                out.append_null();
                continue;
            };
            values.clear();
            values.extend(columns[1..].iter().map(|c| cell(c, row)));
            out.append_value(format(pattern, &values)?);
        }
        let array: ArrayRef = Arc::new(out.finish());
        if all_scalar {
            return Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&array, 0)?,
            ));
        }
        Ok(ColumnarValue::Array(array))
    }
}

fn cell(column: &ArrayRef, row: usize) -> Option<&str> {
    column
        .is_valid(row)
        .then(|| column.as_string::<i32>().value(row))
}

/// An argument as text (`Utf8`), PostgreSQL's way for booleans (`t`/`f`).
fn text_column(value: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    let array = value.to_array(rows)?;
    if let DataType::Boolean = array.data_type() {
        let booleans = array.as_boolean();
        let mut text = StringBuilder::new();
        for value in booleans {
            text.append_option(value.map(|b| if b { "t" } else { "f" }));
        }
        return Ok(Arc::new(text.finish()));
    }
    Ok(datafusion::arrow::compute::cast(&array, &DataType::Utf8)?)
}

/// Formats one row: `values` are the arguments after the format string.
fn format(pattern: &str, values: &[Option<&str>]) -> Result<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        // [n$][-][width]type
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let mut position = None;
        if !digits.is_empty() && chars.peek() == Some(&'$') {
            chars.next();
            let n: usize = digits.parse().unwrap_or(0);
            if n == 0 {
                return exec_err!("format specifies argument 0, but arguments are numbered from 1");
            }
            position = Some(n - 1);
            digits.clear();
        }
        let mut left = false;
        if digits.is_empty() {
            while chars.peek() == Some(&'-') {
                left = true;
                chars.next();
            }
            if chars.peek() == Some(&'*') {
                return exec_err!("format() widths taken from arguments (%*) are not supported");
            }
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
        }
        let width = match digits.parse::<u64>() {
            Ok(width) if width > MAX_WIDTH => return Err(width_limit(&digits)),
            Ok(width) => width as usize,
            Err(_) if digits.is_empty() => 0,
            // More digits than a u64 holds.
            Err(_) => return Err(width_limit(&digits)),
        };
        let Some(kind) = chars.next() else {
            return exec_err!("unterminated format() type specifier");
        };
        let index = position.unwrap_or(next);
        next = index + 1;
        let Some(value) = values.get(index) else {
            return exec_err!("too few arguments for format()");
        };
        let text = match (kind, value) {
            ('s', Some(v)) => v.to_string(),
            ('s', None) => String::new(),
            ('I', Some(v)) => quote_ident(v),
            ('I', None) => {
                return exec_err!("null values cannot be formatted as an SQL identifier");
            }
            ('L', Some(v)) => quote_literal(v),
            ('L', None) => "NULL".to_string(),
            (other, _) => return exec_err!("unrecognized format() type specifier \"{other}\""),
        };
        let pad = width.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&text);
        }
    }
    Ok(out)
}

/// The widest padding `format()` produces: a client's width must not size an allocation
/// unchecked (PostgreSQL bounds a width by the largest int; this is lower, a megabyte).
const MAX_WIDTH: u64 = 1 << 20;

fn width_limit(digits: &str) -> datafusion::error::DataFusionError {
    ember_planner::Error::LimitExceeded {
        what: format!("format() width {digits}"),
        limit: MAX_WIDTH,
    }
    .into_datafusion()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted_for_binary_search() {
        assert!(NON_UNRESERVED_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn formats_as_postgres_does() {
        // Each answer is PostgreSQL 15's for the same call.
        let f = |p: &str, v: &[Option<&str>]| format(p, v).unwrap();
        assert_eq!(
            f("%I.%I", &[Some("tools"), Some("Accounts")]),
            "tools.\"Accounts\""
        );
        assert_eq!(f("%I", &[Some("user")]), "\"user\"");
        assert_eq!(f("%I", &[Some("name")]), "name");
        assert_eq!(
            f("%s|%L|%L", &[Some("a"), None, Some("it's")]),
            "a|NULL|'it''s'"
        );
        assert_eq!(f("%L", &[Some("a\\b")]), "E'a\\\\b'");
        assert_eq!(f("[%3s][%-3s]", &[Some("a"), Some("b")]), "[  a][b  ]");
        assert_eq!(f("%2$s %1$s %s", &[Some("a"), Some("b")]), "b a b");
        assert_eq!(f("100%% %s", &[None]), "100% ");
        assert!(format("%s %s", &[Some("a")]).is_err());
        assert!(format("%I", &[None]).is_err());
        assert!(format("%x", &[Some("a")]).is_err());
    }

    #[test]
    fn widths_are_bounded_before_anything_is_padded() {
        let padded = format("%1048576s", &[Some("x")]).expect("the largest width");
        assert_eq!(padded.len(), 1 << 20);
        for hostile in [
            "%100000000000000s",
            "%1048577s",
            "%-99999999999999999999999s",
        ] {
            let error = format(hostile, &[Some("x")]).expect_err(hostile);
            assert!(error.to_string().contains("limited to 1048576"), "{error}");
        }
    }
}
