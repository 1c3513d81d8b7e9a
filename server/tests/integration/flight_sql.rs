//! Flight SQL against real `ember` processes, with arrow-flight's own `FlightSqlServiceClient`:
//! answers compared with single-node DataFusion, result partitions fetched straight from the
//! executors named in the FlightInfo, prepared statements with parameters, updates, metadata,
//! authentication and refusals. The Python ADBC client programs of `tests/clients/` run here too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{ProcessCluster, batches_to_rows, compare, datafusion_tpch, free_port};
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use arrow_flight::{FlightInfo, Ticket};
use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use futures::TryStreamExt;
use std::sync::Arc;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const SCALE: f64 = 0.01;

/// The gRPC code of a client error (the client wraps statuses in `FlightError` or `ArrowError`).
fn code(error: &(dyn std::error::Error + 'static)) -> Option<Code> {
    match error.downcast_ref::<FlightError>() {
        Some(FlightError::Tonic(status)) => return Some(status.code()),
        Some(FlightError::Arrow(inner)) => return code(inner),
        _ => {}
    }
    match error.downcast_ref::<ArrowError>()? {
        ArrowError::ExternalError(inner) => code(inner.as_ref()),
        // The client's handshake keeps only the status's text.
        ArrowError::IpcError(message) if message.contains("valid authentication credentials") => {
            Some(Code::Unauthenticated)
        }
        _ => None,
    }
}

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

struct Cluster {
    cluster: ProcessCluster,
    flight_port: u16,
    _data: tempfile::TempDir,
}

impl Cluster {
    /// Two executors, TPC-H, a shared ticket secret (direct endpoints) and `extra` settings.
    async fn start(extra: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let data_dir = std::fs::canonicalize(data.path()).expect("data dir");
        let flight_port = free_port();
        let mut env = vec![
            (
                "EMBER_COORDINATOR_FLIGHT_SQL_PORT".to_string(),
                flight_port.to_string(),
            ),
            (
                "EMBER_AUTH_FLIGHT_SECRET".to_string(),
                "test-secret".to_string(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cluster = ProcessCluster::start_with_env(2, SCALE, &data_dir, &env);
        let cluster = Self {
            cluster,
            flight_port,
            _data: data,
        };
        cluster.wait_ready(extra).await;
        cluster
    }

    /// Waits until Flight SQL answers and both executors are alive.
    async fn wait_ready(&self, extra: &[(&str, &str)]) {
        let password = extra
            .iter()
            .any(|(k, _)| *k == "EMBER_AUTH_METHOD")
            .then_some(("alice", "wonderland"));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let ready = async {
                let channel =
                    Endpoint::from_shared(format!("http://127.0.0.1:{}", self.flight_port))
                        .ok()?
                        .connect()
                        .await
                        .ok()?;
                let mut client = FlightSqlServiceClient::new(channel);
                let (user, pass) = password.unwrap_or(("ember", ""));
                client.handshake(user, pass).await.ok()?;
                let info = client
                    .execute(
                        "select count(*) from system.executors where status = 'alive'".into(),
                        None,
                    )
                    .await
                    .ok()?;
                let (batches, _) = fetch_all(&client, &info).await;
                Some(batches_to_rows(&batches) == vec![vec![Some("2".to_string())]])
            }
            .await;
            if ready == Some(true) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cluster did not come up\n{}",
                self.cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn client(&self) -> FlightSqlServiceClient<Channel> {
        FlightSqlServiceClient::new(
            channel(&format!("http://127.0.0.1:{}", self.flight_port)).await,
        )
    }
}

async fn channel(uri: &str) -> Channel {
    Endpoint::from_shared(uri.to_string())
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// Reads every endpoint of `info`, each from its location (or the client's server), in
/// parallel; returns the batches and the schema each DoGet announced.
async fn fetch_all(
    client: &FlightSqlServiceClient<Channel>,
    info: &FlightInfo,
) -> (Vec<RecordBatch>, Vec<Arc<Schema>>) {
    let token = client.token().cloned();
    let mut tasks = vec![];
    for endpoint in info.endpoint.clone() {
        let mut reader = match endpoint.location.first() {
            Some(location) => {
                let uri = location.uri.replace("grpc+tcp://", "http://");
                FlightSqlServiceClient::new(channel(&uri).await)
            }
            None => client.clone(),
        };
        if let Some(token) = &token {
            reader.set_token(token.clone());
        }
        let ticket = endpoint.ticket.clone().expect("ticket");
        tasks.push(tokio::spawn(async move {
            let mut stream = reader.do_get(ticket).await.expect("do_get");
            let mut batches = vec![];
            while let Some(batch) = stream.try_next().await.expect("batch") {
                batches.push(batch);
            }
            let schema = stream.schema().cloned().expect("schema");
            (batches, schema)
        }));
    }
    let mut batches = vec![];
    let mut schemas = vec![];
    for task in tasks {
        let (b, s) = task.await.expect("fetch task");
        batches.extend(b);
        schemas.push(s);
    }
    (batches, schemas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_sql_queries_prepared_statements_and_metadata() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Cluster::start(&[]).await;
        let data_dir = cluster.cluster.data_dir.clone();
        let datafusion = datafusion_tpch(SCALE, &data_dir).await;
        let mut client = cluster.client().await;
        client.handshake("ember", "").await.expect("handshake");

        // A distributed aggregate: one endpoint per result partition, on the executors.
        let sql = "select l_returnflag, l_linestatus, count(*) as n, sum(l_quantity) as q \
                   from tpch.lineitem group by l_returnflag, l_linestatus";
        let info = client.execute(sql.into(), None).await.expect("execute");
        assert!(info.endpoint.len() >= 2, "{info:?}");
        let executor_ports: Vec<u16> = info
            .endpoint
            .iter()
            .filter_map(|e| e.location.first())
            .filter_map(|l| l.uri.rsplit(':').next()?.parse().ok())
            .collect();
        assert!(
            !executor_ports.is_empty(),
            "no endpoint names an executor: {info:?}"
        );
        for port in &executor_ports {
            assert!(
                cluster.cluster.executor_by_port(*port).is_some(),
                "{port} is no executor"
            );
        }
        let declared = Arc::new(info.clone().try_decode_schema().expect("schema"));
        let (batches, schemas) = fetch_all(&client, &info).await;
        for schema in schemas {
            assert_eq!(schema, declared, "DoGet and FlightInfo schemas differ");
        }
        let expected = datafusion.sql(sql).await.unwrap().collect().await.unwrap();
        assert_eq!(declared.field(2).data_type(), &DataType::Int64);
        compare(
            &batches_to_rows(&batches),
            &batches_to_rows(&expected),
            false,
        )
        .unwrap();
        // The coordinator can fetch each partition too, should the client not reach its executor.
        for endpoint in &info.endpoint {
            let uris: Vec<&str> = endpoint.location.iter().map(|l| l.uri.as_str()).collect();
            assert_eq!(
                uris.get(1),
                Some(&"arrow-flight-reuse-connection://?"),
                "{uris:?}"
            );
        }
        // The executors report each partition read to its end, so the query (and its shuffle
        // files) goes at once, not after the wait for clients that never come back.
        assert_released_soon(&cluster.cluster).await;

        // A ticket is read once.
        let info = client
            .execute("select 41 + 1 as answer".into(), None)
            .await
            .unwrap();
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let batches: Vec<RecordBatch> = client
            .do_get(ticket.clone())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            42
        );
        let again = client.do_get(ticket).await;
        assert!(again.is_err());
        // A forged ticket is refused cleanly, and the server keeps serving.
        let forged = client.do_get(Ticket::new(b"\x0a\x04junk".to_vec())).await;
        assert!(forged.is_err());

        // A prepared statement with a parameter, executed after binding.
        let mut prepared = client
            .prepare(
                "select count(*) as n from tpch.orders where o_orderkey < $1".into(),
                None,
            )
            .await
            .expect("prepare");
        assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 1);
        assert_eq!(prepared.dataset_schema().unwrap().field(0).name(), "n");
        let parameters = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![1000]))],
        )
        .unwrap();
        prepared.set_parameters(parameters).unwrap();
        let info = prepared.execute().await.expect("execute prepared");
        // Closing the statement leaves its tickets valid (ADBC closes before it fetches).
        prepared.close().await.expect("close");
        let (batches, _) = fetch_all(&client, &info).await;
        let expected = datafusion
            .sql("select count(*) as n from tpch.orders where o_orderkey < 1000")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        compare(
            &batches_to_rows(&batches),
            &batches_to_rows(&expected),
            true,
        )
        .unwrap();

        // `?` parameters, as ADBC and ODBC applications write them, bind in order.
        let mut prepared = client
            .prepare(
                "select count(*) as n from tpch.orders where o_orderkey < ? and o_custkey > ?"
                    .into(),
                None,
            )
            .await
            .expect("prepare with ?");
        assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 2);
        let parameters = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("$1", DataType::Int64, true),
                Field::new("$2", DataType::Int64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![3000])),
                Arc::new(Int64Array::from(vec![100])),
            ],
        )
        .unwrap();
        prepared.set_parameters(parameters).unwrap();
        let info = prepared.execute().await.expect("execute prepared with ?");
        let (batches, _) = fetch_all(&client, &info).await;
        let expected = datafusion
            .sql(
                "select count(*) as n from tpch.orders where o_orderkey < 3000 and o_custkey > 100",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches_to_rows(&batches), batches_to_rows(&expected));
        prepared.close().await.expect("close");
        // A prepared EXPLAIN announces the rows it returns.
        let mut prepared = client
            .prepare("explain select count(*) from tpch.orders".into(), None)
            .await
            .expect("prepare explain");
        let dataset = prepared.dataset_schema().unwrap().clone();
        let names: Vec<&str> = dataset.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["plan_type", "plan"]);
        let info = prepared.execute().await.expect("execute explain");
        let (batches, schemas) = fetch_all(&client, &info).await;
        assert_eq!(schemas[0].as_ref(), &dataset);
        assert!(batches.iter().map(RecordBatch::num_rows).sum::<usize>() >= 1);
        prepared.close().await.expect("close");

        // DDL and DML report their rows.
        assert_eq!(
            client
                .execute_update("create schema fs".into(), None)
                .await
                .unwrap(),
            0
        );
        client
            .execute_update(
                "create table fs.t (id bigint primary key, name varchar)".into(),
                None,
            )
            .await
            .unwrap();
        let inserted = client
            .execute_update(
                "insert into fs.t values (1, 'a'), (2, 'b'), (3, null)".into(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(inserted, 3);

        // Metadata.
        let info = client.get_catalogs().await.unwrap();
        let (batches, _) = fetch_all(&client, &info).await;
        assert_eq!(
            batches_to_rows(&batches),
            vec![vec![Some("ember".to_string())]]
        );
        let info = client
            .get_db_schemas(CommandGetDbSchemas {
                catalog: None,
                db_schema_filter_pattern: Some("tp%".into()),
            })
            .await
            .unwrap();
        let (batches, _) = fetch_all(&client, &info).await;
        assert_eq!(
            batches_to_rows(&batches),
            vec![vec![Some("ember".into()), Some("tpch".into())]]
        );
        let info = client
            .get_tables(CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: Some("tpch".into()),
                table_name_filter_pattern: Some("line%".into()),
                table_types: vec![],
                include_schema: true,
            })
            .await
            .unwrap();
        let (batches, _) = fetch_all(&client, &info).await;
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
        let info = client
            .get_primary_keys(arrow_flight::sql::CommandGetPrimaryKeys {
                catalog: None,
                db_schema: Some("fs".into()),
                table: "t".into(),
            })
            .await
            .unwrap();
        let (batches, _) = fetch_all(&client, &info).await;
        let rows = batches_to_rows(&batches);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0][3].as_deref(), Some("id"));
        let info = client
            .get_sql_info(vec![
                SqlInfo::FlightSqlServerName,
                SqlInfo::SqlIdentifierQuoteChar,
            ])
            .await
            .unwrap();
        let (batches, _) = fetch_all(&client, &info).await;
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);

        // Errors keep their message and get a fitting code.
        let error = client
            .execute("select * from nope".into(), None)
            .await
            .unwrap_err();
        assert_eq!(code(&error), Some(Code::NotFound), "{error}");
        assert!(error.to_string().contains("nope"), "{error}");
        let error = client.execute("selec 1".into(), None).await.unwrap_err();
        assert_eq!(code(&error), Some(Code::InvalidArgument), "{error}");
        // Flight SQL sessions speak DataFusion's SQL: Postgres variables are not theirs.
        for postgres in ["show server_version", "set application_name = 'x'"] {
            let error = client.execute(postgres.into(), None).await.unwrap_err();
            assert_eq!(
                code(&error),
                Some(Code::InvalidArgument),
                "{postgres}: {error}"
            );
        }
        // DataFusion's own settings are.
        let info = client
            .execute("show datafusion.execution.batch_size".into(), None)
            .await
            .unwrap();
        assert_eq!(fetch_all(&client, &info).await.0[0].num_rows(), 1);
        // Still serving.
        let info = client.execute("select 1".into(), None).await.unwrap();
        assert_eq!(fetch_all(&client, &info).await.0[0].num_rows(), 1);
        // The session's distributed queries carry its id (the shell follows its own by it);
        // another session sees its own id.
        let sql = "select count(*) from system.queries where session_id = ember_session_id()";
        let info = client.execute(sql.into(), None).await.unwrap();
        let (batches, _) = fetch_all(&client, &info).await;
        let own: i64 = batches_to_rows(&batches)[0][0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(own >= 3, "{own} queries of this session");
        let users = "select distinct user_name from system.queries \
                     where session_id = ember_session_id()";
        let info = client.execute(users.into(), None).await.unwrap();
        let (batches, _) = fetch_all(&client, &info).await;
        assert_eq!(
            batches_to_rows(&batches),
            vec![vec![Some("ember".to_string())]],
            "the session's queries show the user of its handshake"
        );
        let mut other = cluster.client().await;
        other.handshake("ember", "").await.expect("handshake");
        let info = other.execute(sql.into(), None).await.unwrap();
        let (batches, _) = fetch_all(&other, &info).await;
        assert_eq!(batches_to_rows(&batches), vec![vec![Some("0".to_string())]]);
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_sql_passwords_and_tokens_are_checked_by_coordinator_and_executors() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let verifier = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["passwd", "alice"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"wonderland\n")?;
                child.wait_with_output()
            })
            .expect("ember passwd");
        let entry = String::from_utf8(verifier.stdout)
            .unwrap()
            .trim()
            .to_string();
        let cluster = Cluster::start(&[
            ("EMBER_AUTH_METHOD", "password"),
            ("EMBER_AUTH_USERS", entry.as_str()),
        ])
        .await;
        let mut client = cluster.client().await;
        let error = client.execute("select 1".into(), None).await.unwrap_err();
        assert_eq!(code(&error), Some(Code::Unauthenticated), "{error}");
        let error = client.handshake("alice", "wrong").await.unwrap_err();
        assert_eq!(code(&error), Some(Code::Unauthenticated), "{error}");
        client
            .handshake("alice", "wonderland")
            .await
            .expect("handshake");
        let info = client
            .execute("select o_orderkey from tpch.orders".into(), None)
            .await
            .unwrap();
        // An executor refuses the ticket without the token, and with a forged one.
        let endpoint = info
            .endpoint
            .iter()
            .find(|e| !e.location.is_empty())
            .expect("an executor endpoint")
            .clone();
        let uri = endpoint.location[0].uri.replace("grpc+tcp://", "http://");
        let mut anonymous = FlightSqlServiceClient::new(channel(&uri).await);
        let error = anonymous
            .do_get(endpoint.ticket.clone().unwrap())
            .await
            .unwrap_err();
        assert_eq!(code(&error), Some(Code::Unauthenticated), "{error}");
        anonymous.set_token("not-a-token".into());
        assert!(
            anonymous
                .do_get(endpoint.ticket.clone().unwrap())
                .await
                .is_err()
        );
        // With the token every partition comes, straight from its executor.
        let (batches, _) = fetch_all(&client, &info).await;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 15_000);
        // A bad token is refused.
        client.set_token("garbage".into());
        let error = client.execute("select 1".into(), None).await.unwrap_err();
        assert_eq!(code(&error), Some(Code::InvalidArgument), "{error}");
    })
    .await
    .expect("the test took too long");
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The Python ADBC client program against a direct-endpoint cluster and a proxying one.
/// Waits until no executor holds files of any query: the coordinator has released them.
async fn assert_released_soon(cluster: &ProcessCluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<PathBuf> = (0..cluster.executors.len())
            .flat_map(|i| std::fs::read_dir(cluster.work_dir(i).join("shuffle")).into_iter())
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queries not released 5 s after their results were read: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A partition whose executor died before the client read it is read through the coordinator,
/// which has it computed again: the second location of every endpoint, which clients such as
/// ADBC try when the first fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_of_a_lost_executor_are_served_by_the_coordinator() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut cluster = Cluster::start(&[]).await;
        let data_dir = cluster.cluster.data_dir.clone();
        let datafusion = datafusion_tpch(SCALE, &data_dir).await;
        let mut client = cluster.client().await;
        client.handshake("ember", "").await.expect("handshake");
        let sql = "select o_orderkey, o_custkey, o_totalprice from tpch.orders";
        let info = client.execute(sql.into(), None).await.expect("execute");
        let victim_port: u16 = info
            .endpoint
            .iter()
            .filter_map(|e| e.location.first())
            .find_map(|l| l.uri.rsplit(':').next()?.parse().ok())
            .expect("an endpoint on an executor");
        let victim = cluster
            .cluster
            .executor_by_port(victim_port)
            .expect("executor");
        cluster.cluster.kill_executor(victim);

        let mut batches = vec![];
        let mut through_coordinator = 0;
        for endpoint in &info.endpoint {
            let ticket = endpoint.ticket.clone().expect("ticket");
            let direct = async {
                let uri = endpoint
                    .location
                    .first()?
                    .uri
                    .replace("grpc+tcp://", "http://");
                let channel = Endpoint::from_shared(uri).ok()?.connect().await.ok()?;
                let mut reader = FlightSqlServiceClient::new(channel);
                reader.set_token(client.token()?.clone());
                let stream = reader.do_get(ticket.clone()).await.ok()?;
                stream.try_collect::<Vec<_>>().await.ok()
            };
            match direct.await {
                Some(read) => batches.extend(read),
                None => {
                    assert_eq!(
                        endpoint.location.get(1).map(|l| l.uri.as_str()),
                        Some("arrow-flight-reuse-connection://?")
                    );
                    through_coordinator += 1;
                    let read: Vec<RecordBatch> = client
                        .do_get(ticket)
                        .await
                        .expect("do_get through the coordinator")
                        .try_collect()
                        .await
                        .expect("read through the coordinator");
                    batches.extend(read);
                }
            }
        }
        assert!(
            through_coordinator >= 1,
            "no partition lived on the killed executor"
        );
        let expected = datafusion.sql(sql).await.unwrap().collect().await.unwrap();
        compare(
            &batches_to_rows(&batches),
            &batches_to_rows(&expected),
            false,
        )
        .unwrap();
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adbc_python_client() {
    let python = std::env::var_os("EMBER_TEST_PYTHON").unwrap_or_else(|| {
        panic!("EMBER_TEST_PYTHON is not set: run the tests with `bash scripts/test.sh`, which installs adbc-driver-flightsql and pyarrow")
    });
    for proxy in ["false", "true"] {
        let cluster = Cluster::start(&[("EMBER_COORDINATOR_FLIGHT_SQL_PROXY", proxy)]).await;
        let output = tokio::time::timeout(
            TEST_TIMEOUT,
            tokio::process::Command::new(&python)
                .arg(clients_dir().join("test_adbc_flightsql.py"))
                .env(
                    "EMBER_FLIGHT_SQL_URI",
                    format!("grpc://127.0.0.1:{}", cluster.flight_port),
                )
                .env("EMBER_PROXY", proxy)
                .env(
                    "EMBER_TPCH_DIR",
                    crate::common::tpch_scale_dir(&cluster.cluster.data_dir, SCALE),
                )
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the ADBC client took too long")
        .expect("run python");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = format!(
            "ADBC client (proxy = {proxy})\n--- stdout\n{stdout}\n--- stderr\n{}\n--- logs\n{}",
            String::from_utf8_lossy(&output.stderr),
            cluster.cluster.logs()
        );
        assert!(output.status.success(), "{report}");
        crate::common::assert_checks_passed(&stdout, 6, &report);
    }
}

/// Runs `ember sql` with `args`; returns (success, stdout, stderr).
async fn ember_sql(port: u16, args: &[&str]) -> (bool, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["sql", "--port", &port.to_string()])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ember sql took too long")
    .expect("run ember sql");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ember_sql_shell_runs_statements_in_every_format() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Cluster::start(&[]).await;
        let port = cluster.flight_port;
        let datafusion = datafusion_tpch(SCALE, &cluster.cluster.data_dir).await;

        // CSV of a distributed aggregate, checked against DataFusion.
        let sql = "select n_regionkey, count(*) as n from tpch.nation group by n_regionkey";
        let (ok, stdout, stderr) = ember_sql(port, &["-e", sql, "--format", "csv"]).await;
        assert!(ok, "{stderr}");
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("n_regionkey,n"));
        let got: Vec<Vec<Option<String>>> = lines
            .map(|l| l.split(',').map(|c| Some(c.to_string())).collect())
            .collect();
        let expected = datafusion.sql(sql).await.unwrap().collect().await.unwrap();
        compare(&got, &batches_to_rows(&expected), false).unwrap();
        assert!(stderr.contains("5 rows in"), "{stderr}");

        // Several statements, DDL among them, from a file with a statement over two lines.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script.sql");
        std::fs::write(
            &script,
            "create schema sh;\ncreate table sh.t (a int, b varchar);\n\
             insert into sh.t values (1, 'x;y'), (2, null);\n\
             select a, b\n  from sh.t order by a; -- done\n",
        )
        .unwrap();
        let (ok, stdout, stderr) =
            ember_sql(port, &["-f", script.to_str().unwrap(), "--format", "json"]).await;
        assert!(ok, "{stderr}");
        assert_eq!(stdout.trim(), r#"[{"a":1,"b":"x;y"},{"a":2}]"#);
        assert!(stderr.contains("OK, 2 rows affected"), "{stderr}");

        // A table, and the progress line when asked for it.
        let (ok, stdout, stderr) = ember_sql(
            port,
            &[
                "--progress",
                "-e",
                "select count(*) as n from tpch.lineitem",
            ],
        )
        .await;
        assert!(ok, "{stderr}");
        assert!(stdout.contains("| n "), "{stdout}");
        let expected = datafusion
            .sql("select count(*) as n from tpch.lineitem")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = batches_to_rows(&expected)[0][0].clone().unwrap();
        assert!(stdout.contains(&format!("| {n} |")), "{stdout}");

        // An error: its message, a failing exit status, and nothing after it runs.
        let (ok, _, stderr) = ember_sql(port, &["-e", "select * from nope; select 1"]).await;
        assert!(!ok);
        assert!(stderr.contains("nope"), "{stderr}");
        assert!(!stderr.contains("1 row in"), "{stderr}");
    })
    .await
    .expect("the test took too long");
}

/// `NAME:verifier` as `ember passwd` prints it.
fn passwd(name: &str, password: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["passwd", name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            writeln!(child.stdin.take().expect("stdin"), "{password}")?;
            child.wait_with_output()
        })
        .expect("ember passwd");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

async fn postgres(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={password} dbname=ember"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Roles and grants hold for every client: a role without SELECT is refused with 42501 over
/// Postgres (tokio-postgres and psql) and Flight SQL; a role created with SQL logs in with the
/// password it was given and reads what it was granted; revoking, NOLOGIN and a coordinator
/// restart change nothing of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_control_holds_for_both_frontends() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let users = format!(
            "{},{}",
            passwd("alice", "wonderland"),
            passwd("ember", "admin-secret")
        );
        let mut cluster = Cluster::start(&[
            ("EMBER_AUTH_METHOD", "scram-sha-256"),
            ("EMBER_AUTH_USERS", users.as_str()),
        ])
        .await;
        let port = cluster.cluster.pg_port;
        let admin = postgres(port, "ember", "admin-secret")
            .await
            .expect("the superuser logs in");
        admin
            .batch_execute(
                "create schema sales; \
                 create table sales.orders as select o_orderkey, o_totalprice from tpch.orders; \
                 create role bob login password 'builder'; \
                 grant usage on schema sales to alice, bob; \
                 grant select on sales.orders to bob",
            )
            .await
            .expect("set up as the superuser");
        let expected = count(&admin, "select count(*) from sales.orders")
            .await
            .unwrap();
        assert!(expected > 0);

        // psql's \\dp and \\du show the grants and roles.
        let psql_admin = |command: &str| {
            let output = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "ember"])
                .args(["-d", "ember", "-X", "-A", "-c", command])
                .env("PGPASSWORD", "admin-secret")
                .output()
                .expect("run psql");
            assert!(output.status.success(), "{command}: {output:?}");
            String::from_utf8_lossy(&output.stdout).to_string()
        };
        let dp = psql_admin("\\dp sales.*");
        assert!(
            dp.contains("sales|orders|table|ember=arwdD/ember\nbob=r/ember"),
            "{dp}"
        );
        let du = psql_admin("\\du");
        assert!(
            du.contains("bob||{}") && du.contains("ember|Superuser, Create role|{}"),
            "{du}"
        );
        let privileges = count(
            &admin,
            "select count(*) from information_schema.table_privileges \
             where table_schema = 'sales' and grantee = 'bob' and privilege_type = 'SELECT'",
        )
        .await
        .expect("information_schema.table_privileges");
        assert_eq!(privileges, 1);

        // alice may log in but was granted nothing on the table.
        let alice = postgres(port, "alice", "wonderland").await.expect("alice");
        let error = count(&alice, "select count(*) from sales.orders")
            .await
            .expect_err("alice has no SELECT");
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{error:?}"
        );
        let psql = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "alice"])
            .args(["-d", "ember", "-X", "-v", "VERBOSITY=verbose"])
            .args(["-c", "select count(*) from sales.orders"])
            .env("PGPASSWORD", "wonderland")
            .output()
            .expect("run psql");
        let stderr = String::from_utf8_lossy(&psql.stderr);
        assert!(!psql.status.success(), "psql: {stderr}");
        assert!(
            stderr.contains("42501") && stderr.contains("permission denied for table sales.orders"),
            "{stderr}"
        );
        let mut flight = cluster.client().await;
        flight
            .handshake("alice", "wonderland")
            .await
            .expect("alice's handshake");
        let error = flight
            .execute("select count(*) from sales.orders".into(), None)
            .await
            .expect_err("alice has no SELECT over Flight SQL either");
        assert_eq!(code(&error), Some(Code::PermissionDenied), "{error}");
        assert!(
            error
                .to_string()
                .contains("permission denied for table sales.orders"),
            "{error}"
        );

        // bob, created with SQL, logs in with SCRAM and reads through both frontends.
        let bob = postgres(port, "bob", "builder").await.expect("bob logs in");
        assert_eq!(
            count(&bob, "select count(*) from sales.orders")
                .await
                .unwrap(),
            expected
        );
        assert!(postgres(port, "bob", "wrong").await.is_err());
        let mut bob_flight = cluster.client().await;
        bob_flight
            .handshake("bob", "builder")
            .await
            .expect("bob's handshake");
        let info = bob_flight
            .execute("select count(*) from sales.orders".into(), None)
            .await
            .expect("bob may read");
        let (batches, _) = fetch_all(&bob_flight, &info).await;
        assert_eq!(
            batches_to_rows(&batches),
            vec![vec![Some(expected.to_string())]]
        );

        // Only a superuser sees other users' queries.
        bob.simple_query("select o_orderkey from sales.orders where o_totalprice > 1000 limit 5")
            .await
            .expect("a distributed query of bob's");
        assert_eq!(
            count(
                &alice,
                "select count(*) from system.queries where user_name <> 'alice'"
            )
            .await
            .unwrap(),
            0
        );
        assert!(
            count(
                &admin,
                "select count(*) from system.queries where user_name = 'bob'"
            )
            .await
            .unwrap()
                > 0
        );

        // Revoking takes effect at once; a role made NOLOGIN loses its Flight SQL session.
        admin
            .batch_execute("revoke select on sales.orders from bob; alter role bob nologin")
            .await
            .expect("revoke");
        let error = count(&bob, "select count(*) from sales.orders")
            .await
            .expect_err("revoked");
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        );
        let error = bob_flight
            .execute("select 1".into(), None)
            .await
            .expect_err("bob may no longer log in");
        assert_eq!(code(&error), Some(Code::Unauthenticated), "{error}");

        // Roles, passwords and grants are in the catalog: they survive a restart.
        cluster.cluster.restart_coordinator();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let admin = loop {
            match postgres(port, "ember", "admin-secret").await {
                Ok(client) => break client,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("the coordinator did not come back: {e}"),
            }
        };
        assert!(
            postgres(port, "bob", "builder").await.is_err(),
            "bob is NOLOGIN"
        );
        admin
            .batch_execute("alter role bob login")
            .await
            .expect("login again");
        let bob = postgres(port, "bob", "builder")
            .await
            .expect("bob's password kept");
        assert!(
            count(&bob, "select count(*) from sales.orders")
                .await
                .is_err()
        );
        let alice = postgres(port, "alice", "wonderland").await.expect("alice");
        assert!(
            count(&alice, "select count(*) from sales.orders")
                .await
                .is_err()
        );
        admin
            .batch_execute("grant select on sales.orders to bob")
            .await
            .expect("grant");
        assert_eq!(
            count(&bob, "select count(*) from sales.orders")
                .await
                .unwrap(),
            expected
        );
    })
    .await
    .expect("the test took too long");
}
