//! The `otelgate` binary as built: every subcommand parses, and `check-config` accepts the
//! example config and names the key of a wrong one. Being an integration test of this package,
//! it also makes cargo build the binary before any test runs, which the gateway's own
//! integration tests (`tests/it`) start as a child process.

use std::path::PathBuf;
use std::process::{Command, Output};

fn otelgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otelgate"))
}

#[track_caller]
fn run(command: &mut Command) -> Output {
    command.output().expect("the otelgate binary runs")
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
        &["migrate", "--help"],
        &["demo", "--help"],
        &["load", "--help"],
        &["testbed", "--help"],
        &["testbed", "postgres", "--help"],
        &["testbed", "backend", "--help"],
        &["testbed", "copy", "--help"],
    ] {
        let output = run(otelgate().args(args));
        assert!(output.status.success(), "{args:?}");
        assert!(!output.stdout.is_empty(), "{args:?} printed no help");
    }
}

#[test]
fn check_config_accepts_the_example_and_names_a_wrong_key() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../otelgate.example.toml");
    let output = run(otelgate()
        .args(["check-config", "--config"])
        .arg(&example)
        .env("UPTRACE_DSN", "https://token@uptrace.example/1"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("config OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let wrong = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("otelgate-wrong-key.toml");
    std::fs::write(
        &wrong,
        "[exporters.lgtm]\nendpoint = \"http://127.0.0.1:4317\"\ncompresion = \"gzip\"\n",
    )
    .expect("the target directory is writable");
    let output = run(otelgate().args(["check-config", "--config"]).arg(&wrong));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a wrong key passed: {stderr}");
    assert!(
        stderr.contains("compresion"),
        "the wrong key is not named in: {stderr}"
    );
}
