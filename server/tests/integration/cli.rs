//! The `ember` binary's command line: invalid configuration is refused with the key named.

use std::process::Command;

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

#[test]
fn invalid_environment_setting_names_the_key() {
    let output = ember()
        .args(["local", "--executors", "1"])
        .env("EMBER_COORDINATOR_PG_PORT", "not-a-port")
        .output()
        .expect("run ember");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("coordinator.pg_port"), "{stderr}");
}

#[test]
fn unknown_key_in_config_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ember.toml");
    std::fs::write(&file, "[executor]\nslotz = 4\n").expect("write config");
    let output = ember()
        .arg("--config")
        .arg(&file)
        .args(["local"])
        .output()
        .expect("run ember");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown config key `executor.slotz`"),
        "{stderr}"
    );
}

#[test]
fn invalid_flag_value_names_the_key() {
    let output = ember()
        .args([
            "executor",
            "--coordinator",
            "127.0.0.1:1",
            "--slots",
            "many",
        ])
        .output()
        .expect("run ember");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("executor.slots"), "{stderr}");
}

/// A port in use is named, with the flag and setting that move it; logs sent to a file or pipe
/// carry no colour codes, and `EMBER_LOG_FORMAT=json` makes them JSON lines.
#[test]
fn start_up_errors_name_the_port_and_logs_suit_a_collector() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = held.local_addr().expect("address").port().to_string();
    let data = tempfile::tempdir().expect("temp dir");
    let run = |format: &str| {
        ember()
            .args([
                "local",
                "--executors",
                "1",
                "--port",
                "0",
                "--flight-sql-port",
                "0",
                "--http-port",
                "0",
            ])
            .args(["--pg-port", &port, "--data-dir"])
            .arg(data.path())
            .env("EMBER_LOG_FORMAT", format)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run ember")
    };
    let output = run("text");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("Postgres clients on 127.0.0.1:{port}"))
            && stderr.contains("--pg-port")
            && stderr.contains("coordinator.pg_port"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a piped log: {stderr}"
    );
    let output = run("json");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON log line: {stderr}"));
    let parsed: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert!(parsed.get("level").is_some(), "{line}");
    let output = run("xml");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("EMBER_LOG_FORMAT"));
}
