"""Large-result throughput in one run: Flight SQL straight from the executors, Flight SQL relayed
by the coordinator, and the Postgres wire protocol.

    cargo build --release -p ember-server
    target/test-venv/bin/python scripts/bench_flight.py --ember target/release/ember \
        [--scale 1] [--executors 2] [--data-dir data/bench] [--runs 3]

Starts two `ember local` clusters on the same data (TPC-H generated there on first use): one
handing Flight SQL clients one endpoint per result partition on the executors, one relaying
every result through the coordinator (`coordinator.flight_sql_proxy`). Each reads all of
lineitem's listed columns `--runs` times; the best run counts. Flight SQL goes through ADBC's
driver (which fetches endpoints in parallel) into an Arrow table; Postgres through psycopg 3 in
binary format into Python tuples, as applications see it. MB/s is the size of the answer as
Arrow arrays, the same figure for all three, so the columns compare. Needs
adbc-driver-flightsql, pyarrow and psycopg (scripts/test.sh installs them in target/test-venv).
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg

LARGE = (
    "select l_orderkey, l_partkey, l_quantity, l_extendedprice, l_shipdate, l_comment "
    "from tpch.lineitem"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, ember, scale, executors, data_dir, proxy, log_dir):
        self.pg_port = free_port()
        self.flight_port = free_port()
        env = dict(os.environ)
        env.update({
            "EMBER_COORDINATOR_FLIGHT_SQL_PROXY": "true" if proxy else "false",
            "EMBER_COORDINATOR_FLIGHT_SQL_PORT": str(self.flight_port),
            "EMBER_COORDINATOR_PG_PORT": str(self.pg_port),
            "EMBER_COORDINATOR_PORT": "0",
            "EMBER_HTTP_PORT": "0",
        })
        log = open(os.path.join(log_dir, f"ember-{'proxy' if proxy else 'direct'}.log"), "w")
        self.process = subprocess.Popen(
            [ember, "local", "--tpch", str(scale), "--executors", str(executors),
             "--data-dir", data_dir],
            env=env, stdout=log, stderr=log,
        )

    def wait(self, timeout=1800):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit("ember local exited; see its log")
            try:
                with flight_sql.connect(f"grpc://127.0.0.1:{self.flight_port}") as conn:
                    with conn.cursor() as cur:
                        cur.execute("select count(*) from tpch.region")
                        cur.fetchall()
                        return
            except Exception:
                time.sleep(1)
        sys.exit("cluster did not come up in time")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def flight(port, runs):
    best, rows, size, endpoints = None, 0, 0, 0
    with flight_sql.connect(f"grpc://127.0.0.1:{port}") as conn:
        with conn.cursor() as cur:
            partitions, _ = cur.adbc_execute_partitions(LARGE)
            endpoints = len(partitions)
            # Read them: unread partitions hold their executors' slots until the fetch timeout.
            for partition in partitions:
                cur.adbc_read_partition(partition)
                cur.fetch_arrow_table()
        for _ in range(runs):
            started = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(LARGE)
                table = cur.fetch_arrow_table()
            elapsed = time.perf_counter() - started
            rows, size = table.num_rows, table.nbytes
            best = elapsed if best is None else min(best, elapsed)
    return best, rows, size, endpoints


def pgwire(port, runs):
    best, rows = None, 0
    with psycopg.connect(f"host=127.0.0.1 port={port} user=ember dbname=ember") as conn:
        for _ in range(runs):
            started = time.perf_counter()
            rows = 0
            with conn.cursor(binary=True) as cur:
                cur.execute(LARGE)
                while True:
                    batch = cur.fetchmany(10000)
                    if not batch:
                        break
                    rows += len(batch)
            elapsed = time.perf_counter() - started
            best = elapsed if best is None else min(best, elapsed)
    return best, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ember", required=True, help="path of the ember binary")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--executors", type=int, default=2)
    parser.add_argument("--data-dir", default="data/bench")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    logs = tempfile.mkdtemp(prefix="ember-bench-")

    direct = Cluster(args.ember, args.scale, args.executors, data_dir, False, logs)
    try:
        direct.wait()  # generates TPC-H on first use, before the second cluster reads it
        proxied = Cluster(args.ember, args.scale, args.executors, data_dir, True, logs)
        try:
            proxied.wait()
            results = []
            seconds, rows, size, endpoints = flight(direct.flight_port, args.runs)
            results.append((f"Flight SQL, direct ({endpoints} endpoints)", seconds, rows))
            p_seconds, p_rows, _, p_endpoints = flight(proxied.flight_port, args.runs)
            results.append((f"Flight SQL, proxied ({p_endpoints} endpoint)", p_seconds, p_rows))
            pg_seconds, pg_rows = pgwire(direct.pg_port, args.runs)
            results.append(("Postgres wire (psycopg, binary)", pg_seconds, pg_rows))
        finally:
            proxied.stop()
    finally:
        direct.stop()

    print(f"TPC-H SF{args.scale:g} lineitem, {rows} rows, {size / 1e6:.1f} MB as Arrow; "
          f"best of {args.runs}; logs in {logs}")
    print(f"{'path':<40} {'seconds':>8} {'rows/s':>12} {'MB/s':>8}")
    for name, seconds, count in results:
        assert count == rows, f"{name} returned {count} rows, expected {rows}"
        print(f"{name:<40} {seconds:>8.3f} {rows / seconds:>12,.0f} {size / 1e6 / seconds:>8.1f}")


if __name__ == "__main__":
    main()
