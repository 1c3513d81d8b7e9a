//! The scheduler driven without processes, in the style of Ballista's `SchedulerTest`: virtual
//! executors are the sending halves of their session channels, tasks "run" when a test reports
//! their status, and every event goes through the real `handle` and `schedule`. Time-dependent
//! rules (heartbeats, speculation) are exercised by moving the recorded instants back.

mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ember_planner::ids::{ExecutorId, QueryId, TaskAttempt};
use ember_planner::sqlstate::{ErrorKind, SqlState};
use ember_protocol::proto::{TaskId, TaskStatus, TaskSucceeded, coordinator_message, task_status};
use ember_protocol::task_errors::TaskFailure;

use tokio::sync::mpsc;

use super::state::{ExecutorStatus, Status};
use super::{Event, ExecutorInfo, SchedulerConfig, Speculation};
use crate::error::{Error, TaskErrorKind};
use crate::output::ResultEvent;
use harness::{MAP, RESULT, SchedulerTest, config, execution_error, in_stage, two_stage_graph};

#[test]
fn tasks_fill_the_free_slots_and_stages_run_in_order() {
    let mut test = SchedulerTest::new(config());
    test.executor("a", 2);
    test.executor("b", 2);
    let query = test.submit(two_stage_graph(5, 2));
    let (on_a, on_b) = (test.launched("a"), test.launched("b"));
    // Four slots, five map tasks: the tasks spread, the fifth waits.
    assert_eq!((on_a.len(), on_b.len()), (2, 2));
    assert!(
        on_a.iter()
            .chain(&on_b)
            .all(|a| a.stage_id == MAP && a.attempt == 0)
    );
    assert_eq!((test.free_slots("a"), test.free_slots("b")), (0, 0));
    assert_eq!(test.task_status(&query, MAP, 4), Status::Pending);

    test.succeed("a", &on_a[0]);
    let next = test.launched("a");
    assert_eq!(next.len(), 1, "the freed slot runs the waiting task");
    assert_eq!(next[0].partition, 4);
    for attempt in on_a[1..].iter().chain(&next) {
        test.succeed("a", attempt);
    }
    // The result stage waits for every map output.
    assert!(test.launched("a").is_empty());
    for attempt in &on_b {
        test.succeed("b", attempt);
    }
    let results: Vec<TaskAttempt> = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(in_stage(&results, RESULT).len(), 2);
    let launched: Vec<usize> = test
        .result_events(&query)
        .into_iter()
        .filter_map(|e| match e {
            ResultEvent::Launched { partition, .. } => Some(partition),
            _ => None,
        })
        .collect();
    assert_eq!(
        launched.len(),
        2,
        "the reader learns where each partition runs"
    );

    for attempt in &results {
        let on = test.runs_on(attempt);
        test.succeed(on, attempt);
    }
    let committed = test
        .result_events(&query)
        .into_iter()
        .filter(|e| matches!(e, ResultEvent::Committed { .. }))
        .count();
    assert_eq!(committed, 2);
    assert_eq!(test.status(&query), Status::Succeeded);
    assert_eq!((test.free_slots("a"), test.free_slots("b")), (2, 2));
}

#[test]
fn failed_tasks_run_again_elsewhere_until_their_attempts_run_out() {
    let mut test = SchedulerTest::new(SchedulerConfig {
        task_max_attempts: 2,
        ..config()
    });
    test.executor("a", 1);
    test.executor("b", 1);
    let query = test.submit(two_stage_graph(1, 1));
    let mut attempts = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(attempts.len(), 1);
    let first = attempts.remove(0);
    let first_on = test.runs_on(&first);
    let other = if first_on == "a" { "b" } else { "a" };
    test.fail(
        first_on,
        &first,
        execution_error(ErrorKind::Io, SqlState::IO_ERROR),
    );
    // Retried on the executor it has not failed on, as the next attempt.
    let retry = test.launched(other);
    assert_eq!(retry.len(), 1);
    assert_eq!((retry[0].partition, retry[0].attempt), (0, 1));
    assert!(test.launched(first_on).is_empty());
    test.fail(
        other,
        &retry[0],
        execution_error(ErrorKind::Internal, SqlState::INTERNAL),
    );
    // Two failures of two allowed: the query fails with the last error, and stops.
    assert_eq!(test.status(&query), Status::Failed);
    let failed = test.result_events(&query);
    assert!(matches!(
        failed.as_slice(),
        [ResultEvent::Failed(Error::Task {
            kind: TaskErrorKind::Internal,
            ..
        })]
    ));
    assert!(test.launched("a").is_empty() && test.launched("b").is_empty());
}

#[test]
fn user_errors_fail_the_query_at_once_with_their_sqlstate() {
    let mut test = SchedulerTest::new(config());
    test.executor("a", 2);
    let query = test.submit(two_stage_graph(2, 1));
    let attempts = test.launched("a");
    test.fail(
        "a",
        &attempts[0],
        execution_error(ErrorKind::User, SqlState::DIVISION_BY_ZERO),
    );
    assert_eq!(test.status(&query), Status::Failed);
    let events = test.result_events(&query);
    let [ResultEvent::Failed(error)] = events.as_slice() else {
        panic!("one failure, got {events:?}")
    };
    assert_eq!(error.sqlstate(), SqlState::DIVISION_BY_ZERO);
    // Not retried; the executor is told to stop the query's other task.
    let messages = test.messages("a");
    assert!(
        messages
            .iter()
            .all(|m| !matches!(m, coordinator_message::Message::LaunchTask(_)))
    );
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, coordinator_message::Message::CancelQuery(_)))
    );
    // The other task's slot is held until its executor reports it stopped.
    assert_eq!(test.free_slots("a"), 1);
    test.fail("a", &attempts[1], TaskFailure::Cancelled);
    assert_eq!(test.free_slots("a"), 2);
}

#[test]
fn a_lost_executor_loses_its_running_tasks_and_the_outputs_still_needed() {
    let mut test = SchedulerTest::new(config());
    test.executor("a", 2);
    test.executor("b", 2);
    let query = test.submit(two_stage_graph(4, 1));
    let (on_a, on_b) = (test.launched("a"), test.launched("b"));
    assert_eq!((on_a.len(), on_b.len()), (2, 2));
    // One map output is done on `a`, one still runs there; `b` finishes one of its two.
    test.succeed("a", &on_a[0]);
    test.succeed("b", &on_b[0]);
    assert!(test.launched("a").is_empty());
    test.lose("a");
    // `a`'s running task and its finished output (the result stage still needs it) run again,
    // as new attempts, on `b` only.
    assert!(test.launched("a").is_empty());
    let rerun = test.launched("b");
    assert_eq!(rerun.len(), 1, "one free slot on b");
    assert!(rerun[0].attempt >= 1);
    // Rerunning already or waiting for a slot: not succeeded any more.
    assert_ne!(
        test.task_status(&query, MAP, on_a[0].partition as usize),
        Status::Succeeded
    );
    assert_eq!(
        test.task_status(&query, MAP, on_b[0].partition as usize),
        Status::Succeeded,
        "outputs on live executors stay"
    );
    // Reports from the lost session no longer count.
    test.succeed("a", &on_a[1]);
    assert_ne!(
        test.task_status(&query, MAP, on_a[1].partition as usize),
        Status::Succeeded
    );
    // The query completes on `b` alone.
    let mut pending = [rerun, vec![on_b[1].clone()]].concat();
    while let Some(attempt) = pending.pop() {
        test.succeed("b", &attempt);
        pending.extend(test.launched("b"));
    }
    assert_eq!(test.status(&query), Status::Succeeded);
}

#[test]
fn executors_that_stop_heartbeating_are_lost() {
    let mut test = SchedulerTest::new(SchedulerConfig {
        executor_timeout: Duration::from_millis(100),
        ..config()
    });
    test.executor("a", 1);
    test.executor("b", 1);
    let id = ExecutorId("a".into());
    test.scheduler
        .executors
        .get_mut(&id)
        .expect("registered")
        .last_heartbeat = Instant::now() - Duration::from_secs(1);
    test.event(Event::Tick);
    assert_eq!(
        test.scheduler
            .capacity
            .slots
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Its session is ended so that it registers again as a new incarnation.
    let executor = test.executors.get_mut("a").expect("registered");
    assert!(matches!(executor.rx.try_recv(), Ok(Err(_))));
}

#[test]
fn a_fetch_failure_recomputes_only_the_lost_map_output() {
    let mut test = SchedulerTest::new(config());
    test.executor("a", 2);
    test.executor("b", 2);
    let query = test.submit(two_stage_graph(4, 2));
    let mut maps = HashMap::new();
    for name in ["a", "b"] {
        for attempt in test.launched(name) {
            test.succeed(name, &attempt);
            maps.insert(attempt.partition, name);
        }
    }
    let results: Vec<(TaskAttempt, &str)> = ["a", "b"]
        .into_iter()
        .flat_map(|name| {
            test.launched(name)
                .into_iter()
                .map(move |attempt| (attempt, name))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(results.len(), 2);
    let (reader, reader_on) = results[0].clone();
    let lost_on = maps[&1];
    test.fail(
        reader_on,
        &reader,
        TaskFailure::FetchFailed {
            executor_id: ExecutorId(lost_on.into()),
            stage_id: MAP,
            map_partition: 1,
            map_attempt: 0,
            message: "connection refused".into(),
        },
    );
    // Map 1 runs again (elsewhere); the other map outputs are kept.
    let rerun: Vec<TaskAttempt> = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    assert_eq!((rerun[0].stage_id, rerun[0].partition), (MAP, 1));
    assert_eq!(rerun[0].attempt, 1);
    for partition in [0, 2, 3] {
        assert_eq!(test.task_status(&query, MAP, partition), Status::Succeeded);
    }
    assert_eq!(
        test.task_status(&query, RESULT, reader.partition as usize),
        Status::Pending
    );
    // Once it is back, the reader runs again as a new attempt.
    let rerun_on = test.runs_on(&rerun[0]);
    test.succeed(rerun_on, &rerun[0]);
    let again: Vec<TaskAttempt> = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].stage_id, again[0].attempt), (RESULT, 1));
    // A second report about the output already replaced changes nothing.
    let other_reader = &results[1];
    test.fail(
        other_reader.1,
        &other_reader.0,
        TaskFailure::FetchFailed {
            executor_id: ExecutorId(lost_on.into()),
            stage_id: MAP,
            map_partition: 1,
            map_attempt: 0,
            message: "connection refused".into(),
        },
    );
    assert_eq!(test.task_status(&query, MAP, 1), Status::Succeeded);
}

#[test]
fn stale_attempts_are_fenced() {
    let mut test = SchedulerTest::new(config());
    test.executor("a", 1);
    test.executor("b", 1);
    let query = test.submit(two_stage_graph(1, 1));
    let first = [test.launched("a"), test.launched("b")].concat().remove(0);
    let on = test.runs_on(&first);
    let other = if on == "a" { "b" } else { "a" };
    test.fail(
        on,
        &first,
        execution_error(ErrorKind::Io, SqlState::IO_ERROR),
    );
    let second = test.launched(other).remove(0);
    assert_eq!(second.attempt, 1);
    // The first attempt reports success late: ignored, the second one is the task.
    test.succeed(on, &first);
    assert_eq!(test.task_status(&query, MAP, 0), Status::Running);
    assert!(test.launched(on).is_empty() && test.launched(other).is_empty());
    // Reports count only from the executor that runs the attempt, on its current session.
    let report = |executor: &str, session: u64| Event::TaskStatus {
        executor_id: ExecutorId(executor.into()),
        session,
        status: TaskStatus {
            task: Some(TaskId::from_attempt(&second)),
            elapsed_us: 1,
            result: Some(task_status::Result::Succeeded(TaskSucceeded::default())),
        },
    };
    let session = test.executors[other].session;
    let on_session = test.executors[on].session;
    test.event(report(on, on_session));
    test.event(report(other, session + 100));
    assert_eq!(test.task_status(&query, MAP, 0), Status::Running);
    // Once its executor is lost, even its own session's late report is stale.
    test.lose(other);
    test.event(report(other, session));
    assert_ne!(test.task_status(&query, MAP, 0), Status::Succeeded);
}

#[test]
fn a_registration_never_replaces_a_live_executor() {
    let mut test = SchedulerTest::new(SchedulerConfig {
        max_executors: 2,
        ..config()
    });
    test.executor("a", 1);
    test.executor("b", 1);
    let query = test.submit(two_stage_graph(2, 1));
    let launched = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(launched.len(), 2);
    // The same id again (the cluster service never assigns one twice) is refused, and so is a
    // third executor beyond coordinator.max_executors; neither disturbs the running tasks.
    let (tx, mut rx) = mpsc::channel(16);
    let info = |id: &str| ExecutorInfo {
        id: ExecutorId(id.into()),
        host: "10.9.9.9".into(),
        flight_port: 1,
        slots: 64,
        cores: 64,
        memory: 0,
        host_key: "rogue".into(),
        work_dir: "/".into(),
        allocation_id: String::new(),
    };
    for (id, expected) in [("a", "is taken"), ("c", "maximum of 2 executors")] {
        test.event(Event::ExecutorRegistered {
            info: info(id),
            session: 99,
            tx: tx.clone(),
        });
        let refusal = rx
            .try_recv()
            .expect("a refusal")
            .expect_err("an error status");
        assert!(
            refusal.message().contains(expected),
            "{}",
            refusal.message()
        );
    }
    assert_eq!(test.scheduler.executors.len(), 2);
    assert!(
        test.scheduler
            .executors
            .values()
            .all(|e| e.info.host == "127.0.0.1" && e.status == ExecutorStatus::Alive)
    );
    for attempt in &launched {
        assert_eq!(
            test.task_status(&query, attempt.stage_id, attempt.partition as usize),
            Status::Running
        );
    }
}

#[test]
fn lost_executors_are_forgotten_after_the_retention() {
    let mut test = SchedulerTest::new(SchedulerConfig {
        lost_executor_retention: Duration::ZERO,
        ..config()
    });
    test.executor("a", 1);
    test.executor("b", 1);
    test.lose("a");
    test.event(Event::Tick);
    let ids: Vec<&str> = test
        .scheduler
        .executors
        .keys()
        .map(|id| id.0.as_str())
        .collect();
    assert_eq!(ids, ["b"]);
}

/// Two executors of two slots, speculation on (half the stage finished, 1.5 times its median).
fn speculating(task_duration: Option<Duration>) -> SchedulerTest {
    let mut test = SchedulerTest::new(SchedulerConfig {
        speculation: Some(Speculation {
            multiplier: 1.5,
            quantile: 0.5,
            min_runtime: Duration::from_millis(10),
            task_duration,
        }),
        ..config()
    });
    test.executor("a", 2);
    test.executor("b", 2);
    test
}

/// Makes the running task `partition` of the query's first stage a second old.
fn started_a_second_ago(test: &mut SchedulerTest, query: &QueryId, partition: u32) {
    let query_state = test
        .scheduler
        .running
        .iter_mut()
        .find(|q| &q.id == query)
        .expect("running");
    query_state.stages[0].tasks[partition as usize].started_instant =
        Some(Instant::now() - Duration::from_secs(1));
}

#[test]
fn speculation_copies_a_lone_task_after_the_task_duration_threshold_only() {
    for task_duration in [None, Some(Duration::from_millis(500))] {
        let mut test = speculating(task_duration);
        let query = test.submit(two_stage_graph(1, 1));
        let (on_a, on_b) = (test.launched("a"), test.launched("b"));
        let (task, other) = if on_a.len() == 1 {
            (on_a[0].clone(), "b")
        } else {
            (on_b[0].clone(), "a")
        };
        // The stage's only task has run for a second: no sibling ever finishes to compare with.
        started_a_second_ago(&mut test, &query, task.partition);
        test.event(Event::Tick);
        let copies = test.launched(other);
        if task_duration.is_some() {
            assert_eq!(copies.len(), 1, "a copy past the threshold");
            assert_eq!(copies[0].partition, task.partition);
        } else {
            assert!(copies.is_empty(), "no threshold, no copy: {copies:?}");
        }
    }
}

#[test]
fn speculation_copies_a_straggler_and_the_first_to_finish_wins() {
    let mut test = speculating(None);
    let query = test.submit(two_stage_graph(3, 1));
    let (on_a, on_b) = (test.launched("a"), test.launched("b"));
    let (straggler, straggler_on, others) = if on_a.len() == 1 {
        (on_a[0].clone(), "a", on_b.clone())
    } else {
        (on_b[0].clone(), "b", on_a.clone())
    };
    let others_on = if straggler_on == "a" { "b" } else { "a" };
    for attempt in &others {
        test.succeed(others_on, attempt);
    }
    // Two of three finished in about a millisecond; the third has run for a second.
    started_a_second_ago(&mut test, &query, straggler.partition);
    test.event(Event::Tick);
    let copies = test.launched(others_on);
    assert_eq!(copies.len(), 1, "a copy on the other executor");
    let copy = &copies[0];
    assert_eq!(copy.partition, straggler.partition);
    assert!(copy.attempt > straggler.attempt);
    // The copy finishes first: it commits, and the original is cancelled.
    test.succeed(others_on, copy);
    let cancels: Vec<TaskAttempt> = test
        .messages(straggler_on)
        .into_iter()
        .filter_map(|m| match m {
            coordinator_message::Message::CancelTask(cancel) => {
                cancel.task.as_ref().and_then(TaskId::to_attempt)
            }
            _ => None,
        })
        .collect();
    assert_eq!(cancels, vec![straggler.clone()]);
    assert_eq!(
        test.task_status(&query, MAP, straggler.partition as usize),
        Status::Succeeded
    );
    let won =
        test.scheduler.running[0].stages[0].tasks[straggler.partition as usize].speculation_won;
    assert!(won);
    // The original's late success changes nothing.
    test.succeed(straggler_on, &straggler);
    assert!(
        test.scheduler.running[0].stages[0].tasks[straggler.partition as usize].speculation_won
    );
}

#[test]
fn admission_queues_queries_beyond_the_limit_and_refuses_beyond_the_queue() {
    let mut test = SchedulerTest::new(SchedulerConfig {
        max_running_queries: 1,
        max_queued_queries: 1,
        ..config()
    });
    test.executor("a", 4);
    let first = test.submit(two_stage_graph(1, 1));
    let second = test.submit(two_stage_graph(1, 1));
    let third = test.submit(two_stage_graph(1, 1));
    assert_eq!(test.status(&first), Status::Running);
    assert_eq!(test.status(&second), Status::Queued);
    let launched = test.launched("a");
    assert!(launched.iter().all(|a| a.query_id == first), "{launched:?}");
    let refused = test.result_events(&third);
    let [ResultEvent::Failed(error)] = refused.as_slice() else {
        panic!("refused, got {refused:?}")
    };
    assert_eq!(error.sqlstate(), SqlState::INSUFFICIENT_RESOURCES);
    // The first query ends (its client is done): the queued one starts.
    test.event(Event::Release {
        query_id: first.clone(),
    });
    assert_eq!(test.status(&second), Status::Running);
    assert!(test.launched("a").iter().any(|a| a.query_id == second));
}

#[test]
fn a_query_without_executors_fails_after_the_wait() {
    let mut test = SchedulerTest::new(SchedulerConfig {
        executor_wait: Duration::ZERO,
        ..config()
    });
    let query = test.submit(two_stage_graph(1, 1));
    assert_eq!(test.status(&query), Status::Running);
    std::thread::sleep(Duration::from_millis(5));
    test.event(Event::Tick);
    assert_eq!(test.status(&query), Status::Failed);
    let events = test.result_events(&query);
    let [ResultEvent::Failed(error)] = events.as_slice() else {
        panic!("failed, got {events:?}")
    };
    assert!(
        error.to_string().contains("no executor is alive"),
        "{error}"
    );
}

#[test]
fn a_decommissioning_executor_gets_no_tasks_finishes_its_own_and_is_drained_when_unneeded() {
    let mut test = SchedulerTest::new(config());
    test.executor("a", 2);
    test.executor("b", 2);
    let query = test.submit(two_stage_graph(5, 2));
    let (on_a, on_b) = (test.launched("a"), test.launched("b"));
    assert_eq!((on_a.len(), on_b.len()), (2, 2));
    let a = test.executors["a"].id.clone();
    let session = test.executors["a"].session;
    test.event(Event::Decommissioning {
        executor_id: a.clone(),
        session,
    });
    let status = |test: &SchedulerTest| test.scheduler.executors[&a].status;
    assert_eq!(status(&test), ExecutorStatus::Decommissioning);
    // Its first task finishes there and counts; the freed slot takes nothing new.
    test.succeed("a", &on_a[0]);
    assert!(test.launched("a").is_empty());
    assert_eq!(
        test.task_status(&query, MAP, on_a[0].partition as usize),
        Status::Succeeded
    );
    // Its second is handed back (the grace period ran out): it runs again on b, uncounted.
    test.report(
        "a",
        &on_a[1],
        task_status::Result::Failed(TaskFailure::Cancelled.to_proto()),
    );
    for attempt in &on_b {
        test.succeed("b", attempt);
    }
    let moved = test.launched("b");
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(
        moved
            .iter()
            .any(|t| t.partition == on_a[1].partition && t.attempt == 1),
        "{moved:?}"
    );
    let query_state = test
        .scheduler
        .running
        .iter()
        .find(|q| q.id == query)
        .expect("running");
    assert_eq!(
        query_state.stages[0].tasks[on_a[1].partition as usize].failures,
        0
    );
    // Maps finish on b; the result stage runs on b alone while `a` still serves its map output,
    // which it keeps until every reader has finished.
    for attempt in &moved {
        test.succeed("b", attempt);
    }
    let results = test.launched("b");
    assert_eq!(in_stage(&results, RESULT).len(), 2, "{results:?}");
    assert!(test.launched("a").is_empty());
    test.event(Event::Tick);
    assert_eq!(
        status(&test),
        ExecutorStatus::Decommissioning,
        "its output is still read"
    );
    assert!(
        !test
            .messages("a")
            .iter()
            .any(|m| matches!(m, coordinator_message::Message::Drained(_)))
    );
    for attempt in in_stage(&results, RESULT) {
        test.succeed("b", &attempt);
    }
    assert_eq!(test.status(&query), Status::Succeeded);
    // Nobody reads its output any more: it is told it is drained, and it is gone.
    test.event(Event::Tick);
    assert!(
        test.messages("a")
            .iter()
            .any(|m| matches!(m, coordinator_message::Message::Drained(_)))
    );
    assert_eq!(status(&test), ExecutorStatus::Gone);
    // Nothing of the query was recomputed: the map output it held was read, not lost.
    let query_state = test
        .scheduler
        .running
        .iter()
        .find(|q| q.id == query)
        .expect("running");
    assert_eq!(
        query_state.stages[0].tasks[on_a[0].partition as usize].attempt,
        0
    );
}

/// The event log replays into exactly what the scheduler shows of a query that failed a task,
/// lost an executor with its outputs, ran again and succeeded.
#[test]
fn the_event_log_replays_into_the_detail_the_scheduler_shows() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let history_config = ember_config::HistoryConfig {
        enabled: true,
        dir: std::path::PathBuf::new(),
        retention_hours: 1,
        max_queries: 10,
    };
    let history = crate::history::History::open(dir.path(), &history_config)
        .expect("the history")
        .expect("enabled");
    let log = crate::history::EventLog::start(std::sync::Arc::clone(&history)).expect("a log");
    let mut test = SchedulerTest::new(config());
    test.scheduler = std::mem::replace(
        &mut test.scheduler,
        super::Scheduler::new(config(), Default::default()).0,
    )
    .with_event_log(log);
    test.executor("a", 2);
    test.executor("b", 2);
    let query = test.submit(two_stage_graph(3, 2));
    let maps = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(maps.len(), 3);
    // One map task fails and runs again; the others succeed.
    let on = test.runs_on(&maps[0]);
    test.fail(
        on,
        &maps[0],
        execution_error(ErrorKind::Io, SqlState::IO_ERROR),
    );
    for attempt in &maps[1..] {
        let on = test.runs_on(attempt);
        test.succeed(on, attempt);
    }
    let retry = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(retry.len(), 1);
    let on = test.runs_on(&retry[0]);
    test.succeed(on, &retry[0]);
    // The result tasks run; one executor is lost with the outputs they read.
    let results = [test.launched("a"), test.launched("b")].concat();
    assert_eq!(in_stage(&results, RESULT).len(), 2);
    test.lose("b");
    // Only `a` is left: what still runs there and what runs again finish there.
    let a = ExecutorId("a".into());
    let mut running: Vec<TaskAttempt> = results
        .into_iter()
        .filter(|r| test.scheduler.executors[&a].running.contains(r))
        .collect();
    let mut round = 0;
    loop {
        running.extend(test.launched("a"));
        if running.is_empty() {
            break;
        }
        round += 1;
        assert!(round < 20, "the query does not finish");
        for attempt in std::mem::take(&mut running) {
            test.succeed("a", &attempt);
        }
    }
    assert_eq!(test.status(&query), Status::Succeeded);
    test.event(Event::Release {
        query_id: query.clone(),
    });
    let live = super::Snapshot::build(
        &super::SnapshotRequest::query(query.clone()),
        test.scheduler.executors.values(),
        test.scheduler.history.iter(),
    )
    .queries
    .pop()
    .expect("the query");
    let deadline = Instant::now() + Duration::from_secs(10);
    while history.summary(query.as_str()).is_none() {
        assert!(Instant::now() < deadline, "the log never saw the query end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let replayed = history
        .detail(&query)
        .expect("the log reads")
        .expect("the query is in the history");
    let (live, replayed) = (
        serde_json::to_value(&live).expect("json"),
        serde_json::to_value(&replayed).expect("json"),
    );
    assert_eq!(live, replayed);
    // The failed attempt shows in the log as a failure before its retry.
    let log = std::fs::read_to_string(dir.path().join(format!("events/{query}.jsonl")))
        .expect("the query's log");
    assert!(
        log.lines()
            .any(|l| l.starts_with(r#"{"event":"task_ended""#)
                && l.contains(r#""state":"failed""#)
                && l.contains(r#""sqlstate":"58030""#)),
        "{log}"
    );
    assert!(
        live["stages"][0]["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .any(|t| t["attempt"].as_u64() > Some(0)),
        "a task ran more than once: {live}"
    );
}
