//! psql's access-control commands, answered from Ember's system tables: `\dp` (`\z`) lists
//! the privileges of tables and views from `system.table_acl`, `\du` (`\dg`) the roles from
//! `system.roles`. Their queries read catalog columns Ember's `pg_catalog` does not have
//! (`relacl`, `pg_auth_members`), so the whole query is replaced, keeping psql's name patterns
//! and its column names.

/// The replacement of `sql` if it is psql's `\dp` or `\du` query.
pub(super) fn replace(sql: &str) -> Option<String> {
    if sql.contains("AS \"Access privileges\"") && sql.contains("pg_catalog.pg_policy") {
        let mut conditions = vec![];
        match pattern(sql, "n.nspname") {
            Some(schema) => conditions.push(format!("table_schema ~ {schema}")),
            // psql lists what the search path shows.
            None => conditions.push("table_schema = current_schema()".to_string()),
        }
        if let Some(name) = pattern(sql, "c.relname") {
            conditions.push(format!("table_name ~ {name}"));
        }
        return Some(format!(
            "SELECT table_schema AS \"Schema\", table_name AS \"Name\", table_type AS \"Type\", \
             acl AS \"Access privileges\", '' AS \"Column privileges\", '' AS \"Policies\" \
             FROM system.table_acl WHERE {} ORDER BY 1, 2",
            conditions.join(" AND ")
        ));
    }
    if sql.contains("FROM pg_catalog.pg_roles r")
        && sql.contains("pg_catalog.pg_auth_members")
        && sql.contains("rolcanlogin")
    {
        let name = pattern(sql, "r.rolname")
            .map(|name| format!("role_name ~ {name}"))
            .unwrap_or_else(|| "role_name !~ '^pg_'".to_string());
        return Some(format!(
            "SELECT role_name AS rolname, superuser AS rolsuper, true AS rolinherit, \
             create_role AS rolcreaterole, false AS rolcreatedb, login AS rolcanlogin, \
             -1 AS rolconnlimit, CAST(NULL AS TIMESTAMP) AS rolvaliduntil, \
             member_of AS memberof, false AS rolreplication, false AS rolbypassrls \
             FROM system.roles WHERE {name} ORDER BY 1"
        ));
    }
    None
}

/// The quoted regular expression psql matches `column` against
/// (`column OPERATOR(pg_catalog.~) '^(t)$'`), quotes included.
fn pattern(sql: &str, column: &str) -> Option<String> {
    let start = sql.find(&format!("{column} OPERATOR(pg_catalog.~) '"))?;
    let literal = &sql[start + column.len() + " OPERATOR(pg_catalog.~) ".len()..];
    // The literal runs to the first quote that is not doubled.
    let mut chars = literal.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, next)| *next == '\'') {
                chars.next();
                continue;
            }
            return Some(literal[..=i].to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_patterns_are_kept() {
        let dp = "SELECT n.nspname as \"Schema\", pg_catalog.array_to_string(c.relacl, E'\\n') \
                  AS \"Access privileges\" FROM pg_catalog.pg_class c, pg_catalog.pg_policy pol \
                  WHERE n.nspname OPERATOR(pg_catalog.~) '^(s1)$' COLLATE pg_catalog.default \
                  AND c.relname OPERATOR(pg_catalog.~) '^(it''s)$' ORDER BY 1, 2;";
        let replaced = replace(dp).expect("psql's \\dp");
        assert!(replaced.contains("table_schema ~ '^(s1)$'"), "{replaced}");
        assert!(replaced.contains("table_name ~ '^(it''s)$'"), "{replaced}");
        let du = "SELECT r.rolname, r.rolcanlogin FROM pg_catalog.pg_roles r \
                  JOIN pg_catalog.pg_auth_members m WHERE r.rolname !~ '^pg_' ORDER BY 1;";
        assert!(
            replace(du)
                .expect("psql's \\du")
                .contains("role_name !~ '^pg_'")
        );
        assert!(replace("select 1").is_none());
    }
}
