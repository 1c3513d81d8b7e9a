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
