"""psycopg 3 against Ember: run as `python test_psycopg.py PORT`.

Every check runs on a connection of its own, even when an earlier one fails, so one run shows
everything that is wrong; the exit code is non-zero when any check failed.

psycopg sends queries without parameters as simple queries (unless the cursor is binary) and
queries with parameters through the extended protocol: ints (as the smallest of int2, int4 and
int8 that holds them), floats, dates, datetimes and booleans in binary, Decimals as numeric
text, strings and None as text of unknown type. A binary cursor asks for binary results.
Server-side cursors are SQL cursors: DECLARE inside a transaction, Describe of the portal it
creates, then FETCH FORWARD and CLOSE.
"""

import datetime
import sys
import traceback
from decimal import Decimal

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5432
CONNINFO = f"host=127.0.0.1 port={PORT} user=ember dbname=ember connect_timeout=10"

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def connect(autocommit=True):
    return psycopg.connect(CONNINFO, autocommit=autocommit)


def expect(what, expected, actual):
    if expected != actual or type(expected) is not type(actual):
        raise AssertionError(
            f"{what}: expected {expected!r} ({type(expected).__name__}), "
            f"got {actual!r} ({type(actual).__name__})"
        )


@check
def select_one():
    with connect() as conn:
        expect("select 1", (1,), conn.execute("select 1").fetchone())


@check
def plain_queries():
    with connect() as conn:
        expect(
            "count(*) of tpch.nation",
            25,
            conn.execute("select count(*) from tpch.nation").fetchone()[0],
        )
        expect(
            "n_name of nation 7",
            "GERMANY",
            conn.execute("select n_name from tpch.nation where n_nationkey = 7").fetchone()[0],
        )
        expect(
            "regions in order",
            [(0, "AFRICA"), (1, "AMERICA"), (2, "ASIA"), (3, "EUROPE"), (4, "MIDDLE EAST")],
            conn.execute("select r_regionkey, r_name from tpch.region order by 1").fetchall(),
        )


TYPES_QUERY = """
select o_orderkey, o_totalprice, o_clerk, o_orderdate,
       cast(o_totalprice as double precision) as price_float,
       o_orderstatus = 'O' as is_open,
       cast('2024-02-29 12:34:56' as timestamp) as ts
from tpch.orders where o_orderkey = {}
"""
TYPES_ROW = (
    1,
    Decimal("172799.49"),
    "Clerk#000000951",
    datetime.date(1996, 1, 2),
    172799.49,
    True,
    datetime.datetime(2024, 2, 29, 12, 34, 56),
)
# Column names and type OIDs: int8, numeric, text, date, float8, bool, timestamp.
TYPES_DESCRIPTION = [
    ("o_orderkey", 20),
    ("o_totalprice", 1700),
    ("o_clerk", 25),
    ("o_orderdate", 1082),
    ("price_float", 701),
    ("is_open", 16),
    ("ts", 1114),
]


def check_types(cur, how):
    expect(
        f"{how}: description",
        TYPES_DESCRIPTION,
        [(c.name, c.type_code) for c in cur.description],
    )
    rows = cur.fetchall()
    expect(f"{how}: row count", 1, len(rows))
    for (name, _), want, got in zip(TYPES_DESCRIPTION, TYPES_ROW, rows[0]):
        expect(f"{how}: {name}", want, got)


@check
def result_types_text():
    with connect() as conn, conn.cursor() as cur:
        cur.execute(TYPES_QUERY.format("1"))
        check_types(cur, "text, no parameters")
        cur.execute(TYPES_QUERY.format("%s"), [1])
        check_types(cur, "text, with a parameter")


@check
def arrays_and_intervals():
    # Arrays and intervals arrive as their Postgres types (int8[] 1016: integer literals are
    # bigint in Ember; text[] 1009, interval 1186), so psycopg returns lists and timedeltas, in
    # text and in binary.
    sql = (
        "select make_array(1, 2, null) as ints, make_array('a', 'b') as texts, "
        "interval '3 days 4 hours 5 minutes 6 seconds' as span"
    )
    for binary in (False, True):
        with connect() as conn, conn.cursor(binary=binary) as cur:
            cur.execute(sql)
            how = "binary" if binary else "text"
            expect(
                f"{how}: array and interval types",
                [1016, 1009, 1186],
                [c.type_code for c in cur.description],
            )
            expect(
                f"{how}: values",
                ([1, 2, None], ["a", "b"], datetime.timedelta(days=3, seconds=14706)),
                cur.fetchone(),
            )


@check
def result_types_binary():
    with connect() as conn, conn.cursor(binary=True) as cur:
        cur.execute(TYPES_QUERY.format("1"))
        check_types(cur, "binary, no parameters")
        cur.execute(TYPES_QUERY.format("%s"), [1])
        check_types(cur, "binary, with a parameter")


def parameter_checks(cur, how):
    def one(sql, params):
        cur.execute(sql, params)
        rows = cur.fetchall()
        expect(f"{how}: row count of {sql!r}", 1, len(rows))
        return rows[0][0]

    # int: psycopg picks the smallest integer type that holds the value (int2 here).
    expect(
        f"{how}: int parameter",
        "GERMANY",
        one("select n_name from tpch.nation where n_nationkey = %s", [7]),
    )
    expect(
        f"{how}: large int parameter",
        5_000_000_001,
        one("select %s + 1", [5_000_000_000]),
    )
    expect(
        f"{how}: str parameter",
        7,
        one("select n_nationkey from tpch.nation where n_name = %s", ["GERMANY"]),
    )
    expect(f"{how}: float parameter", 2.5, one("select %s * 2", [1.25]))
    expensive = one("select count(*) from tpch.orders where o_totalprice > 400000", [])
    if expensive <= 0:
        raise AssertionError(f"{how}: no order costs more than 400000")
    expect(
        f"{how}: Decimal parameter",
        expensive,
        one("select count(*) from tpch.orders where o_totalprice > %s", [Decimal("400000.00")]),
    )
    cur.execute(
        "select o_orderkey from tpch.orders where o_orderdate = %s order by 1 limit 3",
        [datetime.date(1995, 9, 16)],
    )
    keys = [r[0] for r in cur.fetchall()]
    cur.execute(
        "select o_orderkey from tpch.orders where o_orderdate = date '1995-09-16' "
        "order by 1 limit 3"
    )
    expect(f"{how}: date parameter", [r[0] for r in cur.fetchall()], keys)
    expect(f"{how}: orders of 1995-09-16", [5958], keys[:1])
    expect(
        f"{how}: datetime parameter",
        datetime.datetime(2024, 3, 1, 12, 34, 56),
        one("select %s + interval '1 day'", [datetime.datetime(2024, 2, 29, 12, 34, 56)]),
    )
    expect(
        f"{how}: bool parameter",
        5,
        one("select count(*) from tpch.nation where (n_regionkey = 3) = %s", [True]),
    )
    expect(f"{how}: None parameter", True, one("select %s::int is null", [None]))
    expect(
        f"{how}: several parameters",
        "GERMANY",
        one(
            "select n_name from tpch.nation where n_regionkey = %s and n_name like %s",
            [3, "GER%"],
        ),
    )


@check
def parameters_text():
    with connect() as conn, conn.cursor() as cur:
        parameter_checks(cur, "text cursor")


@check
def parameters_binary():
    with connect() as conn, conn.cursor(binary=True) as cur:
        parameter_checks(cur, "binary cursor")


@check
def prepared_statements():
    # prepare=True makes psycopg use a named server-side statement from the first execution.
    with connect() as conn:
        for key, name in [(0, "ALGERIA"), (7, "GERMANY"), (24, "UNITED STATES")]:
            got = conn.execute(
                "select n_name from tpch.nation where n_nationkey = %s", [key], prepare=True
            ).fetchone()
            expect(f"prepared statement with {key}", (name,), got)
        expect(
            "prepared %s + 1",
            (42,),
            conn.execute("select %s::int + 1", [41], prepare=True).fetchone(),
        )


@check
def server_side_cursor():
    with connect(autocommit=False) as conn:
        total = conn.execute("select count(*) from tpch.lineitem").fetchone()[0]
        expect("count(*) of tpch.lineitem at scale 0.01", 60175, total)
        expected_sum = conn.execute("select sum(l_orderkey) from tpch.lineitem").fetchone()[0]
        rows = 0
        checksum = 0
        with conn.cursor(name="c") as cur:
            cur.itersize = 1000
            cur.execute("select l_orderkey from tpch.lineitem")
            for (key,) in cur:
                rows += 1
                checksum += key
        conn.commit()
        expect("rows read through a server-side cursor", total, rows)
        expect("sum of l_orderkey read through a server-side cursor", int(expected_sum), checksum)


@check
def errors_keep_the_connection():
    with connect() as conn:
        try:
            conn.execute("select * from tpch.no_such_table")
        except errors.UndefinedTable:
            pass
        else:
            raise AssertionError("select from an unknown table did not raise UndefinedTable")
        expect(
            "query after an error",
            (5,),
            conn.execute("select count(*) from tpch.region").fetchone(),
        )

    # In a transaction the error aborts it; after a rollback the connection works again.
    with connect(autocommit=False) as conn:
        try:
            conn.execute("select * from tpch.no_such_table")
        except errors.UndefinedTable:
            pass
        else:
            raise AssertionError("select from an unknown table did not raise UndefinedTable")
        # ReadyForQuery says the transaction failed; psycopg and pools act on that state.
        expect(
            "transaction status after an error",
            psycopg.pq.TransactionStatus.INERROR,
            conn.info.transaction_status,
        )
        try:
            conn.execute("select 1")
        except errors.InFailedSqlTransaction:
            pass
        else:
            raise AssertionError("a query in an aborted transaction did not fail")
        conn.rollback()
        expect(
            "query after a rollback",
            (5,),
            conn.execute("select count(*) from tpch.region").fetchone(),
        )
        conn.commit()


@check
def unnamed_columns_are_named_as_postgres_names_them():
    # PostgreSQL 15's names for the same select list; applications read columns by them.
    sql = (
        "select count(*), 1 + 1, 'x'::text, coalesce(max(n_regionkey), 0), n_name, "
        "sum(n_nationkey) as total from tpch.nation group by n_name order by n_name limit 1"
    )
    want = ["count", "?column?", "text", "coalesce", "n_name", "total"]
    with connect() as conn:
        cur = conn.execute(sql)  # extended protocol
        expect("column names (extended protocol)", want, [c.name for c in cur.description])
        cur = psycopg.ClientCursor(conn)  # simple query protocol
        cur.execute(sql)
        expect("column names (simple protocol)", want, [c.name for c in cur.description])
        row = conn.cursor(row_factory=dict_row).execute(sql).fetchone()
        expect("a row by column name", (1, "ALGERIA"), (row["count"], row["n_name"]))


@check
def primary_keys_are_not_null():
    # As in PostgreSQL: a primary key's columns are NOT NULL, reported so and enforced (23502).
    with connect() as conn:
        conn.execute("drop table if exists pk_check")
        conn.execute("create table pk_check (id bigint primary key, name varchar)")
        expect(
            "nullability of a primary key",
            [("id", "NO"), ("name", "YES")],
            conn.execute(
                "select column_name, is_nullable from information_schema.columns "
                "where table_name = 'pk_check' order by ordinal_position"
            ).fetchall(),
        )
        conn.execute("insert into pk_check values (%s, %s)", (1, "a"))
        try:
            conn.execute("insert into pk_check values (%s, %s)", (None, "b"))
        except errors.NotNullViolation:
            pass
        else:
            raise AssertionError("a NULL key was accepted")
        expect("rows after the refused insert", (1,), conn.execute("select count(*) from pk_check").fetchone())
        conn.execute("drop table pk_check")


@check
def declared_string_lengths():
    # varchar(n) and char(n) columns: described with their type and length, values read back in
    # both formats, and a value longer than the column refused with 22001 (nothing written), as
    # in PostgreSQL.
    with connect() as conn:
        conn.execute("drop table if exists len_check")
        conn.execute("create table len_check (code char(2), name varchar(5), note varchar)")
        conn.execute("insert into len_check values (%s, %s, %s)", ("AB", "héllo", "any length"))
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute("select code, name, note from len_check")
            expect(
                f"column types (binary={binary})",
                [("code", 1042, 2), ("name", 1043, 5), ("note", 1043, None)],
                [(c.name, c.type_code, c.display_size) for c in cur.description],
            )
            expect(f"values (binary={binary})", [("AB", "héllo", "any length")], cur.fetchall())
        for values in (("ABC", "x", None), ("A", "toolong", None)):
            try:
                conn.execute("insert into len_check values (%s, %s, %s)", values)
            except errors.StringDataRightTruncation as e:
                expect("message", True, "value too long for type" in str(e))
            else:
                raise AssertionError(f"{values} was accepted")
        expect("rows after refused inserts", (1,), conn.execute("select count(*) from len_check").fetchone())
        conn.execute("drop table len_check")


def main():
    failed = []
    for fn in CHECKS:
        try:
            fn()
        except Exception as e:  # every failure is reported, then the next check runs
            failed.append(fn.__name__)
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
            if not isinstance(e, AssertionError):
                traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {fn.__name__}")
    print(f"{len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("failures: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
