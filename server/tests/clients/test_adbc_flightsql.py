"""ADBC's Flight SQL driver and pyarrow against Ember, as a Python application uses them.

Run by server/tests/flight_sql.rs with EMBER_FLIGHT_SQL_URI (the coordinator), EMBER_PROXY
("true" when the coordinator relays results) and EMBER_TPCH_DIR (the TPC-H parquet files the
cluster serves). Answers are checked against pyarrow computing on those same files.
"""

import os
import sys
import traceback
import threading
import uuid

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

URI = os.environ["EMBER_FLIGHT_SQL_URI"]
PROXY = os.environ.get("EMBER_PROXY") == "true"
TPCH = os.environ["EMBER_TPCH_DIR"]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def tpch(table):
    """A TPC-H table as pyarrow reads it, string views as plain strings for its kernels."""
    data = ds.dataset(os.path.join(TPCH, table), format="parquet").to_table()
    fields = [
        pa.field(f.name, pa.string()) if f.type == pa.string_view() else f for f in data.schema
    ]
    return data.cast(pa.schema(fields))


def connect():
    return flight_sql.connect(URI, db_kwargs={"username": "ember", "password": "any"})


def query_with_parameters(conn):
    orders = tpch("orders")
    with conn.cursor() as cur:
        cur.execute(
            "select o_orderkey, o_totalprice, o_orderdate from tpch.orders "
            "where o_orderkey < $1 and o_orderstatus = $2 order by o_orderkey",
            parameters=(500, "F"),
        )
        got = cur.fetch_arrow_table()
    mask = pc.and_(pc.less(orders["o_orderkey"], 500), pc.equal(orders["o_orderstatus"], "F"))
    expected = orders.filter(mask).sort_by("o_orderkey")
    check(got.num_rows == expected.num_rows, f"{got.num_rows} rows, expected {expected.num_rows}")
    check(got["o_orderkey"].to_pylist() == expected["o_orderkey"].to_pylist(), "keys differ")
    check(got["o_totalprice"].to_pylist() == expected["o_totalprice"].to_pylist(), "prices differ")
    check(got["o_orderdate"].to_pylist() == expected["o_orderdate"].to_pylist(), "dates differ")
    # Types travel as Arrow types, not as text.
    check(got.schema.field("o_orderdate").type == expected.schema.field("o_orderdate").type,
          f"date type {got.schema.field('o_orderdate').type}")
    # DBAPI fetchone and rowcount-style use.
    with conn.cursor() as cur:
        cur.execute("select count(*) from tpch.nation where n_regionkey = $1", parameters=(1,))
        (count,) = cur.fetchone()
    expected = pc.sum(pc.equal(tpch("nation")["n_regionkey"], 1)).as_py()
    check(count == expected, f"nation count {count}, expected {expected}")
    # `?` parameters, the driver's own paramstyle (qmark), bind in order.
    check(flight_sql.paramstyle == "qmark", f"paramstyle {flight_sql.paramstyle}")
    with conn.cursor() as cur:
        cur.execute(
            "select count(*) from tpch.nation where n_regionkey = ? and n_nationkey > ?",
            parameters=(1, 5),
        )
        (count,) = cur.fetchone()
    nation = tpch("nation")
    mask = pc.and_(pc.equal(nation["n_regionkey"], 1), pc.greater(nation["n_nationkey"], 5))
    expected = pc.sum(mask).as_py()
    check(count == expected, f"nation count with ? parameters {count}, expected {expected}")


def aggregate_values(conn):
    lineitem = tpch("lineitem")
    with conn.cursor() as cur:
        cur.execute(
            "select l_returnflag, count(*) as n, sum(l_quantity) as q from tpch.lineitem "
            "group by l_returnflag order by l_returnflag"
        )
        got = cur.fetch_arrow_table()
    expected = (
        lineitem.group_by("l_returnflag")
        .aggregate([("l_quantity", "count"), ("l_quantity", "sum")])
        .sort_by("l_returnflag")
    )
    check(got["l_returnflag"].to_pylist() == expected["l_returnflag"].to_pylist(), "flags differ")
    check(got["n"].to_pylist() == expected["l_quantity_count"].to_pylist(), "counts differ")
    check(
        [str(v) for v in got["q"].to_pylist()]
        == [str(v) for v in expected["l_quantity_sum"].to_pylist()],
        f"sums differ: {got['q'].to_pylist()} vs {expected['l_quantity_sum'].to_pylist()}",
    )


def parallel_partitions(conn):
    """A distributed result: one partition per executor task, read in parallel threads."""
    sql = "select l_orderkey, l_linenumber, l_extendedprice from tpch.lineitem"
    lineitem = tpch("lineitem")
    # The driver's own fetch follows every endpoint (in parallel).
    with conn.cursor() as cur:
        cur.execute(sql)
        whole = cur.fetch_arrow_table()
    check(whole.num_rows == lineitem.num_rows, f"{whole.num_rows} rows, expected {lineitem.num_rows}")
    # Partitions read by threads, each on a connection of its own: tickets stand alone.
    execute = conn.cursor()
    partitions, schema = execute.adbc_execute_partitions(sql)
    if PROXY:
        check(len(partitions) == 1, f"proxy mode gave {len(partitions)} partitions")
    else:
        check(len(partitions) >= 2, f"direct mode gave {len(partitions)} partitions")
    tables = [None] * len(partitions)

    def read(i):
        with connect() as own, own.cursor() as cur:
            cur.adbc_read_partition(partitions[i])
            tables[i] = cur.fetch_arrow_table()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(partitions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    execute.close()
    check(all(t is not None for t in tables), "a partition was not read")
    for t in tables:
        check(t.schema == schema, f"partition schema {t.schema} differs from {schema}")
    got = pa.concat_tables(tables)
    check(got.num_rows == lineitem.num_rows, f"{got.num_rows} rows, expected {lineitem.num_rows}")
    check(
        pc.sum(got["l_orderkey"]).as_py() == pc.sum(lineitem["l_orderkey"]).as_py(),
        "order keys differ",
    )


def metadata(conn):
    info = conn.adbc_get_info()
    check(info.get("vendor_name") == "Ember", f"vendor {info}")
    types = conn.adbc_get_table_types()
    check("TABLE" in types and "VIEW" in types, f"table types {types}")
    schema = conn.adbc_get_table_schema("lineitem", db_schema_filter="tpch")
    expected = tpch("lineitem").schema
    check(schema.names == expected.names, f"lineitem columns {schema.names}")
    objects = conn.adbc_get_objects(depth="tables", db_schema_filter="tpch").read_all().to_pylist()
    check(len(objects) == 1 and objects[0]["catalog_name"] == "ember", f"catalogs {objects}")
    tables = sorted(t["table_name"] for s in objects[0]["catalog_db_schemas"] for t in s["db_schema_tables"])
    check(tables == sorted(["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]),
          f"tables {tables}")
    # The current schema is a session option.
    check(conn.adbc_current_catalog == "ember", f"catalog {conn.adbc_current_catalog}")
    conn.adbc_current_db_schema = "tpch"
    check(conn.adbc_current_db_schema == "tpch", "schema not set")
    with conn.cursor() as cur:
        cur.execute("select count(*) from region")
        check(cur.fetchone()[0] == 5, "unqualified name after setting the schema")
    conn.adbc_current_db_schema = "public"


def ingest_and_update(conn):
    schema_name = "py_" + uuid.uuid4().hex[:8]
    data = pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": pa.array(["a", None, "c"], pa.string()),
        "price": pa.array([1.5, 2.5, None], pa.float64()),
    })
    with conn.cursor() as cur:
        cur.execute(f"create schema {schema_name}")
        created = cur.adbc_ingest("items", data, mode="create", db_schema_name=schema_name)
        check(created == 3, f"ingest reported {created}")
        appended = cur.adbc_ingest("items", data, mode="append", db_schema_name=schema_name)
        check(appended == 3, f"append reported {appended}")
        cur.execute(f"select id, name, price from {schema_name}.items order by id, name")
        got = cur.fetch_arrow_table()
        check(got.num_rows == 6, f"{got.num_rows} rows after ingest")
        check(got.schema.field("id").type == pa.int64(), f"id type {got.schema.field('id').type}")
        check(got["id"].to_pylist() == [1, 1, 2, 2, 3, 3], f"ids {got['id'].to_pylist()}")
        cur.execute(f"insert into {schema_name}.items values (4, 'd', 4.5)")
        check(cur.rowcount in (-1, 1), f"rowcount {cur.rowcount}")
        cur.execute(f"select count(*) from {schema_name}.items")
        check(cur.fetchone()[0] == 7, "insert not visible")
        cur.execute(f"drop schema {schema_name} cascade")
    # A temporary table (a cursor of its own: ADBC refuses a schema with it): the session's
    # own, by its unqualified name.
    with conn.cursor() as cur:
        staged = cur.adbc_ingest("py_staged", data, mode="create", temporary=True)
        check(staged == 3, f"temporary ingest reported {staged}")
        cur.execute("select count(*) from py_staged")
        check(cur.fetchone()[0] == 3, "temporary table not readable")
        cur.execute("select count(*) from pg_temp.py_staged")
        check(cur.fetchone()[0] == 3, "temporary table not in pg_temp")
        cur.execute("drop table py_staged")


def errors(conn):
    with conn.cursor() as cur:
        try:
            cur.execute("select * from no_such_table")
            cur.fetchall()
            check(False, "a missing table was not reported")
        except adbc_driver_manager.Error as error:
            check("no_such_table" in str(error), f"message lost: {error}")
        # The connection keeps working.
        cur.execute("select 1 + 1")
        check(cur.fetchone()[0] == 2, "connection broken after an error")


CHECKS = [
    query_with_parameters,
    aggregate_values,
    parallel_partitions,
    metadata,
    ingest_and_update,
    errors,
]


def main():
    failed = []
    with connect() as conn:
        for fn in CHECKS:
            try:
                fn(conn)
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
