//! Fault tolerance under real failures: a coordinator and three executor processes over TPC-H
//! SF0.1. Executors are killed (SIGKILL) while TPC-H Q9, Q18 and Q21 run — during their first map
//! stage and again after it finished — or stopped (SIGSTOP) past the heartbeat timeout and
//! resumed; every answer must equal single-node DataFusion's. UPDATE and DELETE of a copy of
//! `lineitem` meet the same faults and leave the table DataFusion computes. Then a query is
//! cancelled mid-way: within 5 s no task of it may run on any executor and its shuffle files
//! must be gone.

use std::time::{Duration, Instant};

use crate::common::{
    ProcessCluster, compare, connect, datafusion_rows, datafusion_tpch, private_data_dir, rows,
    tpch_data_dir,
};
use datafusion::prelude::SessionContext;
use tokio_postgres::Client;

const SCALE: f64 = 0.1;
const EXECUTORS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL an executor running a task of the first stage.
    KillDuringMapStage,
    /// SIGKILL an executor holding outputs of the first stage once it has finished.
    KillAfterMapStage,
    /// SIGSTOP an executor running a task until it is declared lost, then SIGCONT it.
    StopPastTimeout,
    /// SIGKILL the executor running a task of the result stage.
    KillResultTask,
    /// SIGKILL every executor during the first stage; one comes back a second later.
    KillAll,
}

enum Outcome {
    Exact,
    Wrong(String),
    /// The query finished before the fault could be injected.
    Missed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_exact_when_executors_die() {
    let data = tpch_data_dir(SCALE);
    let env = [
        ("EMBER_COORDINATOR_EXECUTOR_TIMEOUT_MS", "2000"),
        ("EMBER_EXECUTOR_HEARTBEAT_INTERVAL_MS", "250"),
        // Small partitions: more tasks per stage, so faults land mid-stage.
        ("EMBER_EXECUTOR_SLOTS", "2"),
        ("EMBER_SCHEDULER_EXECUTOR_WAIT_MS", "4000"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let mut cluster = ProcessCluster::start_with_env(EXECUTORS, SCALE, &data, &env);
    let monitor = cluster.connect(EXECUTORS).await;
    let reference = datafusion_tpch(SCALE, &data).await;

    user_errors_are_not_retried(&monitor).await;

    let started = Instant::now();
    let mut results = vec![];
    let rounds = [
        Fault::KillDuringMapStage,
        Fault::KillAfterMapStage,
        Fault::StopPastTimeout,
        Fault::KillResultTask,
        Fault::KillDuringMapStage,
        Fault::KillAfterMapStage,
        Fault::KillAll,
    ];
    // A query that is one scan stage: its result tasks run long enough to be killed mid-stream.
    let scan = "select l_orderkey, l_linenumber, l_extendedprice from lineitem \
                where l_discount < 0.03";
    let mut plan: Vec<(String, &'static str, Fault)> = vec![];
    for query in [9, 18, 21] {
        for fault in rounds {
            plan.push((
                format!("q{query}"),
                ember_planner::tpch::QUERIES[query - 1],
                fault,
            ));
        }
    }
    for _ in 0..4 {
        plan.push(("scan".to_string(), scan, Fault::KillResultTask));
    }
    {
        for (query, sql, fault) in plan {
            let trial_started = Instant::now();
            let outcome = tokio::time::timeout(
                Duration::from_secs(240),
                trial(&mut cluster, &monitor, &reference, sql, fault),
            )
            .await
            .unwrap_or_else(|_| panic!("{query} {fault:?} timed out\n{}", cluster.logs()));
            let label = format!(
                "{query} {fault:?} ({} ms)",
                trial_started.elapsed().as_millis()
            );
            match &outcome {
                Outcome::Exact => eprintln!("chaos: {label}: exact answer"),
                Outcome::Wrong(why) => eprintln!("chaos: {label}: WRONG: {why}"),
                Outcome::Missed => eprintln!("chaos: {label}: query ended before the fault"),
            }
            results.push((label, outcome));
            crate::common::wait_until_alive(&cluster, &monitor, EXECUTORS).await;
        }
    }
    let exact = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Exact))
        .count();
    let missed = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Missed))
        .count();
    eprintln!(
        "chaos: {} trials, {exact} exact answers, {missed} without a fault injected, {:.0} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    let wrong: Vec<String> = results
        .iter()
        .filter_map(|(label, o)| match o {
            Outcome::Wrong(why) => Some(format!("{label}: {why}")),
            _ => None,
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "wrong answers:\n{}\n{}",
        wrong.join("\n"),
        cluster.logs()
    );
    // Some faults (the short result stages) are missed now and then; most must land.
    assert!(
        exact * 2 >= results.len(),
        "only {exact} of {} trials had their fault injected",
        results.len()
    );

    if std::env::var_os("EMBER_CHAOS_LOGS").is_some() {
        eprintln!("{}", cluster.logs());
    }
    changes_stay_exact_when_executors_die(&data, &env, &reference).await;
    cancel_stops_tasks_and_removes_files(&cluster, &monitor).await;
    no_executor_fails_after_the_wait(&mut cluster, &monitor).await;
}

/// UPDATE and DELETE of a managed copy of `lineitem` with an executor killed mid-statement
/// (while matching rows are counted, or while files are rewritten): each statement completes
/// with the count single-node DataFusion gives, and the table ends as DataFusion computes it by
/// hand from `lineitem`.
async fn changes_stay_exact_when_executors_die(
    tpch: &std::path::Path,
    env: &[(String, String)],
    reference: &SessionContext,
) {
    // A data dir of its own (the shared one's catalog is other tests' too).
    let (_data, data_dir) = private_data_dir(tpch, SCALE);
    let mut cluster = ProcessCluster::start_with_env(EXECUTORS, SCALE, &data_dir, env);
    let cluster = &mut cluster;
    let monitor = &cluster.connect(EXECUTORS).await;
    monitor
        .simple_query(
            "create table chaos_li as select l_orderkey, l_linenumber, l_quantity, l_shipmode \
             from tpch.lineitem",
        )
        .await
        .expect("create chaos_li");
    let statements = [
        (
            "delete from chaos_li where l_quantity > 45",
            "select count(*) from lineitem where l_quantity > 45",
            Fault::KillDuringMapStage,
        ),
        (
            "update chaos_li set l_quantity = l_quantity + 100 where l_shipmode = 'AIR'",
            "select count(*) from lineitem where l_quantity <= 45 and l_shipmode = 'AIR'",
            Fault::KillResultTask,
        ),
        (
            "update chaos_li set l_quantity = l_quantity + 200 where l_shipmode = 'MAIL'",
            "select count(*) from lineitem where l_quantity <= 45 and l_shipmode = 'MAIL'",
            Fault::KillDuringMapStage,
        ),
        (
            "delete from chaos_li where l_shipmode = 'FOB' and l_linenumber > 3",
            "select count(*) from lineitem where l_quantity <= 45 and l_shipmode = 'FOB' \
             and l_linenumber > 3",
            Fault::KillAfterMapStage,
        ),
    ];
    let mut injected = 0;
    for (sql, count, fault) in statements {
        let client = connect(cluster.pg_port).await.expect("connect");
        let running = tokio::spawn(async move { client.execute(sql, &[]).await });
        let victim = await_victim(monitor, fault, &running).await;
        if let Some(port) = victim {
            let i = cluster.executor_by_port(port).expect("one of ours");
            cluster.restart_executor(i);
            injected += 1;
        }
        let changed = tokio::time::timeout(Duration::from_secs(240), running)
            .await
            .unwrap_or_else(|_| panic!("{sql} timed out\n{}", cluster.logs()))
            .expect("statement task")
            .unwrap_or_else(|e| panic!("{sql} ({fault:?}): {e:?}\n{}", cluster.logs()));
        let expected = datafusion_rows(reference, count).await;
        assert_eq!(
            Some(changed.to_string()),
            expected[0][0],
            "{sql} ({fault:?}, injected: {})",
            victim.is_some()
        );
        eprintln!(
            "chaos: {sql} ({fault:?}): {changed} rows, fault injected: {}",
            victim.is_some()
        );
        crate::common::wait_until_alive(cluster, monitor, EXECUTORS).await;
    }
    let ours = rows(
        &monitor
            .simple_query(
                "select l_shipmode, count(*), sum(l_quantity), sum(l_orderkey * 10 + l_linenumber) \
                 from chaos_li group by 1 order by 1",
            )
            .await
            .expect("the changed table"),
    );
    let expected = datafusion_rows(
        reference,
        "select l_shipmode, count(*), sum(case l_shipmode when 'AIR' then l_quantity + 100 \
         when 'MAIL' then l_quantity + 200 else l_quantity end), \
         sum(l_orderkey * 10 + l_linenumber) from lineitem where l_quantity <= 45 \
         and not (l_shipmode = 'FOB' and l_linenumber > 3) group by 1 order by 1",
    )
    .await;
    assert_eq!(ours, expected, "\n{}", cluster.logs());
    assert!(
        injected >= 2,
        "only {injected} of 4 statements met their fault"
    );
}

/// A deterministic error fails the query at once, with its SQLSTATE, after one attempt per task.
async fn user_errors_are_not_retried(monitor: &Client) {
    let error = monitor
        .simple_query("select sum(1 / (l_orderkey - l_orderkey)) from tpch.lineitem")
        .await
        .expect_err("division by zero");
    assert_eq!(error.code().map(|c| c.code()), Some("22012"), "{error:?}");
    let attempts = rows(
        &monitor
            .simple_query(
                "select max(t.attempt), count(*) filter (where t.status = 'failed') \
                 from system.tasks t join system.queries q on t.query_id = q.query_id \
                 where q.sql like '%l_orderkey - l_orderkey%' and q.status = 'failed'",
            )
            .await
            .expect("system.tasks"),
    );
    assert_eq!(attempts[0][0].as_deref(), Some("0"), "no task was retried");
}

/// Without any executor a query waits `scheduler.executor_wait_ms`, then fails clearly.
async fn no_executor_fails_after_the_wait(cluster: &mut ProcessCluster, monitor: &Client) {
    for i in 0..EXECUTORS {
        cluster.kill_executor(i);
    }
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        monitor.simple_query("select sum(l_quantity) from tpch.lineitem"),
    )
    .await
    .expect("the query does not hang")
    .expect_err("no executor can run it");
    let waited = started.elapsed();
    let db = error.as_db_error().expect("a database error");
    assert!(
        db.message().contains("no executor is alive"),
        "clear message: {}",
        db.message()
    );
    assert!(
        waited >= Duration::from_secs(3),
        "failed after {waited:?}, before the 4 s wait"
    );
    eprintln!(
        "chaos: no executors: failed after {} ms: {}",
        waited.as_millis(),
        db.message()
    );
}

async fn trial(
    cluster: &mut ProcessCluster,
    monitor: &Client,
    reference: &SessionContext,
    sql: &'static str,
    fault: Fault,
) -> Outcome {
    let running = spawn_query(cluster, sql).await;

    let victim = await_victim(monitor, fault, &running).await;
    if let Some(port) = victim {
        let i = cluster
            .executor_by_port(port)
            .expect("the victim is one of ours");
        match fault {
            Fault::KillDuringMapStage | Fault::KillAfterMapStage | Fault::KillResultTask => {
                cluster.restart_executor(i)
            }
            Fault::KillAll => {
                for j in 0..EXECUTORS {
                    cluster.kill_executor(j);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.restart_executor(i);
                let answer = running.await.expect("query task");
                for j in (0..EXECUTORS).filter(|j| *j != i) {
                    cluster.restart_executor(j);
                }
                return check(answer, reference, sql, true).await;
            }
            Fault::StopPastTimeout => {
                cluster.signal_executor(i, "STOP");
                let deadline = Instant::now() + Duration::from_secs(30);
                while !executor_lost(monitor, port).await {
                    assert!(Instant::now() < deadline, "a stopped executor stayed alive");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                cluster.signal_executor(i, "CONT");
            }
        }
    }
    let answer = running.await.expect("query task");
    check(answer, reference, sql, victim.is_some()).await
}

type Answer = Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>;

/// Runs `sql` over TPC-H on a connection of its own.
async fn spawn_query(
    cluster: &ProcessCluster,
    sql: &'static str,
) -> tokio::task::JoinHandle<Answer> {
    let client = connect(cluster.pg_port).await.expect("connect");
    client
        .simple_query("SET search_path = tpch")
        .await
        .expect("set search_path");
    tokio::spawn(async move { client.simple_query(sql).await })
}

/// Compares an answer with single-node DataFusion's.
async fn check(
    answer: Answer,
    reference: &SessionContext,
    sql: &str,
    fault_injected: bool,
) -> Outcome {
    let answer = match answer {
        Ok(messages) => rows(&messages),
        Err(error) => return Outcome::Wrong(format!("query failed: {error:?}")),
    };
    let expected = datafusion_rows(reference, sql).await;
    let ordered = sql.to_ascii_lowercase().contains("order by");
    match compare(&answer, &expected, ordered) {
        Err(diff) => Outcome::Wrong(diff),
        Ok(()) if !fault_injected => Outcome::Missed,
        Ok(()) => Outcome::Exact,
    }
}

/// Watches the running statement's stages and tasks until the moment for `fault` comes: the
/// Flight port of the executor to hit then; none if the statement ended first.
async fn await_victim<T>(
    monitor: &Client,
    fault: Fault,
    running: &tokio::task::JoinHandle<T>,
) -> Option<u16> {
    loop {
        if running.is_finished() {
            return None;
        }
        if let Some(victim) = find_victim(monitor, fault).await {
            return Some(victim);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Flight port of the executor to hit now, if this is the moment.
async fn find_victim(monitor: &Client, fault: Fault) -> Option<u16> {
    let stages = rows(
        &monitor
            .simple_query(
                "select s.stage_id, s.status, s.tasks, s.tasks_succeeded from system.stages s \
                 join system.queries q on s.query_id = q.query_id \
                 where q.status = 'running' order by s.stage_id",
            )
            .await
            .ok()?,
    );
    let first = stages.first()?;
    let first_stage = first[0].clone()?;
    let first_done = first[1].as_deref() == Some("succeeded");
    let tasks = rows(
        &monitor
            .simple_query(
                "select t.stage_id, t.status, e.flight_port from system.tasks t \
                 join system.queries q on t.query_id = q.query_id \
                 join system.executors e on t.executor_id = e.executor_id \
                 where q.status = 'running' and e.status = 'alive'",
            )
            .await
            .ok()?,
    );
    let port = |row: &Vec<Option<String>>| row[2].as_deref()?.parse::<u16>().ok();
    match fault {
        Fault::KillResultTask => {
            let last_stage = stages.last()?[0].clone()?;
            tasks
                .iter()
                .find(|t| t[0].as_ref() == Some(&last_stage) && t[1].as_deref() == Some("running"))
                .and_then(port)
        }
        Fault::KillDuringMapStage | Fault::StopPastTimeout | Fault::KillAll => tasks
            .iter()
            .find(|t| t[0].as_ref() == Some(&first_stage) && t[1].as_deref() == Some("running"))
            .and_then(port),
        Fault::KillAfterMapStage => {
            // The first stage is done and a later one has started.
            let later_running = stages[1..]
                .iter()
                .any(|s| s[1].as_deref() == Some("running"));
            if !first_done || !later_running {
                return None;
            }
            tasks
                .iter()
                .find(|t| {
                    t[0].as_ref() == Some(&first_stage) && t[1].as_deref() == Some("succeeded")
                })
                .and_then(port)
        }
    }
}

async fn executor_lost(monitor: &Client, port: u16) -> bool {
    let found = rows(
        &monitor
            .simple_query(&format!(
                "select status from system.executors where flight_port = {port}"
            ))
            .await
            .expect("system.executors"),
    );
    found.first().and_then(|r| r[0].as_deref()) == Some("lost")
}

/// Cancels a long query once its tasks run: within 5 s the executors run nothing of it and its
/// shuffle files are gone from every work dir.
async fn cancel_stops_tasks_and_removes_files(cluster: &ProcessCluster, monitor: &Client) {
    let client = connect(cluster.pg_port).await.expect("connect");
    let cancel = client.cancel_token();
    // Shuffles both sides, then a long join of the shuffled data: each of the 100 keys matches
    // about 6,000 build rows, so each probe batch takes a moment and the probe side is read
    // batch by batch, which is where an abort takes effect. (A nested-loop join whose condition
    // matches nothing loops over its whole probe input within one poll: its task stops only
    // when that input is done, 8 to 36 s into such a query in a debug build.)
    let sql = "select count(*) from \
               (select l_suppkey % 100 k, l_orderkey o from tpch.lineitem group by 1, 2) a \
               join (select l_suppkey % 100 k, l_partkey p from tpch.lineitem group by 1, 2) b \
               on a.k = b.k";
    let running = tokio::spawn(async move { client.simple_query(sql).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    let query_id = loop {
        let found = rows(
            &monitor
                .simple_query(
                    "select q.query_id from system.queries q join system.stages s \
                     on s.query_id = q.query_id where q.status = 'running' \
                     and s.status = 'succeeded' limit 1",
                )
                .await
                .expect("system.queries"),
        );
        if let Some(id) = found.first().and_then(|r| r[0].clone()) {
            break id;
        }
        assert!(!running.is_finished(), "the long query ended by itself");
        assert!(Instant::now() < deadline, "the long query never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let has_files = |i: usize| cluster.work_dir(i).join("shuffle").join(&query_id).exists();
    assert!(
        (0..EXECUTORS).any(has_files),
        "a finished stage left shuffle files"
    );
    let cancelled_at = Instant::now();
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let error = running
        .await
        .expect("query task")
        .expect_err("a cancelled query fails");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("57014"),
        "cancel answers 57014: {error:?}"
    );
    loop {
        let busy = rows(
            &monitor
                .simple_query(
                    "select sum(active_tasks) from system.executors where status = 'alive'",
                )
                .await
                .expect("system.executors"),
        );
        let busy = busy[0][0].as_deref().unwrap_or("0") != "0";
        let files = (0..EXECUTORS).any(has_files);
        if !busy && !files {
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(5),
            "5 s after the cancel: tasks still running: {busy}, files left: {files}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "chaos: cancel: tasks stopped and files removed {} ms after the cancel",
        cancelled_at.elapsed().as_millis()
    );
}

/// With speculation on and a long heartbeat timeout, an executor stopped (SIGSTOP) in the middle
/// of a stage gets its tasks copied elsewhere: the copies win and the answer is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_overtakes_a_stalled_executor() {
    let data = tpch_data_dir(SCALE);
    let env = [
        ("EMBER_SCHEDULER_SPECULATION", "true"),
        ("EMBER_SCHEDULER_SPECULATION_QUANTILE", "0.5"),
        // At this scale every table is one row group, so scans run as one task each: nothing
        // to compare with but the duration threshold.
        ("EMBER_SCHEDULER_SPECULATION_TASK_DURATION_MS", "500"),
        ("EMBER_COORDINATOR_EXECUTOR_TIMEOUT_MS", "120000"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let cluster = ProcessCluster::start_with_env(EXECUTORS, SCALE, &data, &env);
    let monitor = cluster.connect(EXECUTORS).await;
    let reference = datafusion_tpch(SCALE, &data).await;
    let sql = ember_planner::tpch::QUERIES[17];

    let mut speculated = false;
    for _ in 0..5 {
        let running = spawn_query(&cluster, sql).await;
        let victim = loop {
            if running.is_finished() {
                break None;
            }
            if let Some(port) = find_victim(&monitor, Fault::KillDuringMapStage).await {
                break Some(port);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let stopped = victim.and_then(|port| cluster.executor_by_port(port));
        if let Some(i) = stopped {
            cluster.signal_executor(i, "STOP");
        }
        // A result task may have been sent to the stopped executor: it resumes after a while.
        let answer = match tokio::time::timeout(Duration::from_secs(20), running).await {
            Ok(joined) => joined,
            Err(_) => panic!("the query did not finish\n{}", cluster.logs()),
        };
        if let Some(i) = stopped {
            cluster.signal_executor(i, "CONT");
        }
        let answer = rows(&answer.expect("query task").expect("query succeeds"));
        let expected = datafusion_rows(&reference, sql).await;
        compare(&answer, &expected, true).expect("exact answer");
        let copies = rows(
            &monitor
                .simple_query(
                    "select count(*) from system.tasks t join system.queries q \
                     on t.query_id = q.query_id where t.speculative \
                     and q.submitted_at = (select max(submitted_at) from system.queries \
                     where sql like '%l_quantity%')",
                )
                .await
                .expect("system.tasks"),
        );
        if stopped.is_some() && copies[0][0].as_deref() != Some("0") {
            speculated = true;
            break;
        }
    }
    assert!(
        speculated,
        "no speculative copy won in 5 tries\n{}",
        cluster.logs()
    );
}
