"""The Python deltalake package (delta-rs) on the Delta tables of delta.rs.

  delta_interop.py write DIR VERSION
      Writes version VERSION of a table partitioned by `region` into DIR: version 0 creates it
      with regions a and b, version 1 appends region c, version 2 appends more of region a.
      Ids are disjoint per write, so file statistics tell the writes apart.
  delta_interop.py nan DIR
      Writes a one-file table whose float column `x` holds 1.0, 2.0 and NaN (Delta's statistics
      leave NaN out of min/max).
  delta_interop.py history DIR [VERSION]
      Prints, as one JSON line, the table's version, its row count, the sum of its integer
      column `n` (if it has one), its number of files, and its commits' versions and operations, newest first
      (as of VERSION if given).
  delta_interop.py summary DIR [VERSION]
      Prints, as one JSON line, what deltalake reads: per region (null last) the row count,
      the sum of `amount` (rounded to 6 places) and the smallest and largest id, and the
      table's version (as of VERSION if given).
"""

import json
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake


def batch(region, first_id, rows):
    ids = list(range(first_id, first_id + rows))
    return {
        "id": pa.array(ids, pa.int64()),
        "name": pa.array([f"name-{i}" if i % 17 else None for i in ids], pa.string()),
        "amount": pa.array([i * 0.25 - 3 for i in ids], pa.float64()),
        "day": pa.array([f"2024-01-{i % 28 + 1:02d}" for i in ids], pa.string()).cast(pa.date32()),
        "region": pa.array([region] * rows, pa.string()),
    }


def table(parts):
    columns = {}
    for part in parts:
        for name, values in part.items():
            columns.setdefault(name, []).append(values)
    return pa.table({name: pa.concat_arrays(values) for name, values in columns.items()})


def write(path, version):
    if version == 0:
        data = table([batch("a", 0, 500), batch("b", 500, 500)])
        write_deltalake(path, data, partition_by=["region"])
    elif version == 1:
        write_deltalake(path, table([batch("c", 1000, 500)]), mode="append")
    elif version == 2:
        write_deltalake(path, table([batch("a", 2000, 250)]), mode="append")
    print(json.dumps({"version": DeltaTable(path).version()}))


def summary(path, version=None):
    dt = DeltaTable(path, version=version)
    data = dt.to_pyarrow_table()
    out = []
    # As SQL orders them: nulls last.
    regions = sorted(set(data.column("region").to_pylist()), key=lambda r: (r is None, r or ""))
    for region in regions:
        column = data.column("region")
        part = data.filter(pc.is_null(column) if region is None else pc.equal(column, region))
        out.append([
            region,
            part.num_rows,
            round(pc.sum(part.column("amount")).as_py(), 6),
            pc.min(part.column("id")).as_py(),
            pc.max(part.column("id")).as_py(),
        ])
    print(json.dumps({"version": dt.version(), "regions": out}))


if sys.argv[1] == "write":
    write(sys.argv[2], int(sys.argv[3]))
elif sys.argv[1] == "nan":
    write_deltalake(sys.argv[2], pa.table({"x": pa.array([1.0, 2.0, float("nan")], pa.float64())}))
    print(json.dumps({"version": DeltaTable(sys.argv[2]).version()}))
elif sys.argv[1] == "history":
    dt = DeltaTable(sys.argv[2], version=int(sys.argv[3]) if len(sys.argv) > 3 else None)
    data = dt.to_pyarrow_table()
    history = dt.history()
    print(json.dumps({
        "version": dt.version(),
        "rows": data.num_rows,
        "sum": pc.sum(data.column("n")).as_py() if "n" in data.column_names else None,
        "files": len(dt.file_uris()),
        "versions": [h["version"] for h in history],
        "operations": [h["operation"] for h in history],
    }))
elif sys.argv[1] == "summary":
    summary(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
else:
    sys.exit(f"unknown command {sys.argv[1]}")
# deltalake's native threads can abort the interpreter's teardown ("terminate called without an
# active exception") after the work is done: leave without it.
sys.stdout.flush()
os._exit(0)
