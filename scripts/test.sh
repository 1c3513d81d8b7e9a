#!/usr/bin/env bash
# Runs every Ember test. Installs what the tests need first, so it works on a fresh Debian
# machine with a Rust toolchain. Each test bounds its own time; the whole run is bounded too.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v protoc >/dev/null 2>&1 || true # protoc is vendored by the build; nothing to install
# The real-client tests (server/tests/pg_clients.rs) compile and run a pgJDBC program.
command -v javac >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
# The web UI tests (server/tests/integration/web_ui.rs) drive Debian's headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"
  fi
fi

# A local S3-compatible server (moto) for the object storage tests, in a venv of its own.
venv=target/test-venv
if [ ! -x "$venv/bin/moto_server" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq python3-venv; else sudo apt-get install -y -qq python3-venv; fi
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q 'moto[server]'
fi
export EMBER_TEST_MOTO_SERVER="$PWD/$venv/bin/moto_server"

# Python Postgres clients for the real-client tests, in the same venv.
"$venv/bin/python" -c 'import psycopg' 2>/dev/null || "$venv/bin/pip" install -q 'psycopg[binary]'
"$venv/bin/python" -c 'import sqlalchemy' 2>/dev/null || "$venv/bin/pip" install -q sqlalchemy
# ADBC's Flight SQL driver and pyarrow for the Flight SQL client tests (server/tests/flight_sql.rs).
"$venv/bin/python" -c 'import adbc_driver_flightsql, adbc_driver_manager, pyarrow' 2>/dev/null \
  || "$venv/bin/pip" install -q adbc-driver-flightsql adbc-driver-manager pyarrow
# selenium (the browser tests), the Prometheus client's parser (/metrics) and jsonschema (REST
# answers against docs/openapi.json).
"$venv/bin/python" -c 'import selenium, prometheus_client, jsonschema' 2>/dev/null \
  || "$venv/bin/pip" install -q selenium prometheus-client jsonschema
# The Python deltalake package (delta-rs), which reads and writes the Delta tables Ember shares.
"$venv/bin/python" -c 'import deltalake' 2>/dev/null || "$venv/bin/pip" install -q deltalake
# dbt with its Postgres adapter, which runs a project against Ember (server/tests/integration/dbt.rs).
# 1.11: dbt-core 1.12 fetches a parser from GitHub while it installs.
[ -x "$venv/bin/dbt" ] || "$venv/bin/pip" install -q 'dbt-core~=1.11.0' 'dbt-postgres~=1.11.0'
# TPC-DS: tpcgen-cli makes the data; ibis-framework carries the 99 queries (only its files are
# read, so none of its dependencies).
[ -x "$venv/bin/tpcgen-cli" ] || "$venv/bin/pip" install -q 'tpcgen-cli==4.0.0'
"$venv/bin/pip" show -q ibis-framework 2>/dev/null \
  || "$venv/bin/pip" install -q --no-deps 'ibis-framework==12.0.0'
export EMBER_TEST_PYTHON="$PWD/$venv/bin/python"
export EMBER_TEST_JDBC_JAR=/usr/share/java/postgresql.jar

# The Kubernetes manifests (config/k8s), and the executor pod template inside the ConfigMap,
# against the Kubernetes API schemas, offline.
"$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null || "$venv/bin/pip" install -q kubernetes-validate
manifests=$(mktemp -d)
trap 'rm -rf "$manifests"' EXIT
"$venv/bin/python" - "$manifests" <<'PY'
import sys, yaml
config = yaml.safe_load(open("config/k8s/configmap.yaml"))
open(sys.argv[1] + "/executor-pod.yaml", "w").write(config["data"]["executor-pod.yaml"])
PY
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.33.0 \
  config/k8s/*.yaml config/k8s/examples/*.yaml "$manifests/executor-pod.yaml"

# One build job per core; the test binaries then run one at a time (each starts clusters).
timeout 5000 cargo test --workspace --no-fail-fast -- --test-threads=2
