"""Postgres wire protocol latency and throughput, Ember against a PostgreSQL server in one run.

    python scripts/bench_pgwire.py --ember "host=127.0.0.1 port=5433 user=ember dbname=ember" \
        [--postgres "host=127.0.0.1 port=5432 user=... dbname=..."] [--runs 2000]

Both servers need the TPC-H tables in a schema `tpch` (Ember: `ember local --tpch SCALE`; for
PostgreSQL, load the same data). Each statement runs `--runs` times on one connection after a
warm-up; the report gives p50 and p99 latency in milliseconds, and rows/s for fetching all of
lineitem in text and in binary format. Uses psycopg 3 (the test venv has it), so the numbers include a real client's
work, as users see them.
"""

import argparse
import time

import psycopg

STATEMENTS = {
    "select 1": "select 1",
    # A small TPC-H query: one join and an aggregate over the smallest tables.
    "nations per region": (
        "select r_name, count(*) from tpch.region join tpch.nation "
        "on n_regionkey = r_regionkey group by r_name order by r_name"
    ),
    # A parameterised point query through the extended protocol.
    "order by key ($1)": "select o_totalprice from tpch.orders where o_orderkey = %s",
}

LARGE = "select l_orderkey, l_partkey, l_quantity, l_extendedprice, l_shipdate, l_comment from tpch.lineitem"


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency(conn, sql, runs):
    params = (1,) if "%s" in sql else None
    for _ in range(min(50, runs)):
        conn.execute(sql, params).fetchall()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(sql, params).fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 50), percentile(samples, 99)


def throughput(conn, binary):
    best = None
    for _ in range(3):
        started = time.perf_counter()
        rows = 0
        with conn.cursor(binary=binary) as cur:
            cur.execute(LARGE)
            while True:
                batch = cur.fetchmany(10000)
                if not batch:
                    break
                rows += len(batch)
        elapsed = time.perf_counter() - started
        if best is None or elapsed < best[0]:
            best = (elapsed, rows)
    elapsed, rows = best
    return rows, rows / elapsed


def bench(name, dsn, runs):
    results = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for label, sql in STATEMENTS.items():
            results[label] = latency(conn, sql, runs)
        results["large text"] = throughput(conn, binary=False)
        results["large binary"] = throughput(conn, binary=True)
    return name, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ember", required=True)
    parser.add_argument("--postgres")
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    servers = [bench("ember", args.ember, args.runs)]
    if args.postgres:
        servers.append(bench("postgres", args.postgres, args.runs))
    print(f"{'statement':<22}" + "".join(f"{name:>30}" for name, _ in servers))
    for label in STATEMENTS:
        cells = "".join(
            f"{'p50 %.3f / p99 %.3f ms' % r[label]:>30}" for _, r in servers
        )
        print(f"{label:<22}{cells}")
    for label in ("large text", "large binary"):
        cells = "".join(
            f"{'%d rows, %.0f rows/s' % r[label]:>30}" for _, r in servers
        )
        print(f"{'lineitem ' + label:<22}{cells}")
    print("(rows/s over the best of 3 full fetches of " + LARGE.split(" from ")[1] + ")")


if __name__ == "__main__":
    main()
