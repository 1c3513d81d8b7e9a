"""SQLAlchemy 2 with the psycopg driver against Ember: run as `python test_sqlalchemy.py PORT`.

Every check runs even when an earlier one fails, so one run shows everything that is wrong; the
exit code is non-zero when any check failed.

On its first connection the dialect asks the server for its version, current schema and a few
settings; the inspector and table reflection then query pg_catalog directly.
"""

import datetime
import sys
import traceback
from datetime import date
from decimal import Decimal

from sqlalchemy import (
    BIGINT,
    CHAR,
    DOUBLE_PRECISION,
    INTEGER,
    TEXT,
    Column,
    Date,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    func,
    inspect,
    select,
    text,
)

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5432
ENGINE = create_engine(
    f"postgresql+psycopg://ember@127.0.0.1:{PORT}/ember",
    connect_args={"connect_timeout": 10},
)

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


@check
def connect_and_query():
    with ENGINE.connect() as conn:
        expect("select 1", 1, conn.execute(text("select 1")).scalar_one())
        expect(
            "count(*) of tpch.nation",
            25,
            conn.execute(text("select count(*) from tpch.nation")).scalar_one(),
        )


@check
def bound_parameters():
    with ENGINE.connect() as conn:
        expect(
            "n_name of nation :k",
            "GERMANY",
            conn.execute(
                text("select n_name from tpch.nation where n_nationkey = :k"), {"k": 7}
            ).scalar_one(),
        )
        rows = conn.execute(
            text(
                "select n_nationkey, n_name from tpch.nation "
                "where n_regionkey = :region and n_name >= :name order by n_nationkey"
            ),
            {"region": 3, "name": "R"},
        ).all()
        expect(
            "nations of region 3 from R on",
            [(19, "ROMANIA"), (22, "RUSSIA"), (23, "UNITED KINGDOM")],
            [tuple(r) for r in rows],
        )
        keys = conn.execute(
            text(
                "select o_orderkey from tpch.orders where o_orderdate = :d "
                "order by o_orderkey limit 3"
            ),
            {"d": datetime.date(1995, 9, 16)},
        ).scalars().all()
        expect("first order of 1995-09-16", 5958, keys[0] if keys else None)
        expect("orders of 1995-09-16", 3, len(keys))


@check
def inspector():
    insp = inspect(ENGINE)
    schemas = insp.get_schema_names()
    if "tpch" not in schemas:
        raise AssertionError(f"get_schema_names() should contain tpch: {schemas}")
    tables = insp.get_table_names(schema="tpch")
    for name in ("nation", "lineitem", "orders"):
        if name not in tables:
            raise AssertionError(f"get_table_names(schema='tpch') should contain {name}: {tables}")
    views = insp.get_view_names(schema="system")
    if "executors" not in views:
        raise AssertionError(f"get_view_names(schema='system') should contain executors: {views}")


@check
def column_reflection():
    insp = inspect(ENGINE)
    columns = insp.get_columns("nation", schema="tpch")
    expect(
        "columns of tpch.nation",
        [
            ("n_nationkey", BIGINT, False),
            ("n_name", TEXT, False),
            ("n_regionkey", BIGINT, False),
            ("n_comment", TEXT, False),
        ],
        [(c["name"], type(c["type"]), c["nullable"]) for c in columns],
    )


@check
def table_reflection():
    nation = Table("nation", MetaData(), schema="tpch", autoload_with=ENGINE)
    expect(
        "reflected columns",
        ["n_nationkey", "n_name", "n_regionkey", "n_comment"],
        [c.name for c in nation.columns],
    )
    with ENGINE.connect() as conn:
        expect(
            "select(nation).where(n_nationkey == 7)",
            "GERMANY",
            conn.execute(select(nation.c.n_name).where(nation.c.n_nationkey == 7)).scalar_one(),
        )
        expect(
            "nations per region 3",
            5,
            conn.execute(
                select(func.count()).select_from(nation).where(nation.c.n_regionkey == 3)
            ).scalar_one(),
        )


@check
def keys_and_defaults():
    """Primary key, unique constraint and column defaults of a CREATE TABLE, reflected as
    PostgreSQL 15 reflects the same table."""
    with ENGINE.begin() as conn:
        conn.execute(text("create schema sa_keys"))
        conn.execute(
            text(
                "create table sa_keys.accounts (id bigint not null primary key, "
                "region int not null, name text default 'unknown', "
                "balance double precision default 0, code text unique)"
            )
        )
        conn.execute(text("create table sa_keys.pairs (a int, b int, primary key (b, a))"))
    insp = inspect(ENGINE)
    expect(
        "columns of sa_keys.accounts",
        [
            ("id", BIGINT, False, None),
            ("region", INTEGER, False, None),
            ("name", TEXT, True, "'unknown'::text"),
            ("balance", DOUBLE_PRECISION, True, "0"),
            ("code", TEXT, True, None),
        ],
        [
            (c["name"], type(c["type"]), c["nullable"], c["default"])
            for c in insp.get_columns("accounts", schema="sa_keys")
        ],
    )
    pk = insp.get_pk_constraint("accounts", schema="sa_keys")
    expect(
        "primary key of accounts",
        ("accounts_pkey", ["id"]),
        (pk["name"], pk["constrained_columns"]),
    )
    pk = insp.get_pk_constraint("pairs", schema="sa_keys")
    expect("primary key of pairs", ["b", "a"], pk["constrained_columns"])
    # A primary key's columns are NOT NULL without saying so, as in PostgreSQL.
    expect(
        "nullability of pairs",
        [("a", False), ("b", False)],
        [(c["name"], c["nullable"]) for c in insp.get_columns("pairs", schema="sa_keys")],
    )
    expect(
        "unique constraints of accounts",
        [("accounts_code_key", ["code"])],
        [
            (u["name"], u["column_names"])
            for u in insp.get_unique_constraints("accounts", schema="sa_keys")
        ],
    )
    expect(
        "primary key of tpch.nation",
        [],
        insp.get_pk_constraint("nation", schema="tpch")["constrained_columns"],
    )
    accounts = Table("accounts", MetaData(), schema="sa_keys", autoload_with=ENGINE)
    expect("reflected primary key", ["id"], [c.name for c in accounts.primary_key.columns])
    expect(
        "reflected server default of name",
        "'unknown'::text",
        str(accounts.c.name.server_default.arg),
    )


@check
def declared_types():
    """A table SQLAlchemy creates from its types reflects with the same types, lengths,
    precision and scale, as in PostgreSQL 15."""
    metadata = MetaData(schema="sa_types")
    items = Table(
        "items",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("sku", CHAR(8)),
        Column("name", String(30), nullable=False),
        Column("notes", Text),
        Column("price", Numeric(12, 3)),
        Column("added", Date),
    )
    with ENGINE.begin() as conn:
        conn.execute(text("create schema sa_types"))
    metadata.create_all(ENGINE)
    with ENGINE.begin() as conn:
        conn.execute(
            items.insert(),
            [
                {"id": 1, "sku": "AB-12345", "name": "bolt", "notes": None,
                 "price": Decimal("0.125"), "added": date(2024, 2, 29)},
                {"id": 2, "sku": "CD-00001", "name": "nut", "notes": "metric",
                 "price": Decimal("12.5"), "added": date(2025, 1, 1)},
            ],
        )
    reflected = inspect(ENGINE).get_columns("items", schema="sa_types")
    expect(
        "reflected types",
        [
            ("id", "INTEGER", False),
            ("sku", "CHAR(8)", True),
            ("name", "VARCHAR(30)", False),
            ("notes", "TEXT", True),
            ("price", "NUMERIC(12, 3)", True),
            ("added", "DATE", True),
        ],
        [(c["name"], str(c["type"]), c["nullable"]) for c in reflected],
    )
    table = Table("items", MetaData(), schema="sa_types", autoload_with=ENGINE)
    with ENGINE.connect() as conn:
        expect(
            "rows read back through the reflected table",
            [(1, "AB-12345", "bolt", Decimal("0.125")), (2, "CD-00001", "nut", Decimal("12.500"))],
            [
                tuple(r)
                for r in conn.execute(
                    select(table.c.id, table.c.sku, table.c.name, table.c.price).order_by(
                        table.c.id
                    )
                )
            ],
        )


def main():
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
    ENGINE.dispose()
    print(f"{len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("failures: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
