//! The container image: the Dockerfile's instructions as the other artefacts rely on them, its
//! log directory, and its healthcheck command run against a live and a dead gateway.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use otelgate::export::otlp::Protocol;
use otelgate::Gateway;
use otelgate_cli::demo::backend::RecordingBackend;
use parse_dockerfile::{HealthcheckArguments, Instruction, JsonOrStringArray};

use super::{free_port, read, run_bounded, ADMIN};
use crate::{config_for, start};

/// The Dockerfile as parse-dockerfile reads it (BuildKit's syntax: continuation lines, exec
/// and shell forms, flags, stages); loading fails on anything it cannot parse.
pub(super) struct Dockerfile {
    /// The image of each stage's `FROM`, in order.
    pub(super) stages: Vec<String>,
    /// Every `RUN` command in shell form, continuation lines joined.
    pub(super) runs: Vec<String>,
    /// The ports of every `EXPOSE`.
    pub(super) exposed: Vec<String>,
    /// The paths of every `VOLUME`.
    pub(super) volumes: Vec<String>,
    users: Vec<String>,
    entrypoints: Vec<Vec<String>>,
    healthchecks: Vec<Vec<String>>,
    /// The runtime (last) stage's `ENV` variables.
    env: BTreeMap<String, String>,
}

impl Dockerfile {
    #[track_caller]
    pub(super) fn load() -> Self {
        let text = read("Dockerfile");
        let parsed = parse_dockerfile::parse(&text)
            .unwrap_or_else(|e| panic!("Dockerfile does not parse: {e}"));
        let mut docker = Dockerfile {
            stages: parsed
                .stages()
                .map(|stage| stage.from.image.value.to_string())
                .collect(),
            runs: Vec::new(),
            exposed: Vec::new(),
            volumes: Vec::new(),
            users: Vec::new(),
            entrypoints: Vec::new(),
            healthchecks: Vec::new(),
            env: BTreeMap::new(),
        };
        let runtime = parsed.stages().last().expect("a FROM");
        for instruction in runtime.instructions {
            if let Instruction::Env(env) = instruction {
                add_env(&env.arguments.value, &mut docker.env);
            }
        }
        for instruction in &parsed.instructions {
            match instruction {
                Instruction::Run(run) => docker.runs.push(match &run.arguments {
                    parse_dockerfile::Command::Shell(shell) => shell.value.replace("\\\n", " "),
                    exec => exec_form(exec, "RUN").join(" "),
                }),
                Instruction::Expose(expose) => docker.exposed.extend(words(&expose.arguments)),
                Instruction::Volume(volume) => docker.volumes.extend(match &volume.arguments {
                    JsonOrStringArray::Json(paths) => words(&paths.value),
                    JsonOrStringArray::String(paths) => words(paths),
                }),
                Instruction::User(user) => docker.users.push(user.arguments.value.to_string()),
                Instruction::Entrypoint(entrypoint) => docker
                    .entrypoints
                    .push(exec_form(&entrypoint.arguments, "ENTRYPOINT")),
                Instruction::Healthcheck(check) => match &check.arguments {
                    HealthcheckArguments::Cmd { arguments, .. } => docker
                        .healthchecks
                        .push(exec_form(arguments, "HEALTHCHECK CMD")),
                    other => panic!("HEALTHCHECK without CMD: {other:?}"),
                },
                _ => {}
            }
        }
        docker
    }

    /// The user of the first `USER`.
    pub(super) fn user(&self) -> &str {
        self.users.first().expect("a USER")
    }

    /// The first `ENTRYPOINT`, in exec form.
    pub(super) fn entrypoint(&self) -> &[String] {
        self.entrypoints.first().expect("an ENTRYPOINT")
    }

    /// The runtime stage's `ENV` variables, which every container of the image starts with.
    pub(super) fn env(&self) -> BTreeMap<String, String> {
        self.env.clone()
    }

    /// The environment of a container of this image: the image's `ENV`, then `overrides`
    /// (compose's `environment`, a pod's `env`), which win.
    pub(super) fn container_env(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = self.env();
        env.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The exec-form array of `HEALTHCHECK ... CMD [...]`.
    pub(super) fn healthcheck(&self) -> Vec<String> {
        assert_eq!(self.healthchecks.len(), 1, "one HEALTHCHECK");
        self.healthchecks[0].clone()
    }
}

fn words(strings: &[parse_dockerfile::UnescapedString<'_>]) -> Vec<String> {
    strings.iter().map(|s| s.value.to_string()).collect()
}

#[track_caller]
fn exec_form(command: &parse_dockerfile::Command<'_>, what: &str) -> Vec<String> {
    match command {
        parse_dockerfile::Command::Exec(args) => words(&args.value),
        other => panic!("{what} is not in exec form (a JSON array): {other:?}"),
    }
}

/// Adds the variables of an `ENV` instruction's arguments (`KEY=value ...`, or the old
/// `KEY value` form) to `env`. parse-dockerfile leaves them as one string.
#[track_caller]
fn add_env(args: &str, env: &mut BTreeMap<String, String>) {
    let unquote = |v: &str| v.trim_matches('"').to_owned();
    let args = args.trim();
    match args.split_once(char::is_whitespace) {
        Some((key, value)) if !key.contains('=') => {
            env.insert(key.to_owned(), unquote(value.trim()));
        }
        _ => {
            for pair in args.split_whitespace() {
                let (key, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV `{pair}` is not KEY=value"));
                env.insert(key.to_owned(), unquote(value));
            }
        }
    }
}

/// The durable log's directory in the image: where `OTELGATE_LOG__DIR` points, a `VOLUME`, and
/// created for the gateway's user.
#[track_caller]
pub(super) fn image_log_dir(docker: &Dockerfile) -> String {
    let dir = docker
        .env()
        .remove("OTELGATE_LOG__DIR")
        .expect("the image sets OTELGATE_LOG__DIR, so that the log lands on its volume");
    assert!(
        docker.volumes.contains(&dir),
        "the log directory {dir} is not a VOLUME of the image"
    );
    let chowned = docker.runs.iter().any(|run| {
        run.split("&&").any(|cmd| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            words.first() == Some(&"chown") && words.contains(&dir.as_str())
        })
    });
    assert!(
        chowned,
        "the image does not hand {dir} to its non-root user: the log could not be written"
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_tells_a_serving_gateway_from_a_dead_one() {
    let backend = RecordingBackend::start().await.unwrap();
    let gateway: Gateway = start(config_for(&[("lgtm", &backend, Protocol::Grpc)])).await;
    let check = Dockerfile::load().healthcheck();
    let run = |port: u16| {
        let args: Vec<String> = check
            .iter()
            .map(|a| a.replace(&ADMIN.to_string(), &port.to_string()))
            .collect();
        run_bounded(
            Command::new(&args[0]).args(&args[1..]),
            Duration::from_secs(10),
        )
        .status
    };
    assert!(
        run(gateway.admin_addr().port()).success(),
        "healthcheck fails against a serving gateway"
    );
    gateway.shutdown().await;
    assert!(
        !run(free_port()).success(),
        "healthcheck passes with nothing listening"
    );
}
