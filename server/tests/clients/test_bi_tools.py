"""The catalog queries DBeaver, Grafana and Metabase send on connect and when they list schemas,
tables, columns, keys and indexes, sent with psycopg 3: run as `python test_bi_tools.py PORT`.

The SQL is the tools' own (DBeaver's PostgreSQL plugin, Grafana's postgres data source
`postgresMetaQuery.ts`, Metabase's postgres driver `describe-database` / `describe-fields-sql`
/ `describe-fks-sql` / `describe-indexes-sql`), with the literals they bind filled in. The
expected values are what PostgreSQL 15 answers for the same tables, except where a comment
says why Ember's answer differs.

Every check runs even when an earlier one fails; the exit code is non-zero when any check
failed, or when a check listed in KNOWN_GAPS passes.
"""

import sys
import traceback

import psycopg

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5432
CONNINFO = f"host=127.0.0.1 port={PORT} user=ember dbname=ember connect_timeout=10"

CHECKS = []
# Checks that fail today for a known reason. They still run: a known gap that starts passing
# fails the run, so this list only ever shrinks and never hides a new failure.
KNOWN_GAPS = {}


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(what, expected, actual):
    if expected != actual or type(expected) is not type(actual):
        raise AssertionError(
            f"{what}: expected {expected!r} ({type(expected).__name__}), "
            f"got {actual!r} ({type(actual).__name__})"
        )


def rows(sql):
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def named_rows(sql):
    """The rows of `sql` as dicts by column name (the tools select `t.*`, whose column order
    differs between servers)."""
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        cur = conn.execute(sql)
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def setup():
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute("create schema tools")
        conn.execute(
            "create table tools.accounts (id bigint not null primary key, region int not null, "
            "name text default 'unknown', code text unique)"
        )


TABLE_OID = (
    "(select c.oid from pg_catalog.pg_class c join pg_catalog.pg_namespace n "
    "on n.oid = c.relnamespace where n.nspname = 'tools' and c.relname = 'accounts')"
)
TOOLS_OID = "(select oid from pg_catalog.pg_namespace where nspname = 'tools')"


@check
def dbeaver_connect():
    expect(
        "current schema",
        [("public",)],
        [r[:1] for r in rows("SELECT current_schema(),session_user")],
    )
    namespaces = [
        r[2]
        for r in rows(
            "SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n "
            "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 "
            "AND d.classoid='pg_namespace'::regclass ORDER BY nspname"
        )
    ]
    for name in ("pg_catalog", "public", "tools", "tpch"):
        if name not in namespaces:
            raise AssertionError(f"namespaces should contain {name}: {namespaces}")
    expect(
        "type 1034",
        [(True, "pg_catalog", "_aclitem")],
        rows(
            "SELECT n.nspname = ANY(current_schemas(true)), n.nspname, t.typname "
            "FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid "
            "WHERE t.oid = 1034"
        ),
    )
    expect(
        "is_array of 1034",
        [(True, "b", "_aclitem", 1034)],
        rows(
            "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, "
            "pg_type.oid FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, "
            "r.r from pg_namespace as ns join ( select s.r, (current_schemas(false))[s.r] as "
            "nspname from generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) "
            "as r using ( nspname ) ) as sp ON sp.nspoid = typnamespace WHERE pg_type.oid = 1034 "
            "ORDER BY sp.r, pg_type.oid DESC"
        ),
    )
    expect(
        "database",
        ["ember"],
        [
            r[2]
            for r in rows("SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname='ember'")
        ],
    )
    expect(
        "standard_conforming_strings",
        [("standard_conforming_strings", "on")],
        [
            r[:2]
            for r in rows(
                "SELECT * FROM pg_catalog.pg_settings where name='standard_conforming_strings'"
            )
        ],
    )
    expect("pg_enum probe", [], rows("SELECT * FROM pg_catalog.pg_enum WHERE 1<>1 LIMIT 1"))


@check
def dbeaver_browse():
    tables = named_rows(
        "SELECT c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as "
        "partition_expr, pg_catalog.pg_get_partkeydef(c.oid) as partition_key "
        "FROM pg_catalog.pg_class c LEFT OUTER JOIN pg_catalog.pg_description d ON "
        "d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass "
        f"WHERE c.relnamespace={TOOLS_OID} AND c.relkind not in ('i','I','c')"
    )
    expect("tables of tools", [("accounts", "r")], [(r["relname"], r["relkind"]) for r in tables])
    columns = named_rows(
        "SELECT c.relname,a.*,pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true) as def_value,"
        "dsc.description,dep.objid FROM pg_catalog.pg_attribute a "
        "INNER JOIN pg_catalog.pg_class c ON (a.attrelid=c.oid) "
        "LEFT OUTER JOIN pg_catalog.pg_attrdef ad ON (a.attrelid=ad.adrelid AND a.attnum = ad.adnum) "
        "LEFT OUTER JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid) "
        "LEFT OUTER JOIN pg_depend dep on dep.refobjid = a.attrelid AND dep.deptype = 'i' and "
        "dep.refobjsubid = a.attnum and dep.classid = dep.refclassid "
        f"WHERE NOT a.attisdropped AND c.relkind not in ('i','I','c') AND c.oid={TABLE_OID} "
        "ORDER BY a.attnum"
    )
    # (attname, atttypid, attnum, attnotnull, atthasdef, def_value); PostgreSQL also lists the
    # system columns (attnum < 0), which DBeaver leaves out.
    expect(
        "columns of tools.accounts",
        [
            ("id", 20, 1, True, False, None),
            ("region", 23, 2, True, False, None),
            ("name", 25, 3, False, True, "'unknown'::text"),
            ("code", 25, 4, False, False, None),
        ],
        [
            (
                r["attname"],
                r["atttypid"],
                r["attnum"],
                r["attnotnull"],
                r["atthasdef"],
                r["def_value"],
            )
            for r in columns
            if r["attnum"] > 0
        ],
    )
    indexes = named_rows(
        "SELECT i.*,i.indkey as keys,c.relname,c.relnamespace,c.relam,c.reltablespace,"
        "tc.relname as tabrelname,dsc.description,pg_catalog.pg_get_expr(i.indpred, i.indrelid) "
        "as pred_expr,pg_catalog.pg_get_expr(i.indexprs, i.indrelid, true) as expr,"
        "pg_catalog.pg_relation_size(i.indexrelid) as index_rel_size,"
        "pg_catalog.pg_stat_get_numscans(i.indexrelid) as index_num_scans FROM pg_catalog.pg_index i "
        "INNER JOIN pg_catalog.pg_class c ON c.oid=i.indexrelid "
        "INNER JOIN pg_catalog.pg_class tc ON tc.oid=i.indrelid "
        "LEFT OUTER JOIN pg_catalog.pg_description dsc ON i.indexrelid=dsc.objoid "
        f"WHERE i.indrelid={TABLE_OID} ORDER BY tabrelname, c.relname"
    )
    # (index, unique, primary, keys as int2vector text, table)
    expect(
        "indexes of tools.accounts",
        [
            ("accounts_code_key", True, False, "4", "accounts"),
            ("accounts_pkey", True, True, "1", "accounts"),
        ],
        [
            (r["relname"], r["indisunique"], r["indisprimary"], r["keys"], r["tabrelname"])
            for r in indexes
        ],
    )
    constraints = named_rows(
        "SELECT c.oid,c.*,t.relname as tabrelname,rt.relnamespace as refnamespace,d.description, "
        "case when c.contype='c' then \"substring\"(pg_get_constraintdef(c.oid), 7) else null end "
        "consrc_copy FROM pg_catalog.pg_constraint c "
        "INNER JOIN pg_catalog.pg_class t ON t.oid=c.conrelid "
        "LEFT OUTER JOIN pg_catalog.pg_class rt ON rt.oid=c.confrelid "
        "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 "
        "AND d.classoid='pg_constraint'::regclass "
        f"WHERE c.conrelid={TABLE_OID} ORDER BY c.oid"
    )
    expect(
        "constraints of tools.accounts",
        {("accounts_pkey", "p", (1,)), ("accounts_code_key", "u", (4,))},
        {(r["conname"], r["contype"], tuple(r["conkey"])) for r in constraints},
    )
    expect(
        "definitions of the constraints",
        {"PRIMARY KEY (id)", "UNIQUE (code)"},
        {
            r[0]
            for r in rows(
                "select pg_get_constraintdef(oid) from pg_catalog.pg_constraint "
                f"where conrelid = {TABLE_OID}"
            )
        },
    )


SEARCH_PATH_SCHEMAS = """quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"""


@check
def grafana_query_editor():
    version = rows("SELECT current_setting('server_version_num')::int/100 as version")[0][0]
    # Ember speaks for PostgreSQL 16 (PostgreSQL 15 answers 1500).
    expect("server version", 1600, version)
    expect(
        "timescaledb",
        [],
        rows("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"),
    )
    tables = [r[0] for r in rows(f"""SELECT
    CASE WHEN {SEARCH_PATH_SCHEMAS}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN {SEARCH_PATH_SCHEMAS} THEN 0 ELSE 1 END, 1""")]
    for name in ("tools.accounts", "tpch.nation", "tpch.lineitem"):
        if name not in tables:
            raise AssertionError(f"tables should contain {name}: {tables}")
    expect("tables in order", sorted(tables), tables)
    columns = rows(f"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('tpch.nation'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('tpch.nation'))[1]
          AND quote_ident(table_name) = (parse_ident('tpch.nation'))[2]
        ELSE quote_ident(table_name) = 'tpch.nation'
          AND {SEARCH_PATH_SCHEMAS}
      END""")
    # The types are DataFusion's names (Int64, Utf8View), where PostgreSQL says bigint, text;
    # the query has no ORDER BY.
    expect(
        "columns of tpch.nation",
        ["n_comment", "n_name", "n_nationkey", "n_regionkey"],
        sorted(r[0] for r in columns),
    )


@check
def metabase_describe_database():
    tables = rows(
        """SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" """
        """WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' """
        """WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS "type", """
        """"d"."description" AS "description", "stat"."n_live_tup" AS "estimated_row_count" """
        """FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" """
        """ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" """
        """ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = 0) AND """
        """("d"."classoid" = 'pg_class'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" """
        """ON ("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") """
        """WHERE ("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ '^pg_') AND """
        """("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') """
        """AND ("n"."nspname" IN ('tools', 'tpch')) ORDER BY "type" ASC, "schema" ASC, "name" ASC"""
    )
    # Row count estimates (PostgreSQL's n_live_tup) Ember does not keep: NULL.
    expect(
        "tables of tools and tpch",
        [("tools", "accounts", "TABLE")]
        + [
            ("tpch", t, "TABLE")
            for t in (
                "customer",
                "lineitem",
                "nation",
                "orders",
                "part",
                "partsupp",
                "region",
                "supplier",
            )
        ],
        [r[:3] for r in tables],
    )
    expect(
        "enum types",
        [],
        rows(
            "SELECT nspname, typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE t.oid IN (SELECT DISTINCT enumtypid FROM pg_enum e)"
        ),
    )
    expect(
        "select privilege probe",
        [],
        rows("""SELECT TRUE AS "_" FROM "tools"."accounts" WHERE 1 <> 1 LIMIT 0"""),
    )


@check
def metabase_fields():
    fields = rows(
        """SELECT "c"."column_name" AS "name", CASE WHEN "c"."udt_schema" IN ('public', 'pg_catalog') """
        """THEN FORMAT('%s', "c"."udt_name") ELSE FORMAT('"%s"."%s"', "c"."udt_schema", "c"."udt_name") """
        """END AS "database-type", "c"."ordinal_position" - 1 AS "database-position", """
        """"c"."table_schema" AS "table-schema", "c"."table_name" AS "table-name", """
        """"pk"."column_name" IS NOT NULL AS "pk?", COL_DESCRIPTION(CAST(CAST(FORMAT('%I.%I', """
        """CAST("c"."table_schema" AS TEXT), CAST("c"."table_name" AS TEXT)) AS REGCLASS) AS OID), """
        """"c"."ordinal_position") AS "field-comment" FROM "information_schema"."columns" AS "c" """
        """LEFT JOIN (SELECT "tc"."table_schema", "tc"."table_name", "kc"."column_name" """
        """FROM "information_schema"."table_constraints" AS "tc" INNER JOIN """
        """"information_schema"."key_column_usage" AS "kc" ON ("tc"."constraint_name" = "kc"."constraint_name") """
        """AND ("tc"."table_schema" = "kc"."table_schema") AND ("tc"."table_name" = "kc"."table_name") """
        """WHERE "tc"."constraint_type" = 'PRIMARY KEY') AS "pk" ON ("c"."table_schema" = "pk"."table_schema") """
        """AND ("c"."table_name" = "pk"."table_name") AND ("c"."column_name" = "pk"."column_name") """
        """WHERE c.table_schema !~ '^information_schema|catalog_history|pg_' AND """
        """("c"."table_schema" IN ('tools')) AND ("c"."table_name" IN ('accounts')) """
        """ORDER BY "table-schema" ASC, "table-name" ASC, "database-position" ASC"""
    )
    expect(
        "fields of tools.accounts",
        [
            ("id", "int8", 0, True, None),
            ("region", "int4", 1, False, None),
            ("name", "text", 2, False, None),
            ("code", "text", 3, False, None),
        ],
        [(r[0], r[1], r[2], r[5], r[6]) for r in fields],
    )


@check
def metabase_keys():
    # What describe-fields reads of primary keys and column types, piece by piece.
    expect(
        "primary key columns",
        [("tools", "accounts", "id", 1)],
        rows(
            "SELECT tc.table_schema, tc.table_name, kc.column_name, kc.ordinal_position "
            "FROM information_schema.table_constraints tc "
            "JOIN information_schema.key_column_usage kc ON tc.constraint_name = kc.constraint_name "
            "AND tc.table_schema = kc.table_schema AND tc.table_name = kc.table_name "
            "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'tools'"
        ),
    )
    expect(
        "udt names of tools.accounts",
        [("id", "int8"), ("region", "int4"), ("name", "text"), ("code", "text")],
        rows(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_schema = 'tools' AND table_name = 'accounts' ORDER BY ordinal_position"
        ),
    )
    expect(
        "foreign keys",
        [],
        rows(
            """SELECT "fk_ns"."nspname", "fk_table"."relname", "fk_column"."attname", """
            """"pk_ns"."nspname", "pk_table"."relname", "pk_column"."attname" FROM "pg_constraint" AS "c" """
            """INNER JOIN "pg_class" AS "fk_table" ON "c"."conrelid" = "fk_table"."oid" """
            """INNER JOIN "pg_namespace" AS "fk_ns" ON "c"."connamespace" = "fk_ns"."oid" """
            """INNER JOIN "pg_attribute" AS "fk_column" ON "c"."conrelid" = "fk_column"."attrelid" """
            """INNER JOIN "pg_class" AS "pk_table" ON "c"."confrelid" = "pk_table"."oid" """
            """INNER JOIN "pg_namespace" AS "pk_ns" ON "pk_table"."relnamespace" = "pk_ns"."oid" """
            """INNER JOIN "pg_attribute" AS "pk_column" ON "c"."confrelid" = "pk_column"."attrelid" """
            """WHERE fk_ns.nspname !~ '^information_schema|catalog_history|pg_' AND ("c"."contype" = 'f'::char) """
            """AND ("fk_column"."attnum" = ANY(c.conkey)) AND ("pk_column"."attnum" = ANY(c.confkey)) """
            """AND ("fk_table"."relname" IN ('accounts')) AND ("fk_ns"."nspname" IN ('tools'))"""
        ),
    )
    indexes = rows(
        """SELECT "tmp"."table-schema", "tmp"."table-name", TRIM(BOTH '"' FROM """
        """PG_CATALOG.PG_GET_INDEXDEF("tmp"."ci_oid", "tmp"."pos", FALSE)) AS "field-name" FROM """
        """(SELECT "n"."nspname" AS "table-schema", "ct"."relname" AS "table-name", "ci"."oid" AS "ci_oid", """
        """(INFORMATION_SCHEMA._PG_EXPANDARRAY("i"."indkey")).N AS "pos" FROM "pg_catalog"."pg_class" AS "ct" """
        """INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "ct"."relnamespace" = "n"."oid" """
        """INNER JOIN "pg_catalog"."pg_index" AS "i" ON "ct"."oid" = "i"."indrelid" """
        """INNER JOIN "pg_catalog"."pg_class" AS "ci" ON "ci"."oid" = "i"."indexrelid" """
        """WHERE (PG_CATALOG.PG_GET_EXPR("i"."indpred", "i"."indrelid") IS NULL) AND """
        """n.nspname !~ '^information_schema|catalog_history|pg_' AND ("n"."nspname" IN ('tools')) """
        """AND ("ct"."relname" IN ('accounts'))) AS "tmp" WHERE "tmp"."pos" = 1"""
    )
    expect(
        "indexed columns",
        [("tools", "accounts", "code"), ("tools", "accounts", "id")],
        sorted(indexes),
    )


@check
def postgres_functions():
    # format() and ::regclass of computed names, as in user SQL (PostgreSQL 15's answers).
    expect(
        "format()",
        [('tools."My T"', "a|NULL|'it''s'", "[  x][y  ]", "b a b", "t")],
        rows(
            "SELECT format('%I.%I', 'tools', 'My T'), format('%s|%L|%L', 'a', NULL, 'it''s'), "
            "format('[%3s][%-3s]', 'x', 'y'), format('%2$s %1$s %s', 'a', 'b'), format('%s', true)"
        ),
    )
    expect(
        "::regclass of literals and computed names",
        [(True, True, True)],
        rows(
            "SELECT 'tools.accounts'::regclass = c.oid, "
            "format('%I.%I', n.nspname, c.relname)::regclass = c.oid, "
            "CAST(c.oid AS regclass) = c.oid "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'tools' AND c.relname = 'accounts'"
        ),
    )
    try:
        rows("SELECT 'tools.no_such_table'::regclass")
        raise AssertionError("an unknown relation was not reported")
    except psycopg.Error as e:
        if "does not exist" not in str(e):
            raise AssertionError(f"unexpected error: {e}")


def main():
    setup()
    failed = []
    for fn in CHECKS:
        gap = KNOWN_GAPS.get(fn.__name__)
        try:
            fn()
        except Exception as e:  # every failure is reported, then the next check runs
            if gap:
                print(f"gap  {fn.__name__} ({gap}): {type(e).__name__}: {str(e)[:200]}")
                continue
            failed.append(fn.__name__)
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
            if not isinstance(e, AssertionError):
                traceback.print_exc(file=sys.stdout)
        else:
            if gap:
                failed.append(fn.__name__)
                print(f"FAIL {fn.__name__} passes now: remove it from KNOWN_GAPS")
            else:
                print(f"ok   {fn.__name__}")
    print(f"{len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("failures: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
